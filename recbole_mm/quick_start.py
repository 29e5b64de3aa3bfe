"""``run_recbole_mm`` and ``load_data_and_model``: RecBole's quick start, for the plugin.

Mirrors ``recbole.quick_start`` (which imports ``ray`` and is therefore never imported here).
"""
from __future__ import annotations

import logging
import sys
from logging import getLogger

from recbole.utils import init_logger, init_seed, set_color

from recbole_mm import registry, tracking
from recbole_mm.compat import load_checkpoint
from recbole_mm.config import MMConfig
from recbole_mm.data.batching import data_preparation
from recbole_mm.evaluation import apply_eval_options
from recbole_mm.resume import ResumeError, read_state
from recbole_mm.resume import attach as attach_resume_state
from recbole_mm.resume import restore as restore_training
from recbole_mm.fast import prepare_training


def create_dataset(config):
    """The dataset object for ``config``: the model's dataset class, else RecBole's choice."""
    model_class = registry.get_model(config["model"])
    cls = registry.get_dataset_class(model_class)
    if cls is None:
        from recbole.data import create_dataset as rb_create_dataset

        return rb_create_dataset(config)
    return cls(config)


def format_results(result: dict) -> str:
    """A small aligned table of metric -> value."""
    if not result:
        return "(no results)"
    width = max(len(k) for k in result)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in result.items()]
    return "\n".join(lines)


