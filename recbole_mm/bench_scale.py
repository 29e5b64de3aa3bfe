"""Scale benchmark of the shared graph and clustering utilities (not a test).

    python -m recbole_mm.bench_scale [--items 100000] [--dim 512] [--interactions 2000000]
                                     [--knn_k 10] [--clusters 256] [--json out.json]

Generates data of the given size (clustered features, user sequences), then times, each in its
own forked process so its memory is measured alone: the co-occurrence graph (inverse-distance
weights), the modality kNN graph (FAISS, exact up to ``exact_max_items`` then IVF) and k-means.
Prints wall time, peak resident memory of the stage's process, and the memory the stage added
over the data it started from, plus the graph sizes (non-zeros), so the growth with the number
of non-zeros (never items squared) can be checked.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time

import numpy as np


def make_data(items: int, dim: int, interactions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_clusters = max(2, items // 100)
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    label = rng.integers(0, n_clusters, size=items)
    x = centers[label] + 0.5 * rng.normal(size=(items, dim)).astype(np.float32)
    x[0] = 0  # padding
    lengths = rng.integers(5, 36, size=interactions // 20 * 2)
    lengths = lengths[np.cumsum(lengths) <= interactions]
    flat = rng.integers(1, items, size=int(lengths.sum()))
    seqs = np.split(flat, np.cumsum(lengths)[:-1])
    return x, seqs


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _stage(name, fn, queue):
    base = _current_rss_mb()
    t0 = time.perf_counter()
    info = fn()
    secs = time.perf_counter() - t0
    peak = _rss_mb()
    queue.put({"stage": name, "seconds": round(secs, 2), "peak_rss_mb": round(peak, 1),
               "added_mb": round(peak - base, 1), **info})


def run(items=100_000, dim=512, interactions=2_000_000, knn_k=10, clusters=256, seed=0):
    from recbole_mm.data import graphs
    from recbole_mm.data.cluster import kmeans

    x, seqs = make_data(items, dim, interactions, seed)
    n_inter = int(sum(len(s) for s in seqs))

    def cooc():
        a = graphs.cooccurrence_matrix(seqs, items, weight="inverse_distance")
        return {"nnz": int(a.nnz)}

    def knn():
        g, idx, _ = graphs.knn_graph(x, knn_k, return_arrays=True)
        # recall of the (approximate above exact_max_items) neighbours against exact search
        rng = np.random.default_rng(seed)
        q = rng.choice(np.arange(1, items), size=min(500, items - 1), replace=False)
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = xn[q] @ xn.T
        sims[:, 0] = -np.inf
        sims[np.arange(len(q)), q] = -np.inf
        exact = np.argpartition(-sims, knn_k, axis=1)[:, :knn_k]
        recall = np.mean([len(set(exact[i]) & set(idx[q[i]])) / knn_k for i in range(len(q))])
        return {"nnz": int(g.nnz), "recall_vs_exact": round(float(recall), 4)}

    def km():
        c, a = kmeans(x[1:], clusters, seed=seed)
        return {"k": int(c.shape[0]), "used_clusters": int(len(np.unique(a)))}

    ctx = mp.get_context("fork")
    results = []
    for name, fn in (("cooccurrence", cooc), ("knn", knn), ("kmeans", km)):
        q = ctx.Queue()
        p = ctx.Process(target=_stage, args=(name, fn, q))
        p.start()
        res = q.get()
        p.join()
        results.append(res)
        print(f"{name:>12}: {res['seconds']:7.2f} s  peak RSS {res['peak_rss_mb']:8.1f} MB  "
              f"(+{res['added_mb']:.1f} MB)  " + ", ".join(f"{k}={v}" for k, v in res.items()
                                                        if k not in ("stage", "seconds", "peak_rss_mb", "added_mb")),
              flush=True)
    total = sum(r["seconds"] for r in results)
    summary = {"items": items, "dim": dim, "interactions": n_inter, "sequences": len(seqs),
               "knn_k": knn_k, "clusters": clusters, "stages": results,
               "total_seconds": round(total, 2),
               "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results)}
    print(f"{'total':>12}: {total:7.2f} s  max peak RSS {summary['max_peak_rss_mb']:.1f} MB "
          f"({items} items x {dim}-d, {n_inter} interactions)")
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--knn_k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    summary = run(args.items, args.dim, args.interactions, args.knn_k, args.clusters, args.seed)
    if args.json:
        from recbole_mm.encoders.io import atomic_write_json

        atomic_write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
