"""SICSRec's two-step schedule (spec §4) as a thin RecBole ``Trainer`` subclass.

``fit`` runs, in one call:

* **step 1** (when the model's ``pretrain_branch`` is ``id`` or ``content``): only that branch
  trains (``id`` = plain SASRec with full-softmax CE), with its own early stopping and its own
  checkpoint ``<saved_model_file stem>-step1.pth``; its best weights are reloaded at the end.
  ``step1_checkpoint: <path>`` skips the training and loads a step-1 checkpoint instead (a
  recbole_mm or RecBole SASRec checkpoint; ``strict=False``, only step-2 modules may be missing);
* **step 2**: the model switches to the full SICSRec (``freeze`` groups frozen, LoRA on the
  frozen ID encoder), a fresh optimiser over the trainable parameters, fresh early stopping, and
  the checkpoint ``saved_model_file`` - so ``evaluate(load_best_model=True)`` tests step 2's best.

Training budget (:func:`recbole_mm.config.split_epochs`): ``epochs`` is the run's total. Steps 1
and 2 share it equally (step 2 takes an odd remainder: ``epochs: 5`` = 2 + 3); ``step1_epochs`` /
``step2_epochs`` set to a number fix that step and leave the rest of ``epochs`` to the other; both
set = the paper's schedule (e.g. 300 + 300), ``epochs`` unused. Without a trained step 1
(``pretrain_branch: none`` or ``step1_checkpoint``) step 2 trains ``step2_epochs`` or ``epochs``.
Budgets are upper bounds (early stopping per step). ``stage_epochs`` holds, per step, the budget
and the epochs actually run, ``stage_results`` each trained step's best validation (score,
result); each step and the epochs run are logged.

Resuming (``--resume``, :class:`recbole_mm.resume.StagedTrainer`): the training state names the
step; ``fit`` skips step 1 (training or ``step1_checkpoint``) when the run stopped in step 2, sets
the saved step up (``requires_grad`` of its groups, LoRA, optimiser, checkpoint file) and puts back
its weights, optimiser, epoch, early stopping and random states. A run stopped between the steps
resumes at step 2's start (best step-1 weights loaded).
"""
from __future__ import annotations

import os

import numpy as np
from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mm.compat import load_checkpoint
from recbole_mm.config import split_epochs, stage_epochs_line
from recbole_mm.resume import StagedTrainer


class SICSRecTrainer(StagedTrainer, Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.stage_results = {}  # "step 1" -> (best valid score, best valid result)
        self.stage_epochs = {}  # "step 1" -> {"budget": n, "run": epochs trained}
        self._enter_step(2)  # the final configuration (what a bare epoch / the cost tool trains)

    # ------------------------------------------------------------------ helpers
    def _trainable(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    def _enter_step(self, step: int) -> None:
        self.model.set_step(step)
        if not self.config["single_spec"]:
            # DDP registers gradient hooks for the parameters that train when it is built: rebuild
            # it for the step's trainable set (frozen groups differ between the steps)
            from torch.nn.parallel import DistributedDataParallel

            self.distributed_model = DistributedDataParallel(
                self.model, device_ids=[self.config["local_rank"]], find_unused_parameters=True)
        self.optimizer = self._build_optimizer(params=self._trainable())
        self.start_epoch = 0
        self.cur_step = 0
        self.best_valid_score = -np.inf if self.valid_metric_bigger else np.inf
        self.best_valid_result = None

    def stage_budgets(self) -> dict:
        """Epoch budget of each step this run trains (``{"step 1": n1, "step 2": n2}``)."""
        if self.model.pretrain_branch != "none" and not self.config["step1_checkpoint"]:
            n1, n2 = split_epochs(self.config, ["step1_epochs", "step2_epochs"], "SICSRec")
            return {"step 1": n1, "step 2": n2}
        return {"step 2": split_epochs(self.config, ["step2_epochs"], "SICSRec")[0]}

    def step1_file(self) -> str:
        stem, ext = os.path.splitext(self.saved_model_file)
        return f"{stem}-step1{ext}"

    def load_step1(self, path: str) -> None:
        """Load step-1 weights (``strict=False``); refuse unexpected keys or missing ID keys."""
        ckpt = load_checkpoint(path, map_location=self.device)
        state = ckpt.get("state_dict", ckpt)
        state = {k: v for k, v in state.items() if k != "train_step"}
        result = self.model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{path}: unexpected keys for SICSRec: {result.unexpected_keys[:8]}")
        branch = self.model.pretrain_branch
        want = {"id": ("id_embedding", "id_encoder"), "content": ("content_tables", "content_encoder")}
        missing = [k for k in result.missing_keys
                   if self.model.group_of(k) in want.get(branch, ()) and "lora_" not in k]
        if missing:
            raise ValueError(f"{path} lacks step-1 weights: {missing[:8]}")
        self.logger.info(set_color("SICSRec", "green") + f": step-1 weights loaded from {path}")

    # ------------------------------------------------------------------ schedule
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        model, config = self.model, self.config
        final_file = self.saved_model_file
        budgets = self.stage_budgets()
        self.stage_epochs, self.stage_results = {}, {}
        # resuming in step 2 skips step 1: the weights come from the training state
        if model.pretrain_branch != "none" and self.resume_from() != "step 2":
            if config["step1_checkpoint"]:
                self._enter_step(1)
                self.load_step1(config["step1_checkpoint"])
            else:
                self._enter_step(1)
                self.saved_model_file = self.step1_file()
                self._begin_stage("step 1", budgets["step 1"])
                self.logger.info(set_color("SICSRec step 1/2", "green")
                                 + f": pre-training the {model.pretrain_branch} branch "
                                 + f"({sum(p.numel() for p in self._trainable())} trainable parameters, "
                                 + f"epochs <= {self.epochs})")
                self.continue_stage()
                score, result = super().fit(train_data, valid_data, verbose, saved, show_progress,
                                            callback_fn)
                self.stage_results["step 1"] = (score, result)
                if saved and os.path.isfile(self.saved_model_file):
                    ckpt = load_checkpoint(self.saved_model_file, map_location=self.device)
                    model.load_state_dict(ckpt["state_dict"])
                    self.logger.info(set_color("SICSRec step 1/2", "green")
                                     + f": best valid {result}; reloaded {self.saved_model_file}")
            self.saved_model_file = final_file
        self._enter_step(2)
        self._begin_stage("step 2", budgets["step 2"])
        self.continue_stage()
        frozen = sorted({model.group_of(n) for n, p in model.named_parameters() if not p.requires_grad})
        self.logger.info(set_color("SICSRec step 2/2", "green")
                         + f": post-training, frozen groups {frozen}, LoRA {model.lora_mode if model.has_lora else 'none'}"
                         + f" ({sum(p.numel() for p in self._trainable())} trainable parameters, "
                         + f"epochs <= {self.epochs})")
        score, result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        self.stage_results["step 2"] = (score, result)
        self._stage = None
        self.logger.info(set_color("SICSRec epochs run", "green") + ": "
                         + stage_epochs_line(self.stage_epochs, config["epochs"]))
        return score, result
