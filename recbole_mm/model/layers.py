"""Shared layers: one home per idea, reused by every model in the zoo.

* :class:`ModalityAdapter`  linear | mlp (Linear-ReLU-Linear) | pw (parametric whitening) |
  moe (mixture of PW experts, UniSRec-style) projection of frozen modality features;
* :func:`info_nce`           InfoNCE / in-batch contrastive loss with temperature;
* :func:`sparse_propagate`   A @ E for a fixed sparse graph (torch.sparse), k layers;
* :func:`register_feature_buffers`  modality features of an ``MMSequentialDataset`` as
  non-persistent buffers (never trained, never saved in checkpoints);
* :func:`gumbel_softmax_choice`  Gumbel-softmax choice, deterministic softmax on request;
* :class:`LoRALinear`        low-rank adaptation ``W0 + (alpha/r) B A`` (W0 frozen, B zero-init);
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


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout, ``F.dropout`` in distribution; on the CPU the keep mask comes from
    ``torch.rand`` (about twice as fast as torch's CPU ``bernoulli_`` on large activations)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep = torch.rand_like(x).ge_(p).mul_(1.0 / (1.0 - p))  # P(u >= p) = 1 - p, u ~ U[0, 1)
    return x * keep


class Dropout(nn.Dropout):
    """``nn.Dropout`` using :func:`dropout` (same parameters, same state dict)."""

    def forward(self, x):
        return dropout(x, self.p, self.training)


def next_item_targets(item_seq: torch.Tensor, item_seq_len: torch.Tensor, pos_items: torch.Tensor):
    """The next item at every position of right-padded histories: ``item_seq[t+1]`` for
    ``t < len-1`` and the row's target ``pos_items`` at ``len-1``; returns ``(targets [B, L],
    valid [B, L] bool)`` with 0 at padding (all-position / dense next-item training)."""
    B, L = item_seq.shape
    pos = torch.arange(L, device=item_seq.device)[None]
    targets = torch.cat([item_seq[:, 1:], item_seq.new_zeros(B, 1)], dim=1)
    last = pos == (item_seq_len - 1)[:, None]
    targets = torch.where(last, pos_items[:, None].expand(B, L), targets)
    valid = pos < item_seq_len[:, None]
    return targets * valid, valid


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


class LoRALinear(nn.Module):
    """Low-rank adaptation of a linear map: ``y = x W0^T + b0 + (alpha / r) * x A^T B^T``.

    ``weight`` / ``bias`` keep ``nn.Linear``'s names (so a checkpoint of the plain linear layer
    loads unchanged) and are frozen by default (``freeze_base``); ``lora_A`` [r, in] starts
    N(0, ``init_std``) and ``lora_B`` [out, r] starts at zero, so the layer is exactly ``W0``
    until ``B`` is trained. ``enabled = False`` switches the low-rank path off.
    Build one from an existing layer with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, rank: int = 4, alpha: float | None = None,
                 bias: bool = True, init_std: float = 0.02, freeze_base: bool = True):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}.")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.scaling = (alpha if alpha is not None else rank) / rank
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.lora_A = nn.Parameter(torch.randn(rank, in_features) * init_std)
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.enabled = True
        if freeze_base:
            self.freeze_base()

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 4, alpha: float | None = None,
                    init_std: float = 0.02, freeze_base: bool = True) -> "LoRALinear":
        layer = cls(linear.in_features, linear.out_features, rank, alpha, linear.bias is not None,
                    init_std, freeze_base=False)
        with torch.no_grad():
            layer.weight.copy_(linear.weight)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        layer.to(linear.weight.device)
        if freeze_base:
            layer.freeze_base()
        return layer

    def freeze_base(self, frozen: bool = True) -> None:
        self.weight.requires_grad_(not frozen)
        if self.bias is not None:
            self.bias.requires_grad_(not frozen)

    def delta_weight(self) -> torch.Tensor:
        """The low-rank update ``scaling * B A`` ([out, in])."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.enabled:
            out = out + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scaling={self.scaling}"


def additive_attention_mask(allowed: torch.Tensor, value: float = -10000.0) -> torch.Tensor:
    """Bool ``allowed`` mask (True = may attend) -> additive float mask (0 / ``value``).

    ``allowed`` is ``[B, Lk]`` (key padding; returned as ``[B, 1, 1, Lk]``) or ``[B, Lq, Lk]``
    (returned as ``[B, 1, Lq, Lk]``), broadcastable over heads.
    """
    allowed = allowed.bool()
    mask = allowed.unsqueeze(1) if allowed.dim() == 3 else allowed[:, None, None, :]
    return (~mask).float() * value


class MultiHeadAttention(nn.Module):
    """Scaled dot-product multi-head attention; queries from ``x``, keys/values from ``context``
    (``x`` itself when ``None``). ``bias=False`` gives bias-free Q/K/V/O (SASRec as in MMSR);
    ``attn_mask`` is additive, broadcastable to ``[B, heads, Lq, Lk]``."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of n_heads {n_heads}.")
        self.n_heads, self.head_dim = n_heads, hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.key = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.value = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)
        self.attn_dropout = nn.Dropout(attn_dropout)

    def forward(self, x, context=None, attn_mask=None):
        context = x if context is None else context
        b, lq, _ = x.shape
        lk = context.shape[1]
        q = self.query(x).view(b, lq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.key(context).view(b, lk, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.value(context).view(b, lk, self.n_heads, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / self.head_dim ** 0.5
        if attn_mask is not None:
            scores = scores + attn_mask
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        out = (probs @ v).transpose(1, 2).reshape(b, lq, -1)
        return self.out(out)


class AttentionSublayer(nn.Module):
    """Post-LN residual attention: ``LN(x + Dropout(MHA(x, context)))``."""

    def __init__(self, hidden_size, n_heads, dropout=0.1, attn_dropout=0.1, bias=True,
                 layer_norm_eps=1e-12):
        super().__init__()
        self.attention = MultiHeadAttention(hidden_size, n_heads, attn_dropout, bias)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x, context=None, attn_mask=None):
        return self.norm(x + self.dropout(self.attention(x, context, attn_mask)))


class FeedForwardSublayer(nn.Module):
    """Post-LN residual FFN: ``LN(x + Dropout(W2 act(W1 x + b1) + b2))``; ``activation`` relu or
    gelu (erf)."""

    def __init__(self, hidden_size, inner_size, dropout=0.1, activation="gelu", layer_norm_eps=1e-12):
        super().__init__()
        acts = {"relu": nn.ReLU(), "gelu": nn.GELU()}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got '{activation}'.")
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.act = acts[activation]
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x):
        return self.norm(x + self.dropout(self.dense_2(self.act(self.dense_1(x)))))


class TransformerBlock(nn.Module):
    """A configurable post-LN transformer layer: self-attention sublayer then FFN sublayer.

    Defaults are a BERT layer (qkv bias, erf-GELU, LN eps 1e-12); SASRec as in MMSR is
    ``qkv_bias=False, activation='relu', layer_norm_eps=1e-6``. ``attn_mask``: additive.
    """

    def __init__(self, hidden_size, n_heads, inner_size=None, dropout=0.1, attn_dropout=0.1,
                 activation="gelu", qkv_bias=True, layer_norm_eps=1e-12):
        super().__init__()
        self.attention = AttentionSublayer(hidden_size, n_heads, dropout, attn_dropout, qkv_bias,
                                           layer_norm_eps)
        self.ffn = FeedForwardSublayer(hidden_size, inner_size or 4 * hidden_size, dropout,
                                       activation, layer_norm_eps)

    def forward(self, x, attn_mask=None):
        return self.ffn(self.attention(x, attn_mask=attn_mask))


def init_weights(module: nn.Module, std: float) -> None:
    """RecBole's transformer initialisation, for ``model.apply``: N(0, std) weights for Linear
    and Embedding, zero Linear biases, LayerNorm weight 1 and bias 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=std)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()
