"""Shared layers: one home per idea, reused by every model in the zoo.

* :class:`ModalityAdapter`  linear | mlp (Linear-ReLU-Linear) | pw (parametric whitening) |
  moe (mixture of PW experts, UniSRec-style) projection of frozen modality features;
* :func:`info_nce`           InfoNCE / in-batch contrastive loss with temperature;
* :func:`sparse_propagate`   A @ E for a fixed sparse graph (torch.sparse), k layers;
* :func:`register_feature_buffers`  modality features of an ``MMSequentialDataset`` as
  non-persistent buffers (never trained, never saved in checkpoints);
* :func:`gumbel_softmax_choice`  Gumbel-softmax choice, deterministic softmax on request;
* :class:`TransformerEncoder` RecBole's encoder, re-exported so models import one place.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.layers import TransformerEncoder  # noqa: F401  (re-export)

ADAPTERS = ("linear", "mlp", "pw", "moe")


class PWLayer(nn.Module):
    """Parametric whitening: ``(x - b) W`` (UniSRec)."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(in_dim))
        self.lin = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.normal_(self.lin.weight, mean=0.0, std=0.02)

    def forward(self, x):
        return self.lin(self.dropout(x) - self.bias)


class ModalityAdapter(nn.Module):
    """Project frozen modality features ``[..., in_dim]`` to the model space ``[..., out_dim]``.

    ``kind``: ``linear`` (one affine map), ``mlp`` (Linear-ReLU-Linear, ``hidden`` units, default
    ``out_dim``), ``pw`` (parametric whitening) or ``moe`` (``n_experts`` PW experts mixed by a
    softmax gate computed from the input).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear", hidden: int | None = None,
                 dropout: float = 0.0, n_experts: int = 8):
        super().__init__()
        if kind not in ADAPTERS:
            raise ValueError(f"adapter kind must be one of {ADAPTERS}, got '{kind}'.")
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        if kind == "linear":
            self.net = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            hidden = hidden or out_dim
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
        elif kind == "pw":
            self.net = PWLayer(in_dim, out_dim, dropout)
        else:
            self.experts = nn.ModuleList(PWLayer(in_dim, out_dim, dropout) for _ in range(n_experts))
            self.gate = nn.Parameter(torch.zeros(in_dim, n_experts))

    def forward(self, x):
        if self.kind == "moe":
            weights = torch.softmax(x @ self.gate, dim=-1).unsqueeze(-2)  # [..., 1, E]
            outs = torch.stack([e(x) for e in self.experts], dim=-1)  # [..., out, E]
            return (outs * weights).sum(-1)
        if self.kind == "pw":
            return self.net(x)
        return self.net(self.dropout(x))


def info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07,
             labels: torch.Tensor | None = None, normalize: bool = True,
             reduction: str = "mean") -> torch.Tensor:
    """InfoNCE: cross-entropy of ``query @ keys.T / temperature`` against ``labels``.

    ``labels`` default to the diagonal (in-batch positives: row i of ``query`` matches row i of
    ``keys``). With ``normalize`` both sides are L2-normalised first (cosine similarity).
    """
    if normalize:
        query = F.normalize(query, dim=-1)
        keys = F.normalize(keys, dim=-1)
    logits = query @ keys.transpose(0, 1) / temperature
    if labels is None:
        labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, labels, reduction=reduction)


def sparse_propagate(adj: torch.Tensor, emb: torch.Tensor, layers: int = 1,
                     combine: str = "last") -> torch.Tensor:
    """Propagate ``emb`` over a fixed sparse graph: ``E_l = A E_{l-1}``.

    ``combine``: ``last`` returns ``E_layers``; ``mean`` returns the mean of ``E_0..E_layers``;
    ``sum`` their sum. ``adj`` is a ``torch.sparse`` [n, n] tensor on ``emb``'s device.
    """
    outs = [emb]
    cur = emb
    for _ in range(layers):
        cur = torch.sparse.mm(adj, cur)
        outs.append(cur)
    if combine == "last":
        return cur
    if combine == "mean":
        return torch.stack(outs).mean(0)
    if combine == "sum":
        return torch.stack(outs).sum(0)
    raise ValueError(f"combine must be last, mean or sum, got '{combine}'.")


def register_feature_buffers(module: nn.Module, dataset, names, prefix: str = "feat_") -> dict:
    """Register ``dataset.modality_features[name]`` as non-persistent buffers ``<prefix><name>``
    (and ``<prefix><name>_present``); returns ``{name: dim}``. Raises a clear error naming the
    missing modalities (and how to build them) when the dataset lacks one.
    """
    dataset.require_modalities(list(names), type(module).__name__)
    dims = {}
    for name in names:
        feat = dataset.modality_features[name].float()
        module.register_buffer(f"{prefix}{name}", feat, persistent=False)
        module.register_buffer(f"{prefix}{name}_present", dataset.modality_present[name],
                               persistent=False)
        dims[name] = int(feat.shape[1])
    return dims


def gumbel_softmax_choice(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                          stochastic: bool = True, dim: int = -1) -> torch.Tensor:
    """A (soft) choice among the entries of ``dim``: Gumbel-softmax weights.

    ``stochastic``: ``F.gumbel_softmax(logits, tau, hard)`` (fresh noise each call). Otherwise the
    deterministic counterpart: ``softmax(logits / tau)`` (``hard``: the argmax one-hot). Models
    typically pass ``stochastic=self.training`` for a deterministic evaluation.
    """
    if stochastic:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=dim)
    soft = torch.softmax(logits / tau, dim=dim)
    if not hard:
        return soft
    index = soft.argmax(dim=dim, keepdim=True)
    return torch.zeros_like(soft).scatter_(dim, index, 1.0)
