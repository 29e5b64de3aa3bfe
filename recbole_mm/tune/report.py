"""What a search leaves in its output folder, rewritten after every trial from the study itself:

- ``results.csv``: one row per trial (state, validation score, searched values, validations
  reached, seconds, test metrics, error);
- ``results.md``: the same, best first, under a summary of the study and the best trial;
- ``best.yaml``: the best trial's configuration (the command line's fixed keys and the searched
  values), for ``run_recbole_mm.py --config_files``;
- ``search.png``: the score of every trial with the best so far, and every trial's validation
  curve (pruned ones marked).

All written to a temporary name and renamed (``recbole_mm.encoders.io``): never half a file.
"""
from __future__ import annotations

import csv
import io
import logging
import os

import optuna
import yaml

from recbole_mm.encoders.io import atomic_write_bytes, atomic_write_text
from recbole_mm.tune.space import decode

TrialState = optuna.trial.TrialState
STATE_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2,
               TrialState.RUNNING: 3, TrialState.WAITING: 4}
FILES = {"csv": "results.csv", "md": "results.md", "best": "best.yaml", "plot": "search.png"}


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip()
    return str(v)


def _last_intermediate(trial):
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def best_trial(study):
    """The best complete trial, or None (``study.best_trial`` raises when there is none)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    return study.best_trial


def table(study, meta: dict, space: dict):
    """``(columns, rows)``: one row (a dict of strings) per trial, in trial order."""
    trials = study.get_trials(deepcopy=False)
    params = list(space) + sorted({k for t in trials for k in t.params} - set(space))
    tests = sorted({k for t in trials for k in t.user_attrs.get("test_result", {})})
    valid = f"valid {meta['valid_metric'].lower()}"
    columns = ["trial", "state", valid, *params, "validations", "seconds",
               *(f"test {m}" for m in tests), "error"]
    rows = []
    for t in trials:
        values = decode(space, t.params)
        score = t.value if t.state == TrialState.COMPLETE else _last_intermediate(t)
        row = {"trial": str(t.number), "state": t.state.name.lower(), valid: _fmt(score)}
        row.update({p: _fmt(values.get(p)) for p in params})
        row["validations"] = _fmt(t.user_attrs.get("validations", len(t.intermediate_values)))
        row["seconds"] = _fmt(t.user_attrs.get("seconds"))
        test = t.user_attrs.get("test_result", {})
        row.update({f"test {m}": _fmt(test.get(m)) for m in tests})
        row["error"] = t.user_attrs.get("error", "")
        rows.append((t, row))
    return columns, rows


def to_csv(columns, rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for _, row in rows:
        writer.writerow(row)
    return buf.getvalue()


def to_markdown(study, meta: dict, space: dict, columns, rows) -> str:
    counts = {s: 0 for s in STATE_ORDER}
    for t, _ in rows:
        counts[t.state] = counts.get(t.state, 0) + 1
    bigger = meta["direction"] == "maximize"
    lines = [f"# Tuning {meta['model']} on {meta['dataset']}", "",
             f"Study `{study.study_name}`, {meta['direction']} validation "
             f"{meta['valid_metric']} (TPE sampling, pruning on each validation). Trials: "
             + ", ".join(f"{counts[s]} {s.name.lower()}" for s in STATE_ORDER if counts.get(s)) + ".",
             f"Search space: `{meta['space_file']}`."]
    if meta.get("fixed"):
        lines.append("Fixed for every trial: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in meta["fixed"].items()) + ".")
    best = best_trial(study)
    if best is not None:
        chosen = ", ".join(f"`{k}={_fmt(v)}`" for k, v in decode(space, best.params).items())
        lines += ["", f"Best: trial {best.number}, validation {meta['valid_metric']} = "
                      f"{best.value:.6g}: {chosen}. Configuration: `{FILES['best']}`."]

    def order(item):
        t, _ = item
        score = t.value if t.state == TrialState.COMPLETE else _last_intermediate(t)
        key = 0.0 if score is None else (-score if bigger else score)
        return (STATE_ORDER.get(t.state, 9), key, t.number)

    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in sorted(rows, key=order):
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def best_yaml(study, meta: dict, space: dict) -> str | None:
    """The best trial's configuration as a yaml for ``run_recbole_mm.py --config_files``."""
    best = best_trial(study)
    if best is None:
        return None
    config = dict(decode(space, best.params))
    config.update(meta.get("fixed") or {})
    files = " ".join([*(meta.get("config_files") or []), os.path.join(meta["out"], FILES["best"])])
    test = best.user_attrs.get("test_result", {})
    metric = meta["valid_metric"].lower()
    header = [f"Best configuration found by recbole_mm.tune: study '{study.study_name}', trial "
              f"{best.number}, validation {meta['valid_metric']} = {best.value:.6g}"
              + (f" (test {metric} = {test[metric]:.6g})" if metric in test else "") + ".",
              f"Reproduce: python run_recbole_mm.py --model={meta['model']} "
              f"--dataset={meta['dataset']} --config_files=\"{files}\""]
    body = yaml.safe_dump(config, default_flow_style=False, sort_keys=False, width=100)
    return "".join(f"# {h}\n" for h in header) + body


def plot(study, meta: dict, path: str) -> bool:
    """Write the search plot; False (and a log line) when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        logging.getLogger(__name__).warning("matplotlib is not installed: no %s", path)
        return False
    trials = study.get_trials(deepcopy=False)
    bigger = meta["direction"] == "maximize"
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax1.scatter([t.number for t in done], [t.value for t in done], color="C0", label="complete")
    ax1.scatter([t.number for t in pruned], [_last_intermediate(t) for t in pruned], color="C1",
                marker="x", label="pruned (last validation)")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        if best is None or (t.value > best if bigger else t.value < best):
            best = t.value
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax1.step(xs, ys, where="post", color="C2", label="best so far")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("trial")
    ax1.set_ylabel(f"validation {meta['valid_metric']}")
    ax1.set_title("score per trial")
    ax1.legend(loc="best", fontsize=8)
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ax2.plot(steps, [t.intermediate_values[s] for s in steps],
                 color="C1" if t.state == TrialState.PRUNED else "C0",
                 alpha=0.6, marker="x" if t.state == TrialState.PRUNED else None)
    ax2.plot([], [], color="C0", label="complete")
    ax2.plot([], [], color="C1", marker="x", label="pruned")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("validation (step)")
    ax2.set_ylabel(f"validation {meta['valid_metric']}")
    ax2.set_title("validation curves")
    ax2.legend(loc="best", fontsize=8)
    fig.suptitle(f"{meta['model']} on {meta['dataset']}: study {study.study_name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_reports(study, out: str, meta: dict, space: dict) -> dict:
    """Rewrite the results table (CSV + markdown), ``best.yaml`` and the plot; returns paths."""
    columns, rows = table(study, meta, space)
    paths = {k: os.path.join(out, v) for k, v in FILES.items()}
    atomic_write_text(paths["csv"], to_csv(columns, rows))
    atomic_write_text(paths["md"], to_markdown(study, meta, space, columns, rows))
    written = {"csv": paths["csv"], "md": paths["md"]}
    best = best_yaml(study, meta, space)
    if best is not None:
        atomic_write_text(paths["best"], best)
        written["best"] = paths["best"]
    if plot(study, meta, paths["plot"]):
        written["plot"] = paths["plot"]
    return written
