"""The papers' reported numbers (``recbole_mm.reference``) beside ours: the report's comparison
table and the drops SGP4SR's paper reports under modality-mismatch noise (marked on the plots)."""
from __future__ import annotations


def _norm(text: str) -> str:
    return " ".join(str(text).lower().replace("(", " ").replace(")", " ").split())


def row_variant(label: str, model: str) -> str:
    """What a row's label says beyond its model name: ``'DeCoRec w/o phase'`` -> ``'w/o phase'``,
    ``'SICSRec (ID+T, w/o SFT)'`` -> ``'id+t, w/o sft'``, ``'SASRec'`` -> ``''``."""
    label = str(label)
    rest = label[len(model):] if label.lower().startswith(str(model).lower()) else label
    return _norm(rest.strip(" -_:"))


# MISSRec's and DeCoRec's released code evaluate with a copy of RecBole 1.0.1 that ranks
# max(topk) + 1 items and reads cut-off K at index K: what they print as @K is @(K+1) here.
CODE_CUTOFF_OFFSET = {"DeCoRec": 1, "MISSRec": 1}


def code_metric(metric: str, paper: str) -> str:
    """Our name for what ``paper``'s code printed as ``metric``: ``'recall@10'`` -> ``'recall@11'``
    for DeCoRec and MISSRec, unchanged for the others."""
    off = CODE_CUTOFF_OFFSET.get(paper, 0)
    name, _, k = metric.partition("@")
    return f"{name}@{int(k) + off}" if off and k.isdigit() else metric


def compare_with_papers(rows, metrics) -> list[dict]:
    """Our mean beside every matching number reported in the papers (same dataset, model).

    A row named by its model alone meets the papers' main-table numbers. A labelled variant
    (``'DeCoRec w/o phase'``) meets the paper row of the same setting (ablation tables
    included) when one exists; otherwise it meets the main-table numbers with ``match`` =
    ``'model only'``, so the report can say that the setting differs. A row that recorded the
    cut-off a paper's code really used (:func:`code_metric`, e.g. recall@11 for DeCoRec's
    "H@10") meets that paper's number with it (``ours_metric``)."""
    from recbole_mm import reference

    out = []
    for row in rows:
        if row["noise"] or not row["n_ok"]:
            continue
        variant = row_variant(row["label"], row["model"])
        # a variant the paper reports (for any metric) meets only that setting's numbers
        reported = variant and any(
            r.get("setting") and _norm(r["setting"]) == variant
            for m in metrics for r in reference.lookup(dataset=row["dataset"], model=row["model"],
                                                       metric=m, compare_only=False))
        for m in metrics:
            ours = row.get(m)
            if ours is None:
                continue
            refs, match = reference.lookup(dataset=row["dataset"], model=row["model"], metric=m), "model"
            if variant:
                same = [r for r in reference.lookup(dataset=row["dataset"], model=row["model"],
                                                    metric=m, compare_only=False)
                        if r.get("setting") and _norm(r["setting"]) == variant]
                if same:
                    refs, match = same, "setting"
                else:
                    refs, match = ([] if reported else refs), "model only"
            for ref in refs:
                ours_metric = code_metric(m, ref["paper"])
                if row.get(ours_metric) is None:
                    ours_metric = m  # recorded without the paper's code's cut-off
                ours = row[ours_metric]
                ratio = ours / ref["value"] if ref["value"] else None
                out.append({"dataset": row["dataset"], "label": row["label"],
                            "model": row["model"], "metric": m, "ours_metric": ours_metric,
                            "ours": ours, "ours_std": row.get(ours_metric + "_std"),
                            "paper_value": ref["value"],
                            "ratio": ratio, "paper": ref["paper"], "table": ref["table"],
                            "paper_dataset": ref["dataset"], "paper_model": ref["model"],
                            "setting": ref.get("setting", ""), "match": match,
                            "paper_metric": ref["metric_printed"]})
    return out


def noise_paper_drops(model, metric):
    """The drops a paper reports for ``model`` under modality-mismatch noise (SGP4SR's Figure 3,
    on Baby), as (fraction, dataset, relative change)."""
    from recbole_mm import reference

    return [(0.5, r["dataset"], r["value"])
            for r in reference.lookup(None, model, metric, compare_only=False)
            if r["table"].startswith("Figure 3")]

