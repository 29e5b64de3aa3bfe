"""Scale benchmark of the shared graph and clustering utilities (not a test).

    python -m recbole_mm.bench_scale [--items 100000] [--dim 512] [--interactions 2000000]
                                     [--knn_k 10] [--clusters 256] [--json out.json]

Generates data of the given size (clustered features, user sequences), then times, each in its
own forked process so its memory is measured alone: the co-occurrence graph (inverse-distance
weights), the modality kNN graph (FAISS, exact up to ``exact_max_items`` then IVF) and k-means.
Prints wall time, peak resident memory of the stage's process, and the memory the stage added
over the data it started from, plus the graph sizes (non-zeros), so the growth with the number
of non-zeros (never items squared) can be checked.

    python -m recbole_mm.bench_scale --eval [--items 1000000] [--dim 64] [--users 3000]
                                     [--eval_item_chunk 65536] [--json out.json]

Evaluation at scale instead: a synthetic catalogue (``--items`` items, a few thousand users with
uniformly drawn histories) written as an atomic dataset, loaded with the plugin's loaders, and one
full-ranking test evaluation of an untrained SASRec (item table ``items x dim`` float32) through
the chunked path (:mod:`recbole_mm.trainer.chunked_eval`), in a fresh (spawned) process: wall
time, peak resident memory of the evaluation (the process's high-water mark reset before it) and
of the whole process, what RecBole's own path would hold per batch, and a check of the top-k of
the first rows against ``torch.topk`` over their full score rows.
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


def _reset_peak_rss() -> bool:
    """Reset the process's resident-memory high-water mark (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    """The process's resident-memory high-water mark (``VmHWM``; since the last reset)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return _rss_mb()


def _eval_child(*args):
    queue = args[-1]
    try:
        _eval_measure(*args)
    except BaseException:  # the parent reports it instead of waiting forever
        import traceback

        queue.put({"error": traceback.format_exc()})


