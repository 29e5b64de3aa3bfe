"""Resuming a stopped training run (``--resume=saved/X.pth``).

RecBole writes a checkpoint only when the validation score improves (the *best* model), so its
``Trainer.resume_checkpoint`` restarts from the best epoch, not from where training stopped. The
plugin keeps a second file for that, the **training state**, beside the best checkpoint::

    saved/SASRec-<time>.pth          best model (RecBole's; what evaluation and recommend read)
    saved/SASRec-<time>.resume.pth   training state after the last completed epoch

The training state is rewritten (atomically) after every epoch of a run started by
:func:`recbole_mm.quick_start.run_recbole_mm` with ``saved=True`` (``save_resume_state: false``
turns it off). It holds everything the next epoch depends on:

* the current model weights and optimiser state (not the best ones), and the gradients the
  optimiser never clears: those of trainable parameters it does not hold, which accumulate and
  count in gradient clipping (DeCoRec's ``compat_frozen_embeddings``);
* the epoch counter, the early-stopping state (best validation score and result, epochs since
  the last improvement) and the training losses so far;
* every random state training draws from: torch (CPU and CUDA), numpy, Python's ``random`` and
  the training loader's own generators (shuffling, length buckets);
* the stage of a trainer whose ``fit`` runs its own schedule (``resume_stage`` /
  ``restore_stage``, see :func:`check_resumable` and :class:`StagedTrainer`): DeCoRec's phase,
  SICSRec's step (with the epochs run per stage and the results of the stages done), MISSRec's
  ``train_stage``.

Everything is plain data (tensors, numbers, strings): it is read back with the safe loader
(:func:`recbole_mm.compat.load_checkpoint`, ``weights_only=True``). Resuming restores all of it
into a freshly built run and continues with the next epoch, writing the best model into the
original run's best checkpoint file; with the same configuration, seed and device (CPU), a resumed
run ends with the same weights and results as one that was never stopped.

Multi-stage trainers reset the optimiser, early stopping and epoch counter at the start of every
stage, so there the state is put back when ``fit`` reaches the saved stage (the stages before it
are not run again; see :class:`StagedTrainer`). Between two stages the state written before the
new stage's first epoch describes that stage with no epoch done (``epoch`` -1): the previous
stage's best weights loaded, tables re-initialised, a fresh optimiser and early stopping.
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


def _stage(trainer):
    """The trainer's stage (plain data, a dict with its ``name``), ``None`` for one-stage trainers."""
    return trainer.resume_stage() if hasattr(trainer, "resume_stage") else None


def _loose_grads(trainer) -> dict:
    """Gradients of parameters outside the optimiser, by name: ``zero_grad`` leaves them alone."""
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    return {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters()
            if p.grad is not None and id(p) not in held}


def training_state(trainer, train_data, epoch: int) -> dict:
    """Everything needed to continue after ``epoch`` (see the module docstring)."""
    state = checkpoint_state(trainer, epoch)
    stage = _stage(trainer)
    state.update({
        "format": FORMAT,
        "loose_grads": _loose_grads(trainer),
        "best_valid_result": to_primitive(trainer.best_valid_result),
        "train_loss_dict": to_primitive(dict(trainer.train_loss_dict)),
        "stage": to_primitive(stage),
        "rng": rng_state(train_data),
    })
    return state


