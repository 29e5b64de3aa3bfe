"""Compatibility of RecBole 1.2.1 with current torch / numpy.

Imported (and :func:`apply` called) by ``recbole_mm/__init__.py`` so every entry point gets it.

* ``torch >= 2.6`` loads checkpoints with ``weights_only=True``. RecBole 1.2.1 pickles its whole
  ``Config`` object into every checkpoint, which such a load refuses. Instead of loading untrusted
  pickles, we change what is *saved*: :func:`checkpoint_state` stores the configuration as a plain
  dictionary of primitives, so RecBole's own ``torch.load`` of the best checkpoint (in
  ``Trainer.evaluate`` and ``Trainer.resume_checkpoint``) succeeds with ``weights_only=True``.
* ``numpy < 2`` is required by RecBole (``np.float_``); the aliases RecBole's ``Config`` installs
  (``np.long`` ...) are installed here too so that layers built before a ``Config`` work.
"""
from __future__ import annotations

import enum
import math

import numpy as np
import torch

_APPLIED = False

#: Keys set per process by distributed runs; never carried into a reloaded configuration.
DISTRIBUTED_KEYS = ("local_rank", "world_size", "ip", "port", "nproc", "offset")

#: Types that survive ``torch.load(weights_only=True)`` unchanged.
_PRIMITIVES = (str, int, float, bool, type(None))


