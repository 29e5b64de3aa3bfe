"""Benchmark harness: a grid of models x datasets x seeds, tables, plots and the papers' numbers.

    python -m recbole_mm.benchmark --quick                       # 5 RecBole baselines on mm_sample
    python -m recbole_mm.benchmark --models=SASRec,SGP4SR --datasets=scientific_mm \\
        --seeds=2020,2021,2022 --profile=full --name=sci_full
    python -m recbole_mm.benchmark --models=SGP4SR,SASRecF --datasets=scientific_mm \\
        --noise=image:0,0.1,0.3,0.5 --name=sci_noise          # modality-mismatch robustness curve
    python -m recbole_mm.benchmark --report --name=sci_full    # tables/plots from finished cells

Every cell (one model, one dataset, one seed, one configuration) is trained and tested through
``recbole_mm.quick_start.run_recbole_mm`` with the same split, metrics and evaluation protocol
(the plugin-wide protocol of ``properties/overall.yaml`` + the dataset's yaml, for every model;
a model's paper protocol only in a row that asks for it, ``MMSR{protocol: paper}``, labelled
``MMSR (paper protocol)``) and the same meaning of ``epochs`` (the total over a multi-stage
model's phases / steps), then written atomically to
``<out>/cells/<cell id>.json``. A finished cell (status ``ok``) is never rerun unless ``--force``
is given, so an interrupted grid resumes where it stopped; changing the profile or any override
changes the cell id (a hash of the configuration), so stale results are never reused.

Recorded per cell: the protocol and the effective configuration (final values of the keys that
shape a comparison), test metrics, best validation result and its epoch, the epochs run per stage
(budget and run), the training curve
(train loss, validation score and timings per epoch), mean train-epoch time, mean full-ranking
evaluation time, peak memory (CUDA allocator peak on GPU, else the process's max RSS), parameter
counts, device, torch / recbole versions, git commit, date and the command line.

Outputs in ``<out>`` (default ``benchmarks/results/<name>``): ``cells/*.json``, ``results.csv``
(one row per cell), ``summary.csv`` (mean and sample std over seeds), ``summary.md`` (tables,
the papers' numbers beside ours with the ratio, skipped/failed cells with reasons, the run
metadata) and plots (``bars_<dataset>.png``, ``curves_<dataset>.png``, ``noise_<dataset>.png``).
Checkpoints and RecBole logs go to ``benchmarks/runs/<name>`` (git-ignored).

Models are looked up through ``recbole_mm.registry`` (plugin zoo first, RecBole next); a model
that is not registered (yet) or that cannot run on a dataset (e.g. a feature-based model on an
ID-only dataset) is skipped with its reason, never silently dropped. Timings are benchmark output
only; no unit test passes or fails on them.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

from recbole_mm.config import PROTOCOL_KEYS, parse_cli_value, parse_overrides  # noqa: F401  (API)
from recbole_mm.encoders.io import atomic_write_text as _atomic_write

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINES = ["SASRec", "BERT4Rec", "GRU4Rec", "FDSA", "SASRecF"]
ID_ONLY_BASELINES = ["SASRec", "BERT4Rec", "GRU4Rec"]
PAPER_MODELS = ["SGP4SR", "DeCoRec", "MISSRec", "SICSRec", "MMSR"]

# Profiles: overrides applied to every model of the grid (below --config_files and --key=value).
PROFILES = {
    "quick": {
        "description": "smoke profile for CPU: tiny models (hidden 32, 1 layer, 2 heads), "
                       "2 epochs, batch 256, histories up to 20 items, no tuning; numbers are "
                       "NOT comparable with the papers",
        "config": {"epochs": 2, "hidden_size": 32, "inner_size": 64, "embedding_size": 32,
                   "n_layers": 1, "n_heads": 2, "train_batch_size": 256,
                   "eval_batch_size": 1024, "stopping_step": 2, "MAX_ITEM_LIST_LENGTH": 20},
        "datasets": ["mm_sample"],
    },
    "short": {
        "description": "short CPU profile: hidden 64, 2 layers, 2 heads, batch 512, at most "
                       "10 epochs (early stopping patience 3 on valid NDCG@10); under-trained "
                       "relative to the papers",
        "config": {"epochs": 10, "hidden_size": 64, "inner_size": 128, "embedding_size": 64,
                   "n_layers": 2, "n_heads": 2, "train_batch_size": 512,
                   "eval_batch_size": 2048, "stopping_step": 3},
        "datasets": ["scientific_mm"],
    },
    "full": {
        "description": "full profile (GPU): plugin models train with their paper defaults "
                       "(properties/model/<M>.yaml); RecBole baselines use d=300 and batch 512 "
                       "(SGP4SR's baseline setting), RecBole's other defaults; every model under "
                       "the plugin-wide protocol (early stopping patience 10 on valid NDCG@10); "
                       "epochs = each model's own total (300, MMSR 150; DeCoRec and SICSRec "
                       "share it over their two stages)",
        "config": {},
        "baseline_config": {"hidden_size": 300, "embedding_size": 300, "train_batch_size": 512},
        "datasets": ["scientific_mm"],
    },
}
METRIC_ORDER = ["recall", "hit", "ndcg", "mrr", "precision"]
CELL_STATUS_DONE = "ok"
# Part of every cell id: raised when the meaning of a configuration changes, so that an older
# result is never reused for it (2: plugin-wide protocol for every model, epochs = total, issue 19).
CELL_REVISION = 2
# Final configuration values a cell records and the report prints per row (with the harness's own
# keys and PROTOCOL_KEYS), when set (e.g. the per-stage epoch keys of multi-stage models).
EFFECTIVE_KEYS = ("epochs", "phase1_epochs", "phase2_epochs", "step1_epochs", "step2_epochs",
                  "train_batch_size", "learning_rate", "loss_type", "hidden_size", "n_layers",
                  "n_heads", "MAX_ITEM_LIST_LENGTH")
_HARNESS_KEYS = {"show_progress", "state", "reproducibility", "checkpoint_dir", "data_path", "seed"}
PAPER_PROTOCOL_SUFFIX = " (paper protocol)"


# ----------------------------------------------------------------------------- small helpers
def _jsonable(x):
    """Plain JSON data (numpy / torch scalars, tuples, OrderedDicts made plain)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return v if math.isfinite(v) else None


