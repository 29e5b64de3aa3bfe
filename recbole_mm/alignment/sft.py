"""Supervised fine-tuning of the content encoders (spec §2.2, §2.3.3) and feature extraction.

``L_SFT = L_t2t + L_i2i + L_t2i`` over pairs ``(p_i, q_i)`` (target, LLM-selected item):

* ``sft_loss_style: official``: t2t / i2i logits of anchor ``p_i`` against
  ``[all q ; all p]`` (N x 2N, the anchor itself in the denominator), t2i symmetric CLIP loss on
  the targets; ``paper``: Eq. 2 / 3 one-way (N x N against the ``q``'s; text -> image).
* ``sft_tasks`` subset of {t2t, i2i, t2i} (Fig. 2 ablation).

Modes (``sft_mode``): ``encoder`` fine-tunes a text encoder (BERT-like, ``pooler_output``) and an
image classifier (Swin / ViT / ResNet, class logits) through ``transformers``: only the last
encoder block + pooler / classifier train (everything else frozen), projection heads
(in -> 128 -> 64) stay at their random init unless ``train_heads``; SGD. Extraction afterwards:
text = the [CLS] hidden state of the last layer, image = the logits. ``feature_head`` learns a
residual MLP per modality over frozen pre-extracted features and exports the transformed
features (dims unchanged). ``none`` keeps the features as they are.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)
TASKS = ("t2t", "i2i", "t2i")


class ProjectionHead(nn.Module):
    """``Linear(in, 128) -> ReLU -> Linear(128, 64)`` (official SFT head)."""

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x):
        return self.net(x)


def _pair_loss(a, b, temperature, style):
    n = a.shape[0]
    labels = torch.arange(n, device=a.device)
    keys = torch.cat([b, a], 0) if style == "official" else b
    return F.cross_entropy(a @ keys.t() / temperature, labels)


def sft_loss(t_p=None, t_q=None, g_p=None, g_q=None, temperature: float = 0.05,
             tasks: Sequence[str] = TASKS, style: str = "official") -> torch.Tensor:
    """``L_SFT`` for a batch: ``t_*`` text vectors, ``g_*`` image vectors of targets ``p`` and
    selected items ``q`` (rows aligned). Tasks whose inputs are ``None`` are skipped."""
    if style not in ("official", "paper"):
        raise ValueError(f"sft_loss_style must be official or paper, got '{style}'.")
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"sft_tasks may hold {TASKS}; got {bad}.")
    total, used = 0.0, 0
    if "t2t" in tasks and t_p is not None:
        total, used = total + _pair_loss(t_p, t_q, temperature, style), used + 1
    if "i2i" in tasks and g_p is not None:
        total, used = total + _pair_loss(g_p, g_q, temperature, style), used + 1
    if "t2i" in tasks and t_p is not None and g_p is not None:
        labels = torch.arange(t_p.shape[0], device=t_p.device)
        logits = t_p @ g_p.t() / temperature
        loss = F.cross_entropy(logits, labels)
        if style == "official":
            loss = loss + F.cross_entropy(logits.t(), labels)
        total, used = total + loss, used + 1
    if not used:
        raise ValueError("sft_loss: no task has its inputs (give text and/or image vectors).")
    return total


# ---------------------------------------------------------------------- encoders
def _last_block(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", model)
    for holder in (getattr(base, "encoder", None), base):  # BERT/Swin: encoder.layer(s); ViT (tf 5): layers
        for attr in ("layer", "layers", "stages", "block"):
            blocks = getattr(holder, attr, None) if holder is not None else None
            if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks):
                return blocks[-1]
    raise ValueError(f"cannot find the last encoder block of {type(model).__name__}")


def trainable_parts(model: nn.Module) -> list:
    """The designated trainable modules: the last encoder block and the pooler / classifier."""
    parts = [_last_block(model)]
    for attr in ("classifier", "pooler"):
        mod = getattr(model, attr, None)
        if mod is None:
            mod = getattr(getattr(model, "base_model", model), attr, None)
        if isinstance(mod, nn.Module):
            parts.append(mod)
    return parts


def set_trainable(model: nn.Module) -> list:
    """Freeze ``model`` except :func:`trainable_parts`; returns the trainable parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for part in trainable_parts(model):
        for p in part.parameters():
            if not p.requires_grad:
                p.requires_grad_(True)
                params.append(p)
    return params


