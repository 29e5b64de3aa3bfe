"""Sparse item graphs: co-occurrence from training sequences and modality kNN (FAISS).

Nothing here builds a dense items x items matrix: co-occurrence pairs are generated per
sequence-length bucket and summed chunk by chunk into CSR; kNN keeps ``k`` entries per row.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import scipy.sparse as sp
import torch

COOC_WEIGHTS = ("count", "inverse_distance")
NORMALISATIONS = ("none", "row", "sym", "rc", "row_l2")


def cooccurrence_matrix(
    sequences,
    n_items: int,
    weight: str = "count",
    distance_offset: int = 0,
    window: int | None = None,
    self_loops: bool = False,
    topk: int | None = None,
    chunk_pairs: int = 8_000_000,
) -> sp.csr_matrix:
    """Symmetric item-item co-occurrence of the given (training) sequences.

    For every sequence and every position pair ``p < q`` (at most ``window`` apart when set)
    the pair ``(s[p], s[q])`` adds ``1`` (``weight='count'``) or ``1 / (q - p + distance_offset)``
    (``'inverse_distance'``) to both ``A[s[p], s[q]]`` and ``A[s[q], s[p]]``. Pairs of an item
    with itself are dropped unless ``self_loops``. Id 0 (padding) never appears. ``topk`` keeps
    the largest ``topk`` entries per row. Returns float32 CSR of shape ``[n_items, n_items]``.
    """
    if weight not in COOC_WEIGHTS:
        raise ValueError(f"co-occurrence weight must be one of {COOC_WEIGHTS}, got '{weight}'.")
    by_len: dict[int, list[np.ndarray]] = defaultdict(list)
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        s = s[s != 0]
        if len(s) >= 2:
            by_len[len(s)].append(s)
    total = sp.csr_matrix((n_items, n_items), dtype=np.float32)
    rows, cols, vals, pending = [], [], [], 0

    def flush():
        nonlocal total, rows, cols, vals, pending
        if rows:
            r = np.concatenate(rows)
            c = np.concatenate(cols)
            v = np.concatenate(vals)
            part = sp.coo_matrix((np.r_[v, v], (np.r_[r, c], np.r_[c, r])), shape=(n_items, n_items))
            total = total + part.tocsr()
        rows, cols, vals, pending = [], [], [], 0

    for length, group in sorted(by_len.items()):
        p, q = np.triu_indices(length, k=1)
        if window is not None:
            keep = (q - p) <= window
            p, q = p[keep], q[keep]
        if weight == "count":
            w = np.ones(len(p), dtype=np.float32)
        else:
            w = (1.0 / (q - p + distance_offset)).astype(np.float32)
        mat = np.stack(group)
        step = max(1, chunk_pairs // max(len(p), 1))
        for start in range(0, len(mat), step):
            block = mat[start:start + step]
            a, b = block[:, p].ravel(), block[:, q].ravel()
            ww = np.broadcast_to(w, (len(block), len(w))).ravel()
            if not self_loops:
                keep = a != b
                a, b, ww = a[keep], b[keep], ww[keep]
            rows.append(a)
            cols.append(b)
            vals.append(ww)
            pending += len(a)
            if pending >= chunk_pairs:
                flush()
    flush()
    total.sum_duplicates()
    total = total.astype(np.float32)
    if self_loops:
        # a self pair (s[p] == s[q]) was added twice by the symmetric insert
        total.setdiag(total.diagonal() / 2)
    total.eliminate_zeros()
    if topk is not None:
        total = topk_per_row(total, topk)
    return total


def topk_per_row(adj: sp.spmatrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row (ties broken by column id)."""
    adj = sp.csr_matrix(adj)
    indptr, indices, data = adj.indptr, adj.indices, adj.data
    keep = np.zeros(len(data), dtype=bool)
    for i in range(adj.shape[0]):
        s, e = indptr[i], indptr[i + 1]
        if e - s <= k:
            keep[s:e] = True
        else:
            order = np.lexsort((indices[s:e], -data[s:e]))[:k]
            keep[s + order] = True
    rows = np.repeat(np.arange(adj.shape[0]), np.diff(indptr))
    return sp.csr_matrix((data[keep], (rows[keep], indices[keep])), shape=adj.shape)


