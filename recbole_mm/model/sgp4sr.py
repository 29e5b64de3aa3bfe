"""SGP4SR: Separated-Modality Guided User Preference Learning for Multimodal Sequential
Recommendation (Li et al., AAAI'26). Specification: ``../shared/papers/SGP4SR.md``.

Modality features never enter the network: they only decide which item IDs are mixed.

* **CGC** (co-occurrence guided graph construction, Eq. 1-4): per modality m, the top-H^m cosine
  neighbours N^m_i (self included) are filtered by the top-H^o co-occurring items N^o_i: common
  items first, then the best remaining cosine neighbours until H are chosen; Â^m holds 1/H per
  neighbour (sparse n x H, padding never a neighbour). Ê^m = Â^m E^id, Ê^o = Â^o E^id where Â^o
  is the row-L2-normalised inverse-distance co-occurrence of the training sequences.
* Three causal self-attention encoders (image, text, ID-over-co-occurrence) sharing one stack of
  pmixer-style SASRec blocks (queries layer-normalised).
* **CIP** (clustering interest perception, Eq. 8-14): k-means over each modality's raw features,
  Ĉ^m = C^m Â^m, centres Ĉ^m E^id refined in every layer by Interest Center Attention (ICA), the
  same attention/FFN weights attending from the centres to the layer's sequence states.
* Fusion (Eq. 15-17): Gumbel-softmax choice of centres added to each modality's last state (u^m);
  u^s = LN(ρ_T H^T + ρ_V H^V + β H^o). Scores (Eq. 18-20): u^s E^idᵀ + Σ_m ρ_m u^m Ê^mᵀ; loss
  (Eq. 21-22): full-softmax CE on the three heads.

Ablations (paper Table 3): ``use_cgc_cooccurrence: false`` (w/o COO), ``use_cgc: false``
(w/o CGC), ``use_cip: false`` or ``means_k: 0`` (w/o CIP), ``separated_modality: false``
(w/o MUL), ``use_c2c: false`` (w/o C2C = w/o CGC + w/o CIP).
"""
from __future__ import annotations

import hashlib
from logging import getLogger

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_mm.data.batching import padded_width
from recbole_mm.data import graphs
from recbole_mm.model.layers import (Dropout, ModalityAdapter, dropout, gumbel_softmax_choice,
                                     sparse_propagate)
from recbole_mm.registry import register_model

ICA_MASKS = ("official", "padding")


# ---------------------------------------------------------------------------------------------
# offline structures (numpy / scipy): CGC graph and CIP cluster matrix
# ---------------------------------------------------------------------------------------------
def neighbour_counts(H: int, miu_c: float, miu_m: float) -> tuple[int, int]:
    """``(H^o, H^m) = (int(μ^o H), int(μ^m H))`` (official code; the paper never defines μ)."""
    if H < 1:
        raise ValueError(f"SGP4SR: knn_k (H) must be >= 1, got {H}.")
    if miu_c < 0:
        raise ValueError(f"SGP4SR: miu_c (μ^o) must be >= 0, got {miu_c}.")
    h_o, h_m = int(miu_c * H), int(miu_m * H)
    if h_m < H:
        raise ValueError(f"SGP4SR: miu_m (μ^m) must be >= 1 so that H^m = int(μ^m·H) >= H; "
                         f"got μ^m={miu_m}, H={H} -> H^m={h_m}.")
    return h_o, h_m


def top_positive_per_row(adj: sp.spmatrix, k: int) -> np.ndarray:
    """``[n, k]`` column ids of the ``k`` largest positive entries of each row (ties: lower id), -1 pads."""
    adj = sp.csr_matrix(adj)
    n = adj.shape[0]
    out = -np.ones((n, max(k, 0)), dtype=np.int64)
    if k <= 0 or adj.nnz == 0:
        return out
    rows = np.repeat(np.arange(n), np.diff(adj.indptr))
    keep = adj.data > 0
    rows, cols, vals = rows[keep], adj.indices[keep].astype(np.int64), adj.data[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols = rows[order], cols[order]
    start = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - start[rows]
    sel = rank < k
    out[rows[sel], rank[sel]] = cols[sel]
    return out


def cgc_neighbours(modal_idx: np.ndarray, cooc_idx: np.ndarray, H: int) -> np.ndarray:
    """CGC selection (Eq. 2-3 and the top-up).

    ``modal_idx`` [n, H^m]: each item's cosine neighbours N^m_i in descending similarity (-1 pads);
    ``cooc_idx`` [n, H^o]: its top co-occurring items N^o_i (-1 pads). Returns ``[n, H]``: the
    common items N^m ∩ N^o (cosine order) followed by the best remaining items of N^m (-1 pads when
    N^m has fewer than H items).
    """
    n, h_m = modal_idx.shape
    valid = modal_idx >= 0
    if cooc_idx.shape[1] > 0:
        common = (modal_idx[:, :, None] == cooc_idx[:, None, :]).any(-1) & valid
    else:
        common = np.zeros_like(valid)
    # rank: common items first, then other valid items, invalid last; stable keeps cosine order
    key = np.where(common, 0, np.where(valid, 1, 2))
    order = np.argsort(key, axis=1, kind="stable")[:, :H]
    chosen = np.take_along_axis(modal_idx, order, axis=1)
    chosen_valid = np.take_along_axis(valid, order, axis=1)
    out = np.where(chosen_valid, chosen, -1)
    if out.shape[1] < H:
        out = np.concatenate([out, -np.ones((n, H - out.shape[1]), dtype=out.dtype)], axis=1)
    return out


def neighbours_to_graph(nbrs: np.ndarray, n: int, self_loop_rows=None) -> sp.csr_matrix:
    """Row-stochastic sparse Â^m: value 1/|N̂_i| for each neighbour j of i (spec A3: 1/H).

    Rows in ``self_loop_rows`` (real items without a usable feature) get the item itself with
    weight 1 so that Ê^m keeps their ID embedding instead of a zero row.
    """
    mask = nbrs >= 0
    deg = mask.sum(1)
    rows = np.repeat(np.arange(n), nbrs.shape[1]).reshape(nbrs.shape)[mask]
    cols = nbrs[mask]
    vals = (1.0 / np.maximum(deg, 1))[rows]
    if self_loop_rows is not None and len(self_loop_rows):
        extra = np.asarray(self_loop_rows, dtype=np.int64)
        extra = extra[deg[extra] == 0]
        rows, cols = np.r_[rows, extra], np.r_[cols, extra]
        vals = np.r_[vals, np.ones(len(extra))]
    return sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, n))


