"""Running cells: one cell in this process (:func:`execute_cell`) or in its own process with live
progress and a time limit (:func:`run_cell`), and a whole grid (:func:`run_grid`).

Files of a cell (``<scratch>`` is ``--scratch``, by default ``<out>/scratch`` when ``--out`` is
given, else ``benchmarks/runs/<name>``; nothing is written into the checkout otherwise):

* ``<out>/cells/<cell id>.json``: its record, written atomically when the attempt ends (``ok``,
  ``timeout``, ``failed`` or ``skipped``); ``<cell id>.users.npz`` beside it: the per-user test
  values (:mod:`recbole_mm.benchmark.significance`). A run that resumed an attempt stopped by
  its time limit (or a failure) lists that attempt under ``earlier_attempts`` and counts its
  time in ``wall_s_all_attempts`` (``wall_s`` is the last attempt's alone).
* ``<scratch>/logs/<cell id>.log``: one progress line per training epoch and per validation
  (loss, validation score, best so far, seconds), written as they happen, plus anything the run
  prints (warnings, a traceback); every attempt is appended. The same lines go to the console.
* ``<scratch>/saved/<cell id>/``: the run's checkpoints, its training state ``X.resume.pth``
  (:mod:`recbole_mm.resume`) and ``progress.json`` (what the run has reached, rewritten after
  every epoch). Removed when the cell ends ``ok`` or skipped; kept when it times out, fails or is
  interrupted, so that the next attempt resumes from the last completed epoch instead of
  starting over (``--force`` starts over).
* ``<scratch>/log/``, ``<scratch>/log_tensorboard/``: RecBole's own logs (the cell runs with
  ``<scratch>`` as its working directory).
"""
from __future__ import annotations

import datetime as _dt
import glob
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from recbole_mm.benchmark.common import (CELL_STATUS_DONE, PROJECT_DIR, STATUS_FAILED,
                                         STATUS_SKIPPED, STATUS_TIMEOUT, atomic_write_text,
                                         cell_path, environment, jsonable, load_cells, loadavg,
                                         reached_summary, read_json)
from recbole_mm.benchmark.grid import Cell
from recbole_mm.benchmark.probe import Probe, effective_config, stage_epochs
from recbole_mm.config import plain_argv

PER_USER_SUFFIX = ".users.npz"
#: How often (seconds) the harness relays a running cell's new log lines to the console.
POLL_S = 0.5


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def cell_scratch(scratch: str, cell_id: str) -> str:
    """The cell's checkpoint folder (checkpoints, training state, ``progress.json``)."""
    return os.path.join(scratch, "saved", cell_id)


def log_path(scratch: str, cell_id: str) -> str:
    return os.path.join(scratch, "logs", cell_id + ".log")


def training_state(folder: str):
    """The newest training state (``*.resume.pth``) in a cell's checkpoint folder, or None."""
    states = glob.glob(os.path.join(folder, "*.resume.pth"))
    return max(states, key=os.path.getmtime) if states else None


def reached(folder: str) -> dict:
    """What an attempt recorded in ``progress.json`` before it stopped ({} when nothing)."""
    got = read_json(os.path.join(folder, "progress.json")) or {}
    keep = ("epochs_run", "best_valid_score", "best_epoch", "valid_metric", "resumed_from_epoch",
            "curve")
    return {k: got[k] for k in keep if k in got}


def earlier_attempts(prev: dict | None) -> list[dict]:
    """The attempts before this one that did not finish (timed out, failed): the unfinished
    record ``prev`` on disk and the attempts it continued, oldest first."""
    if not prev or prev.get("status") == CELL_STATUS_DONE:
        return []
    this = {k: prev.get(k) for k in ("status", "reason", "wall_s", "epochs_run", "finished")}
    return list(prev.get("earlier_attempts") or []) + [this]


def add_earlier_attempts(rec: dict, earlier: list[dict]) -> None:
    """Record ``earlier`` in ``rec`` when this attempt continued them (it resumed from their
    training state) or did not finish either (the next attempt may continue the chain), and set
    ``wall_s_all_attempts``: ``wall_s`` (this attempt alone) plus the recorded attempts'."""
    continued = rec.get("resumed_from_epoch") is not None or rec.get("status") != CELL_STATUS_DONE
    if earlier and continued:
        rec["earlier_attempts"] = earlier
    before = sum(a.get("wall_s") or 0 for a in rec.get("earlier_attempts") or [])
    rec["wall_s_all_attempts"] = round((rec.get("wall_s") or 0) + before, 3)


