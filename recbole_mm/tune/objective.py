"""One trial = one ordinary ``run_recbole_mm`` run, reporting each validation score to Optuna.

The configuration of a trial is layered exactly as ``run_recbole_mm.py`` layers it (RecBole
defaults < plugin yamls < ``--config_files`` < the trial's values), with the keys fixed on the
command line winning over the searched ones (they are never searched). Seeds are the
configuration's own (``seed``, ``reproducibility``), as in any run.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import shutil
import time

import optuna

from recbole_mm.config import plain_argv
from recbole_mm.tune.space import suggest


def _floats(d) -> dict:
    return {str(k): float(v) for k, v in dict(d or {}).items()}


class PruningHook:
    """``trainer_hook`` for ``run_recbole_mm``: every validation of the trainer (``_valid_epoch``,
    each phase of a multi-stage trainer included) is reported to the trial as step 0, 1, 2, ...;
    when the pruner says so the run stops with ``optuna.TrialPruned``."""

    def __init__(self, trial: optuna.trial.Trial):
        self.trial = trial
        self.steps = 0

    def __call__(self, config, dataset, model, trainer):
        original = trainer._valid_epoch

        def _valid_epoch(valid_data, *args, **kwargs):
            score, result = original(valid_data, *args, **kwargs)
            step = self.steps
            self.steps += 1
            self.trial.report(float(score), step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at validation {step} (score {float(score):.6g})")
            return score, result

        trainer._valid_epoch = _valid_epoch


class Objective:
    """``objective(trial)`` -> the run's best validation score (``valid_metric``)."""

    def __init__(self, model: str, dataset: str, space: dict, fixed: dict,
                 config_files: list | None, checkpoint_dir: str, keep_checkpoints: bool = False):
        self.model, self.dataset, self.space = model, dataset, space
        self.fixed, self.config_files = dict(fixed), list(config_files or []) or None
        self.checkpoint_dir, self.keep_checkpoints = checkpoint_dir, keep_checkpoints

    def trial_dir(self, trial) -> str:
        """The trial's own checkpoint folder (best model, training state, a multi-stage
        trainer's stage files): removed after the trial unless checkpoints are kept."""
        return os.path.join(self.checkpoint_dir, f"trial_{trial.number}")

    def config_dict(self, params: dict, trial) -> dict:
        cfg = {"checkpoint_dir": self.trial_dir(trial)}
        cfg.update(params)
        cfg.update(self.fixed)  # a fixed checkpoint_dir is the user's: never removed
        return cfg

    def __call__(self, trial: optuna.trial.Trial) -> float:
        from recbole_mm.quick_start import run_recbole_mm

        params = suggest(trial, self.space)
        hook = PruningHook(trial)
        start = time.time()
        handlers = list(logging.getLogger().handlers)
        try:
            with plain_argv():
                result = run_recbole_mm(self.model, self.dataset, config_file_list=self.config_files,
                                        config_dict=self.config_dict(params, trial), saved=True,
                                        trainer_hook=hook)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()
            trial.set_user_attr("error", f"{type(exc).__name__}: {text[0][:500] if text else ''}")
            raise
        finally:
            trial.set_user_attr("validations", hook.steps)
            trial.set_user_attr("seconds", round(time.time() - start, 3))
            _drop_new_handlers(handlers)
            if not self.keep_checkpoints and "checkpoint_dir" not in self.fixed:
                shutil.rmtree(self.trial_dir(trial), ignore_errors=True)
            gc.collect()
            _empty_cuda_cache()
        trial.set_user_attr("test_result", _floats(result.get("test_result")))
        trial.set_user_attr("best_valid_result", _floats(result.get("best_valid_result")))
        if self.keep_checkpoints:
            trial.set_user_attr("saved_model_file", result.get("saved_model_file"))
        score = float(result["best_valid_score"])
        if math.isnan(score):  # Optuna records a NaN value as a failed trial
            trial.set_user_attr("error", "the run's best validation score is NaN")
        return score


def _drop_new_handlers(before: list) -> None:
    """Remove the root-logger handlers a run added (RecBole's ``init_logger`` only configures an
    unconfigured root logger): the next trial then logs to its own ``log/`` file."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
            h.close()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
