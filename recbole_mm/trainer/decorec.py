"""``DeCoRecTrainer``: RecBole's ``Trainer`` running DeCoRec's phased schedule (paper Sec. 4.4).

``phase_schedule: two_phase`` (default), in one ``fit`` call:

1. **phase 1** (modality-only stabilisation): adapters + encoder, early stopping on the validation
   metric; the best epoch is saved to ``<model file>-phase1.pth``;
2. the best phase-1 weights are loaded back (:func:`recbole_mm.compat.load_checkpoint`), the ID
   table is re-initialised and the interest tables zeroed, the adapters are frozen
   (``freeze_adapter_phase2``), the optimiser is rebuilt and early stopping reset;
3. **phase 2** (collaborative-semantic fusion): trains encoder, ``LN_in``, ID table
   (``id_learning_rate``) and interest tables; its best epoch is saved to the trainer's
   ``saved_model_file``, which RecBole's final ``evaluate(test, load_best_model=True)`` loads.

``phase1_only`` runs phase 1 alone; ``joint`` runs the phase-2 model from scratch with everything
trainable (the paper's "w/o phase").

Training budget (:func:`recbole_mm.config.split_epochs`): ``epochs`` is the run's total. The two
phases share it equally (phase 2 takes an odd remainder: ``epochs: 5`` = 2 + 3); ``phase1_epochs``
/ ``phase2_epochs`` set to a number fix that phase and leave the rest of ``epochs`` to the other;
both set = the paper's schedule (e.g. 300 + 300), ``epochs`` unused. ``phase1_only`` trains
``phase1_epochs`` or ``epochs``; ``joint`` trains ``epochs``. Every budget is an upper bound (early
stopping per phase). ``stage_epochs`` holds, per phase, the budget and the epochs actually run,
``stage_results`` each phase's best validation (score, result); they are logged at the end of
``fit``.

Resuming (``--resume``, :class:`recbole_mm.resume.StagedTrainer`): the training state names the
phase; ``fit`` skips phase 1 when the run stopped in phase 2, sets the saved phase up (phase flag,
frozen adapters, optimiser over its trainable parameters, checkpoint file) and puts back its
weights, optimiser, epoch, early stopping and random states. A run stopped between the phases
resumes at phase 2's start (best phase-1 weights loaded, fresh collaborative tables).

A single :meth:`_train_epoch` trains one epoch in the model's *current* phase (phase 1 on a fresh
two-phase trainer, phase 2 after :meth:`enter_phase2` or with ``phase_schedule: joint``).

Optimiser (spec Sec. 4.4): one Adam per phase over the trainable parameters, ``item_embedding``
at ``id_learning_rate``, everything else at ``learning_rate``. ``compat_frozen_embeddings: true``
reproduces the released code's bug (every parameter whose name contains ``embedding`` is left out
of the optimiser, although its gradient is still computed and clipped);
``compat_reset_optimizer_each_epoch: true`` rebuilds Adam at the start of every epoch as the
released code does.
"""
from __future__ import annotations

import os

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mm.compat import load_checkpoint
from recbole_mm.config import split_epochs, stage_epochs_line
from recbole_mm.resume import StagedTrainer


