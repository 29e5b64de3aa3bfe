"""``python -m recbole_mm.speed --models=SASRec,SGP4SR --dataset=scientific_mm --hidden_size=300``"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recbole_mm.speed",
                                     description="RecBole's padded path vs the padding-free path")
    parser.add_argument("--models", default="SASRec", help="comma-separated model names")
    parser.add_argument("--dataset", default="scientific_mm")
    parser.add_argument("--epochs_timed", type=int, default=2,
                        help="training epochs timed per path (the fastest is reported)")
    parser.add_argument("--eval_repeats", type=int, default=2)
    parser.add_argument("--paths", default="padded,trimmed",
                        help="which paths to run: padded,trimmed (default) or one of them")
    parser.add_argument("--parts", action="store_true",
                        help="also time one trimmed epoch by part (forward per sub-module, "
                             "backward, optimizer step)")
    parser.add_argument("--json", default=None, help="write the full result here (atomic)")
    parser.add_argument("--markdown", default=None, help="write the table here (atomic)")
    args, rest = parser.parse_known_args(argv)
    from recbole_mm.config import parse_overrides
    from recbole_mm.cost import provenance
    from recbole_mm.encoders.io import atomic_write_json, atomic_write_text
    from recbole_mm.speed.floor import matmul_rate
    from recbole_mm.speed.measure import measure_paths
    from recbole_mm.speed.report import markdown, summarise

    overrides = parse_overrides(rest)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise SystemExit("error: --models names no model")
    rows, raw, rate = [], {}, None
    for name in models:
        print(f"[speed] {name} on {args.dataset}: padded path, then trimmed path ...", flush=True)
        paths = measure_paths(name, args.dataset, overrides, args.epochs_timed, args.eval_repeats,
                              parts=args.parts,
                              paths=[p.strip() for p in args.paths.split(",") if p.strip()])
        if rate is None:  # measured after the first model's data is known
            first = next(iter(paths.values()))
            rate = matmul_rate(first["hidden_size"], first["n_items"])
        raw[name] = paths
        rows.append(summarise(name, paths, rate["rate"]))
        print(json.dumps(rows[-1]), flush=True)
        if args.parts:
            print(json.dumps({"model": name, "parts": paths.get("trimmed", {}).get("parts")}),
                  flush=True)
    table = markdown(rows, args.dataset)
    print(table)
    out = {"dataset": args.dataset, "overrides": overrides, "matmul_flops_per_s": rate,
           "rows": rows, "runs": raw, "provenance": provenance("recbole_mm.speed", argv)}
    if args.json:
        atomic_write_json(args.json, out)
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