def text_vector(model, batch, kind: str = "pooler") -> torch.Tensor:
    """``pooler`` (SFT, official) or ``cls`` (extraction: last-layer [CLS] hidden state)."""
    out = model(**batch)
    if kind == "pooler" and getattr(out, "pooler_output", None) is not None:
        return out.pooler_output
    return out.last_hidden_state[:, 0]


def image_vector(model, pixel_values) -> torch.Tensor:
    """Class logits of an image classifier (1000-d for ImageNet-1k heads)."""
    return model(pixel_values=pixel_values).logits


class EncoderSFT(nn.Module):
    """Text + image encoders with projection heads for ``L_SFT``."""

    def __init__(self, text_model=None, image_model=None, proj_hidden: int = 128, proj_dim: int = 64):
        super().__init__()
        self.text_model, self.image_model = text_model, image_model
        if text_model is not None:
            self.text_head = ProjectionHead(text_model.config.hidden_size, proj_hidden, proj_dim)
        if image_model is not None:
            self.image_head = ProjectionHead(image_model.config.num_labels, proj_hidden, proj_dim)

    def trainable_parameters(self, train_heads: bool = False) -> list:
        params = []
        for m in (self.text_model, self.image_model):
            if m is not None:
                params += set_trainable(m)
        for name in ("text_head", "image_head"):
            head = getattr(self, name, None)
            if head is not None:
                for p in head.parameters():
                    p.requires_grad_(train_heads)
                    if train_heads:
                        params.append(p)
        return params

    def text(self, batch):
        return self.text_head(text_vector(self.text_model, batch, "pooler"))

    def image(self, pixel_values):
        return self.image_head(image_vector(self.image_model, pixel_values))