def _eval_measure(items, dim, users, eval_item_chunk, eval_batch_size, seed, check_rows, queue):
    import os
    import shutil
    import tempfile

    import torch

    from recbole_mm import registry
    from recbole_mm.config import MMConfig
    from recbole_mm.data.batching import data_preparation
    from recbole_mm.encoders.io import atomic_write_text
    from recbole_mm.quick_start import create_dataset
    from recbole_mm.trainer import chunked_eval as ce

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = tempfile.mkdtemp(prefix="scale_eval_")
    try:
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        folder = os.path.join(root, "scale_eval")
        os.makedirs(folder)
        lengths = rng.integers(5, 31, size=users)
        lines = ["user_id:token\titem_id:token\ttimestamp:float"]
        for u, n in enumerate(lengths):
            hist = rng.integers(1, items + 1, size=n)
            lines += [f"u{u}\ti{i}\t{t}" for t, i in enumerate(hist)]
        atomic_write_text(os.path.join(folder, "scale_eval.inter"), "\n".join(lines) + "\n")
        atomic_write_text(os.path.join(folder, "scale_eval.item"), "item_id:token\n" + "".join(
            f"i{i}\n" for i in range(1, items + 1)))
        config = MMConfig(model="SASRec", dataset="scale_eval", config_dict={
            "data_path": root, "load_col": {"inter": ["user_id", "item_id", "timestamp"],
                                            "item": ["item_id"]},
            "modalities": {}, "selected_features": [], "hidden_size": dim, "inner_size": dim,
            "n_layers": 1, "n_heads": 1, "eval_batch_size": eval_batch_size, "chunked_eval": True,
            "eval_item_chunk": eval_item_chunk, "state": "WARNING", "show_progress": False,
            "checkpoint_dir": os.path.join(root, "saved"), "seed": seed})
        train, valid, test = data_preparation(config, create_dataset(config))
        torch.manual_seed(seed)
        model = registry.get_model("SASRec")(config, train._dataset).eval()
        trainer = registry.get_trainer(type(model), config)(config, model)
        trainer.eval_collector.data_collect(train)
        n_items = int(test._dataset.item_num)
        setup_s = time.perf_counter() - t0
        before_mb = _current_rss_mb()
        load = os.getloadavg()[0]
        reset = _reset_peak_rss()
        t1 = time.perf_counter()
        result = trainer.evaluate(test, load_best_model=False)
        eval_s = time.perf_counter() - t1
        eval_peak_mb = _peak_rss_mb() if reset else None
        if not trainer._chunked_logged:
            raise RuntimeError("the chunked path did not run")
        with torch.no_grad():  # the chunked top-k of the first rows against torch.topk
            batch = next(iter(test))[0][:check_rows]
            full = model.full_sort_predict(batch)
            full[:, 0] = float("-inf")
            k = max(config["topk"])
            expect = torch.topk(full, k, dim=1).indices
            del full
            got = ce.topk_by_item_chunks(ce.full_sort_parts(model, batch), k, n_items, eval_item_chunk)
        recbole_gb = 2 * eval_batch_size * n_items * 4 / 2**30  # float32 scores + int32 positives
        queue.put({
            "items": n_items, "dim": dim, "users": users, "test_rows": len(test._dataset),
            "eval_batch_size": eval_batch_size, "eval_item_chunk": eval_item_chunk,
            "topk": list(config["topk"]), "threads": torch.get_num_threads(),
            "load_average_1min_before_eval": round(load, 2),
            "setup_seconds": round(setup_s, 2), "eval_seconds": round(eval_s, 2),
            "rss_before_eval_mb": round(before_mb, 1),
            "eval_peak_rss_mb": None if eval_peak_mb is None else round(eval_peak_mb, 1),
            "eval_added_mb": None if eval_peak_mb is None else round(eval_peak_mb - before_mb, 1),
            "process_peak_rss_mb": round(_rss_mb(), 1),
            "item_table_mb": round(n_items * dim * 4 / 2**20, 1),
            "recbole_path_per_batch_gb": round(recbole_gb, 2),
            "topk_check_rows": int(len(batch)), "topk_identical": bool(torch.equal(got, expect)),
            "result": {k: float(v) for k, v in result.items()},
        })
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_eval(items=1_000_000, dim=64, users=3000, eval_item_chunk=65536, eval_batch_size=2048,
             seed=0, check_rows=64):
    """One chunked full-ranking evaluation on a synthetic catalogue, in a spawned process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_eval_child, args=(items, dim, users, eval_item_chunk, eval_batch_size,
                                              seed, check_rows, q))
    p.start()
    res = q.get()
    p.join()
    if "error" in res:
        raise RuntimeError("the evaluation benchmark failed:\n" + res["error"])
    print(f"evaluation of {res['test_rows']} users x {res['items']} items (dim {dim}): "
          f"{res['eval_seconds']} s, peak RSS {res['eval_peak_rss_mb']} MB "
          f"(+{res['eval_added_mb']} MB over {res['rss_before_eval_mb']} MB before; process peak "
          f"{res['process_peak_rss_mb']} MB); RecBole's path: {res['recbole_path_per_batch_gb']} GB "
          f"per batch; top-k identical to torch.topk on {res['topk_check_rows']} rows: "
          f"{res['topk_identical']}", flush=True)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", action="store_true", help="evaluation at scale (see the module doc)")
    ap.add_argument("--items", type=int, default=None, help="100000; with --eval 1000000")
    ap.add_argument("--dim", type=int, default=None, help="512; with --eval 64")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--eval_item_chunk", type=int, default=65536)
    ap.add_argument("--eval_batch_size", type=int, default=2048)
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--knn_k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.eval:
        import datetime
        import os

        summary = run_eval(args.items or 1_000_000, args.dim or 64, args.users,
                           args.eval_item_chunk, args.eval_batch_size, args.seed)
        summary["command"] = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python -m "
                              f"recbole_mm.bench_scale " + " ".join(sys.argv[1:] if argv is None else argv))
        summary["date"] = datetime.date.today().isoformat()
    else:
        summary = run(args.items or 100_000, args.dim or 512, args.interactions, args.knn_k,
                      args.clusters, args.seed)
    if args.json:
        from recbole_mm.encoders.io import atomic_write_json

        atomic_write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
