"""The papers' reported numbers (``recbole_mm.reference``) beside ours: the report's comparison
table and the drops SGP4SR's paper reports under modality-mismatch noise (marked on the plots)."""
from __future__ import annotations


def compare_with_papers(rows, metrics) -> list[dict]:
    """Our mean beside every matching number reported in the papers (same dataset, model)."""
    from recbole_mm import reference

    out = []
    for row in rows:
        if row["noise"] or not row["n_ok"]:
            continue
        for m in metrics:
            ours = row.get(m)
            if ours is None:
                continue
            for ref in reference.lookup(dataset=row["dataset"], model=row["model"], metric=m):
                ratio = ours / ref["value"] if ref["value"] else None
                out.append({"dataset": row["dataset"], "label": row["label"],
                            "model": row["model"], "metric": m, "ours": ours,
                            "ours_std": row.get(m + "_std"), "paper_value": ref["value"],
                            "ratio": ratio, "paper": ref["paper"], "table": ref["table"],
                            "paper_dataset": ref["dataset"], "paper_model": ref["model"],
                            "setting": ref.get("setting", ""),
                            "paper_metric": ref["metric_printed"]})
    return out



def noise_paper_drops(model, metric):
    """The drops a paper reports for ``model`` under modality-mismatch noise (SGP4SR's Figure 3,
    on Baby), as (fraction, dataset, relative change)."""
    from recbole_mm import reference

    return [(0.5, r["dataset"], r["value"])
            for r in reference.lookup(None, model, metric, compare_only=False)
            if r["table"].startswith("Figure 3")]