def to_primitive(value):
    """Convert a config value to something ``torch.load(weights_only=True)`` accepts.

    Enums become their names, ``torch.device`` its string, numpy scalars Python scalars, classes
    their qualified name; containers are converted recursively. Anything else becomes ``str``.
    """
    if isinstance(value, np.generic):  # before the built-ins: np.float64 / np.str_ subclass them
        return to_primitive(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): to_primitive(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_primitive(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


def config_to_dict(config) -> dict:
    """A weights-only-loadable snapshot of a RecBole ``Config``.

    ``final`` is the complete resolved configuration (for inspection); ``sources`` holds what the
    user and the plugin's property files set (files < dict < command line), enough to rebuild the
    same ``Config`` later (see :func:`recbole_mm.quick_start.load_data_and_model`).
    """
    sources = {}
    for part in ("file_config_dict", "variable_config_dict", "cmd_config_dict"):
        sources.update(getattr(config, part, {}) or {})
    for key in DISTRIBUTED_KEYS:  # a reload is a single process unless asked again
        sources.pop(key, None)
    return {
        "model": str(config["model"]),
        "dataset": str(config["dataset"]),
        "sources": to_primitive(sources),
        "final": to_primitive(dict(config.final_config_dict)),
    }


def checkpoint_state(trainer, epoch) -> dict:
    """The checkpoint RecBole's ``Trainer._save_checkpoint`` writes, with a primitive config."""
    model = trainer.model
    other = model.other_parameter() if hasattr(model, "other_parameter") else None
    if other:
        # RecBole models list registered sub-modules here (FDSA, SASRecF: feature_embed_layer);
        # their weights are already in ``state_dict``, and a pickled module is no plain data.
        submodules = {id(m) for m in model.modules()}
        other = {k: v for k, v in other.items()
                 if not (isinstance(v, torch.nn.Module) and id(v) in submodules)}
    best = trainer.best_valid_score
    return {
        "config": config_to_dict(trainer.config),
        "epoch": int(epoch),
        "cur_step": int(trainer.cur_step),
        "best_valid_score": float(best) if best is not None else None,
        "state_dict": model.state_dict(),
        "other_parameter": other,
        "optimizer": trainer.optimizer.state_dict(),
    }


def _save_checkpoint(self, epoch, verbose=True, **kwargs):
    if not self.config["single_spec"] and self.config["local_rank"] != 0:
        return
    saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
    atomic_torch_save(checkpoint_state(self, epoch), saved_model_file)
    if verbose:
        from recbole.utils import set_color

        self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to a temporary name in the same folder, then rename (never half-written)."""
    import os

    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or not plain data (the message names the file)."""


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by the plugin; never unpickles arbitrary objects."""
    import os
    import zipfile

    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path} not found.")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"Checkpoint {path} is not a complete torch checkpoint "
                              f"({os.path.getsize(path)} bytes; truncated, or not written by "
                              f"torch.save).")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pragma: no cover - message path
        raise CheckpointError(
            f"Checkpoint {path} could not be loaded with weights_only=True ({exc}). "
            "recbole_mm only reads checkpoints it wrote itself (config stored as plain data); "
            "re-train, or convert an old RecBole checkpoint on a trusted machine."
        ) from exc


def _fix_sasrecf() -> None:
    """RecBole 1.2.1's SASRecF counts a FLOAT_SEQ field as ``dataset.num(field)`` feature vectors
    when sizing its concat layer, but its embedding layer pools each such field into *one*
    vector, so SASRecF crashes on vector-valued item features. Re-size the layer to one vector
    per selected field (what ``forward`` produces)."""
    from recbole.model.sequential_recommender.sasrecf import SASRecF
    from recbole.utils import FeatureType

    if getattr(SASRecF, "_recbole_mm_fixed", False):
        return
    original = SASRecF.__init__

    def __init__(self, config, dataset):
        original(self, config, dataset)
        if any(dataset.field2type[f] == FeatureType.FLOAT_SEQ for f in self.selected_features):
            self.num_feature_field = len(self.selected_features)
            self.concat_layer = torch.nn.Linear(
                self.hidden_size * (1 + self.num_feature_field), self.hidden_size
            )
            self._init_weights(self.concat_layer)

    SASRecF.__init__ = __init__
    SASRecF._recbole_mm_fixed = True


def _ddp_on_cpu() -> None:
    """RecBole wraps the model as ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which torch refuses for a CPU module; on the CPU ``device_ids`` must be ``None``."""
    from recbole.trainer import trainer as rb_trainer

    ddp = torch.nn.parallel.DistributedDataParallel

    def make(module, device_ids=None, **kwargs):
        on_cpu = all(p.device.type == "cpu" for p in module.parameters())
        return ddp(module, device_ids=None if on_cpu else device_ids, **kwargs)

    rb_trainer.DistributedDataParallel = make


def _no_anomaly_detection() -> None:
    """RecBole 1.2.1's ``sine.py`` calls ``torch.autograd.set_detect_anomaly(True)`` when imported
    (importing any RecBole sequential model imports it), which checks every backward op for
    NaNs and slows training of every model several times. Import it once here, then switch the
    anomaly mode off again (later imports are cached and do not re-enable it)."""
    try:
        import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's side effect once)
    except Exception:  # pragma: no cover - optional model dependencies
        pass
    torch.autograd.set_detect_anomaly(False)


def _fast_float_seq_embedding() -> None:
    """RecBole embeds a numerical float-sequence field of ``D`` values by gathering ``D`` embedding
    rows per item and pooling them: a ``[B, L, D, H]`` tensor (gigabytes for 384- or 512-d
    features). For fields whose value indices are ``1..D`` (how the plugin exposes modality
    vectors) sum/mean pooling is exactly ``x @ E[1:D+1]`` (divided by ``D`` for the mean): compute
    that instead. Other fields, and max pooling, take RecBole's own path."""
    from recbole.model.layers import ContextSeqEmbAbstractLayer

    if getattr(ContextSeqEmbAbstractLayer, "_recbole_mm_fast", False):
        return
    original = ContextSeqEmbAbstractLayer.embed_float_seq_fields

    def embed_float_seq_fields(self, float_seq_fields, type):
        if self.pooling_mode not in ("mean", "sum") or not float_seq_fields:
            return original(self, float_seq_fields, type)
        results = []
        for i, field in enumerate(float_seq_fields):
            table = self.float_seq_embedding_table[type][i]
            base, index = field[..., 0], field[..., 1]
            d = base.shape[-1]
            ar = torch.arange(1, d + 1, device=field.device, dtype=index.dtype)
            if d >= table.num_embeddings or not torch.equal(index, ar.expand_as(index)):
                return original(self, float_seq_fields, type)
            out = base @ table.weight[1:d + 1]
            if self.pooling_mode == "mean":
                out = out / (d + 1e-8)
            results.append(out.unsqueeze(-2))
        return torch.cat(results, dim=-2)

    ContextSeqEmbAbstractLayer.embed_float_seq_fields = embed_float_seq_fields
    ContextSeqEmbAbstractLayer._recbole_mm_fast = True
    ContextSeqEmbAbstractLayer._recbole_embed_float_seq_fields = original


def _race_free_ensure_dir() -> None:
    """RecBole's ``ensure_dir`` checks ``os.path.exists`` and then calls ``os.makedirs``; two
    distributed ranks starting together (``nproc > 1``) both pass the check and one of them dies
    with ``FileExistsError`` (``./log``, the checkpoint folder). Replace it, everywhere RecBole
    imported it by name, with ``os.makedirs(..., exist_ok=True)``."""
    import importlib
    import os

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    for name in ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger",
                 "recbole.trainer.trainer", "recbole.data.utils", "recbole.data.dataset.dataset"):
        module = importlib.import_module(name)
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = ensure_dir


def apply() -> None:
    """Install the compatibility patches once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    for alias, target in (("long", np.int_), ("bool", np.bool_), ("float", np.float64),
                          ("int", np.int_), ("object", np.object_), ("str", np.str_),
                          ("complex", np.complex128)):
        if alias not in np.__dict__:
            setattr(np, alias, target)
    from recbole.trainer import trainer as rb_trainer

    rb_trainer.Trainer._save_checkpoint = _save_checkpoint
    _fix_sasrecf()
    _race_free_ensure_dir()
    _ddp_on_cpu()
    _fast_float_seq_embedding()
    _no_anomaly_detection()
    _APPLIED = True
