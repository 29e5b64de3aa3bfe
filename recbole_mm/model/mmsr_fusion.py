"""MMSR's multi-modal fusion modules (paper Sec. 3.2 / Table 3; spec MMSR.md 2.4).

Every fusion maps projected text tokens ``T [N, Lt, d]`` with mask ``m [N, Lt]`` and projected
image tokens ``V [N, Lv, d]`` to one item vector ``e [N, d]``.

Coarse-grained (operate on the masked means ``t`` and ``v``; one LayerNorm shared by both
modalities, eps 1e-6; Linear layers xavier-normal, zero bias):

* ``sum``:    ``e = W_t LN(t) + b_t + W_v LN(v) + b_v``
* ``concat``: ``e = W_o [LN(t); LN(v)] + b_o``
* ``film``:   ``[g; b] = W_f LN(t) + b_f``; ``e = W_o (g * LN(v) + b) + b_o`` (text conditions image)
* ``gated``:  ``g = sigmoid(W_t LN(t) + b_t)``; ``e = W_o (g * (W_v LN(v) + b_v)) + b_o``
* ``<coarse>_dnn`` ("Coarse+"): the same, then ``3 x [Dropout -> Linear(d, d) -> ReLU]``.

Fine-grained (operate on tokens; randomly initialised BERT-config layers, N(0, 0.02)):

* ``merge_attn`` (single stream): ``n`` BERT layers over ``[T; V]`` with text padding masked as
  keys (additive -10000), then the masked mean over all non-pad positions; no type embedding.
* ``co_attn`` (LXMERT-style two stream): modality-type embeddings; per block one cross-attention
  sublayer *shared by both directions*, a self-attention sublayer per stream, an FFN per stream;
  then ``e = W [mean(T'); mean(V')] + b``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from recbole_mm.model.layers import (AttentionSublayer, FeedForwardSublayer, TransformerBlock,
                                     additive_attention_mask)

COARSE = ("sum", "concat", "film", "gated")
FUSIONS = COARSE + tuple(f"{c}_dnn" for c in COARSE) + ("co_attn", "merge_attn")
ATTENTION_FUSIONS = ("co_attn", "merge_attn")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x [N, L, d]`` over positions where ``mask [N, L]`` is 1 (all when None)."""
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1e-9)


def _xavier_linear(i, o):
    lin = nn.Linear(i, o)
    nn.init.xavier_normal_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class MLP3(nn.Module):
    """``3 x [Dropout(p) -> Linear(d, d) -> ReLU]`` (final ReLU kept: outputs are >= 0)."""

    def __init__(self, d, dropout):
        super().__init__()
        layers = []
        for _ in range(3):
            layers += [nn.Dropout(dropout), _xavier_linear(d, d), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CoarseFusion(nn.Module):
    """sum | concat | film | gated, optionally followed by :class:`MLP3` (``dnn=True``)."""

    def __init__(self, kind: str, d: int, dropout: float = 0.1, dnn: bool = False):
        super().__init__()
        if kind not in COARSE:
            raise ValueError(f"coarse fusion must be one of {COARSE}, got '{kind}'.")
        self.kind = kind
        self.norm = nn.LayerNorm(d, eps=1e-6)  # shared by both modalities
        if kind == "sum":
            self.w_t, self.w_v = _xavier_linear(d, d), _xavier_linear(d, d)
        elif kind == "concat":
            self.w_o = _xavier_linear(2 * d, d)
        elif kind == "film":
            self.w_f, self.w_o = _xavier_linear(d, 2 * d), _xavier_linear(d, d)
        else:
            self.w_t, self.w_v, self.w_o = _xavier_linear(d, d), _xavier_linear(d, d), _xavier_linear(d, d)
        self.mlp = MLP3(d, dropout) if dnn else None

    def fuse_vectors(self, t, v):
        t, v = self.norm(t), self.norm(v)
        if self.kind == "sum":
            e = self.w_t(t) + self.w_v(v)
        elif self.kind == "concat":
            e = self.w_o(torch.cat([t, v], dim=-1))
        elif self.kind == "film":
            gamma, beta = self.w_f(t).chunk(2, dim=-1)
            e = self.w_o(gamma * v + beta)
        else:
            e = self.w_o(torch.sigmoid(self.w_t(t)) * self.w_v(v))
        return self.mlp(e) if self.mlp is not None else e

    def forward(self, T, m, V):
        return self.fuse_vectors(masked_mean(T, m), masked_mean(V, None))


def _bert_init(module):
    for mod in module.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, mean=0.0, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LayerNorm):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)