def _remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def write_per_user(path: str, users, values: dict) -> None:
    """Per-user test values as a compressed ``.npz`` (``user`` = raw tokens, one array per
    metric), written to a temporary name and renamed."""
    import numpy as np

    from recbole_mm.encoders.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, user=np.asarray(users, dtype=str), **values)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------- one cell, here
def execute_cell(cell: Cell, scratch: str, progress=None, per_user_file=None, base_dir=None,
                 fresh: bool = False) -> dict:
    """Train and test one cell in this process; returns its record. Exceptions of the run are
    recorded (``failed`` / ``skipped``); an interrupt (Ctrl-C) propagates and leaves the training
    state for the next attempt. ``progress(line)`` receives the live progress lines;
    ``per_user_file`` receives the per-user test values; a relative ``data_path`` is read from
    ``base_dir`` (default: the current folder); ``fresh`` drops an earlier attempt's state."""
    import torch

    progress = progress or (lambda line: None)
    rec = {"cell_id": cell.cell_id, **cell.spec(), "status": None, "reason": None,
           "started": _now()}
    t_start = time.perf_counter()
    try:
        from recbole_mm import registry

        registry.get_model(cell.model)
    except Exception as exc:  # not registered (yet), or the zoo failed to import
        rec.update(status=STATUS_SKIPPED, reason=f"model not available: {type(exc).__name__}: "
                                                 f"{str(exc).splitlines()[0][:300]}")
        return rec
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.resume import ResumeError

    scratch = os.path.abspath(scratch)
    folder = cell_scratch(scratch, cell.cell_id)
    if fresh:
        _remove(folder)
    os.makedirs(folder, exist_ok=True)
    cfg = {"show_progress": False, "state": "WARNING", "reproducibility": True,
           "checkpoint_dir": folder}
    cfg.update(cell.config)
    cfg["seed"] = cell.seed
    base_dir = base_dir or os.getcwd()
    if cfg.get("data_path") and not os.path.isabs(str(cfg["data_path"])):
        cfg["data_path"] = os.path.join(base_dir, str(cfg["data_path"]))
    state = training_state(folder)
    progress_file = os.path.join(folder, "progress.json")
    probe = Probe(progress, progress_file, (reached(folder).get("curve") or []) if state else None)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cwd = os.getcwd()
    with plain_argv():  # RecBole's Config must not read the harness's options
        os.chdir(scratch)    # RecBole writes log/ and log_tensorboard/ under the working folder
        try:
            try:
                if state:
                    progress(f"resuming from {os.path.basename(state)}")
                result = run_recbole_mm(cell.model, cell.dataset, config_dict=cfg, saved=True,
                                        trainer_hook=probe.attach, resume=state)
            except ResumeError as exc:
                if not state or probe.attached:
                    raise
                progress(f"cannot resume ({exc}); starting over")
                _remove(folder)
                os.makedirs(folder, exist_ok=True)
                probe = Probe(progress, progress_file)
                result = run_recbole_mm(cell.model, cell.dataset, config_dict=cfg, saved=True,
                                        trainer_hook=probe.attach)
        except Exception as exc:
            tb = traceback.format_exc(limit=6)
            first = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
            msg = f"{type(exc).__name__}: {first}"
            from recbole_mm.config import ConfigError

            if probe.attached:  # training had begun: keep what it reached, and its training state
                rec.update(status=STATUS_FAILED, reason=msg, traceback=tb[-3000:])
                rec.update(probe.reached())
            else:
                what = ("configuration refused" if isinstance(exc, ConfigError)  # e.g. protocol: paper
                        else "cannot run on this dataset")  # data / model construction refused it
                rec.update(status=STATUS_SKIPPED, reason=f"{what}: {msg}", traceback=tb[-3000:])
                _remove(folder)
            progress(f"{rec['status']}: {msg}")
            rec.update(probe.info)
            rec["wall_s"] = round(time.perf_counter() - t_start, 3)
            return rec
        finally:
            os.chdir(cwd)

    curve = probe.epochs
    fit_evals = [s for s, in_fit in probe.eval_calls if in_fit]
    test_evals = [s for s, in_fit in probe.eval_calls if not in_fit]
    train_s = [r["train_s"] for r in curve if "train_s" in r]
    if cuda:
        peak, peak_src = torch.cuda.max_memory_allocated() / 2**20, "cuda_max_allocated"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak_src = "process_max_rss"
    rec.update(probe.info)
    rec.update(probe.reached())
    rec.pop("updated", None)
    rec.update({
        "status": CELL_STATUS_DONE,
        "test_result": jsonable(dict(result["test_result"])),
        "best_valid_result": jsonable(dict(result["best_valid_result"] or {})),
        "best_valid_score": jsonable(result["best_valid_score"]),
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
        "wall_s": round(time.perf_counter() - t_start, 3),
    })
    per_user = probe.per_user()
    if per_user and per_user_file:
        users, values = per_user
        write_per_user(per_user_file, users, values)
        rec["per_user"] = {"file": os.path.basename(per_user_file), "users": len(users),
                           "metrics": sorted(values)}
    vm = rec.get("valid_metric")
    progress(f"done: test {vm} {rec['test_result'].get(vm, float('nan')):.4f}, best epoch "
             f"{rec['best_epoch']} of {rec['epochs_run']} run")
    _remove(folder)
    return rec


