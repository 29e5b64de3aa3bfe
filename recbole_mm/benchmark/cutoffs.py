"""Hit and NDCG at other cut-offs, recovered from finished cells' per-user test values.

With one target per test row (leave-one-out), a row's NDCG@N is ``1 / log2(r + 1)`` when its
target ranks at ``r <= N`` and 0 otherwise, so the rank itself is recoverable for ``r <= N``, and
Hit@k and NDCG@k follow for every ``k <= N``. Records made before a cut-off was wanted can so be
compared with a table that used it, without training again.

The case that needs it: MISSRec's and DeCoRec's released code ship a copy of RecBole 1.0.1 that
ranks ``max(topk) + 1`` items and reads the value at index ``k`` (not ``k - 1``), so what their
tables print as Hit@10 / NDCG@10 is Hit@11 / NDCG@11 here (docs/REPRODUCTION.md).

    python -m recbole_mm.benchmark.cutoffs --out=benchmarks/results/full_scientific_mm --at=10,11
"""
from __future__ import annotations

import argparse
import math
import statistics

from recbole_mm.benchmark.common import CELL_STATUS_DONE, load_cells
from recbole_mm.benchmark.report import _fmt
from recbole_mm.benchmark.significance import latest_ok, load_per_user

_TOLERANCE = 1e-3  # per-user values are stored as float32


def target_ranks(ndcg_values, depth: int, where: str = "per-user values") -> list[float]:
    """Each row's target rank from its NDCG@``depth`` (``math.inf`` beyond ``depth``).

    Raises ``ValueError`` naming ``where`` for a value no single target gives."""
    ranks = []
    for v in ndcg_values:
        v = float(v)
        if v <= 0:
            ranks.append(math.inf)
            continue
        r = 2.0 ** (1.0 / v) - 1.0
        if v > 1 + _TOLERANCE or abs(r - round(r)) > _TOLERANCE * max(1.0, r) or round(r) > depth:
            raise ValueError(f"{where}: NDCG@{depth} value {v:.6f} is not 1/log2(rank + 1) for a "
                             f"rank within {depth}; cut-offs can be recovered only with one "
                             f"target per test row")
        ranks.append(float(round(r)))
    return ranks


def at_cutoffs(ranks, ks) -> dict[str, float]:
    """``{'hit@k': mean, 'ndcg@k': mean}`` over the rows, for each ``k``."""
    n = len(ranks)
    if not n:
        raise ValueError("no test rows")
    out = {}
    for k in ks:
        out[f"hit@{k}"] = sum(r <= k for r in ranks) / n
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in ranks if r <= k) / n
    return out


def deepest_ndcg(metrics) -> int:
    """The largest N of the ``ndcg@N`` values a cell recorded (0 when none)."""
    return max((int(m.split("@")[1]) for m in metrics if m.startswith("ndcg@")), default=0)


def cell_cutoffs(out_dir: str, rec: dict, ks) -> dict[str, float] | None:
    """Hit@k / NDCG@k of one finished cell, or None when it recorded no per-user values."""
    per_user = load_per_user(out_dir, rec)
    if per_user is None:
        return None
    depth = deepest_ndcg(per_user)
    where = f"cell {rec.get('cell_id')}"
    if max(ks) > depth:
        raise ValueError(f"{where}: cut-off {max(ks)} is deeper than its deepest per-user NDCG "
                         f"(@{depth}); only k <= {depth} can be recovered")
    return at_cutoffs(target_ranks(per_user[f"ndcg@{depth}"].values(), depth, where), ks)


def table(out_dir: str, ks, dataset: str | None = None) -> list[dict]:
    """One row per (dataset, label): seeds, mean and sample std of Hit@k / NDCG@k over the
    row's cells the report uses (the latest finished one of each seed); cells without per-user
    values are counted, not used."""
    records = list(load_cells(out_dir).values())
    keys = sorted({(r["dataset"], r["label"]) for r in records
                   if r.get("status") == CELL_STATUS_DONE and not r.get("noise")
                   and (not dataset or r["dataset"] == dataset)})
    rows = []
    for ds, label in keys:
        got = [cell_cutoffs(out_dir, rec, ks) for rec in latest_ok(records, ds, label).values()]
        values = [g for g in got if g is not None]
        row = {"dataset": ds, "label": label, "seeds": len(values),
               "without_per_user": len(got) - len(values)}
        for m in (values[0] if values else {}):
            vals = [v[m] for v in values]
            row[m] = statistics.mean(vals)
            row[m + " std"] = statistics.stdev(vals) if len(vals) > 1 else None
        rows.append(row)
    return rows


def markdown(rows, ks) -> list[str]:
    metrics = [f"{name}@{k}" for k in ks for name in ("hit", "ndcg")]
    lines = ["| dataset | row | seeds | " + " | ".join(m.replace("hit", "Hit").replace(
        "ndcg", "NDCG") for m in metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for r in rows:
        if not r["seeds"]:
            lines.append(f"| {r['dataset']} | {r['label']} | 0 (no per-user values) |"
                         + " – |" * len(metrics))
            continue
        cells = [_fmt(r[m], r[m + " std"]) for m in metrics]
        lines.append(f"| {r['dataset']} | {r['label']} | {r['seeds']} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m recbole_mm.benchmark.cutoffs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="a benchmark results folder (with cells/)")
    p.add_argument("--at", default="10,11", help="comma list of cut-offs (default 10,11)")
    p.add_argument("--dataset", default=None, help="only this dataset's rows")
    args = p.parse_args(argv)
    try:
        ks = sorted({int(k) for k in args.at.split(",") if k.strip()})
    except ValueError:
        p.error(f"--at expects whole numbers separated by commas, got {args.at!r}")
    if not ks or ks[0] < 1:
        p.error("--at expects cut-offs of at least 1")
    try:
        rows = table(args.out, ks, args.dataset)
    except ValueError as exc:
        p.exit(2, f"error: {exc}\n")
    if not rows:
        p.exit(1, f"error: no finished cells in {args.out}/cells\n")
    print("\n".join(markdown(rows, ks)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