class MergeAttentionFusion(nn.Module):
    """Single-stream fusion: ``n`` BERT layers over ``[T; V]``, masked mean over non-pad tokens."""

    def __init__(self, d, n_layers=1, n_heads=12, inner_size=None, dropout=0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(d, n_heads, inner_size or 4 * d, dropout, dropout, "gelu", True, 1e-12)
            for _ in range(n_layers))
        _bert_init(self)

    def forward(self, T, m, V):
        mask = torch.cat([m.to(T.dtype), T.new_ones(V.shape[:2])], dim=1)
        x = torch.cat([T, V], dim=1)
        add = additive_attention_mask(mask, -10000.0).to(x.dtype)
        for layer in self.layers:
            x = layer(x, add)
        return masked_mean(x, mask)


class CoAttentionBlock(nn.Module):
    """One LXMERT-style block: shared cross-attention, per-stream self-attention and FFN."""

    def __init__(self, d, n_heads, inner_size, dropout):
        super().__init__()
        self.cross = AttentionSublayer(d, n_heads, dropout, dropout, True, 1e-12)  # both directions
        self.self_t = AttentionSublayer(d, n_heads, dropout, dropout, True, 1e-12)
        self.self_v = AttentionSublayer(d, n_heads, dropout, dropout, True, 1e-12)
        self.ffn_t = FeedForwardSublayer(d, inner_size, dropout, "gelu", 1e-12)
        self.ffn_v = FeedForwardSublayer(d, inner_size, dropout, "gelu", 1e-12)

    def forward(self, t, v, t_mask, v_mask):
        t2 = self.cross(t, v, v_mask)
        v2 = self.cross(v, t, t_mask)
        t2, v2 = self.self_t(t2, attn_mask=t_mask), self.self_v(v2, attn_mask=v_mask)
        return self.ffn_t(t2), self.ffn_v(v2)


class CoAttentionFusion(nn.Module):
    """Two-stream fusion: type embeddings, ``n`` :class:`CoAttentionBlock`, ``W [t; v] + b``."""

    def __init__(self, d, n_layers=1, n_heads=12, inner_size=None, dropout=0.1):
        super().__init__()
        self.type_embedding = nn.Embedding(2, d)
        self.blocks = nn.ModuleList(CoAttentionBlock(d, n_heads, inner_size or 4 * d, dropout)
                                    for _ in range(n_layers))
        _bert_init(self)
        self.out = _xavier_linear(2 * d, d)

    def forward(self, T, m, V):
        t = T + self.type_embedding.weight[0]
        v = V + self.type_embedding.weight[1]
        t_add = additive_attention_mask(m, -10000.0).to(T.dtype)
        v_add = None
        for block in self.blocks:
            t, v = block(t, v, t_add, v_add)
        return self.out(torch.cat([masked_mean(t, m), masked_mean(v, None)], dim=-1))


def build_fusion(name: str, d: int, dropout: float = 0.1, n_layers: int = 1, n_heads: int = 12,
                 inner_size: int | None = None) -> nn.Module:
    """The fusion module ``name`` (one of :data:`FUSIONS`) at width ``d``."""
    if name not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got '{name}'.")
    if name == "merge_attn":
        return MergeAttentionFusion(d, n_layers, n_heads, inner_size, dropout)
    if name == "co_attn":
        return CoAttentionFusion(d, n_layers, n_heads, inner_size, dropout)
    base, dnn = (name[:-4], True) if name.endswith("_dnn") else (name, False)
    return CoarseFusion(base, d, dropout, dnn)
