"""Shared by every part of the harness: JSON-safe values, safe file names, cell statuses, the
cell files of a results folder, and provenance (commit, device, versions, machine load)."""
from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess

from recbole_mm.encoders.io import atomic_write_text  # noqa: F401  (re-exported for the parts)

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Cell statuses. Only ``ok`` cells are final; every other cell is run again by the next command
#: (a timed-out or failed cell resumes from its last training state when it left one).
CELL_STATUS_DONE = "ok"
STATUS_TIMEOUT = "timeout"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
STATUS_NOT_RUN = "not run"


def jsonable(x):
    """Plain JSON data (numpy / torch scalars, tuples, OrderedDicts made plain; NaN -> None)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (str, bool)) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    return v if math.isfinite(v) else None


def safe_name(s: str) -> str:
    """``s`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(s)).strip("-") or "x"


def cell_path(out_dir: str, cell_id: str, suffix: str = ".json") -> str:
    """A cell's result file (``.json``) or its per-user test values (``.users.npz``)."""
    return os.path.join(out_dir, "cells", cell_id + suffix)


def read_json(path: str):
    """The JSON in ``path``, or ``None`` when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def load_cells(out_dir: str) -> dict[str, dict]:
    """``{cell_id: record}`` of every cell file in ``<out_dir>/cells``."""
    folder = os.path.join(out_dir, "cells")
    out = {}
    if not os.path.isdir(folder):
        return out
    for f in sorted(os.listdir(folder)):
        if f.endswith(".json") and not f.startswith("."):
            rec = read_json(os.path.join(folder, f))  # torn files cannot exist (atomic writes)
            if isinstance(rec, dict):
                out[rec.get("cell_id", f[:-5])] = rec
    return out


def reached_summary(rec: dict) -> str:
    """``'3 epochs, best valid ndcg@10 0.0312 at epoch 1'`` for a cell that stopped early."""
    n = rec.get("epochs_run")
    if n is None:
        return ""
    out = f"{n} epoch{'s' if n != 1 else ''}"
    if rec.get("best_valid_score") is not None:
        out += (f", best valid {rec.get('valid_metric') or 'score'} "
                f"{rec['best_valid_score']:.4f} at epoch {rec.get('best_epoch')}")
    if rec.get("resumed_from_epoch") is not None:
        out += f", resumed at epoch {rec['resumed_from_epoch']}"
    return out


# ----------------------------------------------------------------------------- provenance
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


def environment() -> dict:
    """Versions, host device and commit, recorded with every cell."""
    import torch

    try:
        import recbole

        rb = recbole.__version__
    except Exception:
        rb = "unknown"
    return {"torch": torch.__version__, "recbole": rb, "python": platform.python_version(),
            "host_device": device_description(), "commit": git_commit()}


def loadavg():
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
