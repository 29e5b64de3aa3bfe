"""k-means through FAISS: on the GPU when ``faiss.get_num_gpus() > 0``, on the CPU otherwise."""
from __future__ import annotations

from logging import getLogger

import numpy as np


def faiss_gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def kmeans(x, k: int, seed: int = 2020, niter: int = 20, spherical: bool = False,
           use_gpu: bool | None = None, max_points_per_centroid: int = 256,
           verbose: bool = False):
    """Seeded k-means over the rows of ``x``.

    Returns ``(centroids [k, d] float32, assignment [n] int64)``; the assignment is each row's
    nearest centroid (L2; inner product when ``spherical``). Same input and seed give the same
    result. ``k`` must be between 1 and the number of rows.
    """
    import faiss

    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"kmeans expects a non-empty 2-d matrix, got shape {x.shape}.")
    n, d = x.shape
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k={k} clusters requested for {n} points; need 1 <= k <= {n}.")
    if use_gpu is None:
        use_gpu = faiss_gpu_available()
    km = faiss.Kmeans(d, k, niter=int(niter), seed=int(seed), spherical=spherical,
                      gpu=bool(use_gpu), verbose=verbose,
                      max_points_per_centroid=int(max_points_per_centroid), min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    getLogger().debug(f"kmeans: {n} points, k={k}, {'GPU' if use_gpu else 'CPU'}")
    return km.centroids.astype(np.float32), assign[:, 0].astype(np.int64)
