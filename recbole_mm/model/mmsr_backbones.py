"""MMSR's sequence encoders (paper Sec. 3.3 / Table 4; spec MMSR.md 2.5).

Each takes item vectors ``E [B, L, d]`` (right-padded, as RecBole batches are) and the item ids
``[B, L]`` (0 = padding) and returns one ``d``-vector per position; scores are dot products with
item vectors (no output layer). They are MMSR's own small modules: RecBole's SASRec / GRU4Rec /
NextItNet differ (attention biases, GELU, dense output layers).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.model.layers import TransformerBlock, additive_attention_mask

BACKBONES = ("sasrec", "gru4rec", "nextitnet")


class SASRecEncoder(nn.Module):
    """``H0 = Dropout(LN(E + P))``; ``n_layers`` post-LN blocks with bias-free Q/K/V/O, ReLU FFN,
    LN eps 1e-6; mask = causal AND key-not-padding (additive -1e9); xavier-normal init."""

    def __init__(self, d, max_len, n_layers=2, n_heads=2, inner_size=None, dropout=0.1):
        super().__init__()
        self.position = nn.Embedding(max_len, d)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d, n_heads, inner_size or 4 * d, dropout, dropout, "relu",
                             qkv_bias=False, layer_norm_eps=1e-6) for _ in range(n_layers))
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.xavier_normal_(mod.weight)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, E, item_seq):
        L = E.shape[1]
        pos = torch.arange(L, device=E.device)
        h = self.dropout(self.norm(E + self.position(pos)))
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=E.device))
        allowed = causal[None] & (item_seq > 0)[:, None, :]
        mask = additive_attention_mask(allowed, -1e9).to(h.dtype)
        for block in self.blocks:
            h = block(h, mask)
        return h


class GRU4RecEncoder(nn.Module):
    """``Dropout(E) -> GRU(d -> d, n_layers, bias=False)``; hidden state at every position."""

    def __init__(self, d, n_layers=4, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, num_layers=n_layers, bias=False, batch_first=True)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)

    def forward(self, E, item_seq):
        out, _ = self.gru(self.dropout(E))
        return out


class _CausalConv(nn.Module):
    def __init__(self, d, dilation, kernel=3):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(d, d, kernel, dilation=dilation)

    def forward(self, x):  # [B, d, L]
        return self.conv(F.pad(x, (self.pad, 0)))


class NextItNetBlock(nn.Module):
    """Residual block "b": conv(dil d) -> LN -> ReLU -> conv(dil 2d) -> LN -> ReLU -> + input."""

    def __init__(self, d, dilation, kernel=3):
        super().__init__()
        self.conv1 = _CausalConv(d, dilation, kernel)
        self.norm1 = nn.LayerNorm(d, eps=1e-8)
        self.conv2 = _CausalConv(d, 2 * dilation, kernel)
        self.norm2 = nn.LayerNorm(d, eps=1e-8)

    def forward(self, x):  # [B, L, d]
        h = F.relu(self.norm1(self.conv1(x.transpose(1, 2)).transpose(1, 2)))
        h = F.relu(self.norm2(self.conv2(h.transpose(1, 2)).transpose(1, 2)))
        return x + h


class NextItNetEncoder(nn.Module):
    """Dilations ``[1, 4] * block_num`` (``n_layers`` = block_num; effective 1,2,4,8,...)."""

    def __init__(self, d, n_layers=2, kernel=3):
        super().__init__()
        self.blocks = nn.Sequential(*[NextItNetBlock(d, dil, kernel) for dil in [1, 4] * n_layers])

    def forward(self, E, item_seq):
        return self.blocks(E)


def build_backbone(name, d, max_len, n_layers, n_heads=2, inner_size=None, dropout=0.1):
    if name == "sasrec":
        return SASRecEncoder(d, max_len, n_layers, n_heads, inner_size, dropout)
    if name == "gru4rec":
        return GRU4RecEncoder(d, n_layers, dropout)
    if name == "nextitnet":
        return NextItNetEncoder(d, n_layers)
    raise ValueError(f"seq_arch must be one of {', '.join(BACKBONES)}; got '{name}'.")
