"""Paired significance tests over test users: per dataset, every row of the compared table
against a reference row (``--reference``, default SASRec), metric by metric.

Each finished cell saves its per-user test values beside its record (``<cell id>.users.npz``:
``user`` = raw user tokens, one array per top-k metric of the protocol at each cut-off). For a
row and the reference, the seeds both ran are used; a user's value is the mean over those
seeds, users are paired by token, and the difference is tested with the Wilcoxon signed-rank
test (default; zero differences dropped, scipy's ``wilcoxon``) or the paired t-test
(``ttest_rel``). Identical values give p = 1. No correction for multiple comparisons is applied.
Cells recorded without per-user values (older harness versions) are reported as such.
The reference row may live in another results folder (``--reference_dir``), e.g. the full
model of an ablation table whose variants ran into a folder of their own.
"""
from __future__ import annotations

import os

from recbole_mm.benchmark.common import CELL_STATUS_DONE, load_cells

DEFAULT_REFERENCE = "SASRec"
TESTS = {"wilcoxon": "Wilcoxon signed-rank test", "ttest": "paired t-test"}
LEVELS = ((0.01, "**"), (0.05, "*"))


def marker(p) -> str:
    """``'**'`` for p < 0.01, ``'*'`` for p < 0.05, else ``''``."""
    for level, mark in LEVELS:
        if p is not None and p < level:
            return mark
    return ""


def paired_p(a, b, test: str = "wilcoxon") -> float:
    """Two-sided p-value of a paired test between equal-length value arrays ``a`` and ``b``."""
    import numpy as np
    from scipy import stats

    if test not in TESTS:
        raise ValueError(f"significance test: expected one of {', '.join(TESTS)}, got {test!r}")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    if len(d) == 0:
        return None
    if not np.any(d):
        return 1.0  # identical values: no difference
    if test == "ttest":
        if np.all(d == d[0]):
            return 0.0  # a constant non-zero difference
        return float(stats.ttest_rel(a, b).pvalue)
    return float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)


def load_per_user(out_dir: str, rec: dict):
    """``{metric: {user: value}}`` of a cell, or None when it recorded none."""
    info = rec.get("per_user") or {}
    path = os.path.join(out_dir, "cells", info.get("file") or "")
    if not info.get("file") or not os.path.isfile(path):
        return None
    import numpy as np

    with np.load(path, allow_pickle=False) as npz:
        users = [str(u) for u in npz["user"]]
        keys = _unique(users)
        return {m: dict(zip(keys, npz[m].tolist())) for m in npz.files if m != "user"}


def _unique(users):
    """A user with several test rows gets ``token#2``, ``token#3``, ... for the later ones."""
    seen, out = {}, []
    for u in users:
        seen[u] = seen.get(u, 0) + 1
        out.append(u if seen[u] == 1 else f"{u}#{seen[u]}")
    return out


def latest_ok(records, dataset, label) -> dict:
    """``{seed: record}``: the most recently finished ok cell of each seed of a row."""
    out = {}
    for r in records:
        if (r["dataset"] == dataset and r["label"] == label and not r.get("noise")
                and r.get("status") == CELL_STATUS_DONE):
            seed = r.get("seed")
            if seed not in out or str(r.get("finished") or "") >= str(out[seed].get("finished") or ""):
                out[seed] = r
    return out


def _mean_over_seeds(out_dir, recs):
    """``{metric: {user: mean over recs}}`` for users and metrics every cell has; None when a
    cell has no per-user values."""
    loaded = [load_per_user(out_dir, r) for r in recs]
    if not loaded or any(x is None for x in loaded):
        return None
    metrics = set.intersection(*(set(x) for x in loaded))
    out = {}
    for m in metrics:
        users = set.intersection(*(set(x[m]) for x in loaded))
        out[m] = {u: sum(x[m][u] for x in loaded) / len(loaded) for u in users}
    return out


def reference_label(dataset_rows, reference: str):
    """The row of the reference: the row labelled ``reference``, else the only row of that model."""
    labels = [r["label"] for r in dataset_rows]
    if reference in labels:
        return reference
    same_model = [r["label"] for r in dataset_rows if r["model"] == reference]
    return same_model[0] if len(same_model) == 1 else None


