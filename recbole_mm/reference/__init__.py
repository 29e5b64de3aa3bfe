"""The papers' reported numbers, as package data (one CSV per paper, one row per number).

Columns: ``paper, table, dataset, our_dataset, model, our_model, setting, metric,
metric_printed, printed, value, compare, note``. ``dataset`` / ``model`` / ``metric_printed`` /
``printed`` are as the paper prints them; ``metric`` is RecBole's lower-case name
(``recall@10``, ``ndcg@10``, ``hit@10``); ``value`` is a fraction (MMSR's percentages divided by
100; relative changes are signed fractions); ``our_dataset`` / ``our_model`` name the recbole_mm
dataset and model when one exists (empty otherwise). ``compare=1`` marks the numbers
:mod:`recbole_mm.benchmark` prints beside ours: main-comparison tables, each model's full
setting. The CSVs were written by ``benchmarks/tools/transcribe_reference.py`` from the specs'
copies of the tables; ``tests/test_benchmark_reference.py`` checks every printed number against
the papers' own text.

    >>> from recbole_mm import reference
    >>> [r["value"] for r in reference.lookup("scientific_mm", "SASRec", "recall@10")]
    [0.1523]
"""
from __future__ import annotations

import csv
import os
from functools import lru_cache

HERE = os.path.dirname(os.path.abspath(__file__))
PAPERS = ["SGP4SR", "DeCoRec", "MISSRec", "SICSRec", "MMSR"]
# With one held-out item per user, Hit@K and Recall@K are the same number.
_EQUIVALENT = {"hit": "recall", "recall": "recall"}


@lru_cache(maxsize=None)
def _load(paper: str) -> tuple:
    path = os.path.join(HERE, f"{paper}.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for r in csv.DictReader(f):
            r["value"] = float(r["value"])
            r["compare"] = r["compare"] == "1"
            rows.append(r)
    return tuple(rows)


def load(paper: str | None = None) -> list[dict]:
    """Every reported number (of one paper, or of all five)."""
    papers = [paper] if paper else PAPERS
    unknown = [p for p in papers if p not in PAPERS]
    if unknown:
        raise ValueError(f"no reference data for {unknown}; papers: {', '.join(PAPERS)}")
    return [dict(r) for p in papers for r in _load(p)]


def _canon(metric: str) -> str:
    base, _, k = metric.lower().partition("@")
    return f"{_EQUIVALENT.get(base, base)}@{k}" if k else base


def lookup(dataset: str | None, model: str, metric: str, compare_only: bool = True,
           paper: str | None = None) -> list[dict]:
    """Reported numbers for a recbole_mm dataset (``None``: any) and model (hit@K matches
    recall@K).

    ``compare_only`` keeps the rows meant for side-by-side comparison (main tables, full
    setting); pass ``False`` to get ablations and other settings too.
    """
    want = _canon(metric)
    out = []
    for r in load(paper):
        if ((dataset is not None and r["our_dataset"] != dataset)
                or r["our_model"].lower() != str(model).lower()):
            continue
        if compare_only and not r["compare"]:
            continue
        if _canon(r["metric"]) == want:
            out.append(r)
    return out
