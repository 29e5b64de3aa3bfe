"""Plots of a results folder: metric bars per model (with the paper's number), training curves,
and the modality-mismatch robustness curve."""
from __future__ import annotations

import os

from recbole_mm.benchmark.common import CELL_STATUS_DONE, safe_name
from recbole_mm.benchmark.papers import noise_paper_drops
from recbole_mm.benchmark.report import comparison_groups, metric_names, seed_matched_clean


def make_plots(records, rows, out_dir, metrics=None) -> list[str]:
    """Metric bars per model, training curves, and the noise-robustness curve when present."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    from recbole_mm import reference

    metrics = metrics or metric_names(records)
    written = []
    datasets = sorted({r["dataset"] for r in rows})
    for ds in datasets:
        groups = comparison_groups(ds, rows, records)  # the compared rows: the same metrics
        clean, bar_metrics = [], []
        if groups and groups[0][0] == "compared":
            clean, bar_metrics = groups[0][1], [m for m in groups[0][2] if m in metrics]
        if clean and bar_metrics:
            fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(clean) * len(bar_metrics) / 2), 4))
            width = 0.8 / len(clean)
            for j, r in enumerate(clean):
                xs = [i + j * width for i in range(len(bar_metrics))]
                ys = [r.get(m) or 0 for m in bar_metrics]
                errs = [r.get(m + "_std") or 0 for m in bar_metrics]
                ax.bar(xs, ys, width, yerr=errs, capsize=2, label=r["label"])
                for x, m in zip(xs, bar_metrics):
                    refs = reference.lookup(dataset=ds, model=r["model"], metric=m)
                    for ref in refs[:1]:
                        ax.plot([x], [ref["value"]], "k_", markersize=12, mew=2)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bar_metrics))])
            ax.set_xticklabels(bar_metrics)
            ax.set_title(f"{ds}: test metrics (black dash = paper's number)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            p = os.path.join(out_dir, f"bars_{safe_name(ds)}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
        recs = [r for r in records if r["dataset"] == ds and r.get("status") == CELL_STATUS_DONE
                and not r.get("noise") and r.get("curve")]
        if recs:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
            styles = {}  # one (colour, line style) per row: ten colours, then dashed, dotted, ...
            for r in recs:
                n = styles.setdefault(r["label"], len(styles))
                c, style = f"C{n % 10}", ("-", "--", ":", "-.")[(n // 10) % 4]
                ep = [e.get("step", e["epoch"]) for e in r["curve"] if e.get("train_loss") is not None]
                ls = [e["train_loss"] for e in r["curve"] if e.get("train_loss") is not None]
                a1.plot(ep, ls, color=c, linestyle=style, marker=".", label=r["label"] if r["seed"] == min(
                    x["seed"] for x in recs if x["label"] == r["label"]) else None)
                ev = [e for e in r["curve"] if e.get("valid_score") is not None]
                a2.plot([e.get("step", e["epoch"]) for e in ev], [e["valid_score"] for e in ev], color=c,
                        linestyle=style, marker=".")
            from matplotlib.ticker import MaxNLocator

            for a in (a1, a2):
                a.xaxis.set_major_locator(MaxNLocator(integer=True))
            a1.set_xlabel("epoch (all stages in order)")
            a1.set_ylabel("train loss (sum over batches)")
            a1.set_yscale("log")
            a2.set_xlabel("epoch (all stages in order)")
            a2.set_ylabel(f"valid {recs[0].get('valid_metric', '')}")
            a1.legend(fontsize=8)
            fig.suptitle(f"{ds}: training curves (one line per seed)")
            fig.tight_layout()
            p = os.path.join(out_dir, f"curves_{safe_name(ds)}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
        noisy_rows = [r for r in rows if r["dataset"] == ds and r["noise_modality"] and r["n_ok"]]
        noisy_labels = sorted({r["label"] for r in noisy_rows})
        if noisy_labels and metrics:
            measured = [m for m in metrics if any(r.get(m) is not None for r in noisy_rows)]
            m0 = [m for m in measured if m.startswith(("recall@10", "hit@10"))] or measured[:1]
            mets = m0 + [m for m in measured if m.startswith("ndcg@10")]
            modality = noisy_rows[0]["noise_modality"]
            fig, axes = plt.subplots(1, len(mets), figsize=(5 * len(mets), 4), squeeze=False)
            paper_sets = set()
            for ax, m in zip(axes[0], mets):
                for lab in noisy_labels:
                    pts = []
                    for r in rows:
                        if (r["dataset"] == ds and r["label"] == lab and r["n_ok"]
                                and r.get(m) is not None):
                            base = seed_matched_clean(records, r, m)
                            if base:
                                pts.append((r["noise"], r[m] / base))
                    if not pts:
                        continue
                    pts.sort()
                    line, = ax.plot([f for f, _ in pts], [v for _, v in pts], marker="o",
                                    label=lab)
                    model = next(r["model"] for r in rows if r["label"] == lab)
                    for frac, paper_ds, rel in noise_paper_drops(model, m):
                        ax.plot([frac], [1 + rel], marker="x", ms=9, color=line.get_color())
                        paper_sets.add(paper_ds)
                ax.axhline(1.0, color="grey", lw=0.5)
                ax.set_xlabel(f"fraction of items with swapped {modality} features")
                ax.set_ylabel(f"{m} / clean {m}")
                ax.legend(fontsize=8)
            ref_note = (f" (x = paper's reported drop on {', '.join(sorted(paper_sets))})"
                        if paper_sets else "")
            fig.suptitle(f"{ds}: modality-mismatch robustness vs clean runs of the same seeds"
                         + ref_note, fontsize=10)
            fig.tight_layout()
            p = os.path.join(out_dir, f"noise_{safe_name(ds)}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
    return written

