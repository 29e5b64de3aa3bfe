"""Cost of the data path at scale: generate a synthetic log, ``prepare`` it, load it.

    python -m recbole_mm.prepare.scale --interactions 10000000 --users 1000000 --items 200000 \\
        --dim 384 --out benchmarks/results/data_scale_10M.json

Stages, each in its own process so that its peak memory (max RSS) is its own:

1. ``generate``: a CSV log (user, item, timestamp; item popularity Zipf-like, rows shuffled) and
   STAND-IN text features (random float32 ``[items, dim]`` + ids), not timed as a user cost;
2. ``prepare``: ``recbole_mm.prepare`` on the log (read, clean, k-core when ``--k_core``, sort,
   write the ``.inter`` and the yaml), no encoders;
3. ``load``: ``MMConfig`` + ``create_dataset`` (read, remap, align the features) +
   ``data_preparation`` (sliding-window augmentation, splits, loaders): what a user waits for
   before the first epoch.

Each stage reports seconds and peak RSS; the JSON (written atomically) also records the command,
the commit, the date, the CPU count and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

NAME = "synth"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def stage_generate(a) -> dict:
    import numpy as np
    import pandas as pd

    from recbole_mm.encoders.io import atomic_write_text, write_feature

    rng = np.random.default_rng(a.seed)
    os.makedirs(a.work_dir, exist_ok=True)
    # every user at least once, the rest spread; items by a Zipf-like popularity
    users = np.concatenate([np.arange(min(a.users, a.interactions)),
                            rng.integers(0, a.users, max(a.interactions - a.users, 0))])
    pop = 1.0 / np.arange(1, a.items + 1) ** 0.8
    items = rng.choice(a.items, size=a.interactions, p=pop / pop.sum())
    times = rng.integers(1_300_000_000, 1_400_000_000, a.interactions)
    order = rng.permutation(a.interactions)
    df = pd.DataFrame({"user_id": np.char.add("u", users[order].astype(str)),
                       "item_id": np.char.add("i", items[order].astype(str)),
                       "timestamp": times[order]})
    import io

    buf = io.StringIO()
    df.to_csv(buf, index=False)
    atomic_write_text(os.path.join(a.work_dir, "log.csv"), buf.getvalue())
    feats = rng.standard_normal((a.items, a.dim), dtype=np.float32)
    write_feature(os.path.join(a.work_dir, "features"), NAME, "text", feats,
                  ids=[f"i{k}" for k in range(a.items)])
    return {"interactions": a.interactions, "users": a.users, "items": a.items, "dim": a.dim}


def stage_prepare(a) -> dict:
    from recbole_mm.prepare.pipeline import prepare

    rep = prepare(os.path.join(a.work_dir, "log.csv"), NAME, out=os.path.join(a.work_dir, "data", NAME),
                  user_k=a.k_core, item_k=a.k_core, progress=False, log=lambda *_: None)
    return {"interactions": rep["stats"]["interactions"], "users": rep["stats"]["users"],
            "items": rep["stats"]["items"], "steps": rep["steps"]}


def stage_load(a) -> dict:
    from recbole.data import data_preparation

    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    t0 = time.perf_counter()
    cfg = MMConfig("SASRec", NAME, config_file_list=[os.path.join(a.work_dir, "data", NAME, f"{NAME}.yaml")],
                   config_dict={"data_path": os.path.join(a.work_dir, "data"), "state": "WARNING",
                                "feature_dir": os.path.join(a.work_dir, "features"),
                                "modalities": {"text": {"file": f"{NAME}.text.npy"}},
                                "show_progress": False, "checkpoint_dir": os.path.join(a.work_dir, "saved")})
    t1 = time.perf_counter()
    ds = create_dataset(cfg)
    t2 = time.perf_counter()
    n_inter = int(ds.inter_num)  # before the sliding-window augmentation of data_preparation
    train, valid, test = data_preparation(cfg, ds)
    t3 = time.perf_counter()
    return {"interactions": n_inter, "users": int(ds.user_num - 1), "items": int(ds.item_num - 1),
            "feature_dim": int(ds.modality_features["text"].shape[1]),
            "train_rows": len(train.dataset.inter_feat),
            "seconds_config": round(t1 - t0, 3), "seconds_dataset": round(t2 - t1, 3),
            "seconds_splits_and_loaders": round(t3 - t2, 3)}


STAGES = {"generate": stage_generate, "prepare": stage_prepare, "load": stage_load}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recbole_mm.prepare.scale", description=__doc__.splitlines()[0])
    p.add_argument("--interactions", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=384, help="text feature dimension (stand-in values)")
    p.add_argument("--k_core", type=int, default=0, help="k-core in the prepare stage (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work_dir", default="scale_work", help="where the log and the dataset are written")
    p.add_argument("--out", help="result JSON (e.g. benchmarks/results/data_scale_10M.json)")
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)  # internal: one stage
    return p


def _provenance(argv) -> dict:
    from recbole_mm.config import PROJECT_DIR

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"command": " ".join(["python -m recbole_mm.prepare.scale", *argv]), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "cpus": os.cpu_count(),
            "load_avg_before": list(os.getloadavg())}


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parser().parse_args(argv)
    a.work_dir = os.path.abspath(a.work_dir)
    if a.stage:  # child process: run one stage, print one JSON line
        t0 = time.perf_counter()
        info = STAGES[a.stage](a)
        print(json.dumps(dict(info, stage=a.stage, seconds=round(time.perf_counter() - t0, 3),
                              peak_rss_mb=round(_peak_mb(), 1))))
        return info
    result = dict(_provenance(argv), stages=[])
    env = dict(os.environ)
    from recbole_mm.config import PROJECT_DIR

    env["PYTHONPATH"] = PROJECT_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for stage in STAGES:
        print(f"[scale] {stage} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "recbole_mm.prepare.scale", *argv, "--stage", stage,
                               "--work_dir", a.work_dir], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"[scale] stage {stage} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        rec = json.loads(line)
        result["stages"].append(rec)
        print(f"[scale] {stage}: {rec['seconds']:.1f} s, peak RSS {rec['peak_rss_mb']:.0f} MB", flush=True)
    result["load_avg_after"] = list(os.getloadavg())
    if a.out:
        from recbole_mm.encoders.io import atomic_write_json

        atomic_write_json(a.out, result)
        print(f"[scale] wrote {a.out}")
    return result


if __name__ == "__main__":
    main()