def build_cgc_graph(features: np.ndarray, present: np.ndarray, cooc: sp.spmatrix, H: int,
                    h_o: int, h_m: int) -> sp.csr_matrix:
    """Â^m for one modality: kNN (FAISS, cosine, self included) guided by co-occurrence ``cooc``."""
    n = features.shape[0]
    _, modal_idx, _ = graphs.knn_graph(features, h_m, present=present, include_self=True,
                                       return_arrays=True)
    cooc_idx = top_positive_per_row(cooc, h_o)
    nbrs = cgc_neighbours(modal_idx, cooc_idx, H)
    usable = np.asarray(present, dtype=bool) & (np.linalg.norm(features, axis=1) > 0)
    usable[0] = False
    missing = np.setdiff1d(np.arange(1, n), np.flatnonzero(usable))
    return neighbours_to_graph(nbrs, n, self_loop_rows=missing)


def cluster_matrix(assign: np.ndarray, items: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """C^m [k, n]: ``1/|cluster c|`` where item i is in cluster c (items not listed: no cluster)."""
    counts = np.bincount(assign, minlength=k).astype(np.float64)
    vals = 1.0 / counts[assign]
    return sp.csr_matrix((vals.astype(np.float32), (assign, items)), shape=(k, n))


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(a.tobytes())
        h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# network
# ---------------------------------------------------------------------------------------------
class PointWiseFeedForward(nn.Module):
    """``x + Drop(W_2 ReLU(Drop(W_1 x + b_1)) + b_2)`` (SASRec.pytorch's 1x1-conv FFN, as linears)."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(d, d)
        self.linear2 = nn.Linear(d, d)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, x):
        # in place where autograd allows it (linear/dropout backward never reads their outputs)
        return self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x), inplace=True)))).add_(x)

    def weighted(self, x, w):
        """``Σ_c w_c FFN(x_c)`` for ``x`` [N, k, d] and weights ``w`` [N, k] summing to 1, without
        dropout: ``Σ w_c x_c + W_2 (Σ w_c ReLU(W_1 x_c + b_1)) + b_2`` (W_2 once per row of N)."""
        if self.training and self.dropout1.p > 0:
            raise RuntimeError("PointWiseFeedForward.weighted is exact only without dropout.")
        w = w.unsqueeze(1)
        return (torch.bmm(w, x) + self.linear2(torch.bmm(w, F.relu(self.linear1(x), inplace=True)))).squeeze(1)


class PackedBatch:
    """The real (non-padding) positions of right-padded sequences, grouped in length buckets.

    ``lengths`` [N] (each >= 1). Tokens are the real positions, row-major (``row``, ``positions``;
    ``last``: each row's last token). Rows are grouped into buckets, runs of consecutive rows whose
    lengths share the class ``ceil(log2 len)``; a new bucket also starts every ``segment`` rows and
    after ``max_rows`` rows (which keeps a bucket's intermediates small). With rows sorted by
    decreasing length a bucket is padded to less than twice its shortest row. Bucket
    ``(start, end, T, index, real)``: rows ``start:end``, width ``T`` (its longest row), ``index``
    [n, T + 1] into an :meth:`extend`-ed token table (position p < len -> its token, len <= p < T ->
    a zero row, p = T -> the padding row) and ``real`` (flat [n * T] positions that are tokens).
    """

    ZERO, PAD, OFFSET = 0, 1, 2

    def __init__(self, lengths: torch.Tensor, segment: int | None = None, max_rows: int = 256):
        dev = lengths.device
        self.N = lengths.shape[0]
        self.segment = segment or self.N
        self.lengths = lengths
        ends = torch.cumsum(lengths, 0)
        starts = ends - lengths
        self.n_tokens = int(ends[-1])
        self.last = ends - 1
        self.row = torch.repeat_interleave(torch.arange(self.N, device=dev), lengths)
        self.positions = torch.arange(self.n_tokens, device=dev) - starts[self.row]
        cls = torch.ceil(torch.log2(lengths.double()))
        cuts = set((torch.nonzero(cls[1:] != cls[:-1]).squeeze(1) + 1).tolist())
        cuts |= set(range(0, self.N, self.segment)) | {self.N}
        cuts = sorted(cuts)
        cuts = sorted({c for a, b in zip(cuts[:-1], cuts[1:]) for c in range(a, b, max_rows)} | {self.N})
        lens = lengths.tolist()
        self.buckets = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            T = max(lens[a:b])
            pos = torch.arange(T + 1, device=dev)
            ln = lengths[a:b, None]
            index = torch.where(pos < ln, starts[a:b, None] + pos + self.OFFSET, self.ZERO)
            index[:, T] = self.PAD
            real = (pos[:T] < ln).reshape(-1).nonzero().squeeze(1)
            self.buckets.append((a, b, T, index, real))
        # every bucket's index in one: one gather per tensor and layer (its backward allocates the
        # table once, not once per bucket)
        self._index = torch.cat([bk[3].reshape(-1) for bk in self.buckets])
        self._sizes = [bk[3].numel() for bk in self.buckets]

    def gather(self, table: torch.Tensor, n_buckets: int | None = None) -> list:
        """``[n, T + 1, ...]`` per bucket (the first ``n_buckets``) from an :meth:`extend`-ed table."""
        sizes = self._sizes[:n_buckets]
        flat = table.index_select(0, self._index[:sum(sizes)])
        return [part.view(bk[3].shape + table.shape[1:])
                for part, bk in zip(flat.split(sizes), self.buckets)]

    def split_rows(self, x: torch.Tensor, n_buckets: int | None = None) -> tuple:
        """``x`` [rows, ...] cut into the rows of each bucket (the first ``n_buckets``)."""
        sizes = [b - a for a, b, *_ in self.buckets[:n_buckets]]
        return x[:sum(sizes)].split(sizes)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``[N, >= max len, ...]`` -> ``[tokens, ...]``."""
        return padded[self.row, self.positions]

    def extend(self, tokens: torch.Tensor, pad_row: torch.Tensor | None = None) -> torch.Tensor:
        """The gather table of :attr:`buckets`' indices: a zero row, the padding row (zero when not
        given), then the tokens (or those of the first rows)."""
        zero = tokens.new_zeros(1, *tokens.shape[1:])
        pad = zero if pad_row is None else pad_row.reshape(1, *tokens.shape[1:])
        return torch.cat([zero, pad, tokens])


class SGPBlock(nn.Module):
    """One Transformer block (queries layer-normalised, keys/values not), also used by ICA.

    The attention parameters live in a ``nn.MultiheadAttention`` (W^q, W^k, W^v, U); the block
    computes the keys/values of its input once and lets both the sequence positions and the
    interest centres (ICA, Eq. 10-12: same W^q, W^k, W^v, U) attend to them. Masks are additive
    float biases ``[queries, keys]`` (0 visible, -inf hidden; other values weight a key).

    Two equal forms: :meth:`forward` / :meth:`centres` on padded ``[N, L, d]`` sequences, and
    :meth:`forward_packed` on the real positions only (:class:`PackedBatch`), where ICA runs in key
    space: ``Q_z K_jᵀ = LN(Z) (W^q_hᵀ K^h_j) + b^q_h·K^h_j`` and ``U Σ_j a_j V_j = Σ_h Σ_j a^h_j U_h V^h_j``,
    so the per-centre work is the FFN plus two products over the user's (few) keys, instead of
    two more d x d projections per centre.
    """

    def __init__(self, d: int, n_heads: int, dropout: float, eps: float):
        super().__init__()
        if d % n_heads:
            raise ValueError(f"SGP4SR: hidden_size {d} is not divisible by n_heads {n_heads}.")
        self.d, self.n_heads, self.dropout = d, n_heads, dropout
        self.attn_layernorm = nn.LayerNorm(d, eps=eps)  # LN^a
        self.attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.ffn_layernorm = nn.LayerNorm(d, eps=eps)  # LN^f
        self.ffn = PointWiseFeedForward(d, dropout)

    def _weights(self, i: int):
        """(W, b) of the query (0), key (1) or value (2) projection."""
        d = self.d
        return self.attn.in_proj_weight[i * d:(i + 1) * d], self.attn.in_proj_bias[i * d:(i + 1) * d]

    def _project(self, x, i: int):
        d, h = self.d, self.n_heads
        y = F.linear(x, *self._weights(i))
        return y.view(*x.shape[:-1], h, d // h).transpose(-3, -2)  # [N, h, len, d/h]

    def _attend(self, q_in, k, v, bias):
        q = self._project(q_in, 0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        out = out.transpose(-3, -2).reshape(q_in.shape)
        return self.attn.out_proj(out)

    def keys_values(self, x, pad_key: bool = False):
        """Keys and values of ``x`` (+ one all-zero padding position at the end with ``pad_key``)."""
        if pad_key:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
        return self._project(x, 1), self._project(x, 2)

    def forward(self, x, keep, seq_bias, kv=None):
        """Sequence self-attention: ``X <- M ⊙ FFN(LN^f(Q + MHA(Q, X, X)))``, ``Q = LN^a(X)``."""
        k, v = self.keys_values(x) if kv is None else kv
        q = self.attn_layernorm(x)
        h = q + self._attend(q, k, v, seq_bias)
        return self.ffn(self.ffn_layernorm(h)) * keep

    def centres(self, z, kv, ica_bias):
        """ICA (Eq. 10-13, code form): ``Z <- FFN(Q_z + MHA(Q_z, X, X))``, ``Q_z = LN^a(Z)``."""
        q = self.attn_layernorm(z)
        return self.ffn(q + self._attend(q, kv[0], kv[1], ica_bias))

    # -- packed form
    def forward_packed(self, x, batch: PackedBatch, seq_bias, z=None, ica_bias=None, shared=False,
                       weights=None, last_only=False):
        """One layer on the packed real positions ``x`` [tokens, d] of ``batch``; with centres ``z``,
        ICA first refines them against the same layer input (:meth:`centres_packed`).

        ``last_only`` (the last layer: only each row's last state is used) returns the output at
        each row's last position only, [N, d]: keys and values still come from every position,
        but queries, U and the FFN run on N rows instead of every token.
        """
        k_tok, v_tok = F.linear(x, *self._weights(1)), F.linear(x, *self._weights(2))
        if z is not None:
            z = self.centres_packed(z, k_tok, v_tok, batch, ica_bias, shared, weights)
        d, h = self.d, self.n_heads
        q = self.attn_layernorm(x[batch.last] if last_only else x)
        queries = F.linear(q, *self._weights(0))
        queries = batch.split_rows(queries) if last_only else batch.gather(batch.extend(queries))
        k_ext = batch.extend(k_tok, self._weights(1)[1])  # padding key: input 0 -> the bias
        v_ext = batch.extend(v_tok, self._weights(2)[1])
        p = self.dropout if self.training else 0.0
        outs = []
        for (a, b, T, index, real), qb, kb, vb in zip(batch.buckets, queries, batch.gather(k_ext),
                                                      batch.gather(v_ext)):
            n = b - a
            kb = kb.view(n, T + 1, h, d // h).transpose(1, 2)
            vb = vb.view(n, T + 1, h, d // h).transpose(1, 2)
            if last_only:  # the last position sees every real position of its row
                pos = torch.arange(T + 1, device=x.device)
                bias = torch.where(pos < batch.lengths[a:b, None], 0.0, float("-inf"))
                qb = qb.view(n, 1, h, d // h).transpose(1, 2)
                out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias[:, None, None, :],
                                                     dropout_p=p)
                outs.append(out.reshape(n, d))
            else:
                qb = qb[:, :T].reshape(n, T, h, d // h).transpose(1, 2)
                out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=seq_bias(T), dropout_p=p)
                outs.append(out.transpose(1, 2).reshape(n * T, d)[real])
        h_ = q + self.attn.out_proj(torch.cat(outs))
        return self.ffn(self.ffn_layernorm(h_)), z

    def centres_packed(self, z, k_tok, v_tok, batch: PackedBatch, ica_bias, shared: bool,
                       weights=None):
        """ICA (:meth:`centres`) in key space over the packed keys ``k_tok``/``v_tok``.

        ``z``: [R, k, d], the centres of the first R rows of ``batch``; or, with ``shared``,
        [S, k, d], one set shared by every row of each of the first S segments (layer 1, whose
        Z_0 is the same for every user). ``ica_bias(bucket)`` gives [n, k, T + 1, 1]. With
        ``weights`` [R, k] (evaluation, last layer) returns only ``Σ_c w_c Z_c`` [R, d]
        (:meth:`PointWiseFeedForward.weighted`).
        """
        d, h = self.d, self.n_heads
        dh = d // h
        scale = dh ** -0.5
        (wq, bq), (_, bk), (_, bv) = self._weights(0), self._weights(1), self._weights(2)
        wq_h, bq_h = wq.view(h, dh, d), bq.view(h, dh)
        u_h = self.attn.out_proj.weight.view(d, h, dh)
        rows = z.shape[0] * (batch.segment if shared else 1)
        n_tok = int(batch.last[rows - 1]) + 1
        # keys/values with the zero and padding rows first (padding input 0: the biases), then
        # mapped to key space in one product each (the zero row's results are always masked)
        keys = batch.extend(k_tok[:n_tok], bk).view(-1, h, dh)
        values = batch.extend(v_tok[:n_tok], bv).view(-1, h, dh)
        k_ext = torch.einsum("the,hef->thf", keys * scale, wq_h)  # W^q_hᵀ K^h / √dh
        b_ext = (keys * bq_h).sum(-1) * scale  # b^q_h·K^h / √dh
        # U_h V^h + b_U / h: every head's weights sum to 1, so the h heads add U's bias b_U once
        v_ext = torch.einsum("the,fhe->thf", values, u_h) + self.attn.out_proj.bias / h
        q = self.attn_layernorm(z)
        k = q.shape[1]
        p = self.dropout if self.training else 0.0
        n_b = sum(1 for bucket in batch.buckets if bucket[0] < rows)
        queries = batch.split_rows(q, n_b) if not shared else [q[bucket[0] // batch.segment]
                                                                for bucket in batch.buckets[:n_b]]
        choices = batch.split_rows(weights, n_b) if weights is not None else [None] * n_b
        outs = []  # bucket by bucket to the end of the FFN: no [rows, k, d] intermediates
        for bucket, qb, kb, bb, vb, wb in zip(batch.buckets, queries, batch.gather(k_ext, n_b),
                                              batch.gather(b_ext, n_b), batch.gather(v_ext, n_b),
                                              choices):
            a, b, T, _, _ = bucket
            n = b - a
            s = torch.matmul(qb, kb.view(n, (T + 1) * h, d).transpose(1, 2)).view(n, k, T + 1, h)
            s = s + bb.unsqueeze(1) + ica_bias(bucket)
            att = dropout(torch.softmax(s, dim=2), p, self.training)
            x = torch.bmm(att.view(n, k, (T + 1) * h), vb.view(n, (T + 1) * h, d)).add_(qb)  # Q_z + MHA
            outs.append(self.ffn(x) if wb is None else self.ffn.weighted(x, wb))
        return torch.cat(outs)


@register_model
class SGP4SR(SequentialRecommender):
    """Separated-modality guided preference learning (CGC graphs, CIP interest centres)."""

    all_positions = False  # train_all_positions (recbole_mm.model.all_positions)
    all_positions_reason = ("its interest centres attend over the history (ICA) and the chosen "
                            "centre is added at the last position only")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logger = getLogger()
        d = self.hidden_size = int(config["hidden_size"])
        self.n_layers = int(config["n_layers"])
        self.n_heads = int(config["n_heads"])
        self.dropout_prob = float(config["hidden_dropout_prob"])
        self.eps = float(config["layer_norm_eps"])
        if config["loss_type"] != "CE":
            raise ValueError("SGP4SR trains with full-softmax cross-entropy: set loss_type: CE.")

        # ---- switches (paper Table 3)
        use_c2c = config["use_c2c"] is not False
        self.use_cgc = bool(config["use_cgc"]) and use_c2c
        self.use_cooccurrence = bool(config["use_cgc_cooccurrence"])
        self.separated = bool(config["separated_modality"])
        self.means_k = self._centre_count(config, dataset)
        self.use_cip = bool(config["use_cip"]) and use_c2c and self.means_k > 0

        # ---- hyper-parameters
        self.knn_k = int(config["knn_k"])
        self.h_o, self.h_m = neighbour_counts(self.knn_k, float(config["miu_c"]), float(config["miu_m"]))
        if not self.use_cooccurrence:
            self.h_o = 0
        rho_v = float(config["mb"])
        if not 0.0 <= rho_v <= 1.0:
            raise ValueError(f"SGP4SR: mb (ρ_V) must lie in [0, 1], got {rho_v}.")
        self.id_weight = float(config["id_fusion_weight"])  # β
        self.center_weight = float(config["center_weight"])  # α
        self.scale_mm = d ** float(config["mm_scale_exp"])
        self.scale_id = d ** float(config["id_scale_exp"])
        self.gumbel_tau = float(config["gumbel_tau"])
        self.gumbel_eval = bool(config["gumbel_eval"])
        self.ica_mask_mode = config["ica_mask"]
        if self.ica_mask_mode not in ICA_MASKS:
            raise ValueError(f"SGP4SR: ica_mask must be one of {ICA_MASKS}, got {self.ica_mask_mode!r}.")
        self.share_encoder = bool(config["share_encoder"])
        self.trim_padding = config["trim_padding"] is not False
        # positions RecBole pads to: the padding keys a centre sees are counted at this width, so a
        # batch trimmed by recbole_mm.data.batching gives what the padded batch gives
        self.padded_width = padded_width(dataset)

        image, text = config["image_modality"], config["text_modality"]
        self.modality_names = {"image": image, "text": text}
        dataset.require_modalities([image, text], "SGP4SR")
        # branches: (name, ρ) — image/text (separated) or one fused modality (w/o MUL)
        self.branches = [("image", rho_v), ("text", 1.0 - rho_v)] if self.separated else [("fused", 1.0)]
        self.rho = {b: r for b, r in self.branches}

        # ---- parameters
        self.item_embedding = nn.Embedding(self.n_items, d)  # E^id (the [PAD] row is trained too)
        self.position_embedding = nn.Embedding(self.max_seq_length, d)  # P
        names = ["shared"] if self.share_encoder else [b for b, _ in self.branches] + ["id"]
        self.encoders = nn.ModuleDict({
            name: nn.ModuleList(SGPBlock(d, self.n_heads, self.dropout_prob, self.eps)
                                for _ in range(self.n_layers))
            for name in names
        })
        self.output_layernorm = nn.LayerNorm(d, eps=self.eps)  # LN_out
        self.emb_dropout = Dropout(self.dropout_prob)
        self.ce = nn.CrossEntropyLoss()

        # ---- offline structures (training split only), fixed during training
        feats = self._branch_features(dataset)
        cooc_raw = dataset.cooccurrence(weight=config["co_weight"], self_loops=False)
        adj_o = graphs.normalize(cooc_raw, config["co_norm"])  # Â^o
        self.register_buffer("adj_o", graphs.to_torch_sparse(adj_o), persistent=False)
        self.adapters = nn.ModuleDict()
        for b, _ in self.branches:
            x, present = feats[b]
            if self.use_cgc:
                adj_m = self._cgc_graph(dataset, b, x, present, cooc_raw, config)
                self.register_buffer(f"adj_{b}", graphs.to_torch_sparse(adj_m), persistent=False)
            else:  # w/o CGC: a learned projection of the frozen features replaces Â^m E^id
                self.adapters[b] = ModalityAdapter(x.shape[1], d, kind="linear")
                self.register_buffer(f"feat_{b}", torch.from_numpy(np.ascontiguousarray(x)), persistent=False)
            if self.use_cip:
                c_m = self._clusters(dataset, x, present, config)
                centre_map = (c_m @ adj_m).tocsr() if self.use_cgc else c_m  # Ĉ^m = C^m Â^m
                self.register_buffer(f"centre_map_{b}", graphs.to_torch_sparse(centre_map),
                                     persistent=False)

        nn.init.normal_(self.item_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _centre_count(config, dataset) -> int:
        k = config["means_k"]
        if k is None:
            by_ds = config["means_k_by_dataset"] or {}
            k = by_ds.get(dataset.dataset_name, config["means_k_default"])
        k = int(k)
        if k < 0:
            raise ValueError(f"SGP4SR: means_k must be >= 0 (0 disables CIP), got {k}.")
        return k

    def _branch_features(self, dataset) -> dict:
        """Raw features (numpy) and present masks per branch; w/o MUL: L2-normalised concat."""
        out = {}
        for b, name in self.modality_names.items():
            out[b] = (dataset.modality_features[name].float().numpy(),
                      dataset.modality_present[name].numpy().astype(bool))
        if self.separated:
            return out
        (xi, pi), (xt, pt) = out["image"], out["text"]

        def l2(x):
            nrm = np.linalg.norm(x, axis=1, keepdims=True)
            return np.divide(x, nrm, out=np.zeros_like(x), where=nrm > 0)

        return {"fused": (np.concatenate([l2(xi), l2(xt)], axis=1).astype(np.float32), pi | pt)}

    def _cgc_graph(self, dataset, branch, x, present, cooc_raw, config) -> sp.csr_matrix:
        """Â^m for one branch, cached through the dataset cache (key: data, features, H, H^o, H^m)."""
        key = {"kind": "sgp4sr_cgc", "data": dataset.fingerprint(), "x": _digest(x, present),
               "H": self.knn_k, "Ho": self.h_o, "Hm": self.h_m, "co_weight": config["co_weight"],
               "cooc": _digest(cooc_raw.indptr, cooc_raw.indices, cooc_raw.data)}
        adj = dataset.cache.get_or_compute(
            key, lambda: build_cgc_graph(x, present, cooc_raw, self.knn_k, self.h_o, self.h_m))
        self.logger.info(f"SGP4SR CGC [{branch}]: H={self.knn_k}, H^o={self.h_o}, H^m={self.h_m}, "
                         f"{adj.nnz} edges")
        return sp.csr_matrix(adj, dtype=np.float32)

    def _clusters(self, dataset, x, present, config) -> sp.csr_matrix:
        """C^m [k, n] from k-means over the raw features of the real items that have one."""
        usable = present.copy()
        usable[0] = False
        items = np.flatnonzero(usable)
        if self.means_k > len(items):
            raise ValueError(f"SGP4SR: means_k={self.means_k} interest centres but only {len(items)} "
                             f"items have features; lower means_k.")
        _, assign = dataset.kmeans(x[items], self.means_k, seed=int(config["kmeans_seed"]))
        return cluster_matrix(np.asarray(assign, dtype=np.int64), items, self.means_k, self.n_items)

    # ------------------------------------------------------------------ forward
    def _encoder(self, branch: str):
        return self.encoders["shared" if self.share_encoder else branch]

    def item_tables(self) -> dict:
        """Item tables of this step: ``id`` (E^id), ``cooc`` (Â^o E^id) and Ê^m per branch."""
        e = self.item_embedding.weight
        tables = {"id": e, "cooc": sparse_propagate(self.adj_o, e)}
        for b, _ in self.branches:
            if self.use_cgc:
                tables[b] = sparse_propagate(getattr(self, f"adj_{b}"), e)
            else:
                tables[b] = self.adapters[b](getattr(self, f"feat_{b}"))
        return tables

    @staticmethod
    def _causal_bias(T: int, device) -> torch.Tensor:
        """[T, T + 1]: position p sees positions <= p; the last key (merged padding) is hidden."""
        pos = torch.arange(T, device=device)
        bias = torch.full((T, T + 1), float("-inf"), device=device)
        bias[:, :T] = torch.where(pos[None, :] > pos[:, None], float("-inf"), 0.0)
        return bias

    def _biases(self, item_seq, T: int):
        """Attention biases over the first ``T`` positions plus one merged padding key.

        Positions >= T hold padding only (X is zero there at every layer, so each such key is
        ``b_k`` with value ``b_v``); they are folded into one extra key whose bias is the log of
        how many of them a query may see. This reproduces attention over the full padded width
        exactly while computing only ``T`` positions.
        """
        L = item_seq.shape[1]
        dev = item_seq.device
        neg = torch.tensor(float("-inf"), device=dev)
        pos = torch.arange(T, device=dev)
        seq_bias = self._causal_bias(T, dev)
        if not self.use_cip:
            return seq_bias, None
        c = torch.arange(self.means_k, device=dev)
        if self.ica_mask_mode == "official":  # centre c sees positions p <= c (padding included)
            ica = torch.zeros(self.means_k, T + 1, device=dev)
            ica[:, :T] = torch.where(pos[None, :] > c[:, None], neg, 0.0)
            hidden_pads = (torch.clamp(c, max=L - 1) - T + 1).clamp(min=0).float()
            ica[:, T] = torch.where(hidden_pads > 0, hidden_pads.log(), neg)
        else:  # every centre sees every real item, padding blocked
            real = item_seq[:, :T] != 0
            ica = torch.full((item_seq.shape[0], 1, 1, T + 1), float("-inf"), device=dev)
            ica[:, 0, 0, :T] = torch.where(real, 0.0, neg)
        return seq_bias, ica

    def _packed_ica_bias(self, batch: PackedBatch, L: int):
        """ICA bias of one bucket of ``batch``, ``[n, k, T + 1, 1]`` (key-space layout): as
        :meth:`_biases`, with every padding position of a row (inside or beyond the bucket's width)
        folded into the padding key."""
        dev = batch.lengths.device
        c = torch.arange(self.means_k, device=dev)

        def bias(bucket):
            a, b, T, _, _ = bucket
            pos = torch.arange(T, device=dev)
            ln = batch.lengths[a:b, None, None]
            out = torch.full((b - a, self.means_k, T + 1), float("-inf"), device=dev)
            if self.ica_mask_mode == "official":  # centre c sees positions p <= c (padding included)
                visible = (pos[None, None, :] <= c[None, :, None]) & (pos < ln)
                out[:, :, :T] = torch.where(visible, 0.0, float("-inf"))
                pads = (torch.clamp(c, max=L - 1)[None, :] - ln[:, :, 0] + 1).clamp(min=0).float()
                out[:, :, T] = torch.where(pads > 0, pads.log(), float("-inf"))
            else:  # every centre sees every real item, padding blocked
                out[:, :, :T] = torch.where(pos < ln, 0.0, float("-inf"))
            return out.unsqueeze(-1)

        return bias

    def _run_stack(self, stack, x, keep, z, seq_bias, ica_bias):
        """Full-width layers of one block stack; ``z`` are the centres of the first ``len(z)`` rows."""
        for block in stack:
            kv = block.keys_values(x, pad_key=True)  # layer input keys/values, shared by ICA
            if z is not None:
                n = z.shape[0]
                z = block.centres(z, (kv[0][:n], kv[1][:n]), ica_bias)
            x = block(x, keep, seq_bias, kv)
        return x, z

    def _stack_groups(self, names):
        """(block stack, branch names) pairs: one stack for all branches, or one per branch."""
        if self.share_encoder:
            return [(self.encoders["shared"], names)]
        return [(self.encoders[n if n != "cooc" else "id"], [n]) for n in names]

    def _run_encoders(self, inputs: dict, keep, centres: dict, seq_bias, ica_bias):
        """Full width: run the branches (image, text, cooc) through their stacks; ICA refines the
        centres ([B, k, d] per modality branch)."""
        B = keep.shape[0]
        outs, zs = {}, {}
        for stack, group in self._stack_groups(list(inputs)):  # modality branches first
            cg = [n for n in group if n in centres]
            x = torch.cat([inputs[n] for n in group])
            z = torch.cat([centres[n] for n in cg]) if cg else None
            bias = ica_bias.repeat(len(cg), 1, 1, 1) if (cg and ica_bias.dim() == 4) else ica_bias
            x, z = self._run_stack(stack, x, keep.repeat(len(group), 1, 1), z, seq_bias, bias)
            outs.update({n: x[i * B:(i + 1) * B] for i, n in enumerate(group)})
            zs.update({n: z[i * B:(i + 1) * B] for i, n in enumerate(cg)})
        return outs, zs

    def _run_packed(self, inputs: dict, lengths, centres: dict, L: int, weights=None):
        """Packed: ``inputs`` hold each branch's real positions ([tokens, d], rows sorted by
        decreasing length); ``centres`` the initial centres [k, d] per modality branch, shared by
        every user until the first ICA. Returns each branch's last states [B, d] (the last layer
        computes no other position) and the final centres [B, k, d]; with centre-choice
        ``weights`` ([B, k] per modality, no dropout) the chosen ones, ``Σ_c w_c Z_L[c]`` [B, d]."""
        B = lengths.shape[0]
        dev = lengths.device
        causal = {}

        def seq_bias(T):
            if T not in causal:
                causal[T] = self._causal_bias(T, dev)
            return causal[T]

        outs, zs = {}, {}
        for stack, group in self._stack_groups(list(inputs)):
            cg = [n for n in group if n in centres]
            batch = PackedBatch(lengths.repeat(len(group)), segment=B)
            ica_bias = self._packed_ica_bias(batch, L) if cg else None
            x = torch.cat([inputs[n] for n in group])
            z = torch.stack([centres[n] for n in cg]) if cg else None
            w = torch.cat([weights[n] for n in cg]) if (cg and weights is not None) else None
            shared = True
            for i, block in enumerate(stack):
                last = i == len(stack) - 1
                x, z = block.forward_packed(x, batch, seq_bias, z, ica_bias, shared,
                                            w if last else None, last_only=last)
                shared = False
            if shared:  # no layers
                x = x[batch.last]
                if z is not None:
                    z = z.repeat_interleave(B, dim=0)
                    if w is not None:
                        z = torch.bmm(w.unsqueeze(1), z).squeeze(1)
            outs.update({n: x[i * B:(i + 1) * B] for i, n in enumerate(group)})
            zs.update({n: z[i * B:(i + 1) * B] for i, n in enumerate(cg)})
        return outs, zs

    def encode(self, item_seq, item_seq_len, tables=None):
        """User vectors ``{'s': u^s, <branch>: u^m}`` (each B x d) and the item tables.

        With ``trim_padding`` (default) only the real positions of each sequence are encoded
        (:class:`PackedBatch`, users sorted by length internally); otherwise every position of the
        padded width, like the official code. Both give the same outputs
        (``test_trimmed_padding_equals_full_width``).
        """
        tables = self.item_tables() if tables is None else tables
        L = max(self.padded_width, item_seq.shape[1]) if self.trim_padding else item_seq.shape[1]
        B = item_seq.shape[0]
        if self.trim_padding:
            order = torch.argsort(item_seq_len, descending=True, stable=True)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(B, device=order.device)
            lengths = item_seq_len[order]
            pack = PackedBatch(lengths)
            items = pack.pack(item_seq[order])
            pos = self.position_embedding.weight[pack.positions]

            def last_of(x):
                return x[pack.last]
        else:
            seq_bias, ica_bias = self._biases(item_seq, L)
            items = item_seq
            keep = (item_seq != 0).unsqueeze(-1).to(tables["id"].dtype)  # M
            pos = self.position_embedding.weight[:L].unsqueeze(0)
            last = item_seq_len - 1

            def last_of(x):
                return self.gather_indexes(x, last)

        def embed(table, scale):  # X_0 = M ⊙ Drop(s Ê[S] + P)
            x = self.emb_dropout(scale * table[items] + pos)
            return x if self.trim_padding else x * keep

        inputs = {b: embed(tables[b], self.scale_mm) for b, _ in self.branches}
        inputs["cooc"] = embed(tables["cooc"], self.scale_id)

        centres0, choice = {}, {}
        if self.use_cip:  # Z^m_0 = Drop(s_m Ĉ^m E^id): one dropout mask, shared by every user
            for b, _ in self.branches:
                src = tables["id"] if self.use_cgc else tables[b]
                init = torch.sparse.mm(getattr(self, f"centre_map_{b}"), src)
                centres0[b] = self.emb_dropout(self.scale_mm * init)  # k x d
                # Eq. 15: Gumbel-softmax over centres, logits X^m_0 (Z^m_0)ᵀ (B x k)
                logits = last_of(inputs[b]) @ centres0[b].t()
                if self.trim_padding:  # Gumbel noise drawn in the caller's row order
                    logits = logits[inverse]
                choice[b] = gumbel_softmax_choice(logits, tau=self.gumbel_tau,
                                                  stochastic=self.training or self.gumbel_eval)
                if self.trim_padding:
                    choice[b] = choice[b][order]
        chosen = False  # whether the encoders return Σ_c w_c Z_L[c] (evaluation, packed)
        if self.trim_padding:
            chosen = not (self.training and self.dropout_prob > 0)
            outs, centres = self._run_packed(inputs, lengths, centres0, L,
                                             choice if chosen else None)
        else:
            outs, centres = self._run_encoders(
                inputs, keep, {b: z.expand(B, -1, -1) for b, z in centres0.items()}, seq_bias, ica_bias)
            outs = {n: last_of(x) for n, x in outs.items()}

        users = {}  # outs: each branch's last state H^b[len - 1]
        fused = self.id_weight * outs["cooc"]
        for b, rho in self.branches:
            fused = fused + rho * outs[b]
        users["s"] = self.output_layernorm(fused)  # Eq. 17
        for b, _ in self.branches:
            h_last = outs[b]
            if self.use_cip:  # Eq. 16: add the chosen centre
                centre = centres[b] if chosen else torch.bmm(choice[b].unsqueeze(1), centres[b]).squeeze(1)
                h_last = h_last + self.center_weight * centre
            users[b] = self.output_layernorm(h_last)
        if self.trim_padding:  # back to the caller's row order
            users = {k: u[inverse] for k, u in users.items()}
        return users, tables

    def forward(self, item_seq, item_seq_len):
        """``(u^s, u^V, u^T)`` (w/o MUL: ``(u^s, u^fused)``), each B x hidden_size."""
        users, _ = self.encode(item_seq, item_seq_len)
        return tuple(users[k] for k in ["s"] + [b for b, _ in self.branches])

    def _head_logits(self, users, tables):
        """``{'s': u^s E^idᵀ, <branch>: u^m Ê^mᵀ}`` (B x n_items each)."""
        out = {"s": users["s"] @ tables["id"].t()}
        for b, _ in self.branches:
            out[b] = users[b] @ tables[b].t()
        return out

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        users, tables = self.encode(item_seq, item_seq_len)
        logits = self._head_logits(users, tables)
        loss = self.ce(logits["s"], target)  # Eq. 21-22
        for b, rho in self.branches:
            loss = loss + rho * self.ce(logits[b], target)
        return loss

    def full_sort_predict(self, interaction):
        users, tables = self.encode(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = self._head_logits(users, tables)
        scores = logits["s"]  # Eq. 20
        for b, rho in self.branches:
            scores = scores + rho * logits[b]
        return scores

    def predict(self, interaction):
        users, tables = self.encode(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        item = interaction[self.ITEM_ID]
        scores = (users["s"] * tables["id"][item]).sum(-1)
        for b, rho in self.branches:
            scores = scores + rho * (users[b] * tables[b][item]).sum(-1)
        return scores
