"""Experiment tracking: RecBole's TensorBoard writer and its Weights & Biases switch.

* **TensorBoard** - RecBole's ``Trainer`` always writes the training loss (``Loss/Train``) and the
  validation score (``Vaild_score``, RecBole's spelling) per epoch, and the run's hyper-parameters
  with its best validation score, to ``log_tensorboard/<run name>/`` under the working directory
  (RecBole names it after the process's log file, ``<model>-<dataset>-<time>-<hash>``).
  :func:`finish` closes the writer, so every event is on disk when a run returns.
* **W&B** - ``log_wandb: true`` (and ``wandb_project``, default ``recbole``): RecBole's
  ``WandbLogger`` logs ``train/*`` per epoch, ``valid/*`` per validation and the last evaluation
  as ``eval/*`` in the run summary. :func:`start` opens the W&B run itself, with the resolved
  configuration as plain data (RecBole hands W&B its ``Config`` object) and the run named
  ``<model>-<dataset>``; :func:`finish` adds the test result as ``test/*`` to the summary and
  closes the run. Only rank 0 of a distributed run logs. ``wandb`` is not a dependency: without it, a run with
  ``log_wandb: true`` stops with :class:`TrackingError` before any training.
"""
from __future__ import annotations

_OPENED = []  # the W&B runs start() opened and finish() has not closed yet


class TrackingError(ValueError):
    """A tracking switch that cannot be honoured (names the key and what is missing)."""


def start(config):
    """Open the W&B run of ``config`` when ``log_wandb`` is on; returns the ``wandb`` module or
    ``None``. Call after the logger is set up and before the trainer is built."""
    if not config["log_wandb"]:
        return None
    if not config["single_spec"] and config["local_rank"] != 0:
        config["log_wandb"] = False  # one W&B run per training run, from rank 0
        return None
    try:
        import wandb
    except ImportError:
        raise TrackingError("log_wandb is true but the 'wandb' package is not installed: "
                            "pip install wandb (then 'wandb login'), or set log_wandb: false.") from None
    if wandb.run is None:
        from recbole_mm.compat import config_to_dict

        name = f"{config['model']}-{config['dataset']}"
        _OPENED.append(wandb.init(project=config["wandb_project"] or "recbole", name=name,
                                  config=config_to_dict(config)["final"]))
    return wandb


def finish(trainer, test_result) -> None:
    """Close the trainer's TensorBoard writer; with W&B, record the test result and close the run
    this module opened (a run the caller opened is left open)."""
    writer = getattr(trainer, "tensorboard", None)
    if writer is not None:
        writer.close()
    config = trainer.config
    if not config["log_wandb"]:
        return
    import wandb

    if wandb.run is not None:
        for key, value in (test_result or {}).items():
            wandb.run.summary[f"test/{key}"] = value
        if _OPENED and wandb.run is _OPENED[-1]:
            _OPENED.pop()
            wandb.finish()
