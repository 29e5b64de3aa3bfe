"""The command line: ``python -m recbole_mm.benchmark`` (see the package docstring), its
``meta.json`` (settings and provenance of every command that wrote to a results folder), and the
hidden entry point of an isolated cell process."""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time

from recbole_mm.benchmark import significance
from recbole_mm.benchmark.common import (PROJECT_DIR, atomic_write_text, device_description,
                                         git_commit, jsonable, safe_name)
from recbole_mm.benchmark.grid import PROFILES, build_grid, parse_models, parse_noise
from recbole_mm.benchmark.report import write_report
from recbole_mm.benchmark.run import run_grid, worker
from recbole_mm.config import parse_overrides


# meta.json keys the report's significance tests read (each also a command-line flag);
# unset, the report uses SASRec and the Wilcoxon test
SIGNIFICANCE_KEYS = ("reference", "reference_dir", "significance_test")


def merge_meta(out_dir: str, meta: dict, grid_wall_s=None) -> dict:
    """Write ``meta.json``: this grid's settings, the union of the cells of every grid run into
    this folder (in order), and one ``history`` entry per command that wrote to it. The folder's
    significance settings (``reference``, ``reference_dir``, ``significance_test``) stay as they
    were unless this grid names them (a run that adds a seed keeps the folder's reference)."""
    path = os.path.join(out_dir, "meta.json")
    prev = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                prev = json.load(f)
        except (OSError, json.JSONDecodeError):
            prev = {}
    entry = {k: meta.get(k) for k in ("command", "date", "commit", "device")}
    entry["cells"] = len(meta.get("grid_cells") or meta.get("cells") or [])
    entry["grid_wall_s"] = grid_wall_s
    history = [h for h in prev.get("history", [])
               if (h.get("date"), h.get("command")) != (entry["date"], entry["command"])]
    history.append(entry)
    cells = list(prev.get("cells") or [])
    cells += [c for c in meta.get("grid_cells") or meta.get("cells") or [] if c not in cells]
    out = dict(meta, cells=cells, history=history)
    for key in SIGNIFICANCE_KEYS:
        if out.get(key) is None and prev.get(key) is not None:
            out[key] = prev[key]
    out.setdefault("grid_cells", meta.get("cells"))
    atomic_write_text(path, json.dumps(jsonable(out), indent=1))
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m recbole_mm.benchmark",
                                description="models x datasets x seeds benchmark for recbole_mm")
    p.add_argument("--models", default=None,
                   help="comma list: names, 'baselines', 'papers', 'all', or LABEL=MODEL{key: v}")
    p.add_argument("--datasets", default=None, help="comma list of dataset names")
    p.add_argument("--seeds", default=None, help="comma list of seeds (default 2020)")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES),
                   help="quick (CPU smoke, mm_sample), short (CPU), full (paper defaults; CPU or GPU)")
    p.add_argument("--quick", action="store_true", help="= --profile=quick")
    p.add_argument("--grid", default=None, help="yaml with models / datasets / seeds / profile / config")
    p.add_argument("--noise", default=None,
                   help="modality-mismatch curve, MODALITY:F1,F2,... (config key feature_noise)")
    p.add_argument("--name", default=None, help="results folder name under --results_dir")
    p.add_argument("--results_dir", default=os.path.join(PROJECT_DIR, "benchmarks", "results"))
    p.add_argument("--out", default=None, help="results folder (overrides --results_dir/--name)")
    p.add_argument("--scratch", default=None,
                   help="checkpoints, training states and logs (default <out>/scratch with --out, "
                        "else benchmarks/runs/<name>, git-ignored)")
    p.add_argument("--force", action="store_true", help="rerun finished cells")
    p.add_argument("--no_isolate", action="store_true",
                   help="run cells in this process (faster start; peak memory becomes shared)")
    p.add_argument("--cell_timeout", type=float, default=None,
                   help="seconds per cell (isolated); a stopped cell records what it reached and "
                        "resumes from its training state on the next run")
    p.add_argument("--reference", default=None,
                   help=f"row (label or model) every row of its table is tested against, per "
                        f"dataset: the compared table, or the paper-protocol table when the "
                        f"row is one of its (default {significance.DEFAULT_REFERENCE})")
    p.add_argument("--reference_dir", default=None,
                   help="results folder holding the reference row, when it is not a row of "
                        "--out (e.g. an ablation folder tested against the full model's runs)")
    p.add_argument("--significance_test", default=None, choices=sorted(significance.TESTS),
                   help="paired test over test users (default wilcoxon)")
    p.add_argument("--report", action="store_true", help="only rewrite tables and plots")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--dry_run", action="store_true", help="list the cells and exit")
    p.add_argument("--config_files", default=None, help="space-separated yaml files (all cells)")
    # internal: one isolated cell
    p.add_argument("--_cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_scratch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_users", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_base_dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_fresh", action="store_true", help=argparse.SUPPRESS)
    return p


def _csv_list(s):
    if s is None:
        return None
    if isinstance(s, (list, tuple)):
        return [str(x) for x in s]
    return [x.strip() for x in str(s).split(",") if x.strip()]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    if args._cell:  # isolated worker
        return worker(args._cell, args._result, args._scratch or os.getcwd(), args._users,
                      args._base_dir, args._fresh)

    overrides = parse_overrides(rest)
    grid = {}
    if args.grid:
        import yaml

        with open(args.grid) as f:
            grid = yaml.safe_load(f) or {}
    profile = "quick" if args.quick else (args.profile or grid.get("profile") or "quick")
    prof = PROFILES[profile]
    profile_config = dict(prof["config"])
    profile_config.update(grid.get("config") or {})
    if args.config_files:
        overrides.setdefault("_config_files", args.config_files)
    config_files = overrides.pop("_config_files", None)
    if config_files:
        import yaml

        for path in str(config_files).split():
            with open(path) as f:
                profile_config.update(yaml.safe_load(f) or {})
    models = parse_models(args.models or grid.get("models") or "baselines")
    datasets = _csv_list(args.datasets) or _csv_list(grid.get("datasets")) or prof["datasets"]
    seeds = [int(s) for s in (_csv_list(args.seeds) or _csv_list(grid.get("seeds")) or ["2020"])]
    noise = parse_noise(args.noise or grid.get("noise"))
    if noise:
        try:
            from recbole_mm.data.noise import parse_feature_noise  # noqa: F401
        except ImportError:
            raise SystemExit("error: --noise needs recbole_mm.data.noise (feature_noise) "
                             "which this checkout lacks") from None
    name = args.name or grid.get("name") or f"{profile}_{'_'.join(datasets)}"
    out_dir = os.path.abspath(args.out or os.path.join(args.results_dir, name))
    # scratch files (checkpoints, training states, logs) under the folder the user named
    default_scratch = (os.path.join(out_dir, "scratch") if args.out else
                       os.path.join(PROJECT_DIR, "benchmarks", "runs", safe_name(name)))
    scratch = os.path.abspath(args.scratch or default_scratch)
    cells = build_grid(models, datasets, seeds, profile_config, overrides, noise,
                       baseline_config=prof.get("baseline_config"),
                       model_config=prof.get("model_config"))
    command = "python -m recbole_mm.benchmark " + " ".join(shlex.quote(a) for a in argv)
    if args.dry_run:
        for c in cells:
            print(c.cell_id, json.dumps(c.config, sort_keys=True))
        return 0
    os.makedirs(out_dir, exist_ok=True)
    meta = {"name": name, "command": command, "profile": profile,
            "profile_description": prof["description"], "profile_config": profile_config,
            "baseline_config": prof.get("baseline_config") or {},
            "model_config": prof.get("model_config") or {},
            "overrides": overrides, "models": [list(m) for m in models], "datasets": datasets,
            "seeds": seeds, "noise": list(noise) if noise else None,
            "commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"), "device": device_description(),
            "cells": [c.cell_id for c in cells],
            "reference": args.reference, "significance_test": args.significance_test}
    if args.reference_dir:
        if not os.path.isdir(os.path.join(args.reference_dir, "cells")):
            raise SystemExit(f"error: --reference_dir {args.reference_dir}: not a results folder "
                             f"(expected {os.path.join(args.reference_dir, 'cells')}/ with the "
                             f"reference row's cell records)")
        meta["reference_dir"] = args.reference_dir
    if args.report and os.path.exists(os.path.join(out_dir, "meta.json")):
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
        meta.update({k: getattr(args, k) for k in SIGNIFICANCE_KEYS if getattr(args, k)})
    if not args.report:
        meta = merge_meta(out_dir, meta)
        t0 = time.perf_counter()
        run_grid(cells, out_dir, scratch, isolate=not args.no_isolate, force=args.force,
                 timeout=args.cell_timeout, command=command,
                 log=lambda s: print(s, flush=True))
        meta = merge_meta(out_dir, meta, grid_wall_s=round(time.perf_counter() - t0, 1))
    rep = write_report(out_dir, meta, plots=not args.no_plots)
    print(rep["markdown"])
    print(f"\nresults: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
