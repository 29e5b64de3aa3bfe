"""Reports from the cell records: ``results.csv`` (one row per cell), ``summary.csv`` (mean and
sample std over seeds per dataset x row x noise level), ``significance.csv`` and ``summary.md``
(configuration of each row, metric tables with significance marks, the noise table, the papers'
numbers beside ours, and the cells that did not finish with what they reached).

No table mixes metric columns: per dataset, :func:`comparison_groups` splits the rows into the
compared table, rows under a paper protocol and rows with other metrics. Cells recorded by older
versions of the harness lack some fields (per-user values, what a failed cell reached); they are
reported with what they have.

A row whose every finished seed carries the same ``setting_note`` (recorded by the model, e.g.
SICSRec on features that did not go through the SFT alignment: ``'w/o SFT'``) is shown as
``<label> (<note>)`` in summary.md unless its label already says so (:func:`display_label`);
the label itself (grouping, cell ids, significance references) and the CSVs' ``label`` column
stay as they are, the CSVs carry the note in a ``setting_note`` column.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os

from recbole_mm.benchmark import significance
from recbole_mm.benchmark.significance import markdown as significance_markdown
from recbole_mm.benchmark.common import (CELL_STATUS_DONE, STATUS_NOT_RUN, atomic_write_text,
                                         jsonable, load_cells, reached_summary,
                                         read_json)
from recbole_mm.benchmark.papers import compare_with_papers
from recbole_mm.config import PROTOCOL_KEYS

METRIC_ORDER = ["recall", "hit", "ndcg", "mrr", "precision"]


def metric_names(records) -> list[str]:
    names = set()
    for r in records:
        names.update((r.get("test_result") or {}).keys())

    def order(m):
        base, _, k = m.partition("@")
        idx = METRIC_ORDER.index(base) if base in METRIC_ORDER else len(METRIC_ORDER)
        return (idx, base, int(k) if k.isdigit() else 0)

    return sorted(names, key=order)


def mean_std(values):
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _noise_level(rec):
    n = rec.get("noise")
    return float(n[1]) if n else 0.0


def _latest_per_seed(records) -> list:
    """One record per seed: a label rerun under another configuration (e.g. a changed profile)
    leaves its older cell on disk; only the most recently finished one counts."""
    latest = {}
    for r in records:
        seed = r.get("seed")
        if seed not in latest or str(r.get("finished") or "") >= str(latest[seed].get("finished") or ""):
            latest[seed] = r
    return [r for r in records if latest.get(r.get("seed")) is r]


def _setting_note(records) -> str:
    """The note every one of ``records`` carries ('' when any lacks it or they differ)."""
    notes = {r.get("setting_note") or "" for r in records}
    return notes.pop() if len(notes) == 1 else ""


def display_label(label, note) -> str:
    """``label`` as the report shows it: ``'SICSRec (w/o SFT)'`` for a row noted ``w/o SFT``;
    unchanged without a note or when the label already says it (``'SICSRec (ID+T, SFT)'``,
    ``'SICSRec w/o SFT'``: a label naming SFT in any case is left alone for an SFT note)."""
    label = str(label)
    if not note:
        return label
    said = "sft" if "sft" in note.lower() else note.lower()
    return label if said in label.lower() else f"{label} ({note})"


def _shown(row) -> str:
    return display_label(row["label"], row.get("setting_note"))


def _group_key(r) -> tuple:
    """What a cell measures, seeds aside: (dataset, label, noise modality, noise level)."""
    return r["dataset"], r["label"], (r.get("noise") or [None])[0], _noise_level(r)


def summarize(records) -> list[dict]:
    """One row per (dataset, label, noise level): mean and sample std over the seeds."""
    groups = {}
    for r in records:
        groups.setdefault(_group_key(r), []).append(r)
    metrics = metric_names(records)
    rows = []
    for (dataset, label, noise_mod, noise_lvl), recs in groups.items():
        ok = _latest_per_seed([r for r in recs if r.get("status") == CELL_STATUS_DONE])
        row = {"dataset": dataset, "label": label, "model": recs[0]["model"],
               "setting_note": _setting_note(ok),
               "noise_modality": noise_mod or "", "noise": noise_lvl,
               "n_ok": len(ok), "n_cells": len(recs),
               "seeds": " ".join(str(r["seed"]) for r in ok),
               "status": "ok" if ok else recs[-1].get("status"),
               "reason": "" if ok else (recs[-1].get("reason") or "")}
        for m in metrics:
            mean, std = mean_std([r["test_result"].get(m) for r in ok])
            row[m] = mean
            row[m + "_std"] = std
        for k in ("best_epoch", "epochs_run", "epoch_time_s", "eval_time_s", "test_eval_s"):
            row[k] = mean_std([r.get(k) for r in ok])[0]
        last = ok[-1] if ok else recs[-1]
        row["epochs_per_stage"] = _stage_runs(ok)
        row["protocol"] = last.get("protocol") or ""
        row["config"] = json.dumps(jsonable(last.get("effective_config") or last.get("config") or {}),
                                   sort_keys=True)
        row["stage_budgets"] = ", ".join(f"{k} <= {v['budget']}"
                                         for k, v in (last.get("stage_epochs") or {}).items())
        peaks = [r.get("peak_mem_mb") for r in ok if r.get("peak_mem_mb") is not None]
        row["peak_mem_mb"] = max(peaks) if peaks else None
        row["peak_mem_source"] = ok[0].get("peak_mem_source", "") if ok else ""
        row["params"] = ok[0].get("params") if ok else None
        row["trainable_params"] = ok[0].get("trainable_params") if ok else None
        row["device"] = ", ".join(sorted({str(r.get("device")) for r in ok})) if ok else ""
        rows.append(row)
    return rows


def _stage_runs(records) -> str:
    """Epochs run per stage, mean over ``records`` (``'1 + 2'``); '' for single-stage runs or
    records without a per-stage count."""
    stages = [r.get("stage_epochs") for r in records]
    if not stages or any(not st for st in stages) or len(stages[0]) < 2:
        return ""
    names = list(stages[0])
    if any(list(st) != names for st in stages):
        return ""
    return " + ".join(_fmt_num(mean_std([st[n]["run"] for st in stages])[0]) for n in names)


CELL_COLUMNS = ["cell_id", "dataset", "label", "setting_note", "model", "seed", "noise", "status",
                "reason",
                "protocol", "best_epoch", "epochs_run", "epochs_per_stage", "epoch_time_s", "eval_time_s", "test_eval_s",
                "train_total_s", "wall_s", "wall_s_all_attempts", "peak_mem_mb", "peak_mem_source", "params",
                "trainable_params", "device", "commit", "torch", "recbole", "finished"]


def write_csvs(records, rows, out_dir):
    metrics = metric_names(records)
    cols = CELL_COLUMNS[:9] + metrics + CELL_COLUMNS[9:]
    lines = []
    for r in records:
        d = {c: r.get(c) for c in CELL_COLUMNS}
        d["noise"] = _noise_level(r)
        d["epochs_per_stage"] = _stage_runs([r])
        for m in metrics:
            d[m] = (r.get("test_result") or {}).get(m)
        lines.append(d)
    _write_csv(os.path.join(out_dir, "results.csv"), cols, lines)
    scols = list(rows[0].keys()) if rows else ["dataset", "label"]
    _write_csv(os.path.join(out_dir, "summary.csv"), scols, rows)


def _write_csv(path, cols, rows):
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v))
                    for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(v, std=None, digits=4):
    if v is None:
        return "-"
    s = f"{v:.{digits}f}"
    if std is not None:
        s += f" ± {std:.{digits}f}"
    return s


def _fmt_num(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.{digits}f}"
    return f"{int(v):,}"



def seed_matched_clean(records, row, metric):
    """The clean (noise-free) mean of ``metric`` for ``row``'s label over the seeds ``row`` ran,
    so that a noisy level run with fewer seeds is compared with the same seeds' clean runs."""
    seeds = {int(x) for x in str(row.get("seeds") or "").split()}
    clean = _latest_per_seed([r for r in records if r["dataset"] == row["dataset"] and
                              r["label"] == row["label"] and not _noise_level(r) and
                              r.get("status") == CELL_STATUS_DONE and r.get("seed") in seeds])
    vals = [(r.get("test_result") or {}).get(metric) for r in clean]
    if not vals or len(vals) != len(seeds) or any(v is None for v in vals):
        return None
    return sum(vals) / len(vals)