class DeCoRecTrainer(StagedTrainer, Trainer):
    """Thin ``Trainer`` subclass: switches phase, trainable parameters and checkpoint files."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self._name_model_files()
        self.stage_results = {}  # "phase 1" -> (best valid score, best valid result)
        self.stage_epochs = {}  # "phase 1" -> {"budget": n, "run": epochs trained}

    def _name_model_files(self) -> None:
        """Best checkpoint of each phase, from ``saved_model_file`` (the run's final file)."""
        self.final_model_file = self.saved_model_file
        root, ext = os.path.splitext(self.saved_model_file)
        self.phase_model_files = {1: f"{root}-phase1{ext}", 2: self.saved_model_file}

    def restore_stage(self, stage, apply) -> None:
        super().restore_stage(stage, apply)
        self._name_model_files()  # the stopped run's files (resume set saved_model_file)

    # ------------------------------------------------------------------ optimiser
    def _build_optimizer(self, **kwargs):
        if "params" in kwargs:
            return super()._build_optimizer(**kwargs)
        compat = bool(self.config["compat_frozen_embeddings"])
        id_lr = self.config["id_learning_rate"]
        id_lr = self.learning_rate if id_lr is None else float(id_lr)
        id_params, other = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            if compat and "embedding" in name:
                continue  # released code: empty parameter groups, embeddings never updated
            (id_params if name.startswith("item_embedding.") else other).append(param)
        groups = [g for g in ({"params": other}, {"params": id_params, "lr": id_lr}) if g["params"]]
        if not groups:
            raise ValueError("DeCoRec: no trainable parameter in the current phase.")
        return super()._build_optimizer(params=groups, **kwargs)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self.config["compat_reset_optimizer_each_epoch"]:
            self.optimizer = self._build_optimizer()
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        out = super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        return set_color(f"[phase {self.model.phase}] ", "cyan") + out

    # ------------------------------------------------------------------ phases
    def stage_budgets(self) -> dict:
        """Epoch budget of each phase this run trains (``{"phase 1": n1, "phase 2": n2}``)."""
        schedule = self.model.phase_schedule
        if schedule == "two_phase":
            n1, n2 = split_epochs(self.config, ["phase1_epochs", "phase2_epochs"], "DeCoRec")
            return {"phase 1": n1, "phase 2": n2}
        if schedule == "phase1_only":
            return {"phase 1": split_epochs(self.config, ["phase1_epochs"], "DeCoRec")[0]}
        return {"phase 2 (joint)": split_epochs(self.config, [], "DeCoRec")[0]}

    def _begin_stage(self, name: str, epochs: int) -> None:
        """The stage's budget (:class:`StagedTrainer`), fresh early stopping and optimiser."""
        super()._begin_stage(name, epochs)
        self.start_epoch = 0
        self.cur_step = 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None
        self.train_loss_dict = dict()
        self.optimizer = self._build_optimizer()

    def _log_phase(self, text: str) -> None:
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.logger.info(set_color(f"DeCoRec {text}", "yellow")
                         + f" [trainable parameters: {trainable}, epochs <= {self.epochs}]")

    def start_phase1(self) -> None:
        self.model.set_phase(1)
        self._begin_stage("phase 1", self.stage_budgets()["phase 1"])
        self.saved_model_file = self.phase_model_files[1]
        self._log_phase("phase 1/2: modality-only stabilisation (adapters + encoder)")

    def enter_phase2(self, load_best: bool = True) -> None:
        """Load the best phase-1 weights, fresh ID / zero interest tables, freeze the adapters,
        rebuild the optimiser and reset early stopping."""
        path = self.phase_model_files[1]
        if load_best:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"DeCoRec: best phase-1 checkpoint {path} is missing.")
            checkpoint = load_checkpoint(path, map_location=self.device)
            self.model.load_state_dict(checkpoint["state_dict"])
            self.model.load_other_parameter(checkpoint.get("other_parameter"))
            self.logger.info(set_color("DeCoRec: loaded best phase-1 weights", "yellow")
                             + f" (epoch {checkpoint['epoch']}, valid score "
                             f"{checkpoint['best_valid_score']}) from {path}")
        else:
            self.logger.warning("DeCoRec: phase 2 starts from the last phase-1 weights "
                                "(saved=False keeps no best checkpoint).")
        self.model.reset_collaborative_parameters()
        self._start_phase2()

    def _start_phase2(self) -> None:
        """Phase flag, frozen adapters, optimiser, early stopping and checkpoint of phase 2."""
        self.model.set_phase(2)
        self._begin_stage("phase 2", self.stage_budgets()["phase 2"])
        self.saved_model_file = self.phase_model_files[2]
        frozen = "adapters frozen" if self.model.freeze_adapter_phase2 else "adapters trainable"
        self._log_phase(f"phase 2/2: collaborative-semantic fusion (ID + interest embeddings, {frozen})")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        schedule = self.model.phase_schedule
        self.stage_epochs, self.stage_results = {}, {}
        if schedule != "two_phase":
            phase = 1 if schedule == "phase1_only" else 2
            self.model.set_phase(phase)
            (name, budget), = self.stage_budgets().items()
            self._begin_stage(name, budget)
            self.saved_model_file = self.final_model_file
            self._log_phase(f"single run ({schedule}, phase {phase} model)")
            self.continue_stage()
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_results[name] = result
            self._log_epochs_run()
            return result

        if self.resume_from() == "phase 2":
            self._start_phase2()  # weights and the rest come from the training state
        else:
            self.start_phase1()
            self.continue_stage()
            result1 = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
            self.stage_results["phase 1"] = result1
            self.logger.info(set_color("DeCoRec phase 1 best valid", "yellow") + f": {result1[1]}")
            self.enter_phase2(load_best=saved)
        self.continue_stage()
        result2 = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_results["phase 2"] = result2
        self.logger.info(set_color("DeCoRec phase 2 best valid", "yellow") + f": {result2[1]}")
        self._log_epochs_run()
        return result2

    def _log_epochs_run(self) -> None:
        self._stage = None
        self.logger.info(set_color("DeCoRec epochs run", "yellow") + ": "
                         + stage_epochs_line(self.stage_epochs, self.config["epochs"]))