def run_recbole_mm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                   nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0,
                   trainer_hook=None, resume=None):
    """Train and evaluate ``model`` on ``dataset``; returns RecBole's result dict.

    With ``nproc > 1`` runs torch.distributed data parallel (NCCL on GPUs, gloo on CPU) like
    RecBole's ``run`` and returns rank 0's result.

    ``trainer_hook`` (single process only): called as ``trainer_hook(config=, dataset=, model=,
    trainer=)`` after the trainer is built and before ``fit`` (used by ``recbole_mm.benchmark``
    to time epochs and record training curves).

    ``resume`` (single process only): the best checkpoint ``saved/X.pth`` (or its training state
    ``saved/X.resume.pth``) of a stopped run; the run continues after its last completed epoch
    (:mod:`recbole_mm.resume`). Model, dataset and configuration are the checkpoint's; the given
    ``config_file_list`` / ``config_dict`` / command-line settings go on top (e.g. more
    ``epochs``).
    """
    resumed = None
    if resume is not None:
        if nproc != 1 or world_size > 0:
            raise ResumeError("resume is supported for single-process runs only (nproc=1).")
        state = read_state(resume)
        model, dataset, config_dict = _resume_settings(state, model, dataset, config_dict, resume)
        resumed = (state, str(resume))
    if nproc == 1 and world_size <= 0:
        return _run_single(model, dataset, config_file_list, config_dict, saved,
                           trainer_hook=trainer_hook, resumed=resumed)
    if trainer_hook is not None:
        raise ValueError("trainer_hook is only supported for single-process runs (nproc=1).")
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update({"world_size": world_size, "ip": ip, "port": port, "nproc": nproc,
                        "offset": group_offset})
    mp.spawn(_run_rank, args=(model, dataset, config_file_list, config_dict, saved, queue),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def _resume_settings(state, model, dataset, config_dict, path):
    """Model, dataset and settings of the run saved in ``state`` (given ones must agree)."""
    saved = state["config"]
    for what, given in (("model", model), ("dataset", dataset)):
        if given is not None and str(given) != saved[what]:
            raise ResumeError(f"cannot resume: {path} is a {saved['model']} run on "
                              f"'{saved['dataset']}', but {what} '{given}' was given.")
    settings = dict(saved["sources"])
    settings.update(config_dict or {})
    return saved["model"], saved["dataset"], settings


def _run_rank(rank, model, dataset, config_file_list, config_dict, saved, queue):
    config_dict = dict(config_dict)
    config_dict["local_rank"] = rank
    _run_single(model, dataset, config_file_list, config_dict, saved, queue)


def _run_single(model, dataset, config_file_list, config_dict, saved, queue=None, trainer_hook=None,
                resumed=None):
    config = MMConfig(model=model, dataset=dataset, config_file_list=config_file_list,
                      config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    train_data, valid_data, test_data = apply_eval_options(config, train_data, valid_data, test_data)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model_class = registry.get_model(config["model"])
    model = model_class(config, train_data._dataset).to(config["device"])
    logger.info(model)

    prepare_training(config, model)
    tracking.start(config)
    trainer = registry.get_trainer(model_class, config)(config, model)
    distributed = not config["single_spec"]
    if distributed:
        # every rank names the checkpoint from its own clock; only rank 0 writes it
        import torch.distributed as dist

        name = [getattr(trainer, "saved_model_file", None)]
        dist.broadcast_object_list(name, src=0)
        trainer.saved_model_file = name[0]
    attach_resume_state(trainer, train_data, saved)
    if resumed is not None:
        restore_training(trainer, train_data, *resumed)
    if trainer_hook is not None:
        trainer_hook(config=config, dataset=data, model=model, trainer=trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    if distributed:
        dist.barrier()  # rank 0 has finished writing the best checkpoint
    test_result = trainer.evaluate(test_data, load_best_model=saved,
                                   show_progress=config["show_progress"])
    tracking.finish(trainer, test_result)

    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    if config["local_rank"] == 0:
        logger.info(set_color("test result table", "yellow") + "\n" + format_results(test_result))
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": getattr(trainer, "saved_model_file", None),
    }
    if not config["single_spec"]:
        import torch.distributed as dist

        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put({k: (dict(v) if isinstance(v, dict) else v) for k, v in result.items()})
    return result


def load_data_and_model(model_file, config_dict=None):
    """Rebuild config, data, model (best weights) and loaders from a plugin checkpoint.

    Returns ``(config, model, dataset, train_data, valid_data, test_data)`` as RecBole's does.
    The checkpoint is read with ``weights_only=True`` (no arbitrary unpickling).
    """
    config, checkpoint = checkpoint_config(model_file, config_dict)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    train_data, valid_data, test_data = apply_eval_options(config, train_data, valid_data, test_data)
    model = restore_model(config, checkpoint, train_data._dataset, model_file)
    return config, model, dataset, train_data, valid_data, test_data


def checkpoint_config(model_file, config_dict=None):
    """``(config, checkpoint)``: the configuration a plugin checkpoint was trained with (rebuilt
    from its ``sources``, never unpickled), with ``config_dict`` on top; seeds and logging set."""
    checkpoint = load_checkpoint(model_file)
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or "sources" not in saved or "state_dict" not in checkpoint:
        raise ValueError(f"{model_file} was not written by recbole_mm (no plain-data config).")
    overrides = dict(saved["sources"])
    overrides.update(config_dict or {})
    config = MMConfig(model=saved["model"], dataset=saved["dataset"], config_dict=overrides)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logging.getLogger().info(config)
    return config, checkpoint


def restore_model(config, checkpoint, train_dataset, model_file):
    """The checkpoint's model, built for ``train_dataset`` (the training split) with its weights.

    A checkpoint whose tensors do not fit the rebuilt model (another dataset, changed data or
    settings) stops with one line naming the file and the first tensor that differs."""
    init_seed(config["seed"], config["reproducibility"])
    model = registry.get_model(config["model"])(config, train_dataset).to(config["device"])
    own = model.state_dict()
    state = checkpoint["state_dict"]
    for key in sorted(set(own) | set(state)):
        if key not in own or key not in state:
            where = "the checkpoint lacks" if key not in state else "the model has no"
            raise ValueError(f"{model_file} does not fit {config['model']} as configured: {where} "
                             f"tensor '{key}' (another model or changed settings?).")
        if tuple(own[key].shape) != tuple(state[key].shape):
            raise ValueError(
                f"{model_file} does not fit dataset '{config['dataset']}' as it is now (data_path "
                f"{config['data_path']}): tensor '{key}' has shape {tuple(state[key].shape)} in "
                f"the checkpoint, {tuple(own[key].shape)} here ({train_dataset.user_num} users, "
                f"{train_dataset.item_num} items incl. padding); the data changed since training "
                f"or the checkpoint belongs to another dataset.")
    model.load_state_dict(state)
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return model