GROUP_TITLES = {
    "paper": "paper protocols (each row its paper's metrics and selection; not comparable with "
             "the table above)",
    "other": "other evaluation settings (metrics differ from the table above; see each row's "
             "configuration)",
}


def comparison_groups(dataset, rows, records) -> list:
    """The clean rows of ``dataset`` as ``[(kind, rows, metric columns), ...]``, one table each:
    ``compared`` (the rows sharing the most common metric set outside paper protocols), ``paper``
    (rows under ``protocol: paper``), ``other`` (any other metric set, e.g. cells recorded before
    the plugin-wide protocol applied to every model). No table mixes metric columns."""
    def cols(labels):
        return metric_names([x for x in records if x["dataset"] == dataset and
                             x["label"] in labels and x.get("status") == CELL_STATUS_DONE])

    clean = [r for r in rows if r["dataset"] == dataset and not r["noise"] and r["n_ok"]]
    sig = {r["label"]: tuple(cols({r["label"]})) for r in clean}
    plain = [sig[r["label"]] for r in clean if r.get("protocol") != "paper"]
    main = max(plain, key=plain.count) if plain else None
    out = []
    for kind in ("compared", "paper", "other"):
        group = [r for r in clean if kind == ("paper" if r.get("protocol") == "paper" else
                                              "compared" if sig[r["label"]] == main else "other")]
        if group:
            out.append((kind, group, cols({r["label"] for r in group})))
    return out


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in d.items())


