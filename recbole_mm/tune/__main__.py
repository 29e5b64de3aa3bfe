"""``python -m recbole_mm.tune --model=SGP4SR --dataset=scientific_mm --trials 30 --out runs/tune_sgp4sr``

Searches the model's shipped space (``properties/spaces/<Model>.yaml``) or ``--space file.yaml``
with Optuna (TPE, median pruning on every validation); any other ``--key=value`` fixes that
configuration key for every trial. Running the command again continues the study stored in
``<out>/study.db`` (or ``--storage URL``). Writes ``results.csv``, ``results.md``, ``best.yaml``
and ``search.png`` under ``--out``.
"""
from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recbole_mm.tune", allow_abbrev=False,
                                description=__doc__.strip().splitlines()[0].strip("`"),
                                epilog="Every other --key=value fixes that configuration key "
                                       "for every trial (it is then not searched).")
    p.add_argument("--model", "-m", required=True, help="model name (plugin or RecBole)")
    p.add_argument("--dataset", "-d", required=True, help="dataset name")
    p.add_argument("--trials", type=int, default=30,
                   help="finished (complete or pruned) trials the study should hold (default 30)")
    p.add_argument("--out", default=None, help="output folder (default runs/tune_<model>_<dataset>)")
    p.add_argument("--space", default=None,
                   help="search-space yaml (default properties/spaces/<Model>.yaml)")
    p.add_argument("--storage", default=None,
                   help="database URL of the study (default sqlite:///<out>/study.db)")
    p.add_argument("--study_name", default=None, help="default <Model>_<dataset>")
    p.add_argument("--config_files", default=None, help="space-separated yaml files, as run_recbole_mm.py")
    p.add_argument("--sampler_seed", type=int, default=None,
                   help="TPE seed (default: the configuration's seed)")
    p.add_argument("--pruner", choices=("median", "none"), default="median")
    p.add_argument("--prune_startup", type=int, default=5,
                   help="finished trials before pruning starts (default 5)")
    p.add_argument("--prune_warmup", type=int, default=3,
                   help="validations of a trial before it can be pruned (default 3)")
    p.add_argument("--keep_checkpoints", action="store_true",
                   help="keep every trial's checkpoints under <out>/checkpoints/trial_<n>")
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, rest = build_parser().parse_known_args(argv)

    from recbole_mm.config import ConfigError, parse_overrides
    from recbole_mm.data.dataset import DatasetFilesError
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.registry import UnknownNameError
    from recbole_mm.tune.space import SpaceError
    from recbole_mm.tune.study import StudyMismatchError, tune

    fixed = parse_overrides(rest)
    out = args.out or f"runs/tune_{args.model.lower()}_{args.dataset}"
    files = args.config_files.split() if args.config_files else None
    log = logging.getLogger("recbole_mm.tune")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(logging.StreamHandler())
    try:
        res = tune(args.model, args.dataset, args.trials, out, space_file=args.space, fixed=fixed,
                   config_files=files, storage=args.storage, study_name=args.study_name,
                   sampler_seed=args.sampler_seed, pruner=args.pruner,
                   prune_startup=args.prune_startup, prune_warmup=args.prune_warmup,
                   keep_checkpoints=args.keep_checkpoints)
    except (SpaceError, StudyMismatchError, UnknownNameError, FeatureFileError,
            DatasetFilesError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: the study is kept in {args.storage or out}; run the same command "
              f"again to continue it", file=sys.stderr)
        return 130
    study = res["study"]
    states = [t.state.name.lower() for t in study.get_trials(deepcopy=False)]
    counts = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    print(f"study '{study.study_name}' ({res['storage']}): {counts}")
    for kind, path in sorted(res["files"].items()):
        print(f"  {kind}: {path}")
    if "best" not in res["files"]:
        print(f"error: no trial completed; last error: {res['failures'].last_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