def compare(out_dir, records, dataset, rows, metrics, reference=DEFAULT_REFERENCE,
            test="wilcoxon", reference_dir=None) -> dict:
    """Tests of every row of ``rows`` (one dataset's compared table) against the reference.

    ``reference_dir``: another results folder holding the reference row (e.g. the full model of
    an ablation table run into a folder of its own); every row of this table is then tested
    against that folder's row, over the seeds both ran.

    Returns ``{"reference": label or None, "test": name, "results": [...], "notes": [...]}``,
    one result per row and metric: mean of each side over the paired users, difference, p, mark.
    """
    ref_dir, ref_records = out_dir, records
    if reference_dir:
        ref_dir = reference_dir
        ref_records = [r for r in load_cells(reference_dir).values()
                       if r.get("dataset") == dataset and r.get("status") == CELL_STATUS_DONE]
        # one entry per row, so that "the only row of that model" counts rows, not seeds
        ref = reference_label(list({r["label"]: r for r in ref_records}.values()), reference)
        where = f"the folder {reference_dir}"
    else:
        ref = reference_label(rows, reference)
        where = "this table"
    out = {"reference": ref, "test": test, "results": [], "notes": []}
    if ref is None:
        out["notes"].append(f"no significance test: the reference {reference} is not a row of "
                            f"{where} (--reference names a row label or model)")
        return out
    if reference_dir:
        out["reference_dir"] = reference_dir
    ref_cells = latest_ok(ref_records, dataset, ref)
    missing = []  # rows (or the reference) with cells recorded without per-user values
    for row in rows:
        if row["label"] == ref and not reference_dir:
            continue
        cells = latest_ok(records, dataset, row["label"])
        seeds = sorted(set(cells) & set(ref_cells))
        if not seeds:
            out["notes"].append(f"{row['label']}: no seed in common with {ref}")
            continue
        ours = _mean_over_seeds(out_dir, [cells[s] for s in seeds])
        theirs = _mean_over_seeds(ref_dir, [ref_cells[s] for s in seeds])
        if ours is None or theirs is None:
            missing.append(ref if theirs is None else row["label"])
            continue
        for m in metrics:
            if m not in ours or m not in theirs:
                continue
            users = sorted(set(ours[m]) & set(theirs[m]))
            a = [ours[m][u] for u in users]
            b = [theirs[m][u] for u in users]
            p = paired_p(a, b, test)
            mean_a = sum(a) / len(a) if a else None
            mean_b = sum(b) / len(b) if b else None
            out["results"].append({
                "dataset": dataset, "label": row["label"], "reference": ref, "metric": m,
                "seeds": " ".join(str(s) for s in seeds), "users": len(users), "mean": mean_a,
                "reference_mean": mean_b,
                "diff": None if mean_a is None else mean_a - mean_b, "p": p, "test": test,
                "mark": marker(p)})
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        what = "no row tested" if ref in missing else "not tested"
        out["notes"].append(f"{what}: cells without per-user test values (recorded before the "
                            f"harness saved them) in {names}")
    return out


def markdown(comparison: dict, display=None) -> list[str]:
    """The report's lines under a compared table: the legend and one line of p-values per row
    (``display(label)``: the text shown for a row, default its label)."""
    display = display or (lambda label: label)
    notes = [f"Significance: {note}." for note in comparison["notes"]]
    res = comparison["results"]
    if not res:
        return notes + ([""] if notes else [])
    ref, name = comparison["reference"], TESTS[comparison["test"]]
    where = (f" (its runs in {comparison['reference_dir']})" if comparison.get("reference_dir")
             else "")
    metrics = list(dict.fromkeys(r["metric"] for r in res))
    lines = [f"Marks: difference from {ref}{where} over the same test users, {name} (two-sided), "
             "paired per user (each user's value averaged over the seeds both rows ran); "
             "`*` p < 0.05, `**` p < 0.01; no correction for multiple comparisons.", "",
             f"| vs {ref} | seeds | users | " + " | ".join(metrics) + " |",
             "|" + "---|" * (len(metrics) + 3)]
    for label in dict.fromkeys(r["label"] for r in res):
        got = {r["metric"]: r for r in res if r["label"] == label}
        first = next(iter(got.values()))
        cells = []
        for m in metrics:
            r = got.get(m)
            cells.append("-" if r is None or r["p"] is None else
                         f"{r['diff']:+.4f} (p={_p(r['p'])}){' ' + r['mark'] if r['mark'] else ''}")
        lines.append(f"| {display(label)} | {first['seeds']} | {first['users']:,} | " + " | ".join(cells) + " |")
    return lines + ([""] + notes if notes else []) + [""]


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"