def row_configurations(rows) -> list[str]:
    """The report's configuration table: each row's effective configuration, once (noise levels
    of a row share it, plus their feature_noise)."""
    seen, out = set(), []
    for r in rows:
        if not r.get("config") or (r["dataset"], r["label"]) in seen:
            continue
        seen.add((r["dataset"], r["label"]))
        cfg = {k: v for k, v in json.loads(r["config"]).items() if k != "feature_noise"}
        recorded = "protocol" in cfg
        protocol = cfg.pop("protocol", None) or "-"
        evaluation = {k: cfg.pop(k) for k in PROTOCOL_KEYS if k in cfg}
        budget = r.get("stage_budgets") or ""
        out.append(f"| {r['dataset']} | {_shown(r)} | {protocol} | {_kv(evaluation) or '-'} | "
                   f"{_kv(cfg)}{'' if recorded else ' (overrides only)'} | {budget or '-'} |")
    if not out:
        return []
    return (["## Configuration of each row", "",
             "Final values in force in each row's runs (protocol keys under evaluation). Rows "
             "recorded before the harness kept them show the harness's overrides only.", "",
             "| dataset | row | protocol | evaluation | training | epochs per stage (budget) |",
             "|---|---|---|---|---|---|"] + out + [""])


def markdown_report(records, rows, meta, significance=None) -> str:
    """The report as markdown. ``significance``: ``{dataset: significance.compare(...)}`` (marks
    and a table of p-values under the table named by each entry's ``kind``, default the compared
    table)."""
    metrics = metric_names(records)
    significance = significance or {}
    lines = [f"# Benchmark: {meta.get('name', '')}", ""]
    lines += [f"- command: `{meta.get('command', '')}`",
              f"- profile: **{meta.get('profile', '')}**: {meta.get('profile_description', '')}",
              f"- commit: {meta.get('commit', '')}; date (UTC): {meta.get('date', '')}",
              *([f"- every command that wrote to this folder (meta.json `history`): "
                 + "; ".join(f"`{h['command']}` ({h['date']}, {h['commit']}, "
                             f"{h.get('grid_wall_s') or '?'} s)" for h in meta["history"])]
                if len(meta.get("history") or []) > 1 else []),
              f"- device: {meta.get('device', '')}",
              f"- seeds: {meta.get('seeds', '')}; cells: {len(records)} "
              f"({sum(r.get('status') == 'ok' for r in records)} ok)",
              "- protocol: leave-one-out by time, full ranking over all items, best validation "
              "checkpoint (valid metric below) evaluated on test; every row under the plugin-wide "
              "protocol (properties/overall.yaml + the dataset's yaml) unless its protocol says "
              "paper (tabled apart); `epochs` is a run's total over its stages; values are "
              "mean ± sample std over seeds (no ± with one seed).", ""]
    lines += row_configurations(rows)
    by_ds = {}
    for row in rows:
        by_ds.setdefault(row["dataset"], []).append(row)
    for ds, drows in by_ds.items():
        for kind, clean, cols in comparison_groups(ds, drows, records):
            lines += [f"## {ds}" if kind == "compared" else f"### {ds}: {GROUP_TITLES[kind]}", ""]
            head = ["model"] + cols + ["best ep.", "epochs", "s/epoch", "eval s", "peak MB",
                                       "params", "seeds", "device"]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            tests = significance.get(ds)
            tests = tests if tests and tests.get("kind", "compared") == kind else None
            marks = {(t["label"], t["metric"]): t["mark"] for t in (tests or {}).get("results", [])}
            shown = {r["label"]: _shown(r) for r in clean}
            test_lines = (significance_markdown(tests, display=lambda lab: shown.get(lab, lab))
                          if tests else [])
            for r in clean:
                vals = [_shown(r)] + [_fmt(r.get(m), r.get(m + "_std")) +
                                       (" " + marks[r["label"], m] if marks.get((r["label"], m)) else "")
                                       for m in cols]
                epochs = _fmt_num(r["epochs_run"])
                if r.get("epochs_per_stage"):
                    epochs += f" ({r['epochs_per_stage']})"
                vals += [_fmt_num(r["best_epoch"]), epochs,
                         _fmt(r["epoch_time_s"], digits=2), _fmt(r["eval_time_s"], digits=2),
                         _fmt_num(r["peak_mem_mb"], 0), _fmt_num(r["params"]), str(r["n_ok"]),
                         r["device"]]
                lines.append("| " + " | ".join(vals) + " |")
            if kind != "compared":
                lines += [""] + test_lines
                continue
            loads = [x for r in records if r["dataset"] == ds
                     for x in (r.get("load_avg_1m") or []) if x is not None]
            load_note = (f" Machine load average (1 min) around these cells: {min(loads):.1f} to "
                         f"{max(loads):.1f}; timings scale with it." if loads else "")
            lines += ["", "best ep. = RecBole epoch index (0-based) of the best validation score "
                      "(of the last stage for multi-stage models); epochs = training epochs run in "
                      "total (per stage in parentheses, budgets in the configuration table); "
                      "s/epoch = mean training-epoch time; eval s = mean full-ranking validation "
                      f"pass; peak MB = {clean[0]['peak_mem_source']}.{load_note}", ""] + test_lines
        noisy = [r for r in drows if r["n_ok"] and r["noise_modality"]]
        if noisy:
            nlabels = {r["label"] for r in noisy}
            nmetrics = metric_names([x for x in records if x["dataset"] == ds and x["label"] in
                                     nlabels and x.get("status") == CELL_STATUS_DONE])
            lines += [f"### {ds}: modality-mismatch noise ({noisy[0]['noise_modality']})", ""]
            lines.append("| model | fraction | " + " | ".join(nmetrics) + " | vs clean (first metric) |")
            lines.append("|" + "---|" * (len(nmetrics) + 3))
            for r in sorted([r for r in drows if r["n_ok"] and (r["noise_modality"] or
                             any(x["label"] == r["label"] for x in noisy)) and
                             (r["noise_modality"] or not r["noise"])],
                            key=lambda r: (r["label"], r["noise"])):
                rel = "-"
                m0 = nmetrics[0] if nmetrics else None
                base = seed_matched_clean(records, r, m0) if m0 else None
                if base and r.get(m0) is not None:
                    rel = f"{(r[m0] / base - 1) * 100:+.1f}%"
                lines.append(f"| {_shown(r)} | {r['noise']:g} | " +
                             " | ".join(_fmt(r.get(m), r.get(m + "_std")) for m in nmetrics) +
                             f" | {rel} |")
            lines += ["", "vs clean = change of the first metric against the clean runs of the "
                      "same seeds (the clean row itself shows every clean seed).", ""]
    comp = compare_with_papers(rows, metrics)
    clean_rows = {(r["dataset"], r["label"]): r for r in rows if not r["noise"]}
    shown = {k: _shown(r) for k, r in clean_rows.items()}
    lines += ["## Beside the papers' numbers", ""]
    if comp:
        lines += ["ratio = ours / paper. Hit@K and Recall@K are the same number with one target "
                  "per user. The papers trained at their own settings (usually d=300, up to "
                  "hundreds of epochs); see the profile above before reading a ratio. A labelled "
                  "row (an ablation, a variant) meets the paper's row of the same setting when the "
                  "paper has one; `model only` marks a variant beside the paper's main row, whose "
                  "setting differs. DeCoRec's and MISSRec's code print as @K the value over "
                  "their top K+1 items (docs/BENCHMARKS.md); a row that recorded @K+1 meets "
                  "their numbers with it, shown as `ours at @K+1`.", "",
                  "| dataset | model | metric | ours | paper | ratio | source | paper's setting |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comp:
            src = f"{c['paper']} {c['table']} ({c['paper_dataset']}, {c['paper_model']})"
            setting = c["setting"] or "-"
            noted = (clean_rows.get((c["dataset"], c["label"])) or {}).get("setting_note")
            if c.get("match") == "model only" or (c.get("match") == "model" and noted):
                # a noted row (e.g. w/o SFT) beside the paper's main number: settings differ
                setting += " (model only: this row's setting differs)"
            metric = c["metric"]
            if c.get("ours_metric", metric) != metric:
                metric += f" (ours at @{c['ours_metric'].split('@')[1]})"
            lines.append(f"| {c['dataset']} | {shown.get((c['dataset'], c['label']), c['label'])} | "
                         f"{metric} | "
                         f"{_fmt(c['ours'], c['ours_std'])} | {c['paper_value']:.4f} | "
                         f"{c['ratio']:.3f} | {src} | {setting} |")
    else:
        lines.append("No paper reports numbers for these dataset/model pairs.")
    lines.append("")
    # a finished run of the same slot (group and seed, other overrides) supersedes a failed cell
    done = {(_group_key(r), r.get("seed")) for r in records if r.get("status") == CELL_STATUS_DONE}
    bad = [r for r in records if r.get("status") != CELL_STATUS_DONE]
    superseded = [r for r in bad if (_group_key(r), r.get("seed")) in done]
    bad = [r for r in bad if (_group_key(r), r.get("seed")) not in done]
    if bad or superseded:
        lines += ["## Not run / failed", ""]
    if bad:
        lines += ["| cell | status | reached | reason |", "|---|---|---|---|"]
        for r in bad:
            reason = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['cell_id']} | {r.get('status')} | {reached_summary(r) or '-'} | "
                         f"{reason} |")
        lines += ["", "reached = epochs trained and the best validation score so far with its "
                  "epoch (0-based), as recorded when the cell stopped; a timed-out, failed or "
                  "interrupted cell runs again with the next command, resuming from its last "
                  "training state when it left one.", ""]
        lines.append("")
    if superseded:
        lines += [f"{len(superseded)} earlier cell(s) not run or failed were superseded by a "
                  "finished run of the same model, dataset and seed (other overrides): "
                  + ", ".join(f"{r['cell_id']} ({r.get('status')})" for r in superseded) + ".", ""]
    return "\n".join(lines)