# ----------------------------------------------------------------------------- one cell, isolated
class _LogTail:
    """Relays the complete new lines of a growing log file."""

    def __init__(self, path: str, emit):
        self.path, self.emit, self.pos, self.rest = path, emit, os.path.getsize(path), ""
        self.start = self.pos

    def poll(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            data = f.read()
        self.pos += len(data)
        *lines, self.rest = (self.rest + data.decode("utf-8", "replace")).split("\n")
        for line in lines:
            if line.strip():
                self.emit(line)

    def text(self) -> str:
        """Everything this attempt wrote."""
        with open(self.path, "rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace")


def _stamp(line: str) -> str:
    return f"{time.strftime('%H:%M:%S')} {line}"


def _is_progress(line: str) -> bool:
    """A line :func:`_stamp` wrote (the run's other output, e.g. library warnings, stays in the
    log file only)."""
    return len(line) > 9 and line[2] == line[5] == ":" and line[:8].replace(":", "").isdigit()


def run_cell(cell: Cell, out_dir: str, scratch: str, isolate: bool = True,
             timeout: float | None = None, command: str = "", log=None,
             fresh: bool = False) -> dict:
    """Run one cell (in a fresh process when ``isolate``, stopped after ``timeout`` seconds)
    and write its record atomically; progress lines go to the cell's log file and ``log``."""
    log = log or (lambda line: None)
    path = cell_path(out_dir, cell.cell_id)
    users_file = cell_path(out_dir, cell.cell_id, PER_USER_SUFFIX)
    scratch = os.path.abspath(scratch)
    logfile = log_path(scratch, cell.cell_id)
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    with open(logfile, "a") as f:
        f.write(_stamp(f"=== {cell.cell_id}: attempt started ({'isolated' if isolate else 'in process'}"
                       f"{f', time limit {timeout:g} s' if timeout else ''})\n"))
    earlier = [] if fresh else earlier_attempts(read_json(path))
    load_start = loadavg()
    if isolate:
        rec = _run_isolated(cell, scratch, logfile, users_file, timeout, log, fresh)
    else:
        def progress(line):
            with open(logfile, "a") as f:
                f.write(_stamp(line) + "\n")
            log("    " + line)

        rec = execute_cell(cell, scratch, progress=progress, per_user_file=users_file,
                           fresh=fresh)
    rec.update(environment())
    rec["load_avg_1m"] = [load_start, loadavg()]  # machine load at start / end (timing context)
    rec["isolated"] = bool(isolate)
    if not isolate and rec.get("peak_mem_source") == "process_max_rss":
        rec["peak_mem_source"] = "process_max_rss_shared"  # the max over every cell run so far
    add_earlier_attempts(rec, earlier)
    rec["command"] = command
    rec["log_file"] = logfile
    rec["finished"] = _now()
    atomic_write_text(path, json.dumps(jsonable(rec), indent=1, sort_keys=False))
    return rec


class _Terminated(SystemExit):
    """SIGTERM reached the harness while a cell process ran."""


def _raise_terminated(signum, frame):
    raise _Terminated(128 + signum)


def supervise(proc: subprocess.Popen, timeout: float | None, t0: float, on_poll=None) -> bool:
    """Wait for the cell process ``proc``, calling ``on_poll`` every :data:`POLL_S` seconds;
    kill it once ``timeout`` seconds have passed since ``t0`` (returns True then). If the
    harness itself is stopped meanwhile (Ctrl-C, or SIGTERM, which would otherwise end only the
    harness and leave the cell running unsupervised), the cell process is ended first and the
    interruption re-raised; its saved training state stays, so a later run resumes it."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    try:
        while proc.poll() is None:
            if timeout is not None and time.perf_counter() - t0 > timeout:
                proc.kill()
                proc.wait()
                return True
            time.sleep(POLL_S)
            if on_poll is not None:
                on_poll()
        return False
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _run_isolated(cell, scratch, logfile, users_file, timeout, log, fresh) -> dict:
    spec_fd, spec_path = tempfile.mkstemp(dir=scratch, prefix="cell-", suffix=".json")
    with os.fdopen(spec_fd, "w") as f:
        json.dump(cell.spec(), f)
    res_path = spec_path[:-5] + ".result.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = PROJECT_DIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [sys.executable, "-m", "recbole_mm.benchmark", "--_cell", spec_path, "--_result",
            res_path, "--_scratch", scratch, "--_users", users_file, "--_base_dir", os.getcwd()]
    tail = _LogTail(logfile, lambda line: log("    " + line) if _is_progress(line) else None)
    t0 = time.perf_counter()
    try:
        with open(logfile, "a") as out:
            proc = subprocess.Popen(args + (["--_fresh"] if fresh else []), cwd=scratch, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        timed_out = supervise(proc, timeout, t0, tail.poll)
        tail.poll()
        rec = read_json(res_path) if os.path.exists(res_path) else None
        if rec is None:
            folder = cell_scratch(scratch, cell.cell_id)
            rec = {"cell_id": cell.cell_id, **cell.spec(), **reached(folder)}
            rec["resumable"] = training_state(folder) is not None
            if timed_out:
                rec.update(status=STATUS_TIMEOUT, reason=f"timed out after {timeout:g} s")
            else:
                rec.update(status=STATUS_FAILED,
                           reason=f"cell process exited with {proc.returncode}",
                           traceback=tail.text()[-3000:])
            rec["wall_s"] = round(time.perf_counter() - t0, 3)
            with open(logfile, "a") as f:
                f.write(_stamp(f"{rec['status']}: {rec['reason']}") + "\n")
    finally:
        for p in (spec_path, res_path):
            if os.path.exists(p):
                os.unlink(p)
    return rec


def worker(spec_path: str, result_path: str, scratch: str, users_file=None, base_dir=None,
           fresh: bool = False) -> int:
    """The isolated cell process: progress lines on stdout (the parent sends them to the cell's
    log file and the console), the record to ``result_path``."""
    with open(spec_path) as f:
        cell = Cell.from_spec(json.load(f))
    rec = execute_cell(cell, scratch, progress=lambda line: print(_stamp(line), flush=True),
                       per_user_file=users_file, base_dir=base_dir, fresh=fresh)
    atomic_write_text(result_path, json.dumps(jsonable(rec)))
    return 0


# ----------------------------------------------------------------------------- a grid
def run_grid(cells, out_dir, scratch, isolate=True, force=False, timeout=None, command="",
             log=print) -> list[dict]:
    """Run every cell not finished yet (all with ``force``); returns their records."""
    done = load_cells(out_dir)
    records = []
    for i, cell in enumerate(cells, 1):
        prev = done.get(cell.cell_id)
        if not prev or prev.get("status") != CELL_STATUS_DONE:
            # finished meanwhile by another harness process writing to the same folder?
            prev = read_json(cell_path(out_dir, cell.cell_id)) or prev
        if prev and prev.get("status") == CELL_STATUS_DONE and not force:
            log(f"[{i}/{len(cells)}] {cell.cell_id}: done earlier, skipped")
            records.append(prev)
            continue
        log(f"[{i}/{len(cells)}] {cell.cell_id}: running (log: {log_path(scratch, cell.cell_id)})")
        t0 = time.perf_counter()
        rec = run_cell(cell, out_dir, scratch, isolate=isolate, timeout=timeout, command=command,
                       log=log, fresh=force)
        msg = rec["status"]
        if rec["status"] == CELL_STATUS_DONE:
            vm = rec.get("valid_metric", "ndcg@10")
            msg += (f"  test {vm}={rec['test_result'].get(vm, float('nan')):.4f}  best epoch "
                    f"{rec['best_epoch']}/{rec['epochs_run']}")
        else:
            got = reached_summary(rec)
            msg += f": {rec.get('reason')}" + (f" (reached {got})" if got else "")
        log(f"[{i}/{len(cells)}] {cell.cell_id}: {msg}  ({time.perf_counter() - t0:.1f} s)")
        records.append(rec)
    return records
