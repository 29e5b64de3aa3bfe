"""Training-speed settings applied to a built model and its configuration (:func:`prepare_training`).

* ``fast_dropout`` (default true, only with ``trim_padding``): every ``torch.nn.Dropout`` module of
  the model (RecBole's built-ins included) is replaced by :class:`recbole_mm.model.layers.Dropout`,
  the same inverted dropout whose keep mask comes from ``torch.rand`` on the CPU (torch's CPU
  ``bernoulli_`` was 17% of a trimmed SASRec epoch). Same distribution, another random stream;
  ``trim_padding: false`` keeps RecBole's modules, so that path stays RecBole's exactly.
* ``length_groups`` (default true, only with ``trim_padding``): RecBole's BERT4Rec (CE loss)
  trains with :func:`grouped_masked_item_loss`: the rows of each (random) batch are encoded in
  groups of similar length and the logits are computed for the masked positions only. Its
  batches cannot be grouped by length (:data:`recbole_mm.data.batching.NO_BUCKETING`), so a batch
  is as wide as its longest history and RecBole also scores all ``mask_ratio * L`` mask slots of
  every row, most of them empty. Same batch, same loss (the mean over the real masks), computed
  without either waste.
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
    """Apply ``fast_dropout``, ``length_groups`` and ``mixed_precision`` (call before the trainer
    is built)."""
    if config["trim_padding"] is not False and config["fast_dropout"] is not False:
        use_fast_dropout(model)
    if config["trim_padding"] is not False and config["length_groups"] is not False:
        use_length_groups(model)
    apply_mixed_precision(config)


def use_length_groups(model) -> bool:
    """Give RecBole's BERT4Rec (CE loss) :func:`grouped_masked_item_loss` as its training loss;
    returns whether the model is one (other models are left as they are)."""
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    if type(model) is not BERT4Rec or model.loss_type != "CE":
        return False
    model.calculate_loss = lambda interaction: grouped_masked_item_loss(model, interaction)
    model.length_grouped_loss = True  # read by recbole_mm.speed (positions it computes)
    return True


def grouped_masked_item_loss(model, interaction) -> torch.Tensor:
    """RecBole's BERT4Rec CE loss (the mean cross-entropy over the batch's real masks, i.e.
    slots with a mask index > 0) with its rows encoded in length groups
    (:func:`recbole_mm.data.batching.length_groups`) and only the real masks scored.

    Exact: the encoder is bidirectional with padding keys masked out (RecBole's additive -10000,
    zero after the softmax in float32) and rows are right-padded, so a row's outputs at its real
    positions do not depend on the batch's width; and the positions RecBole scores but weighs 0
    add nothing. A batch without a real mask gives NaN, as RecBole's 0/0 does."""
    from recbole_mm.data.batching import length_groups

    seq = interaction[model.MASK_ITEM_SEQ]
    index = interaction[model.MASK_INDEX]
    targets = interaction[model.POS_ITEMS]
    outputs, labels = [], []
    for rows, width in length_groups((seq > 0).sum(dim=1)):
        rows = rows.to(seq.device)
        group_index = index[rows]
        r, slot = torch.nonzero(group_index > 0, as_tuple=True)
        if len(r) == 0:
            continue
        hidden = model.forward(seq[rows, :width])               # [g, width, H]
        outputs.append(hidden[r, group_index[r, slot]])          # [masks in group, H]
        labels.append(targets[rows][r, slot])
    if not outputs:
        return model.output_bias.sum() * float("nan")
    hidden, labels = torch.cat(outputs), torch.cat(labels)
    logits = hidden @ model.item_embedding.weight[:model.n_items].t() + model.output_bias
    return nn.functional.cross_entropy(logits, labels)


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