def _stub_record(cell_id: str) -> dict:
    """A planned cell without a result file (not reached yet, or its run was interrupted)."""
    parts = cell_id.split("__")
    seed = next((p[4:] for p in parts if p.startswith("seed") and p[4:].isdigit()), "0")
    noise = next((p for p in parts if p.startswith("noise-")), None)
    rec = {"cell_id": cell_id, "dataset": parts[0], "label": parts[1] if len(parts) > 1 else "?",
           "model": parts[1] if len(parts) > 1 else "?", "seed": int(seed), "status": STATUS_NOT_RUN,
           "reason": "no result file: not reached yet or interrupted (rerun the command to resume)"}
    if noise:
        _, mod, frac = noise.split("-", 2)
        rec["noise"] = [mod, float(frac)]
    return rec


def significance_tests(out_dir, records, rows, reference=None, test=None,
                       reference_dir=None) -> dict:
    """``{dataset: significance.compare(...)}`` for each dataset: the tests within the table that
    holds the reference row (the compared table, or e.g. the paper-protocol table when the
    reference is one of its rows), else within the compared table; ``kind`` names that table."""
    reference = reference or significance.DEFAULT_REFERENCE
    out = {}
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        groups = [g for g in comparison_groups(ds, rows, records) if len(g[1]) > 1]
        compared = [g for g in groups if g[0] == "compared"]
        holding = [] if reference_dir else [
            g for g in groups if significance.reference_label(g[1], reference)]
        chosen = (holding or compared or [None])[0]
        if chosen is None:
            continue
        kind, group, cols = chosen
        out[ds] = significance.compare(out_dir, records, ds, group, cols, reference,
                                       test or "wilcoxon", reference_dir)
        out[ds]["kind"] = kind
    return out


