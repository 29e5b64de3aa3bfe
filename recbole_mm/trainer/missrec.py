"""MISSRec's schedule as a thin RecBole ``Trainer`` subclass (spec sec. 4.3-4.4, 10).

* **Interest discovery every epoch**: ``_train_epoch`` first calls
  ``model.discover_interests()`` (clustering with the current adapters, logged), then trains.
* **Fine-tuning from a pre-trained checkpoint** (``pretrained_path``, stages ``inductive_ft`` /
  ``transductive_ft``): the shape-independent weights are copied into the model before the
  optimiser is built; with ``peft: true`` (the official ``fix_enc``) the position table and the
  Transformer are frozen and the optimiser holds only the trainable parameters.
* **Pre-training** (``train_stage: pretrain``): ``fit`` trains ``epochs`` epochs without
  validation and saves ``<checkpoint_dir>/MISSRec-<dataset>-<epoch>.pth`` every ``save_step``
  epochs and after the last one; ``saved_model_file`` is the last checkpoint (the file
  fine-tuning reads). ``evaluate`` is skipped in this stage unless ``pretrain_eval: true``.

Training budget: a MISSRec run is one stage (pre-training, or fine-tuning / training from scratch),
so ``epochs`` is that run's total, as for every model. Pre-training then fine-tuning is two runs,
each with its own ``epochs`` (the paper's recipes: ``MISSRec_pretrain.yaml`` 100,
``MISSRec_finetune.yaml`` at most 300 with early stopping).

Resuming (``--resume``): being one stage, a run resumes like any other (weights incl. the interest
buffers of the last discovery, optimiser, epoch, early stopping, random states); the training
state records ``train_stage`` and a resume with another one is refused. Pre-training writes no
``saved_model_file`` of its own name, so its state is ``<checkpoint_dir>/MISSRec-<time>.resume.pth``
(named in the log), which ``--resume`` takes as it is; the pre-training checkpoints go on every
``save_step`` epochs.
"""
from __future__ import annotations

import os
from time import time

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_mm.resume import ResumeError


class MISSRecTrainer(Trainer):
    def __init__(self, config, model):
        self.stage = model.train_stage
        path = config["pretrained_path"]
        if path and self.stage != "pretrain":
            model.load_pretrained(path)
            if config["peft"] is not False:
                model.freeze_for_peft()
        super().__init__(config, model)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        self.logger.info(f"MISSRec [{self.stage}]: {n_train:,} of {n_all:,} parameters train"
                         + (f" (pre-trained: {path})" if path and self.stage != "pretrain" else ""))
        if self.stage == "pretrain":
            self.save_step = int(config["save_step"] or 0)
            names = config["pretrain_datasets"]
            self.corpus_name = config["dataset"]
            if names:
                from recbole_mm.data.pretrain import parse_domains

                self.corpus_name = "+".join(parse_domains(names))

    # ------------------------------------------------------------------ resuming
    def resume_stage(self) -> dict:
        """The training state's stage: this run's ``train_stage`` (one stage per run)."""
        return {"name": self.stage}

    def restore_stage(self, stage, apply) -> None:
        """``fit`` keeps the epoch and early stopping it is given: the state goes back at once."""
        name = stage.get("name") if isinstance(stage, dict) else None
        if name != self.stage:
            raise ResumeError(f"it is a MISSRec {name!r} run, this run's train_stage is "
                              f"{self.stage!r}.")
        apply()

    def _build_optimizer(self, **kwargs):
        kwargs.setdefault("params", [p for p in self.model.parameters() if p.requires_grad])
        return super()._build_optimizer(**kwargs)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        t0 = time()
        info = self.model.discover_interests()
        self.logger.info(
            set_color("interest discovery", "green")
            + f" before epoch {epoch_idx}: round {info['round']}, {info['K']} interests "
            f"({info['used']} non-empty) over {info['tokens']} tokens [{time() - t0:.2f}s]")
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)

    # ------------------------------------------------------------------ pre-training
    def pretrain_file(self, epoch: int) -> str:
        return os.path.join(self.checkpoint_dir, f"MISSRec-{self.corpus_name}-{epoch}.pth")

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        if self.stage != "pretrain":
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=callback_fn)
        for epoch_idx in range(self.start_epoch, self.epochs):
            t0 = time()
            loss = self._train_epoch(train_data, epoch_idx, show_progress=show_progress)
            self.train_loss_dict[epoch_idx] = sum(loss) if isinstance(loss, tuple) else loss
            if verbose:
                self.logger.info(self._generate_train_loss_output(epoch_idx, t0, time(), loss))
            last = epoch_idx + 1 == self.epochs
            if saved and (last or (self.save_step and (epoch_idx + 1) % self.save_step == 0)):
                path = self.pretrain_file(epoch_idx + 1)
                self._save_checkpoint(epoch_idx, verbose=verbose, saved_model_file=path)
                self.saved_model_file = path
        return self.best_valid_score, self.best_valid_result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if self.stage == "pretrain" and not self.config["pretrain_eval"]:
            self.logger.info("MISSRec pre-training: no evaluation (set pretrain_eval: true to run one)")
            return {}
        return super().evaluate(eval_data, load_best_model=load_best_model, model_file=model_file,
                                show_progress=show_progress)
