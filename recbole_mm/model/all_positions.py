"""All-position training (``train_all_positions: true``): next-item loss at every position.

RecBole trains a sequential model on one row per prefix (RecBole's prefix augmentation: a user
with ``n`` training items gives ``n - 1`` rows, each predicting its last item). For a model whose
output at position ``t`` depends only on the items up to ``t`` (a causal encoder), one row per
user with the loss at every position covers the same (prefix, target) pairs with one encoder pass
instead of ``n - 1``: the same objective, batched differently
(``test_all_position_loss_equals_prefix_losses``). Rows are chosen by
:func:`recbole_mm.data.batching.window_rows`.

Which models support it:

* RecBole's causal built-ins, through :data:`ADAPTERS`: forward hooks on the model's own
  sequence modules read the states of every position during its own ``forward`` (nothing of
  RecBole's code is changed or copied): ``SASRec``, ``SASRecF`` (last transformer layer),
  ``GRU4Rec`` (after its dense layer), ``FDSA`` (both transformer streams, then its own
  concat layer, LayerNorm and dropout).
* a model class that defines ``position_states(item_seq, item_seq_len) -> [B, L, d]`` and
  scores items by an inner product with ``item_embedding.weight``.
* models that declare ``all_positions = False`` with a reason (bidirectional encoders such as
  BERT4Rec, interest clustering over the whole history, multi-stream losses) are refused with an
  error naming the key and the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recbole_mm.model.layers import next_item_targets

#: RecBole model class name -> the sub-modules whose outputs are the per-position states
ADAPTERS = {
    "SASRec": ("trm_encoder",),
    "SASRecF": ("trm_encoder",),
    "GRU4Rec": ("dense",),
    "FDSA": ("item_trm_encoder", "feature_trm_encoder"),
}

#: why a model is not supported (shown in the error)
UNSUPPORTED = {
    "BERT4Rec": "bidirectional encoder trained by masked-item prediction: a position's output "
                "depends on later items",
}


def support(model_class) -> tuple[bool, str]:
    """``(supported, reason)`` for ``model_class``."""
    name = model_class.__name__
    declared = getattr(model_class, "all_positions", None)
    if declared is False:
        return False, getattr(model_class, "all_positions_reason", "the model declares all_positions = False")
    if callable(getattr(model_class, "position_states", None)):
        return True, ""
    if name in ADAPTERS and model_class.__module__.startswith("recbole.model."):
        return True, ""
    if name in UNSUPPORTED:
        return False, UNSUPPORTED[name]
    return False, ("it has neither position_states() nor an adapter in "
                   "recbole_mm.model.all_positions.ADAPTERS")


def check_support(config) -> None:
    """Raise ``ValueError`` naming ``train_all_positions`` and the model when unsupported."""
    from recbole_mm import registry

    model_class = registry.get_model(config["model"])
    ok, why = support(model_class)
    if not ok:
        raise ValueError(f"train_all_positions: true is not supported by {model_class.__name__}: "
                         f"{why}. Set train_all_positions: false for this model.")
    if (config["loss_type"] or "CE") != "CE":
        raise ValueError(f"train_all_positions: true needs loss_type: CE ({model_class.__name__} "
                         f"has loss_type: {config['loss_type']}).")


def position_states(model, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
    """The model's sequence states at every position, ``[B, L, d]``."""
    own = getattr(model, "position_states", None)
    if callable(own):
        return own(item_seq, item_seq_len)
    names = ADAPTERS[type(model).__name__]
    captured = {}

    def hook(name):
        def store(module, inputs, output):
            captured[name] = output[-1] if isinstance(output, (list, tuple)) else output
        return store

    handles = [getattr(model, n).register_forward_hook(hook(n)) for n in names]
    try:
        model.forward(item_seq, item_seq_len)
    finally:
        for h in handles:
            h.remove()
    if type(model).__name__ == "FDSA":  # FDSA fuses the two streams after gathering: do it per position
        both = torch.cat([captured["item_trm_encoder"], captured["feature_trm_encoder"]], dim=-1)
        return model.dropout(model.LayerNorm(model.concat_layer(both)))
    return captured[names[0]]


def all_position_loss(model, interaction, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over all items at every real position of every row (mean over positions,
    or ``'sum'``); the target at position ``t`` is the next item, the row's target at the end."""
    item_seq = interaction[model.ITEM_SEQ]
    item_seq_len = interaction[model.ITEM_SEQ_LEN]
    targets, valid = next_item_targets(item_seq, item_seq_len, interaction[model.POS_ITEM_ID])
    states = position_states(model, item_seq, item_seq_len)[valid]  # [P, d]
    logits = states @ model.item_embedding.weight.t()
    return F.cross_entropy(logits, targets[valid], reduction=reduction)
