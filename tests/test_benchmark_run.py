"""recbole_mm.benchmark while cells run: live progress in the cell log, scratch files under the
output folder, timed-out cells keep what they reached, interrupted cells resume, and paired
significance tests over test users (tiny data)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from recbole_mm import benchmark as bm
from recbole_mm.benchmark import run as bench_run
from recbole_mm.benchmark import significance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"hidden_size": 16, "inner_size": 16, "embedding_size": 16, "n_layers": 1, "n_heads": 2,
        "train_batch_size": 64, "eval_batch_size": 256}


def _cells(spec, tiny_root, **cfg):
    return bm.build_grid(bm.parse_models(spec), ["mm_sample"], [5], {},
                         {**TINY, "data_path": tiny_root, **cfg})


def test_progress_is_in_the_cell_log_while_it_runs(tiny_root, tmp_path):
    """Every progress line is already in the cell's log file when the console shows it; RecBole's
    logs, checkpoints and the log file land under the scratch folder, none in the working folder."""
    (cell,) = _cells("SASRec", tiny_root, epochs=2)
    out, scratch = tmp_path / "res", tmp_path / "res" / "scratch"
    logfile = bench_run.log_path(str(scratch), cell.cell_id)
    seen = []

    def console(line):
        if line.startswith("    epoch"):
            with open(logfile) as f:
                assert line.strip() in f.read()  # written before it is shown, not at the end
        seen.append(line.strip())

    (rec,) = bm.run_grid([cell], str(out), str(scratch), isolate=False, log=console)
    assert rec["status"] == "ok"
    train = [s for s in seen if s.startswith("epoch") and "train loss" in s]
    valid = [s for s in seen if s.startswith("epoch") and "valid ndcg@10" in s]
    assert [s.split(":")[0] for s in train] == ["epoch 0 of 2", "epoch 1 of 2"]
    assert len(valid) == 2 and "(best " in valid[1] and valid[1].endswith(" s")
    assert f"{rec['curve'][1]['train_loss']:.4f}" in train[1]
    assert rec["log_file"] == logfile
    assert os.path.isdir(scratch / "log") and os.path.isdir(scratch / "log_tensorboard")
    assert not os.path.exists(tmp_path / "log") and not os.path.exists(tmp_path / "saved")
    assert not os.listdir(scratch / "saved")  # a finished cell's checkpoints are removed


def test_cli_scratch_goes_under_out_and_the_log_fills_live(tiny_root, tmp_path):
    out = tmp_path / "res"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--quick", "--models=SASRec",
                          f"--out={out}", "--seeds=1", f"--data_path={tiny_root}", "--epochs=2",
                          "--hidden_size=16", "--no_plots"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (cell_file,) = (out / "cells").glob("*.json")
    cell_id = cell_file.name[:-5]
    log = (out / "scratch" / "logs" / f"{cell_id}.log").read_text()
    assert "epoch 1 of 2: train loss" in log and "epoch 1: valid ndcg@10" in log
    assert "epoch 1 of 2: train loss" in res.stdout  # relayed to the console
    assert (out / "scratch" / "log").is_dir() and not (tmp_path / "log").exists()
    assert (out / "cells" / f"{cell_id}.users.npz").exists()


def test_timed_out_cell_records_what_it_reached(tiny_root, tmp_path):
    (cell,) = _cells("SASRec", tiny_root, epochs=100000, stopping_step=100000)
    out, scratch = str(tmp_path / "res"), str(tmp_path / "res" / "scratch")
    rec = bm.run_cell(cell, out, scratch, isolate=True, timeout=45)
    assert rec["status"] == "timeout" and rec["reason"] == "timed out after 45 s"
    assert rec["epochs_run"] >= 1, "the cell should train at least one tiny epoch in 45 s"
    assert len([e for e in rec["curve"] if "train_s" in e]) == rec["epochs_run"]
    scores = [e["valid_score"] for e in rec["curve"] if e.get("valid_score") is not None]
    assert rec["best_valid_score"] == max(scores)
    # the kept checkpoint: the last epoch that reached the best score (RecBole keeps ties)
    kept = [e for e in rec["curve"] if e.get("valid_score") == max(scores)][-1]
    assert kept["epoch"] == rec["best_epoch"]
    assert rec["resumable"] is True  # the training state stays for the next attempt
    assert bench_run.training_state(bench_run.cell_scratch(scratch, cell.cell_id))
    saved = json.load(open(os.path.join(out, "cells", cell.cell_id + ".json")))
    assert saved["status"] == "timeout" and saved["epochs_run"] == rec["epochs_run"]
    md = bm.write_report(out, {"name": "t", "cells": [cell.cell_id]}, plots=False)["markdown"]
    line = next(x for x in md.splitlines() if x.startswith(f"| {cell.cell_id} |"))
    assert f"| timeout | {rec['epochs_run']} epoch" in line
    assert f"best valid ndcg@10 {rec['best_valid_score']:.4f} at epoch {rec['best_epoch']}" in line


def test_interrupted_cell_resumes_from_its_training_state(tiny_root, tmp_path):
    """Stopped during epoch 1's validation, the cell resumes at epoch 1 (the training state holds
    epoch 0) and ends exactly as an uninterrupted run of the same cell."""
    (cell,) = _cells("SASRec", tiny_root, epochs=3, stopping_step=10)
    out, scratch = str(tmp_path / "res"), str(tmp_path / "scratch")

    def stop(line):
        if line.strip().startswith("epoch 1: valid"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bm.run_grid([cell], out, scratch, isolate=False, log=stop)
    folder = bench_run.cell_scratch(scratch, cell.cell_id)
    from recbole_mm.compat import load_checkpoint

    assert load_checkpoint(bench_run.training_state(folder))["epoch"] == 0
    # the record an isolated attempt stopped by its time limit leaves (the supervisor writes it)
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    with open(bench_run.cell_path(out, cell.cell_id), "w") as f:
        json.dump({"cell_id": cell.cell_id, "status": "timeout", "reason": "timed out after 1 s",
                   "wall_s": 100.0, "epochs_run": 1}, f)
    lines = []
    (rec,) = bm.run_grid([cell], out, scratch, isolate=False, log=lines.append)
    assert rec["status"] == "ok" and rec["resumed_from_epoch"] == 1
    # the wall time counts the attempt it continued; the attempt is on record
    assert [a["status"] for a in rec["earlier_attempts"]] == ["timeout"]
    assert rec["wall_s_all_attempts"] == pytest.approx(rec["wall_s"] + 100.0, abs=1e-3)
    assert [e["epoch"] for e in rec["curve"]] == [0, 1, 2] and rec["epochs_run"] == 3
    assert any("resumed at epoch 1" in x for x in lines)
    assert not os.path.exists(folder)  # finished: its scratch is removed
    (whole,) = bm.run_grid([cell], str(tmp_path / "other"), str(tmp_path / "s2"), isolate=False,
                           log=lambda s: None)
    assert rec["test_result"] == whole["test_result"]
    assert rec["best_valid_score"] == whole["best_valid_score"]
    assert [e["valid_score"] for e in rec["curve"]] == [e["valid_score"] for e in whole["curve"]]


def test_paired_p_values():
    a = np.array([0.1, 0.5, 0.0, 0.3, 1.0])
    assert significance.paired_p(a, a, "wilcoxon") == 1.0
    assert significance.paired_p(a, a, "ttest") == 1.0
    rng = np.random.default_rng(0)
    x = rng.random(200)
    assert significance.paired_p(x + 0.2, x + rng.normal(0, 0.05, 200), "ttest") < 1e-6
    assert significance.paired_p(x + 0.2, x + rng.normal(0, 0.05, 200), "wilcoxon") < 1e-6
    with pytest.raises(ValueError, match="expected one of wilcoxon, ttest, got 'z'"):
        significance.paired_p(a, a, "z")
    assert [significance.marker(p) for p in (0.001, 0.03, 0.2, None)] == ["**", "*", "", ""]


def test_significance_identical_rows_and_trained_vs_random(tiny_root, tmp_path):
    """Two identical cells: p = 1, no mark; a trained SASRec against the same model with random
    weights (learning rate 0): significant. Per-user values average to the cell's metrics."""
    cells = _cells("SASRec,twin=SASRec{},random=SASRec{learning_rate: 0.0}", tiny_root, epochs=4)
    out = str(tmp_path / "res")
    recs = bm.run_grid(cells, out, str(tmp_path / "s"), isolate=False, log=lambda s: None)
    assert [r["status"] for r in recs] == ["ok"] * 3
    sas = recs[0]
    with np.load(os.path.join(out, "cells", sas["per_user"]["file"])) as npz:
        assert len(npz["user"]) == sas["per_user"]["users"] == 200
        assert len(set(npz["user"])) == 200
        for m, v in sas["test_result"].items():
            assert float(npz[m].mean()) == pytest.approx(v, abs=1e-4), m
    rep = bm.write_report(out, {"name": "s", "cells": [c.cell_id for c in cells]}, plots=False)
    res = {(t["label"], t["metric"]): t for t in rep["significance"]["mm_sample"]["results"]}
    assert {t["reference"] for t in res.values()} == {"SASRec"}
    for m in ("recall@10", "ndcg@10", "recall@50", "ndcg@50"):
        assert res["twin", m]["p"] == 1.0 and res["twin", m]["mark"] == ""
    rnd = res["random", "ndcg@10"]
    assert rnd["users"] == 200 and rnd["diff"] < 0 and rnd["p"] < 0.01 and rnd["mark"] == "**"
    md = rep["markdown"]
    row = next(x for x in md.splitlines() if x.startswith("| random |"))
    assert " **" in row.split("|")[2 + list(bm.metric_names(recs)).index("ndcg@10")]
    assert "Wilcoxon signed-rank test" in md and "| vs SASRec |" in md
    with open(os.path.join(out, "significance.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 2 * 4
    # the reference row read from another results folder (an ablation table's full model)
    rnd_rec = next(r for r in recs if r["label"] == "random")
    ref_dir = tmp_path / "ref" / "cells"
    ref_dir.mkdir(parents=True)
    for name in (rnd_rec["cell_id"] + ".json", rnd_rec["per_user"]["file"]):
        shutil.copy(os.path.join(out, "cells", name), ref_dir / name)
    kept = [c.cell_id for c in cells if c.cell_id != rnd_rec["cell_id"]]
    rep = bm.write_report(out, {"name": "s", "cells": kept, "reference": "random",
                                "reference_dir": str(tmp_path / "ref")}, plots=False)
    sig = rep["significance"]["mm_sample"]
    assert sig["reference"] == "random" and {t["label"] for t in sig["results"]} == {"SASRec", "twin"}
    got = {t["label"]: t for t in sig["results"] if t["metric"] == "ndcg@10"}
    assert got["SASRec"]["diff"] == pytest.approx(-rnd["diff"]) and got["SASRec"]["p"] < 0.01
    assert f"difference from random (its runs in {tmp_path / 'ref'})" in rep["markdown"]
    rep = bm.write_report(out, {"name": "s", "cells": kept, "reference": "nope",
                                "reference_dir": str(tmp_path / "ref")}, plots=False)
    assert rep["significance"]["mm_sample"]["notes"] == [
        f"no significance test: the reference nope is not a row of the folder {tmp_path / 'ref'} "
        "(--reference names a row label or model)"]
    # the paired t-test on request; a row whose cells lack per-user values is named, not tested
    twin = next(r for r in recs if r["label"] == "twin")
    twin_file = os.path.join(out, "cells", twin["cell_id"] + ".json")
    old = json.load(open(twin_file))
    old.pop("per_user")
    json.dump(old, open(twin_file, "w"))
    rep = bm.write_report(out, {"name": "s", "cells": [c.cell_id for c in cells],
                                "significance_test": "ttest", "reference": "random"}, plots=False)
    sig = rep["significance"]["mm_sample"]
    assert {t["label"] for t in sig["results"]} == {"SASRec"}
    assert sig["results"][0]["test"] == "ttest" and sig["results"][0]["diff"] > 0
    assert sig["notes"] == ["not tested: cells without per-user test values (recorded before the "
                            "harness saved them) in twin"]
    assert "paired t-test" in rep["markdown"] and "Significance: not tested: " in rep["markdown"]


@pytest.mark.parametrize("name", ["short_beauty", "short_scientific_mm"])
def test_checked_in_results_regenerate(name, tmp_path):
    """Result sets recorded before per-user values and 'reached' existed still report."""
    src = os.path.join(ROOT, "benchmarks", "results", name)
    if not os.path.isdir(src):
        pytest.skip(f"{src} not in this checkout")
    out = tmp_path / name
    shutil.copytree(src, out)
    assert bm.main(["--report", f"--out={out}", "--no_plots"]) == 0
    md = (out / "summary.md").read_text()
    rows = [r for r in bm.summarize(list(bm.load_cells(str(out)).values())) if r["n_ok"]]
    assert rows and all(f"| {r['label']} | " in md for r in rows if not r["noise"])
    assert "cells without per-user test values (recorded before the harness saved them)" in md
    assert (out / "significance.csv").exists()


def test_resumed_curve_keeps_the_epochs_before_the_resumed_one():
    from recbole_mm.benchmark.probe import resumed_curve

    one = [{"epoch": e, "segment": 0} for e in range(4)]
    assert [r["epoch"] for r in resumed_curve(one, 2)] == [0, 1]
    # a two-stage run resumed in its second stage keeps the whole first stage
    two = one + [{"epoch": e, "segment": 1} for e in range(3)]
    got = resumed_curve(two, 1)
    assert [(r["segment"], r["epoch"]) for r in got] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    # stopped just after the second stage began: resumes at its start
    assert len(resumed_curve(two, 0)) == 4
    # the state names the stage: deep in stage 2 keeps its epochs before the resumed one ...
    assert [(r["segment"], r["epoch"]) for r in resumed_curve(two, 2, segment=1)][-2:] == [
        (1, 0), (1, 1)]
    # ... a stage set up with no epoch done keeps the whole curve, and an earlier stage drops
    # every later one
    assert len(resumed_curve(two, 0, segment=2)) == 7
    assert [(r["segment"], r["epoch"]) for r in resumed_curve(two, 3, segment=0)] == [
        (0, 0), (0, 1), (0, 2)]


def _stop_resume_and_rerun(cell, tmp_path, line_start):
    """Stop a two-stage cell at the second progress line starting with ``line_start`` (the same
    line of its second stage), resume it, and run it again uninterrupted elsewhere: (resumed
    record, uninterrupted record, the resumed attempt's progress lines)."""
    out, scratch = str(tmp_path / "res"), str(tmp_path / "scratch")
    seen = []

    def stop(line):
        seen.append(line.strip())
        if sum(x.startswith(line_start) for x in seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bm.run_grid([cell], out, scratch, isolate=False, log=stop)
    lines = []
    (rec,) = bm.run_grid([cell], out, scratch, isolate=False, log=lines.append)
    (whole,) = bm.run_grid([cell], str(tmp_path / "other"), str(tmp_path / "s2"), isolate=False,
                           log=lambda s: None)
    return rec, whole, lines


def test_two_stage_cell_resumed_deep_in_its_second_stage_keeps_that_stages_epochs(
        tiny_root, tmp_path):
    """Stopped at phase 2's second validation, the cell says it resumes at phase 2's epoch 1 and
    its record (curve, best epoch) is the uninterrupted run's: the stage's epoch counter is
    only set when fit reaches the stage, so the resume point comes from the training state."""
    (cell,) = _cells("DeCoRec", tiny_root, epochs=6, stopping_step=10)
    rec, whole, lines = _stop_resume_and_rerun(cell, tmp_path, "epoch 1: valid")
    assert any("resumed at epoch 1 of phase 2" in x for x in lines), lines
    assert rec["resumed_from_epoch"] == 1
    assert [(e["segment"], e["epoch"]) for e in rec["curve"]] == [
        (e["segment"], e["epoch"]) for e in whole["curve"]] == [(0, 0), (0, 1), (0, 2), (1, 0),
                                                               (1, 1), (1, 2)]
    assert rec["best_epoch"] == whole["best_epoch"]
    assert rec["best_valid_score"] == pytest.approx(whole["best_valid_score"], abs=1e-9)


_SUPERVISED = """
import os, subprocess, sys, time
from recbole_mm.benchmark.run import supervise
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
supervise(child, None, time.perf_counter())
"""


def test_sigterm_to_the_harness_ends_its_cell_process(tmp_path):
    """SIGTERM to the harness while a cell process runs ends that process too (it used to go on
    running unsupervised), and the harness exits with 128 + SIGTERM."""
    import signal
    import time

    pid_file = tmp_path / "child.pid"
    harness = subprocess.Popen([sys.executable, "-c", _SUPERVISED, str(pid_file)], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": ROOT})
    for _ in range(300):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.1)
    child = int(pid_file.read_text())
    time.sleep(1.0)  # inside supervise's wait
    harness.send_signal(signal.SIGTERM)
    assert harness.wait(timeout=30) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # ended and reaped by the harness
        os.kill(child, 0)


def test_supervise_kills_a_cell_past_its_time_limit():
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    polls = []
    assert bench_run.supervise(child, 0.2, time.perf_counter(), lambda: polls.append(1)) is True
    assert child.poll() is not None
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    assert bench_run.supervise(done, 60, time.perf_counter()) is False and done.returncode == 0


def test_two_stage_cell_resumes_inside_its_second_stage(tiny_root, tmp_path):
    """DeCoRec (two phases) stopped in phase 2 resumes there: the curve keeps phase 1, and the
    cell ends as an uninterrupted one."""
    (cell,) = _cells("DeCoRec", tiny_root, epochs=4, stopping_step=10)
    rec, whole, _ = _stop_resume_and_rerun(cell, tmp_path, "epoch 0: valid")
    assert rec["status"] == whole["status"] == "ok" and rec["resumed_from_epoch"] is not None
    assert [(e["segment"], e["epoch"]) for e in rec["curve"]] == [
        (e["segment"], e["epoch"]) for e in whole["curve"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert rec["test_result"] == pytest.approx(whole["test_result"], abs=1e-9)
    assert rec["stage_epochs"] == whole["stage_epochs"]


def test_reference_dir_must_be_a_results_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"--reference_dir .*nope: not a results folder \(expected "
                                         r".*nope/cells/ with the reference row's cell records\)"):
        bm.main(["--report", f"--out={tmp_path}", f"--reference_dir={tmp_path / 'nope'}"])


def test_reference_in_the_paper_protocol_table_tests_that_table(tmp_path):
    """A reference that is a row of the paper-protocol table (MMSR's ID model under MMSR's own
    protocol) tests that table's rows, over the seeds both ran, and the p-values stand under it;
    a reference in the compared table still tests that table."""
    src = os.path.join(ROOT, "benchmarks", "results", "full_scientific_mm")
    if not os.path.isdir(src):
        pytest.skip(f"{src} not in this checkout")
    out = tmp_path / "f"
    shutil.copytree(src, out)
    meta = json.load(open(out / "meta.json"))
    rep = bm.write_report(str(out), {**meta, "reference": "MMSR-id (paper protocol)"}, plots=False)
    sig = rep["significance"]["scientific_mm"]
    assert sig["kind"] == "paper" and sig["reference"] == "MMSR-id (paper protocol)"
    assert {t["label"] for t in sig["results"]} == {"MMSR (paper protocol)"}
    assert all(t["users"] == 2928 and t["p"] is not None for t in sig["results"])
    md = rep["markdown"]
    paper_part = md[md.index("### scientific_mm: paper protocols"):]
    assert "| vs MMSR-id (paper protocol) |" in paper_part
    assert "| vs MMSR-id (paper protocol) |" not in md[:md.index("### scientific_mm: paper protocols")]
    rep = bm.write_report(str(out), {**meta, "reference": "MMSR-id"}, plots=False)
    sig = rep["significance"]["scientific_mm"]
    assert sig["kind"] == "compared"
    assert "MMSR (paper protocol)" not in {t["label"] for t in sig["results"]}
    assert "MMSR" in {t["label"] for t in sig["results"]}