def git_commit(short: bool = False) -> str:
    """HEAD (+dirty), or ``$RECBOLE_MM_COMMIT`` when set (a copy of the tree without .git)."""
    if os.environ.get("RECBOLE_MM_COMMIT"):
        return os.environ["RECBOLE_MM_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short" if short else "HEAD"], cwd=PROJECT_DIR,
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_DIR, capture_output=True, text=True, timeout=10)
        return sha + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return "unknown"


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={threads}")


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-") or "x"


# ----------------------------------------------------------------------------- cells
class Cell:
    """One model (under a label) on one dataset with one seed and one configuration."""

    def __init__(self, label, model, dataset, seed, config=None, noise=None):
        self.label, self.model, self.dataset = str(label), str(model), str(dataset)
        self.seed = int(seed)
        self.config = dict(config or {})
        self.noise = noise  # (modality, fraction) or None

    def spec(self) -> dict:
        return {"label": self.label, "model": self.model, "dataset": self.dataset,
                "seed": self.seed, "config": self.config,
                "noise": list(self.noise) if self.noise else None}

    @classmethod
    def from_spec(cls, d):
        return cls(d["label"], d["model"], d["dataset"], d["seed"], d.get("config"),
                   tuple(d["noise"]) if d.get("noise") else None)

    @property
    def key(self) -> str:
        payload = json.dumps({"model": self.model, "dataset": self.dataset, "seed": self.seed,
                              "config": _jsonable(self.config), "rev": CELL_REVISION},
                             sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]

    @property
    def cell_id(self) -> str:
        noise = f"__noise-{self.noise[0]}-{self.noise[1]:g}" if self.noise else ""
        return f"{_safe(self.dataset)}__{_safe(self.label)}{noise}__seed{self.seed}__{self.key}"

    def __repr__(self):
        return f"Cell({self.cell_id})"


def parse_models(spec) -> list[tuple[str, str, dict]]:
    """``'SASRec,SGP4SR,noCGC=SGP4SR{use_cgc: false}'`` or a list of names / dicts ->
    ``[(label, model, config), ...]`` (``MMSR{protocol: paper}`` is labelled
    ``MMSR (paper protocol)``). ``all`` = the five baselines + every registered plugin
    model; ``baselines`` and ``papers`` expand to those groups."""
    if isinstance(spec, str):
        items, depth, cur = [], 0, ""
        for ch in spec:
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        items.append(cur)
        spec = [s.strip() for s in items if s.strip()]
    out = []
    for item in spec:
        if isinstance(item, dict):
            model, cfg = item["model"], dict(item.get("config") or {})
            out.append((row_label(item.get("label", model), model, cfg), model, cfg))
            continue
        if item == "all":
            out += [(m, m, {}) for m in BASELINES]
            out += [(m, m, {}) for m in _registered_plugin_models() if m not in BASELINES]
            continue
        if item == "baselines":
            out += [(m, m, {}) for m in BASELINES]
            continue
        if item == "papers":
            out += [(m, m, {}) for m in PAPER_MODELS]
            continue
        m = re.fullmatch(r"\s*(?:([^={]+?)\s*=)?\s*([A-Za-z0-9_]+)\s*(\{.*\})?\s*", item)
        if not m:
            raise SystemExit(f"error: bad model entry {item!r} (expected NAME, LABEL=NAME or "
                             f"LABEL=NAME{{key: value, ...}})")
        label, model = m.group(1), m.group(2)
        cfg = parse_cli_value(m.group(3)) if m.group(3) else {}
        if not isinstance(cfg, dict):
            raise SystemExit(f"error: bad config in model entry {item!r}")
        out.append((row_label((label or model).strip(), model, cfg), model, cfg))
    seen = set()
    uniq = []
    for t in out:
        if t[0] in seen:
            continue
        seen.add(t[0])
        uniq.append(t)
    return uniq


