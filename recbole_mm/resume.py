"""Resuming a stopped training run (``--resume=saved/X.pth``).

RecBole writes a checkpoint only when the validation score improves (the *best* model), so its
``Trainer.resume_checkpoint`` restarts from the best epoch, not from where training stopped. The
plugin keeps a second file for that, the **training state**, beside the best checkpoint::

    saved/SASRec-<time>.pth          best model (RecBole's; what evaluation and recommend read)
    saved/SASRec-<time>.resume.pth   training state after the last completed epoch

The training state is rewritten (atomically) after every epoch of a run started by
:func:`recbole_mm.quick_start.run_recbole_mm` with ``saved=True`` (``save_resume_state: false``
turns it off). It holds everything the next epoch depends on:

* the current model weights and optimiser state (not the best ones);
* the epoch counter, the early-stopping state (best validation score and result, epochs since
  the last improvement) and the training losses so far;
* every random state training draws from: torch (CPU and CUDA), numpy, Python's ``random`` and
  the training loader's own generators (shuffling, length buckets);
* the stage of a multi-stage trainer, for trainers that declare it (``resume_stage`` /
  ``restore_stage``, see :func:`check_resumable`).

Everything is plain data (tensors, numbers, strings): it is read back with the safe loader
(:func:`recbole_mm.compat.load_checkpoint`, ``weights_only=True``). Resuming restores all of it
into a freshly built run and continues with the next epoch, writing the best model into the
original run's best checkpoint file; with the same configuration, seed and device (CPU), a resumed
run ends with the same weights and results as one that was never stopped.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from recbole_mm.compat import (CheckpointError, atomic_torch_save, checkpoint_state, load_checkpoint,
                               to_primitive)

#: Marks a training-state file (and its layout version).
FORMAT = "recbole_mm.resume/1"
SUFFIX = ".resume.pth"


class ResumeError(ValueError):
    """A training state that cannot be resumed (the message names the file and the reason)."""


# ---------------------------------------------------------------------------------- file names
def state_path(model_file: str) -> str:
    """The training-state file of the run whose best checkpoint is ``model_file``."""
    model_file = str(model_file)
    if model_file.endswith(SUFFIX):
        return model_file
    root, _ = os.path.splitext(model_file)
    return root + SUFFIX


def model_path(state_file: str) -> str:
    """The best-checkpoint file beside a training-state file."""
    return str(state_file)[: -len(SUFFIX)] + ".pth"


# ---------------------------------------------------------------------------------- random states
def _generators(loader) -> dict:
    """The loader's own ``torch.Generator`` attributes (RecBole's ``generator``, the plugin's length
    buckets), by attribute name."""
    return {k: v for k, v in sorted(vars(loader).items()) if isinstance(v, torch.Generator)}


def rng_state(train_data) -> dict:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "loader": {k: g.get_state() for k, g in _generators(train_data).items()},
    }


def set_rng_state(state: dict, train_data, where: str) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    gens = _generators(train_data)
    if set(gens) != set(state["loader"]):
        raise ResumeError(f"{where}: the training loader's random generators "
                          f"{sorted(state['loader'])} do not match this run's ({sorted(gens)}); "
                          f"resume with the same configuration (trim_padding, bucket_by_length).")
    for k, g in gens.items():
        g.set_state(state["loader"][k])


# ---------------------------------------------------------------------------------- saving
def check_resumable(trainer) -> None:
    """Refuse trainers whose ``fit`` runs stages the training state cannot describe: a trainer
    that overrides ``fit`` must declare ``resume_stage()`` / ``restore_stage(stage)``.
    ``trainer`` may be a trainer or its class."""
    from recbole.trainer import Trainer

    cls = trainer if isinstance(trainer, type) else type(trainer)
    if cls.fit is Trainer.fit or hasattr(cls, "resume_stage"):
        return
    raise ResumeError(f"{cls.__name__} runs its own training schedule (it overrides fit) and does "
                      f"not save its stage (resume_stage / restore_stage): it cannot be resumed.")


def training_state(trainer, train_data, epoch: int) -> dict:
    """Everything needed to continue after ``epoch`` (see the module docstring)."""
    state = checkpoint_state(trainer, epoch)
    stage = trainer.resume_stage() if hasattr(trainer, "resume_stage") else None
    state.update({
        "format": FORMAT,
        "best_valid_result": to_primitive(trainer.best_valid_result),
        "train_loss_dict": to_primitive(dict(trainer.train_loss_dict)),
        "stage": to_primitive(stage),
        "rng": rng_state(train_data),
    })
    return state


def attach(trainer, train_data, saved: bool = True) -> None:
    """Make ``trainer`` write its training state after every epoch (see the module docstring).

    The state after epoch ``e`` is written when epoch ``e + 1`` starts (nothing else happens in
    between) and when ``fit`` returns. Trainers that cannot be resumed (:func:`check_resumable`)
    and runs without ``saved`` are left unchanged.
    """
    config = trainer.config
    if not saved or config["save_resume_state"] is False or not config["single_spec"]:
        return
    try:
        check_resumable(trainer)
    except ResumeError as exc:
        trainer.logger.info(f"no training state is saved: {exc}")
        return
    train_epoch, fit = trainer._train_epoch, trainer.fit
    trainer._resume_file = state_path(trainer.saved_model_file)
    trainer._resume_last_epoch = None

    def save():
        if trainer._resume_last_epoch is not None:
            atomic_torch_save(training_state(trainer, train_data, trainer._resume_last_epoch),
                              trainer._resume_file)

    def _train_epoch(data, epoch_idx, *args, **kwargs):
        if data is train_data:
            save()
        out = train_epoch(data, epoch_idx, *args, **kwargs)
        if data is train_data:
            trainer._resume_last_epoch = epoch_idx
        return out

    def _fit(*args, **kwargs):
        result = fit(*args, **kwargs)
        save()
        return result

    trainer._train_epoch = _train_epoch
    trainer.fit = _fit


# ---------------------------------------------------------------------------------- resuming
def read_state(path: str) -> dict:
    """Load a training state (``X.pth`` names the state ``X.resume.pth`` beside it)."""
    file = state_path(path)
    if not os.path.isfile(file):
        hint = ""
        if os.path.isfile(path) and path != file:
            hint = f" ({path} is there, but its run wrote no training state: {_why_no_state(path)})"
        raise ResumeError(f"cannot resume: training state {file} not found{hint}.")
    try:
        state = load_checkpoint(file)
    except CheckpointError as exc:
        raise ResumeError(f"cannot resume: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"cannot resume: {file} is not a recbole_mm training state "
                          f"(expected format {FORMAT!r}).")
    return state


def _check_unfinished(trainer, state: dict, file: str) -> None:
    """A finished run has nothing to resume unless ``epochs`` / ``stopping_step`` were raised
    (RecBole's ``fit`` would otherwise overwrite the best checkpoint with the last weights)."""
    done = int(state["epoch"]) + 1
    if done >= trainer.epochs:
        raise ResumeError(f"cannot resume: {file} has trained all {trainer.epochs} epochs of the "
                          f"run; pass a larger --epochs to train more.")
    stopping = trainer.stopping_step
    if stopping is not None and int(state["cur_step"]) > int(stopping):
        raise ResumeError(f"cannot resume: the run in {file} stopped early after epoch "
                          f"{done - 1} ({state['cur_step']} validations without improvement, "
                          f"stopping_step {stopping}); pass a larger --stopping_step to go on.")


def _why_no_state(model_file: str) -> str:
    """Why the run of the best checkpoint ``model_file`` left no training state."""
    from recbole.utils import get_trainer as rb_get_trainer

    from recbole_mm import registry

    try:
        saved = load_checkpoint(model_file)["config"]
        model_class = registry.get_model(saved["model"])
        cls = getattr(model_class, "trainer_class", None) or rb_get_trainer(
            model_class.type, saved["model"])
        check_resumable(cls)
    except ResumeError as exc:
        return str(exc)
    except Exception:  # an unreadable checkpoint: the generic reason below
        pass
    return ("it ran with save_resume_state: false, with saved=False, distributed (--nproc), or "
            "before training states existed")


def restore(trainer, train_data, state: dict, file: str) -> None:
    """Put the run of ``trainer`` back where ``state`` (read from ``file``) stopped."""
    check_resumable(trainer)
    saved = state["config"]
    config = trainer.config
    if (saved["model"], saved["dataset"]) != (str(config["model"]), str(config["dataset"])):
        raise ResumeError(f"cannot resume: {file} is a {saved['model']} run on "
                          f"'{saved['dataset']}', this run is {config['model']} on "
                          f"'{config['dataset']}'.")
    if hasattr(trainer, "restore_stage"):
        trainer.restore_stage(state["stage"])  # may rebuild the optimiser for its stage
    try:
        trainer.model.load_state_dict(state["state_dict"])
        trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ResumeError(f"cannot resume: {file} does not fit this run's model or optimiser "
                          f"(was the configuration changed?): {first}") from None
    trainer.model.load_other_parameter(state.get("other_parameter"))
    _check_unfinished(trainer, state, file)
    trainer.start_epoch = int(state["epoch"]) + 1
    trainer.cur_step = int(state["cur_step"])
    best = state["best_valid_score"]
    trainer.best_valid_score = float(best) if best is not None else trainer.best_valid_score
    trainer.best_valid_result = state["best_valid_result"]
    trainer.train_loss_dict = {int(k): v for k, v in (state["train_loss_dict"] or {}).items()}
    trainer.saved_model_file = model_path(state_path(file))
    if hasattr(trainer, "_resume_file"):  # go on writing the same training state
        trainer._resume_file = state_path(file)
    set_rng_state(state["rng"], train_data, file)
    trainer.logger.info(f"resumed from {file}: epoch {trainer.start_epoch} next, best valid "
                        f"score {trainer.best_valid_score}, {trainer.cur_step} epoch(s) without "
                        f"improvement; best model in {trainer.saved_model_file}")
