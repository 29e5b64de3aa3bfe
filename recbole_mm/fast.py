"""Training-speed settings applied to a built model and its configuration (:func:`prepare_training`).

* ``fast_dropout`` (default true, only with ``trim_padding``): every ``torch.nn.Dropout`` module of
  the model (RecBole's built-ins included) is replaced by :class:`recbole_mm.model.layers.Dropout`,
  the same inverted dropout whose keep mask comes from ``torch.rand`` on the CPU (torch's CPU
  ``bernoulli_`` was 17% of a trimmed SASRec epoch). Same distribution, another random stream;
  ``trim_padding: false`` keeps RecBole's modules, so that path stays RecBole's exactly.
* ``mixed_precision``: bf16 autocast for training, on the CPU and on CUDA.

RecBole's ``Trainer`` already wraps every training step in ``torch.autocast(enable_amp)``; its
default dtype is bfloat16 on the CPU but float16 on CUDA (which then needs a gradient scaler).
``mixed_precision: bf16`` turns autocast on with bfloat16 on both devices and leaves the scaler
off (bf16 keeps float32's exponent range). Evaluation stays in float32. ``~`` (default) or
``fp32``: RecBole's own ``enable_amp`` / ``enable_scaler`` settings are left as they are.
"""
from __future__ import annotations

import torch
from torch import nn


def prepare_training(config, model) -> None:
    """Apply ``fast_dropout`` and ``mixed_precision`` (call before the trainer is built)."""
    if config["trim_padding"] is not False and config["fast_dropout"] is not False:
        use_fast_dropout(model)
    apply_mixed_precision(config)


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` sub-module of ``model`` by the plugin's ``Dropout``
    (same ``p``, no parameters); returns how many were replaced."""
    from recbole_mm.model.layers import Dropout

    swaps = [(parent, name, child) for parent in model.modules()
             for name, child in parent.named_children() if type(child) is nn.Dropout]
    for parent, name, child in swaps:
        setattr(parent, name, Dropout(child.p, inplace=child.inplace))
    return len(swaps)


def apply_mixed_precision(config) -> None:
    """Translate ``config['mixed_precision']`` into RecBole's switches (before the trainer is
    built); raises ``ValueError`` naming the key for an unknown value."""
    value = config["mixed_precision"]
    if isinstance(value, str):
        value = value.lower()
    if value in (None, False, "none", "fp32", "float32"):
        return
    if value not in ("bf16", "bfloat16"):
        raise ValueError(f"mixed_precision: expected one of ~, fp32, bf16; got {config['mixed_precision']!r}.")
    config["enable_amp"] = True
    config["enable_scaler"] = False
    if torch.device(config["device"]).type == "cuda":
        torch.set_autocast_dtype("cuda", torch.bfloat16)