def row_label(label: str, model: str, config: dict) -> str:
    """A row under ``protocol: paper`` named only by its model is ``'<model> (paper protocol)'``."""
    if config.get("protocol") == "paper" and label == model:
        return model + PAPER_PROTOCOL_SUFFIX
    return label


def _registered_plugin_models() -> list[str]:
    try:
        from recbole_mm import registry

        return list(registry.plugin_models())
    except Exception:  # a half-written model module must not take the harness down
        return []


def parse_noise(spec):
    """``'image:0,0.1,0.5'`` -> ``('image', [0.0, 0.1, 0.5])``."""
    if not spec:
        return None
    if ":" not in spec:
        raise SystemExit("error: --noise expects MODALITY:F1,F2,... (e.g. image:0,0.1,0.3,0.5)")
    name, levels = spec.split(":", 1)
    try:
        values = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --noise fractions must be numbers, got {levels!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise SystemExit("error: --noise fractions must lie in [0, 1]")
    if 0.0 not in values:
        values = [0.0] + values  # the clean run is the curve's reference point
    return name.strip(), sorted(set(values))


def has_model_properties(model: str) -> bool:
    """A model with its own ``properties/model/<M>.yaml`` (the plugin's paper defaults)."""
    from recbole_mm import registry

    try:
        return os.path.isfile(os.path.join(registry.properties_dir(), "model", f"{model}.yaml"))
    except FileNotFoundError:
        return False


def build_grid(models, datasets, seeds, profile_config, overrides, noise=None,
               baseline_config=None, model_config=None) -> list[Cell]:
    """Cells in a stable order: dataset, model, noise level, seed.

    Configuration per cell, lowest first: ``profile_config``, ``baseline_config`` (only for models
    without their own properties/model/<M>.yaml, i.e. RecBole's built-ins), the profile's
    ``model_config[model]``, the model entry's own config, ``overrides`` (``--key=value``), then
    ``feature_noise`` for noisy cells. A cell under ``protocol: paper`` whose label is the bare
    model name is labelled ``<model> (paper protocol)``.
    """
    cells = []
    for dataset in datasets:
        for label, model, model_cfg in models:
            levels = [None]
            if noise:
                levels = [None if f == 0 else (noise[0], f) for f in noise[1]]
            for lvl in levels:
                for seed in seeds:
                    cfg = dict(profile_config)
                    if baseline_config and not has_model_properties(model):
                        cfg.update(baseline_config)
                    cfg.update((model_config or {}).get(model, {}))
                    cfg.update(model_cfg)
                    cfg.update(overrides)
                    if lvl is not None:
                        cfg["feature_noise"] = f"{lvl[0]}:{lvl[1]:g}"
                    cells.append(Cell(row_label(label, model, cfg), model, dataset, seed, cfg, lvl))
    return cells


# ----------------------------------------------------------------------------- running one cell
class _Probe:
    """Instruments a RecBole trainer (instance-level wrappers, so subclasses work too)."""

    def __init__(self):
        self.attached = False
        self.epochs = []       # one record per _train_epoch call
        self.eval_calls = []   # (seconds, during_fit)
        self.info = {}
        self.model = None
        self.config = self.trainer = None
        self._in_fit = False

    def attach(self, config, dataset, model, trainer):
        import torch

        cuda = torch.cuda.is_available() and "cuda" in str(config["device"])

        def sync():
            if cuda:
                torch.cuda.synchronize()

        self.attached = True
        self.model = model
        self.config, self.trainer = config, trainer
        self.info = {
            "device": str(config["device"]),
            "params": int(sum(p.numel() for p in model.parameters())),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "model_class": f"{type(model).__module__}.{type(model).__name__}",
            "trainer_class": f"{type(trainer).__module__}.{type(trainer).__name__}",
            "dataset_stats": {"users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
                              "interactions": int(dataset.inter_num)},
            "valid_metric": str(config["valid_metric"]).lower(),
            "valid_metric_bigger": bool(config["valid_metric_bigger"]),
            "eval_step": int(config["eval_step"]),
        }
        probe = self
        orig_train, orig_valid = trainer._train_epoch, trainer._valid_epoch
        orig_eval, orig_fit = trainer.evaluate, trainer.fit

        def _train_epoch(train_data, epoch_idx, *a, **k):
            sync()
            t0 = time.perf_counter()
            loss = orig_train(train_data, epoch_idx, *a, **k)
            sync()
            dt = time.perf_counter() - t0
            segment = probe.epochs[-1].get("segment", 0) if probe.epochs else 0
            if probe.epochs and int(epoch_idx) <= probe.epochs[-1]["epoch"]:
                segment += 1  # a multi-stage trainer started another fit (phase / step)
            probe.epochs.append({"epoch": int(epoch_idx), "step": len(probe.epochs),
                                 "segment": segment, "train_s": dt,
                                 "train_loss": _loss_value(loss)})
            return loss

        def _valid_epoch(valid_data, *a, **k):
            sync()
            t0 = time.perf_counter()
            out = orig_valid(valid_data, *a, **k)
            sync()
            score, result = out
            rec = probe.epochs[-1] if probe.epochs else {"epoch": -1}
            if not probe.epochs:
                probe.epochs.append(rec)
            rec.update({"valid_s": time.perf_counter() - t0, "valid_score": _jsonable(score),
                        "valid_result": _jsonable(dict(result))})
            return out

        def evaluate(*a, **k):
            sync()
            t0 = time.perf_counter()
            out = orig_eval(*a, **k)
            sync()
            probe.eval_calls.append((time.perf_counter() - t0, probe._in_fit))
            return out

        def fit(*a, **k):
            probe._in_fit = True
            try:
                return orig_fit(*a, **k)
            finally:
                probe._in_fit = False

        trainer._train_epoch, trainer._valid_epoch = _train_epoch, _valid_epoch
        trainer.evaluate, trainer.fit = evaluate, fit


def _loss_value(loss):
    if isinstance(loss, (tuple, list)):
        return _jsonable(sum(float(x) for x in loss))
    try:
        return _jsonable(float(loss))
    except (TypeError, ValueError):
        return None


def best_epoch_from_curve(curve, bigger=True):
    """The epoch whose validation score RecBole keeps: the first best (strict improvement) of
    the last training segment (multi-stage trainers return the last stage's best)."""
    best, best_ep = None, None
    last = max((r.get("segment", 0) for r in curve), default=0)
    for rec in curve:
        if rec.get("segment", 0) != last:
            continue
        s = rec.get("valid_score")
        if s is None:
            continue
        if best is None or (s > best if bigger else s < best):
            best, best_ep = s, rec["epoch"]
    return best_ep


def effective_config(config, cell_config) -> dict:
    """The final values of the keys that shape a comparison: the cell's own keys (harness
    plumbing aside), :data:`EFFECTIVE_KEYS` the run has, and the protocol."""
    keys = [k for k in cell_config if k not in _HARNESS_KEYS]
    keys += [k for k in EFFECTIVE_KEYS if k not in keys and config[k] is not None]
    keys += [k for k in ("protocol",) + tuple(PROTOCOL_KEYS) if k not in keys]
    return {k: _jsonable(config[k]) for k in keys}


def stage_epochs(trainer, config, epochs_run: int) -> dict:
    """``{stage: {"budget": n, "run": m}}``: a multi-stage trainer's own record
    (``trainer.stage_epochs``), else one stage ``train`` bounded by ``epochs``."""
    stages = getattr(trainer, "stage_epochs", None)
    if stages:
        return {str(k): {"budget": int(v["budget"]), "run": int(v["run"])} for k, v in stages.items()}
    return {"train": {"budget": int(config["epochs"]), "run": int(epochs_run)}}


def execute_cell(cell: Cell, scratch: str) -> dict:
    """Train and test one cell in this process; returns its record (never raises)."""
    import torch

    rec = {"cell_id": cell.cell_id, **cell.spec(), "status": None, "reason": None,
           "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    t_start = time.perf_counter()
    try:
        from recbole_mm import registry

        registry.get_model(cell.model)
    except Exception as exc:  # not registered (yet), or the zoo failed to import
        rec.update(status="skipped", reason=f"model not available: {type(exc).__name__}: "
                                             f"{str(exc).splitlines()[0][:300]}")
        return rec
    from recbole_mm.quick_start import run_recbole_mm

    os.makedirs(scratch, exist_ok=True)
    cfg = {"show_progress": False, "state": "WARNING", "reproducibility": True,
           "checkpoint_dir": os.path.join(scratch, "saved", cell.cell_id)}
    cfg.update(cell.config)
    cfg["seed"] = cell.seed
    probe = _Probe()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    argv = sys.argv
    sys.argv = argv[:1]  # RecBole's Config reads --key=value from sys.argv: not the harness's
    try:
        result = run_recbole_mm(cell.model, cell.dataset, config_dict=cfg, saved=True,
                                trainer_hook=probe.attach)
    except Exception as exc:
        tb = traceback.format_exc(limit=6)
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ''}"
        from recbole_mm.config import ConfigError

        if probe.attached:
            rec.update(status="failed", reason=msg, traceback=tb[-3000:])
        elif isinstance(exc, ConfigError):  # e.g. protocol: paper for a model without one
            rec.update(status="skipped", reason=f"configuration refused: {msg}",
                       traceback=tb[-3000:])
        else:  # data / model construction refused this combination
            rec.update(status="skipped", reason=f"cannot run on this dataset: {msg}",
                       traceback=tb[-3000:])
        rec.update(probe.info)
        rec["wall_s"] = round(time.perf_counter() - t_start, 3)
        return rec
    finally:
        sys.argv = argv
        _cleanup_checkpoints(cfg["checkpoint_dir"])

    curve = probe.epochs
    fit_evals = [s for s, in_fit in probe.eval_calls if in_fit]
    test_evals = [s for s, in_fit in probe.eval_calls if not in_fit]
    train_s = [r["train_s"] for r in curve if "train_s" in r]
    bigger = probe.info.get("valid_metric_bigger", True)
    if cuda:
        peak, peak_src = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_src = "process_max_rss"
    rec.update(probe.info)
    rec.update({
        "status": CELL_STATUS_DONE,
        "test_result": _jsonable(dict(result["test_result"])),
        "best_valid_result": _jsonable(dict(result["best_valid_result"] or {})),
        "best_valid_score": _jsonable(result["best_valid_score"]),
        "best_epoch": best_epoch_from_curve(curve, bigger),
        "epochs_run": len(train_s),
        "stages": 1 + max((r.get("segment", 0) for r in curve), default=0),
        "stage_epochs": stage_epochs(probe.trainer, probe.config, len(train_s)),
        "protocol": str(probe.config["protocol"] or "plugin"),
        "effective_config": effective_config(probe.config, cell.config),
        "trainable_params_end": int(sum(p.numel() for p in probe.model.parameters()
                                        if p.requires_grad)) if probe.model is not None else None,
        "epoch_time_s": round(sum(train_s) / len(train_s), 4) if train_s else None,
        "eval_time_s": round(sum(fit_evals) / len(fit_evals), 4) if fit_evals else None,
        "test_eval_s": round(test_evals[-1], 4) if test_evals else None,
        "train_total_s": round(sum(train_s), 3),
        "peak_mem_mb": round(peak, 1), "peak_mem_source": peak_src,
        "curve": _jsonable(curve),
        "wall_s": round(time.perf_counter() - t_start, 3),
    })
    return rec


def _cleanup_checkpoints(folder: str) -> None:
    if os.path.isdir(folder):
        for f in os.listdir(folder):
            if f.endswith(".pth"):
                try:
                    os.unlink(os.path.join(folder, f))
                except OSError:
                    pass
        try:
            os.rmdir(folder)
        except OSError:
            pass


def _loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _environment() -> dict:
    import torch

    try:
        import recbole

        rb = recbole.__version__
    except Exception:
        rb = "unknown"
    return {"torch": torch.__version__, "recbole": rb, "python": platform.python_version(),
            "host_device": device_description(), "commit": git_commit()}


def run_cell(cell: Cell, out_dir: str, scratch: str, isolate: bool = True,
             timeout: float | None = None, command: str = "") -> dict:
    """Run one cell (in a fresh subprocess when ``isolate``) and write its record atomically."""
    path = os.path.join(out_dir, "cells", cell.cell_id + ".json")
    load_start = _loadavg()
    if isolate:
        os.makedirs(scratch, exist_ok=True)
        spec_fd, spec_path = tempfile.mkstemp(dir=scratch, prefix="cell-", suffix=".json")
        with os.fdopen(spec_fd, "w") as f:
            json.dump(cell.spec(), f)
        res_path = spec_path[:-5] + ".result.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = PROJECT_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            proc = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--_cell", spec_path,
                                   "--_result", res_path, "--_scratch", scratch],
                                  cwd=scratch, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            if os.path.exists(res_path):
                with open(res_path) as f:
                    rec = json.load(f)
            else:
                rec = {"cell_id": cell.cell_id, **cell.spec(), "status": "failed",
                       "reason": f"cell process exited with {proc.returncode}",
                       "traceback": (proc.stderr or "")[-3000:]}
        except subprocess.TimeoutExpired:
            rec = {"cell_id": cell.cell_id, **cell.spec(), "status": "failed",
                   "reason": f"timed out after {timeout} s"}
        finally:
            for p in (spec_path, res_path):
                if os.path.exists(p):
                    os.unlink(p)
    else:
        rec = execute_cell(cell, scratch)
    rec.update(_environment())
    rec["load_avg_1m"] = [load_start, _loadavg()]  # machine load at start / end (timing context)
    rec["isolated"] = bool(isolate)
    if not isolate and rec.get("peak_mem_source") == "process_max_rss":
        rec["peak_mem_source"] = "process_max_rss_shared"  # the max over every cell run so far
    rec["command"] = command
    rec["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    _atomic_write(path, json.dumps(_jsonable(rec), indent=1, sort_keys=False))
    return rec


def load_cells(out_dir: str) -> dict[str, dict]:
    folder = os.path.join(out_dir, "cells")
    out = {}
    if not os.path.isdir(folder):
        return out
    for f in sorted(os.listdir(folder)):
        if f.endswith(".json") and not f.startswith("."):
            try:
                with open(os.path.join(folder, f)) as fh:
                    rec = json.load(fh)
            except (OSError, json.JSONDecodeError):
                continue  # a torn file cannot exist (atomic writes); ignore foreign files
            out[rec.get("cell_id", f[:-5])] = rec
    return out


def run_grid(cells, out_dir, scratch, isolate=True, force=False, timeout=None, command="",
             log=print) -> list[dict]:
    done = load_cells(out_dir)
    records = []
    for i, cell in enumerate(cells, 1):
        prev = done.get(cell.cell_id)
        path = os.path.join(out_dir, "cells", cell.cell_id + ".json")
        if (not prev or prev.get("status") != CELL_STATUS_DONE) and os.path.exists(path):
            try:  # finished meanwhile by another harness process writing to the same folder
                with open(path) as f:
                    prev = json.load(f)
            except (OSError, json.JSONDecodeError):
                pass
        if prev and prev.get("status") == CELL_STATUS_DONE and not force:
            log(f"[{i}/{len(cells)}] {cell.cell_id}: done earlier, skipped")
            records.append(prev)
            continue
        log(f"[{i}/{len(cells)}] {cell.cell_id}: running ...")
        t0 = time.perf_counter()
        rec = run_cell(cell, out_dir, scratch, isolate=isolate, timeout=timeout, command=command)
        msg = rec["status"]
        if rec["status"] == CELL_STATUS_DONE:
            vm = rec.get("valid_metric", "ndcg@10")
            msg += (f"  test {vm}={rec['test_result'].get(vm, float('nan')):.4f}  best epoch "
                    f"{rec['best_epoch']}/{rec['epochs_run']}")
        else:
            msg += f": {rec.get('reason')}"
        log(f"[{i}/{len(cells)}] {cell.cell_id}: {msg}  ({time.perf_counter() - t0:.1f} s)")
        records.append(rec)
    return records


# ----------------------------------------------------------------------------- aggregation
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
        row["config"] = json.dumps(_jsonable(last.get("effective_config") or last.get("config") or {}),
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


CELL_COLUMNS = ["cell_id", "dataset", "label", "model", "seed", "noise", "status", "reason",
                "protocol", "best_epoch", "epochs_run", "epochs_per_stage", "epoch_time_s", "eval_time_s", "test_eval_s",
                "train_total_s", "wall_s", "peak_mem_mb", "peak_mem_source", "params",
                "trainable_params", "device", "commit", "torch", "recbole", "finished"]


def write_csvs(records, rows, out_dir):
    metrics = metric_names(records)
    cols = CELL_COLUMNS[:8] + metrics + CELL_COLUMNS[8:]
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
    _atomic_write(path, buf.getvalue())


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


def noise_paper_drops(model, metric):
    """The drops a paper reports for ``model`` under modality-mismatch noise (SGP4SR's Figure 3,
    on Baby), as (fraction, dataset, relative change)."""
    from recbole_mm import reference

    return [(0.5, r["dataset"], r["value"])
            for r in reference.lookup(None, model, metric, compare_only=False)
            if r["table"].startswith("Figure 3")]


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
        out.append(f"| {r['dataset']} | {r['label']} | {protocol} | {_kv(evaluation) or '-'} | "
                   f"{_kv(cfg)}{'' if recorded else ' (overrides only)'} | {budget or '-'} |")
    if not out:
        return []
    return (["## Configuration of each row", "",
             "Final values in force in each row's runs (protocol keys under evaluation). Rows "
             "recorded before the harness kept them show the harness's overrides only.", "",
             "| dataset | row | protocol | evaluation | training | epochs per stage (budget) |",
             "|---|---|---|---|---|---|"] + out + [""])


def markdown_report(records, rows, meta) -> str:
    metrics = metric_names(records)
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
            for r in clean:
                vals = [r["label"]] + [_fmt(r.get(m), r.get(m + "_std")) for m in cols]
                epochs = _fmt_num(r["epochs_run"])
                if r.get("epochs_per_stage"):
                    epochs += f" ({r['epochs_per_stage']})"
                vals += [_fmt_num(r["best_epoch"]), epochs,
                         _fmt(r["epoch_time_s"], digits=2), _fmt(r["eval_time_s"], digits=2),
                         _fmt_num(r["peak_mem_mb"], 0), _fmt_num(r["params"]), str(r["n_ok"]),
                         r["device"]]
                lines.append("| " + " | ".join(vals) + " |")
            if kind != "compared":
                lines.append("")
                continue
            loads = [x for r in records if r["dataset"] == ds
                     for x in (r.get("load_avg_1m") or []) if x is not None]
            load_note = (f" Machine load average (1 min) around these cells: {min(loads):.1f} to "
                         f"{max(loads):.1f}; timings scale with it." if loads else "")
            lines += ["", "best ep. = RecBole epoch index (0-based) of the best validation score "
                      "(of the last stage for multi-stage models); epochs = training epochs run in "
                      "total (per stage in parentheses, budgets in the configuration table); "
                      "s/epoch = mean training-epoch time; eval s = mean full-ranking validation "
                      f"pass; peak MB = {clean[0]['peak_mem_source']}.{load_note}", ""]
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
                lines.append(f"| {r['label']} | {r['noise']:g} | " +
                             " | ".join(_fmt(r.get(m), r.get(m + "_std")) for m in nmetrics) +
                             f" | {rel} |")
            lines += ["", "vs clean = change of the first metric against the clean runs of the "
                      "same seeds (the clean row itself shows every clean seed).", ""]
    comp = compare_with_papers(rows, metrics)
    lines += ["## Beside the papers' numbers", ""]
    if comp:
        lines += ["ratio = ours / paper. Hit@K and Recall@K are the same number with one target "
                  "per user. The papers trained at their own settings (usually d=300, up to "
                  "hundreds of epochs); see the profile above before reading a ratio.", "",
                  "| dataset | model | metric | ours | paper | ratio | source | paper's setting |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in comp:
            src = f"{c['paper']} {c['table']} ({c['paper_dataset']}, {c['paper_model']})"
            lines.append(f"| {c['dataset']} | {c['label']} | {c['metric']} | "
                         f"{_fmt(c['ours'], c['ours_std'])} | {c['paper_value']:.4f} | "
                         f"{c['ratio']:.3f} | {src} | {c['setting'] or '-'} |")
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
        lines += ["| cell | status | reason |", "|---|---|---|"]
        for r in bad:
            reason = str(r.get("reason") or "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['cell_id']} | {r.get('status')} | {reason} |")
        lines.append("")
    if superseded:
        lines += [f"{len(superseded)} earlier cell(s) not run or failed were superseded by a "
                  "finished run of the same model, dataset and seed (other overrides): "
                  + ", ".join(f"{r['cell_id']} ({r.get('status')})" for r in superseded) + ".", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
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
            p = os.path.join(out_dir, f"bars_{_safe(ds)}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
        recs = [r for r in records if r["dataset"] == ds and r.get("status") == CELL_STATUS_DONE
                and not r.get("noise") and r.get("curve")]
        if recs:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
            colors = {}
            for r in recs:
                c = colors.setdefault(r["label"], f"C{len(colors) % 10}")
                ep = [e.get("step", e["epoch"]) for e in r["curve"] if e.get("train_loss") is not None]
                ls = [e["train_loss"] for e in r["curve"] if e.get("train_loss") is not None]
                a1.plot(ep, ls, color=c, marker=".", label=r["label"] if r["seed"] == min(
                    x["seed"] for x in recs if x["label"] == r["label"]) else None)
                ev = [e for e in r["curve"] if e.get("valid_score") is not None]
                a2.plot([e.get("step", e["epoch"]) for e in ev], [e["valid_score"] for e in ev], color=c,
                        marker=".")
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
            p = os.path.join(out_dir, f"curves_{_safe(ds)}.png")
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
            p = os.path.join(out_dir, f"noise_{_safe(ds)}.png")
            fig.savefig(p, dpi=110)
            plt.close(fig)
            written.append(p)
    return written


def _stub_record(cell_id: str) -> dict:
    """A planned cell without a result file (not reached yet, or its run was interrupted)."""
    parts = cell_id.split("__")
    seed = next((p[4:] for p in parts if p.startswith("seed") and p[4:].isdigit()), "0")
    noise = next((p for p in parts if p.startswith("noise-")), None)
    rec = {"cell_id": cell_id, "dataset": parts[0], "label": parts[1] if len(parts) > 1 else "?",
           "model": parts[1] if len(parts) > 1 else "?", "seed": int(seed), "status": "not run",
           "reason": "no result file: not reached yet or interrupted (rerun the command to resume)"}
    if noise:
        _, mod, frac = noise.split("-", 2)
        rec["noise"] = [mod, float(frac)]
    return rec


def write_report(out_dir, meta=None, plots=True) -> dict:
    """(Re)write results.csv, summary.csv, summary.md and the plots from the finished cells."""
    meta_path = os.path.join(out_dir, "meta.json")
    if meta is None and os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
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
    md = markdown_report(records, rows, meta)
    _atomic_write(os.path.join(out_dir, "summary.md"), md)
    pngs = make_plots(records, rows, out_dir) if plots else []
    return {"records": records, "rows": rows, "markdown": md, "plots": pngs}


# ----------------------------------------------------------------------------- CLI
def _merge_meta(out_dir: str, meta: dict, grid_wall_s=None) -> dict:
    """Write ``meta.json``: this grid's settings, the union of the cells of every grid run into
    this folder (in order), and one ``history`` entry per command that wrote to it."""
    path = os.path.join(out_dir, "meta.json")
    prev = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                prev = json.load(f)
        except (OSError, json.JSONDecodeError):
            prev = {}
    entry = {k: meta.get(k) for k in ("command", "date", "commit", "device")}
    entry["cells"] = len(meta.get("grid_cells") or meta.get("cells") or [])
    entry["grid_wall_s"] = grid_wall_s
    history = [h for h in prev.get("history", [])
               if (h.get("date"), h.get("command")) != (entry["date"], entry["command"])]
    history.append(entry)
    cells = list(prev.get("cells") or [])
    cells += [c for c in meta.get("grid_cells") or meta.get("cells") or [] if c not in cells]
    out = dict(meta, cells=cells, history=history)
    out.setdefault("grid_cells", meta.get("cells"))
    _atomic_write(path, json.dumps(_jsonable(out), indent=1))
    return out


def build_parser():
    p = argparse.ArgumentParser(prog="python -m recbole_mm.benchmark",
                                description="models x datasets x seeds benchmark for recbole_mm")
    p.add_argument("--models", default=None,
                   help="comma list: names, 'baselines', 'papers', 'all', or LABEL=MODEL{key: v}")
    p.add_argument("--datasets", default=None, help="comma list of dataset names")
    p.add_argument("--seeds", default=None, help="comma list of seeds (default 2020)")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES),
                   help="quick (CPU smoke, mm_sample), short (CPU), full (GPU, paper defaults)")
    p.add_argument("--quick", action="store_true", help="= --profile=quick")
    p.add_argument("--grid", default=None, help="yaml with models / datasets / seeds / profile / config")
    p.add_argument("--noise", default=None,
                   help="modality-mismatch curve, MODALITY:F1,F2,... (config key feature_noise)")
    p.add_argument("--name", default=None, help="results folder name under --results_dir")
    p.add_argument("--results_dir", default=os.path.join(PROJECT_DIR, "benchmarks", "results"))
    p.add_argument("--out", default=None, help="results folder (overrides --results_dir/--name)")
    p.add_argument("--scratch", default=None,
                   help="checkpoints and logs (default benchmarks/runs/<name>, git-ignored)")
    p.add_argument("--force", action="store_true", help="rerun finished cells")
    p.add_argument("--no_isolate", action="store_true",
                   help="run cells in this process (faster start; peak memory becomes shared)")
    p.add_argument("--cell_timeout", type=float, default=None, help="seconds per cell (isolated)")
    p.add_argument("--report", action="store_true", help="only rewrite tables and plots")
    p.add_argument("--no_plots", action="store_true")
    p.add_argument("--dry_run", action="store_true", help="list the cells and exit")
    p.add_argument("--config_files", default=None, help="space-separated yaml files (all cells)")
    # internal: one isolated cell
    p.add_argument("--_cell", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_scratch", default=None, help=argparse.SUPPRESS)
    return p


def _csv_list(s):
    if s is None:
        return None
    if isinstance(s, (list, tuple)):
        return [str(x) for x in s]
    return [x.strip() for x in str(s).split(",") if x.strip()]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    if args._cell:  # isolated worker
        with open(args._cell) as f:
            cell = Cell.from_spec(json.load(f))
        rec = execute_cell(cell, args._scratch or os.getcwd())
        _atomic_write(args._result, json.dumps(_jsonable(rec)))
        return 0

    overrides = parse_overrides(rest)
    grid = {}
    if args.grid:
        import yaml

        with open(args.grid) as f:
            grid = yaml.safe_load(f) or {}
    profile = "quick" if args.quick else (args.profile or grid.get("profile") or "quick")
    prof = PROFILES[profile]
    profile_config = dict(prof["config"])
    profile_config.update(grid.get("config") or {})
    if args.config_files:
        overrides.setdefault("_config_files", args.config_files)
    config_files = overrides.pop("_config_files", None)
    if config_files:
        import yaml

        for path in str(config_files).split():
            with open(path) as f:
                profile_config.update(yaml.safe_load(f) or {})
    models = parse_models(args.models or grid.get("models") or "baselines")
    datasets = _csv_list(args.datasets) or _csv_list(grid.get("datasets")) or prof["datasets"]
    seeds = [int(s) for s in (_csv_list(args.seeds) or _csv_list(grid.get("seeds")) or ["2020"])]
    noise = parse_noise(args.noise or grid.get("noise"))
    if noise:
        try:
            from recbole_mm.data.noise import parse_feature_noise  # noqa: F401
        except ImportError:
            raise SystemExit("error: --noise needs recbole_mm.data.noise (feature_noise) "
                             "which this checkout lacks") from None
    name = args.name or grid.get("name") or f"{profile}_{'_'.join(datasets)}"
    out_dir = os.path.abspath(args.out or os.path.join(args.results_dir, name))
    scratch = os.path.abspath(args.scratch or os.path.join(PROJECT_DIR, "benchmarks", "runs",
                                                           _safe(name)))
    cells = build_grid(models, datasets, seeds, profile_config, overrides, noise,
                       baseline_config=prof.get("baseline_config"),
                       model_config=prof.get("model_config"))
    command = "python -m recbole_mm.benchmark " + " ".join(shlex.quote(a) for a in argv)
    if args.dry_run:
        for c in cells:
            print(c.cell_id, json.dumps(c.config, sort_keys=True))
        return 0
    os.makedirs(out_dir, exist_ok=True)
    meta = {"name": name, "command": command, "profile": profile,
            "profile_description": prof["description"], "profile_config": profile_config,
            "baseline_config": prof.get("baseline_config") or {},
            "model_config": prof.get("model_config") or {},
            "overrides": overrides, "models": [list(m) for m in models], "datasets": datasets,
            "seeds": seeds, "noise": list(noise) if noise else None,
            "commit": git_commit(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"), "device": device_description(),
            "cells": [c.cell_id for c in cells]}
    if args.report and os.path.exists(os.path.join(out_dir, "meta.json")):
        with open(os.path.join(out_dir, "meta.json")) as f:
            meta = json.load(f)
    if not args.report:
        meta = _merge_meta(out_dir, meta)
        t0 = time.perf_counter()
        run_grid(cells, out_dir, scratch, isolate=not args.no_isolate, force=args.force,
                 timeout=args.cell_timeout, command=command,
                 log=lambda s: print(s, flush=True))
        meta = _merge_meta(out_dir, meta, grid_wall_s=round(time.perf_counter() - t0, 1))
    rep = write_report(out_dir, meta, plots=not args.no_plots)
    print(rep["markdown"])
    print(f"\nresults: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