def train_on_pairs(pairs, loss_of: Callable, opt, epochs: int, batch_size: int, seed: int) -> list:
    """The SFT loop both modes share: each epoch shuffles ``pairs`` (``[(target, similar), ...]``
    item ids) with a generator seeded by ``seed``, cuts them into batches of ``batch_size`` (a
    last batch of one pair is skipped: the in-batch contrast needs two), and takes one ``opt``
    step on ``loss_of(target_ids, similar_ids)`` per batch. Returns the mean loss of each epoch."""
    p_ids = torch.tensor([int(p[0]) for p in pairs])
    q_ids = torch.tensor([int(p[1]) for p in pairs])
    gen = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=gen)
        losses = []
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:
                continue
            loss = loss_of(p_ids[idx], q_ids[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append(float(np.mean(losses)) if losses else float("nan"))
        logger.info(f"SFT epoch {len(history)}: L_SFT {history[-1]:.4f}")
    return history


def run_encoder_sft(sft: EncoderSFT, pairs, tokenize: Optional[Callable] = None,
                    pixels: Optional[Callable] = None, epochs: int = 10, batch_size: int = 128,
                    lr: float = 1e-5, temperature: float = 0.05, tasks=TASKS, style: str = "official",
                    train_heads: bool = False, seed: int = 2024, device: str = "cpu") -> list:
    """Fine-tune on ``pairs`` (``[(target, similar), ...]`` item ids). ``tokenize(ids) -> batch``
    of tokenizer tensors, ``pixels(ids) -> [n, 3, H, W]``. SGD (no momentum), shuffled batches.
    Returns the mean loss of each epoch."""
    params = sft.trainable_parameters(train_heads)
    opt = torch.optim.SGD(params, lr=lr)
    sft.to(device).train()

    def loss_of(p_ids, q_ids):
        p, q = p_ids.tolist(), q_ids.tolist()
        t_p = t_q = g_p = g_q = None
        if sft.text_model is not None and tokenize is not None:
            t_p = sft.text({k: v.to(device) for k, v in tokenize(p).items()})
            t_q = sft.text({k: v.to(device) for k, v in tokenize(q).items()})
        if sft.image_model is not None and pixels is not None:
            g_p, g_q = sft.image(pixels(p).to(device)), sft.image(pixels(q).to(device))
        return sft_loss(t_p, t_q, g_p, g_q, temperature, tasks, style)

    return train_on_pairs(pairs, loss_of, opt, epochs, batch_size, seed)


@torch.no_grad()
def extract_text_features(model, tokenizer, texts: Sequence[str], max_length: int = 256,
                          batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Last-layer [CLS] hidden state of every text (official extraction)."""
    model.to(device).eval()
    out = []
    for s in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        out.append(text_vector(model, {k: v.to(device) for k, v in batch.items()}, "cls").float().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def extract_image_features(model, pixels: Callable, ids: Sequence[int], batch_size: int = 64,
                           device: str = "cpu") -> np.ndarray:
    """Class logits of every item's image (``pixels(ids) -> [n, 3, H, W]``)."""
    model.to(device).eval()
    out = []
    for s in range(0, len(ids), batch_size):
        out.append(image_vector(model, pixels(list(ids[s:s + batch_size])).to(device)).float().cpu())
    return torch.cat(out).numpy()


def load_pretrained_encoders(text_encoder: Optional[str] = "bert-base-cased",
                             image_encoder: Optional[str] = "microsoft/swin-base-patch4-window7-224"):
    """``(text_model, tokenizer, image_model, image_processor)`` via ``from_pretrained`` (a hub
    name or a local folder). Either side may be ``None``."""
    from transformers import (AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              AutoTokenizer)

    text_model = tokenizer = image_model = processor = None
    if text_encoder:
        tokenizer = AutoTokenizer.from_pretrained(text_encoder)
        text_model = AutoModel.from_pretrained(text_encoder)
    if image_encoder:
        processor = AutoImageProcessor.from_pretrained(image_encoder)
        image_model = AutoModelForImageClassification.from_pretrained(image_encoder)
    return text_model, tokenizer, image_model, processor


def image_loader(image_dir: str, processor, ext: str = ".jpg") -> Callable:
    """``pixels(ids)``: load ``<image_dir>/<id><ext>`` with PIL and run the image processor."""
    from PIL import Image

    def pixels(ids):
        imgs = []
        for i in ids:
            path = os.path.join(image_dir, f"{int(i)}{ext}")
            imgs.append(Image.open(path).convert("RGB"))
        return processor(images=imgs, return_tensors="pt")["pixel_values"]

    return pixels


# ---------------------------------------------------------------------- feature_head mode
class ResidualHead(nn.Module):
    """``x + MLP(x)`` (dims unchanged); the last layer starts at zero, so it starts as identity."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x):
        return x + self.net(x)


def run_feature_head_sft(features: dict, pairs, epochs: int = 10, batch_size: int = 128,
                         lr: float = 1e-3, temperature: float = 0.05, tasks=TASKS,
                         style: str = "official", proj_dim: int = 64, seed: int = 2024,
                         normalize: bool = True):
    """``feature_head`` mode: residual MLPs over frozen features ``{'text': [N, dt], 'image':
    [N, dg]}`` (row = item id) trained with ``L_SFT`` (Adam); shared-space projection heads make
    t2i possible across dims. Returns ``(transformed features, loss history)``."""
    torch.manual_seed(seed)
    feats = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in features.items()}
    heads = nn.ModuleDict({k: ResidualHead(v.shape[1]) for k, v in feats.items()})
    projs = nn.ModuleDict({k: ProjectionHead(v.shape[1], 128, proj_dim) for k, v in feats.items()})
    opt = torch.optim.Adam(list(heads.parameters()) + list(projs.parameters()), lr=lr)
    norm = (lambda x: F.normalize(x, dim=-1)) if normalize else (lambda x: x)

    def loss_of(p_ids, q_ids):
        v = {}
        for k in feats:
            for side, ids in (("p", p_ids), ("q", q_ids)):
                v[k + side] = norm(projs[k](heads[k](feats[k][ids])))
        return sft_loss(v.get("textp"), v.get("textq"), v.get("imagep"), v.get("imageq"),
                        temperature, tasks, style)

    history = train_on_pairs(pairs, loss_of, opt, epochs, batch_size, seed)
    with torch.no_grad():
        out = {k: heads[k](feats[k]).numpy() for k in feats}
    return out, history