def normalize(adj: sp.spmatrix, mode: str = "row", eps: float = 0.0) -> sp.csr_matrix:
    """Normalise a sparse adjacency.

    ``row``: D_r^-1 A; ``sym``: D^-1/2 A D^-1/2 (row sums); ``rc``: D_r^-1 A D_c^-1 (row and column
    sums, DeCoRec's code); ``row_l2``: each row divided by its L2 norm (SGP4SR's code); ``none``.
    Empty rows stay empty; ``eps`` is added to the sums (DeCoRec uses 1e-7).
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got '{mode}'.")
    adj = sp.csr_matrix(adj, dtype=np.float32)
    if mode == "none":
        return adj

    def inv(v, power=1.0):
        v = np.asarray(v, dtype=np.float64).ravel() + eps
        out = np.zeros_like(v)
        nz = v > 0
        out[nz] = v[nz] ** -power
        return sp.diags(out.astype(np.float32))

    if mode == "row":
        return (inv(adj.sum(axis=1)) @ adj).tocsr()
    if mode == "sym":
        d = inv(adj.sum(axis=1), 0.5)
        return (d @ adj @ d).tocsr()
    if mode == "rc":
        return (inv(adj.sum(axis=1)) @ adj @ inv(adj.sum(axis=0))).tocsr()
    norms = np.sqrt(np.asarray(adj.multiply(adj).sum(axis=1)).ravel())
    return (inv(norms) @ adj).tocsr()


def knn_graph(
    features,
    k: int,
    present=None,
    include_self: bool = False,
    exact_max_items: int = 50_000,
    nprobe: int = 8,
    batch_size: int = 16384,
    use_gpu: bool | None = None,
    return_arrays: bool = False,
):
    """Cosine top-``k`` neighbours of every item (FAISS inner product on L2-normalised rows).

    Row 0 (padding) and rows with ``present == False`` (or zero norm) are neither queried nor
    returned. The item itself is excluded unless ``include_self``. Exact search up to
    ``exact_max_items`` items, an IVF index (``nprobe`` lists probed) above that. Returns a CSR
    matrix of cosine similarities with at most ``k`` entries per row (columns are neighbours);
    with ``return_arrays`` also ``(indices [n, k], scores [n, k])`` in descending order (-1 pads).
    """
    import faiss

    from recbole_mm.data.cluster import faiss_gpu_available

    x = np.asarray(features, dtype=np.float32)
    n, d = x.shape
    norms = np.linalg.norm(x, axis=1)
    valid = norms > 0
    valid[0] = False
    if present is not None:
        valid &= np.asarray(present, dtype=bool)
    ids = np.flatnonzero(valid)
    idx_out = -np.ones((n, k), dtype=np.int64)
    sim_out = np.zeros((n, k), dtype=np.float32)
    if len(ids) > 1:
        xn = np.ascontiguousarray(x[ids] / norms[ids, None])
        if len(ids) <= exact_max_items:
            index = faiss.IndexFlatIP(d)
        else:
            nlist = int(4 * np.sqrt(len(ids)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.niter = 10
            rng = np.random.default_rng(0)
            sample = xn[rng.choice(len(ids), size=min(len(ids), 40 * nlist), replace=False)]
            index.train(sample)
            index.nprobe = nprobe
        if use_gpu is None:
            use_gpu = faiss_gpu_available()
        if use_gpu:  # pragma: no cover - needs a GPU
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(xn)
        want = min(k + (0 if include_self else 1), len(ids))
        for start in range(0, len(ids), batch_size):
            q = xn[start:start + batch_size]
            sims, nbrs = index.search(q, want)
            rows = np.arange(start, start + len(q))
            drop = nbrs < 0
            if not include_self:
                drop |= nbrs == rows[:, None]
            order = np.argsort(drop, axis=1, kind="stable")[:, :k]
            nb = np.take_along_axis(nbrs, order, axis=1)
            sv = np.take_along_axis(sims, order, axis=1)
            dropped = np.take_along_axis(drop, order, axis=1)
            nb = np.where(dropped, -1, nb)
            width = nb.shape[1]
            idx_out[ids[rows], :width] = np.where(nb >= 0, ids[np.maximum(nb, 0)], -1)
            sim_out[ids[rows], :width] = np.where(nb >= 0, sv, 0.0)
    mask = idx_out >= 0
    r = np.repeat(np.arange(n), k).reshape(n, k)[mask]
    graph = sp.csr_matrix((sim_out[mask], (r, idx_out[mask])), shape=(n, n))
    if return_arrays:
        return graph, idx_out, sim_out
    return graph


def to_torch_sparse(adj: sp.spmatrix, device=None) -> torch.Tensor:
    """scipy sparse -> ``torch.sparse_coo_tensor`` (float32, coalesced)."""
    coo = sp.coo_matrix(adj)
    index = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    t = torch.sparse_coo_tensor(index, values, coo.shape, check_invariants=False).coalesce()
    return t.to(device) if device is not None else t


def sequences_from_lists(lists) -> list[np.ndarray]:
    """Helper for tests and scripts: python lists -> int64 arrays."""
    return [np.asarray(s, dtype=np.int64) for s in lists]