def attach(trainer, train_data, saved: bool = True) -> None:
    """Make ``trainer`` write its training state after every epoch (see the module docstring).

    The state after epoch ``e`` is written when epoch ``e + 1`` starts (nothing else happens in
    between) and when ``fit`` returns; when the epoch starting belongs to a later stage of a
    multi-stage trainer, the state is that stage's start (``epoch`` -1). Trainers that cannot be
    resumed (:func:`check_resumable`) and runs without ``saved`` are left unchanged.
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
    trainer._resume_last = None  # (stage name, epoch) of the last completed epoch
    trainer.logger.info(f"training state after every epoch: {trainer._resume_file}")

    def save():
        if trainer._resume_last is None:
            return
        stage = _stage(trainer)
        name, epoch = trainer._resume_last
        if (stage or {}).get("name") != name:
            epoch = -1  # a new stage has been set up, none of its epochs done
        atomic_torch_save(training_state(trainer, train_data, epoch), trainer._resume_file)

    def _train_epoch(data, epoch_idx, *args, **kwargs):
        if data is train_data:
            save()
        out = train_epoch(data, epoch_idx, *args, **kwargs)
        if data is train_data:
            trainer._resume_last = ((_stage(trainer) or {}).get("name"), epoch_idx)
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
        of = f"stage {state['stage']['name']!r}" if state["stage"] else "the run"
        raise ResumeError(f"cannot resume: {file} has trained all {trainer.epochs} epochs of {of}; "
                          f"pass a larger --epochs to train more.")
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
    """Put the run of ``trainer`` back where ``state`` (read from ``file``) stopped.

    One-stage trainers are restored at once; a trainer with stages (``restore_stage``) is given
    the state and puts it back when its ``fit`` reaches the saved stage (:class:`StagedTrainer`)."""
    check_resumable(trainer)
    saved = state["config"]
    config = trainer.config
    if (saved["model"], saved["dataset"]) != (str(config["model"]), str(config["dataset"])):
        raise ResumeError(f"cannot resume: {file} is a {saved['model']} run on "
                          f"'{saved['dataset']}', this run is {config['model']} on "
                          f"'{config['dataset']}'.")
    trainer.saved_model_file = model_path(state_path(file))
    # Where the run goes on, known here although a multi-stage fit puts the state back only when
    # it reaches the stage (and resets the stage's epoch counter first): (stage name or None,
    # next epoch, segment = how many earlier stages trained epochs, as progress curves count).
    stage = state["stage"] or {}
    earlier = [v for k, v in (stage.get("stage_epochs") or {}).items() if k != stage.get("name")]
    trainer.resumed_at = (stage.get("name"), int(state["epoch"]) + 1,
                          sum(1 for v in earlier if int(v.get("run", 0)) > 0))
    if hasattr(trainer, "_resume_file"):  # go on writing the same training state
        trainer._resume_file = state_path(file)

    def apply():
        try:
            trainer.model.load_state_dict(state["state_dict"])
            trainer.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ResumeError(f"cannot resume: {file} does not fit this run's model or optimiser "
                              f"(was the configuration changed?): {first}") from None
        trainer.model.load_other_parameter(state.get("other_parameter"))
        params = dict(trainer.model.named_parameters())
        for name, grad in (state.get("loose_grads") or {}).items():
            params[name].grad = grad.to(params[name].device)
        _check_unfinished(trainer, state, file)
        trainer.start_epoch = int(state["epoch"]) + 1
        trainer.cur_step = int(state["cur_step"])
        best = state["best_valid_score"]
        trainer.best_valid_score = float(best) if best is not None else trainer.best_valid_score
        trainer.best_valid_result = state["best_valid_result"]
        trainer.train_loss_dict = {int(k): v for k, v in (state["train_loss_dict"] or {}).items()}
        set_rng_state(state["rng"], train_data, file)
        stage = f" in {state['stage']['name']}" if state["stage"] else ""
        trainer.logger.info(f"resumed from {file}: epoch {trainer.start_epoch}{stage} next, best "
                            f"valid score {trainer.best_valid_score}, {trainer.cur_step} epoch(s) "
                            f"without improvement; best model in {trainer.saved_model_file}")

    if not hasattr(trainer, "restore_stage"):
        apply()
        return
    try:
        trainer.restore_stage(state["stage"], apply)
    except ResumeError as exc:
        raise ResumeError(f"cannot resume {file}: {exc}") from None


# ---------------------------------------------------------------------------------- stages
class StagedTrainer:
    """Stages of a trainer whose ``fit`` runs several (DeCoRec's phases, SICSRec's steps), and
    resuming inside them. A mixin, first among the trainer's bases.

    Such a ``fit`` sets every stage up afresh (model switch and ``requires_grad``, optimiser,
    early stopping, epoch counter, checkpoint file), so a training state can only be put back
    once ``fit`` has set up the saved stage. The trainer has ``stage_budgets()`` (stage name ->
    epoch budget, in order) and ``stage_results`` (per stage done: ``(best valid score, best
    valid result)``); :meth:`_begin_stage` keeps ``stage_epochs`` (per stage begun in this
    ``fit``, in order: ``{"budget": n, "run": epochs trained}``). Its ``fit``:

    * starts with the stage :meth:`resume_from` names (the first when ``None``), skipping the ones
      before it: their epochs and results come from the state, and what only the passage between
      stages does (loading the previous stage's best weights, re-initialising tables) is left out,
      the weights coming from the state;
    * calls :meth:`continue_stage` right after setting up each stage it trains, which puts the
      state back when it is that stage's (weights, optimiser, epoch, early stopping, random
      states, ``stage_epochs``, ``stage_results``) and does nothing otherwise.
    """

    _stage = None  # the stage whose epochs _train_epoch counts
    _resume_pending = None  # (stage, apply) from restore_stage, until fit reaches the stage

    def _begin_stage(self, name: str, epochs: int) -> None:
        """Start stage ``name`` with a budget of ``epochs``: counted in ``stage_epochs``, RecBole's
        epoch counter bound to it, and no gradient left over from the last stage (a parameter
        frozen now would otherwise keep one, which gradient clipping counts)."""
        self._stage = name
        self.stage_epochs[name] = {"budget": int(epochs), "run": 0}
        self.epochs = int(epochs)
        self.eval_step = min(self.config["eval_step"], self.epochs)
        self.model.zero_grad(set_to_none=True)

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        if self._stage is not None:
            self.stage_epochs[self._stage]["run"] += 1
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)

    def resume_stage(self) -> dict:
        """The stage under way, for the training state."""
        return {"name": next(reversed(self.stage_epochs), None),
                "stage_epochs": self.stage_epochs,
                "stage_results": {k: list(v) for k, v in self.stage_results.items()}}

    def restore_stage(self, stage, apply) -> None:
        """Keep ``apply`` (puts the state back) until ``fit`` has set up ``stage``."""
        names = list(self.stage_budgets())
        name = stage.get("name") if isinstance(stage, dict) else None
        if name not in names:
            raise ResumeError(f"its {type(self).__name__} run stopped in stage {name!r}, but this "
                              f"run's stages are {names} (was the schedule changed?).")
        self._resume_pending = (stage, apply)

    def resume_from(self):
        """The stage ``fit`` resumes in, ``None`` when it starts from the beginning."""
        return self._resume_pending[0]["name"] if self._resume_pending else None

    def continue_stage(self) -> None:
        """Called by ``fit`` once a stage is set up: restore the state if it is that stage's."""
        if self._resume_pending is None:
            return
        (stage, apply), self._resume_pending = self._resume_pending, None
        name = stage["name"]
        if name != next(reversed(self.stage_epochs), None):
            raise RuntimeError(f"{type(self).__name__}.fit set up another stage than the saved "
                               f"{name!r} before calling continue_stage.")
        budget = self.stage_epochs[name]["budget"]  # this run's (e.g. after a larger --epochs)
        self.stage_epochs = {k: {"budget": int(v["budget"]), "run": int(v["run"])}
                             for k, v in stage["stage_epochs"].items()}
        self.stage_epochs[name]["budget"] = budget
        self.stage_results = {k: (float(score), result)
                              for k, (score, result) in stage["stage_results"].items()}
        apply()