SIGNIFICANCE_COLUMNS = ["dataset", "label", "reference", "metric", "seeds", "users", "mean",
                        "reference_mean", "diff", "p", "mark", "test"]


def write_report(out_dir, meta=None, plots=True) -> dict:
    """(Re)write results.csv, summary.csv, significance.csv, summary.md and the plots from the
    cells. The significance tests use ``meta['reference']`` (default SASRec), read from
    ``meta['reference_dir']`` when set, and ``meta['significance_test']`` (``wilcoxon`` or
    ``ttest``)."""
    if meta is None:
        meta = read_json(os.path.join(out_dir, "meta.json"))
    meta = meta or {}
    records = list(load_cells(out_dir).values())
    wanted = meta.get("cells")
    if wanted:  # only the cells of the grids run into this folder (meta.json `cells`)
        order = {c: i for i, c in enumerate(wanted)}
        have = {r["cell_id"] for r in records}
        records = [r for r in records if r["cell_id"] in order]
        records += [_stub_record(c) for c in wanted if c not in have]
        records.sort(key=lambda r: order[r["cell_id"]])
    rows = summarize(records)
    write_csvs(records, rows, out_dir)
    tests = significance_tests(out_dir, records, rows, meta.get("reference"),
                               meta.get("significance_test"), meta.get("reference_dir"))
    _write_csv(os.path.join(out_dir, "significance.csv"), SIGNIFICANCE_COLUMNS,
               [t for c in tests.values() for t in c["results"]])
    md = markdown_report(records, rows, meta, tests)
    atomic_write_text(os.path.join(out_dir, "summary.md"), md)
    pngs = []
    if plots:
        from recbole_mm.benchmark.plots import make_plots

        pngs = make_plots(records, rows, out_dir)
    return {"records": records, "rows": rows, "markdown": md, "plots": pngs,
            "significance": tests}

