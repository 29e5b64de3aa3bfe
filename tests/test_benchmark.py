"""recbole_mm.benchmark: grid, resumable cells, aggregation, reports, plots, CLI (tiny data)."""
import json
import math
import os
import subprocess
import sys

import pytest

from recbole_mm import benchmark as bm
from recbole_mm.benchmark import run as bench_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"epochs": 1, "hidden_size": 16, "inner_size": 16, "embedding_size": 16, "n_layers": 1,
        "n_heads": 2, "train_batch_size": 256, "eval_batch_size": 256}


def _tiny(tiny_root, **kw):
    return {**TINY, "data_path": tiny_root, **kw}


def test_parse_models_labels_groups_and_configs():
    got = bm.parse_models("SASRec, noCGC=SGP4SR{use_cgc: false, k: 3}, baselines")
    assert got[0] == ("SASRec", "SASRec", {})
    assert got[1] == ("noCGC", "SGP4SR", {"use_cgc": False, "k": 3})
    assert [g[0] for g in got[2:]] == ["BERT4Rec", "GRU4Rec", "FDSA", "SASRecF"]  # SASRec once
    assert bm.parse_models([{"model": "GRU4Rec", "label": "gru", "config": {"epochs": 2}}]) == [
        ("gru", "GRU4Rec", {"epochs": 2})]
    # commas inside a flow list or a label's parentheses do not split entries
    got = bm.parse_models("SICSRec (ID+T, w/o SFT)=SICSRec{input_modalities: [id, text]},GRU4Rec")
    assert got == [("SICSRec (ID+T, w/o SFT)", "SICSRec", {"input_modalities": ["id", "text"]}),
                   ("GRU4Rec", "GRU4Rec", {})]
    # a label may hold '=': the entry splits at the '=' before the model name
    assert bm.parse_models("DeCoRec k = 5% of items=DeCoRec{n_clusters_ratio: 0.05}") == [
        ("DeCoRec k = 5% of items", "DeCoRec", {"n_clusters_ratio": 0.05})]
    with pytest.raises(SystemExit, match="bad model entry"):
        bm.parse_models("SAS Rec!")
    # a comma outside brackets splits a label; the piece before it names no model
    with pytest.raises(SystemExit, match=r"'SASRec d=128' names no model \('128' is not a class name\)"):
        bm.parse_models("SASRec d=128, max length 20=SASRec{MAX_ITEM_LIST_LENGTH: 20}")


def test_grid_cells_ids_and_config_layers():
    models = bm.parse_models("SASRec,big=SASRec{hidden_size: 64}")
    cells = bm.build_grid(models, ["mm_sample", "scientific_mm"], [1, 2], {"hidden_size": 16,
                          "epochs": 3}, {"epochs": 1}, noise=("image", [0.0, 0.5]),
                          baseline_config={"train_batch_size": 512})
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.cell_id for c in cells}) == len(cells)
    big = [c for c in cells if c.label == "big"][0]
    assert big.config["hidden_size"] == 64 and big.config["epochs"] == 1  # entry > profile; cli > all
    assert big.config["train_batch_size"] == 512  # SASRec has no properties/model yaml
    noisy = [c for c in cells if c.noise]
    assert noisy and all(c.config["feature_noise"] == "image:0.5" for c in noisy)
    assert all("feature_noise" not in c.config for c in cells if not c.noise)
    # the id is a function of the configuration: same config same id, any change a new id
    again = bm.build_grid(models, ["mm_sample"], [1], {"hidden_size": 16, "epochs": 3},
                          {"epochs": 1}, baseline_config={"train_batch_size": 512})
    assert again[0].cell_id == cells[0].cell_id
    other = bm.build_grid(models, ["mm_sample"], [1], {"hidden_size": 16, "epochs": 4}, {},
                          baseline_config={"train_batch_size": 512})
    assert other[0].cell_id != cells[0].cell_id
    assert bm.parse_noise("image:0.5,0.1") == ("image", [0.0, 0.1, 0.5])
    with pytest.raises(SystemExit):
        bm.parse_noise("image:2")


def test_best_epoch_is_the_checkpoint_recbole_keeps_and_summary_stats():
    from recbole.utils import early_stopping

    curve = [{"epoch": 0, "valid_score": 0.1}, {"epoch": 1, "valid_score": 0.3},
             {"epoch": 2}, {"epoch": 3, "valid_score": 0.3}, {"epoch": 4, "valid_score": 0.2}]
    # a tie replaces the kept checkpoint, as RecBole's early stopping decides
    kept, best, step = None, float("-inf"), 0
    for e in curve:
        if "valid_score" in e:
            best, step, _, update = early_stopping(e["valid_score"], best, step, 10, bigger=True)
            kept = e["epoch"] if update else kept
    assert bm.best_epoch_from_curve(curve) == kept == 3
    assert bm.best_epoch_from_curve(curve, bigger=False) == 0
    # a two-stage trainer (e.g. DeCoRec's phases): the last stage's best is the one kept
    staged = [{"epoch": 0, "segment": 0, "valid_score": 0.9}, {"epoch": 1, "segment": 0,
              "valid_score": 0.2}, {"epoch": 0, "segment": 1, "valid_score": 0.4},
              {"epoch": 1, "segment": 1, "valid_score": 0.5}]
    assert bm.best_epoch_from_curve(staged) == 1
    recs = [{"dataset": "d", "label": "A", "model": "SASRec", "seed": s, "status": "ok",
             "test_result": {"recall@10": v, "ndcg@10": v / 2}, "best_epoch": s,
             "peak_mem_mb": 10.0 * s, "params": 5, "device": "cpu"}
            for s, v in ((1, 0.1), (2, 0.2), (3, 0.6))]
    recs.append({"dataset": "d", "label": "B", "model": "X", "seed": 1, "status": "skipped",
                 "reason": "model not available"})
    rows = {r["label"]: r for r in bm.summarize(recs)}
    a = rows["A"]
    assert a["n_ok"] == 3 and a["recall@10"] == pytest.approx(0.3)
    sd = math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 2)
    assert a["recall@10_std"] == pytest.approx(sd)
    assert a["best_epoch"] == pytest.approx(2) and a["peak_mem_mb"] == 30.0
    assert rows["B"]["n_ok"] == 0 and rows["B"]["reason"] == "model not available"
    assert bm.metric_names(recs) == ["recall@10", "ndcg@10"]
    # a label rerun under another configuration: only the latest cell of a seed counts
    old = dict(recs[0], finished="2026-01-01T00:00:00", test_result={"recall@10": 0.9, "ndcg@10": 0.4})
    new = dict(recs[0], finished="2026-02-01T00:00:00")
    a = {r["label"]: r for r in bm.summarize([old, new] + recs[1:])}["A"]
    assert a["n_ok"] == 3 and a["recall@10"] == pytest.approx(0.3)


def test_report_puts_the_papers_number_beside_ours(tmp_path):
    recs = [{"cell_id": f"c{s}", "dataset": "scientific_mm", "label": "SASRec", "model": "SASRec",
             "seed": s, "status": "ok", "test_result": {"recall@10": v, "ndcg@10": 0.0362},
             "best_epoch": 3, "epochs_run": 5, "curve": [
                 {"epoch": e, "train_loss": 10.0 - e, "valid_score": 0.01 * e} for e in range(5)]}
            for s, v in ((1, 0.1523 * 0.6), (2, 0.1523 * 0.6))]
    rows = bm.summarize(recs)
    comp = bm.compare_with_papers(rows, ["recall@10", "ndcg@10"])
    by_metric = {c["metric"]: c for c in comp}
    assert by_metric["recall@10"]["paper_value"] == 0.1523  # DeCoRec Table 2, H@10
    assert by_metric["recall@10"]["ratio"] == pytest.approx(0.6)
    assert by_metric["ndcg@10"]["ratio"] == pytest.approx(0.5)  # 0.0362 / 0.0724
    md = bm.markdown_report(recs, rows, {"name": "t", "command": "cmd", "profile": "quick"})
    assert "| scientific_mm | SASRec | recall@10 | 0.0914 ± 0.0000 | 0.1523 | 0.600 | DeCoRec Table 2" in md
    pngs = bm.make_plots(recs, rows, str(tmp_path))
    assert sorted(os.path.basename(p) for p in pngs) == ["bars_scientific_mm.png",
                                                         "curves_scientific_mm.png"]
    # a row that recorded @11 meets DeCoRec's "H@10" with it: its code ranks the top 11
    for r in recs:
        r["test_result"].update({"recall@11": 0.1523 * 0.9, "ndcg@11": 0.0724 * 1.1})
    rows = bm.summarize(recs)
    by_metric = {c["metric"]: c for c in bm.compare_with_papers(rows, ["recall@10", "ndcg@10"])}
    assert by_metric["recall@10"]["ours_metric"] == "recall@11"
    assert by_metric["recall@10"]["ratio"] == pytest.approx(0.9)
    assert by_metric["ndcg@10"]["ratio"] == pytest.approx(1.1)
    md = bm.markdown_report(recs, rows, {"name": "t", "command": "cmd", "profile": "quick"})
    assert "| scientific_mm | SASRec | recall@10 (ours at @11) | 0.1371 ± 0.0000 | 0.1523 | 0.900 |" in md
    assert bm.papers.code_metric("ndcg@50", "MISSRec") == "ndcg@51"
    assert bm.papers.code_metric("recall@10", "SICSRec") == "recall@10"  # RecBole 1.2.0, unshifted


def test_labelled_variants_meet_the_paper_row_of_their_setting():
    """An ablation row meets the paper's ablation number, not the full model's; a variant the
    paper never ran is marked ``model only``."""
    def rec(label, value):
        return {"cell_id": label, "dataset": "scientific_mm", "label": label, "model": "DeCoRec",
                "seed": 1, "status": "ok", "test_result": {"recall@10": value}, "best_epoch": 1,
                "epochs_run": 2}
    recs = [rec("DeCoRec", 0.17), rec("DeCoRec w/o phase", 0.165), rec("DeCoRec tiny", 0.1)]
    comp = {c["label"]: c for c in bm.compare_with_papers(bm.summarize(recs), ["recall@10"])}
    assert comp["DeCoRec"]["paper_value"] == 0.1779 and comp["DeCoRec"]["match"] == "model"
    assert comp["DeCoRec w/o phase"]["paper_value"] == 0.1650  # DeCoRec Table 4, w/o phase
    assert comp["DeCoRec w/o phase"]["match"] == "setting"
    # Table 4 reports no @50: the ablation row is not set beside the full model's @50 number
    comp50 = bm.compare_with_papers(bm.summarize([dict(recs[1], test_result={
        "recall@10": 0.165, "recall@50": 0.33})]), ["recall@10", "recall@50"])
    assert [(c["metric"], c["match"]) for c in comp50] == [("recall@10", "setting")]
    assert comp["DeCoRec tiny"]["paper_value"] == 0.1779 and comp["DeCoRec tiny"]["match"] == "model only"
    md = bm.markdown_report(recs, bm.summarize(recs), {"name": "t", "command": "cmd", "profile": "quick"})
    assert "| DeCoRec tiny | recall@10 |" in md and "model only: this row's setting differs" in md
    assert bm.row_variant("SICSRec (ID+T, w/o SFT)", "SICSRec") == "id+t, w/o sft"


def test_grid_runs_resumes_and_reports(tiny_root, tmp_path, monkeypatch):
    """A model x two seeds in process: records, CSV, markdown; a second call reruns nothing."""
    models = bm.parse_models("SASRec,NoSuchModel")
    cells = bm.build_grid(models, ["mm_sample"], [7, 8], {}, _tiny(tiny_root))
    out, scratch = str(tmp_path / "res"), str(tmp_path / "scratch")
    recs = bm.run_grid(cells, out, scratch, isolate=False, command="test", log=lambda s: None)
    status = {(r["label"], r["seed"]): r["status"] for r in recs}
    assert status[("SASRec", 7)] == status[("SASRec", 8)] == "ok"
    skipped = [r for r in recs if r["label"] == "NoSuchModel"]
    assert all(r["status"] == "skipped" and "model not available" in r["reason"] for r in skipped)
    sas = [r for r in recs if r["label"] == "SASRec" and r["seed"] == 7][0]
    assert set(sas["test_result"]) == {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    assert sas["epochs_run"] == 1 and sas["best_epoch"] == 0 and len(sas["curve"]) == 1
    assert sas["curve"][0]["valid_score"] == pytest.approx(sas["best_valid_score"])
    assert sas["epoch_time_s"] > 0 and sas["eval_time_s"] > 0 and sas["test_eval_s"] > 0
    assert sas["params"] > 0 and sas["device"] == "cpu" and sas["dataset_stats"]["users"] == 200
    # the cell's test numbers are the ones a plain run_recbole_mm gives for the same config
    from recbole_mm.quick_start import run_recbole_mm

    direct = run_recbole_mm("SASRec", "mm_sample", config_dict={
        **_tiny(tiny_root), "seed": 7, "state": "WARNING", "reproducibility": True,
        "checkpoint_dir": str(tmp_path / "direct")})
    assert sas["test_result"] == pytest.approx(dict(direct["test_result"]), abs=1e-6)
    files = sorted(os.listdir(os.path.join(out, "cells")))
    assert sorted(f for f in files if f.endswith(".json")) == sorted(
        c.cell_id + ".json" for c in cells)
    assert sorted(f for f in files if f.endswith(".users.npz")) == sorted(
        c.cell_id + ".users.npz" for c in cells if c.label == "SASRec")
    # checkpoints and training states of finished cells are removed
    assert not [f for _, _, fs in os.walk(scratch) for f in fs if f.endswith(".pth")]

    def boom(*a, **k):
        raise AssertionError("a finished cell was run again")

    calls = []
    monkeypatch.setattr(bench_run, "execute_cell", lambda cell, scratch, **k: calls.append(cell) or {
        "cell_id": cell.cell_id, **cell.spec(), "status": "skipped", "reason": "still missing"})
    again = bm.run_grid(cells, out, scratch, isolate=False, log=lambda s: None)
    assert [c.label for c in calls] == ["NoSuchModel", "NoSuchModel"]  # only unfinished cells
    assert [r["cell_id"] for r in again] == [c.cell_id for c in cells]
    monkeypatch.setattr(bench_run, "execute_cell", boom)
    with pytest.raises(AssertionError, match="run again"):
        bm.run_grid(cells[:1], out, scratch, isolate=False, force=True, log=lambda s: None)

    rep = bm.write_report(out, {"name": "t", "cells": [c.cell_id for c in cells]}, plots=False)
    rows = {r["label"]: r for r in rep["rows"]}
    assert rows["SASRec"]["n_ok"] == 2 and rows["SASRec"]["recall@10_std"] is not None
    with open(os.path.join(out, "results.csv")) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1 + 4 and "recall@10" in lines[0]
    assert "## mm_sample" in rep["markdown"] and "NoSuchModel" in rep["markdown"]


def test_feature_model_on_id_only_data_is_skipped_with_reason(tiny_root, tmp_path):
    cell = bm.Cell("SASRecF", "SASRecF", "mm_sample", 1,
                   _tiny(tiny_root, selected_features=["no_such_modality"]))
    rec = bm.execute_cell(cell, str(tmp_path))
    assert rec["status"] == "skipped" and rec["reason"].startswith("cannot run on this dataset")


def test_noise_cells_apply_feature_noise(tiny_root, tmp_path):
    models = bm.parse_models("SASRecF")
    cells = bm.build_grid(models, ["mm_sample"], [3], {}, _tiny(tiny_root),
                          noise=("image", [0.0, 0.5]))
    out = str(tmp_path / "res")
    recs = bm.run_grid(cells, out, str(tmp_path / "s"), isolate=False, log=lambda s: None)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[1]["config"]["feature_noise"] == "image:0.5" and recs[1]["noise"] == ["image", 0.5]
    rep = bm.write_report(out, {"name": "n", "cells": [c.cell_id for c in cells]})
    assert "modality-mismatch noise (image)" in rep["markdown"]
    assert os.path.exists(os.path.join(out, "noise_mm_sample.png"))


def test_cli_quick_isolated_cells(tiny_root, tmp_path):
    """The CLI with --quick runs each cell in its own process and writes every output."""
    out = tmp_path / "res"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "recbole_mm.benchmark", "--quick", "--models=SASRec",
                          f"--out={out}", f"--scratch={tmp_path / 'scratch'}", "--seeds=1",
                          f"--data_path={tiny_root}", "--epochs=1", "--hidden_size=16"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "## mm_sample" in res.stdout
    for name in ("summary.md", "summary.csv", "results.csv", "meta.json", "bars_mm_sample.png",
                 "curves_mm_sample.png"):
        assert (out / name).exists(), name
    (cell_file,) = list((out / "cells").glob("*.json"))
    rec = json.loads(cell_file.read_text())
    assert rec["status"] == "ok" and rec["isolated"] and rec["peak_mem_source"] == "process_max_rss"
    assert rec["config"]["hidden_size"] == 16 and rec["config"]["n_layers"] == 1  # cli > quick profile
    meta = json.loads((out / "meta.json").read_text())
    assert meta["profile"] == "quick" and meta["command"].startswith("python -m recbole_mm.benchmark")
    assert meta["commit"] and meta["device"].startswith("cpu")


def test_noise_table_and_curve_from_records(tmp_path):
    """Relative change vs the clean run; the curve carries SGP4SR's reported drops on Baby."""
    recs = []
    for lvl, v in ((0.0, 0.05), (0.3, 0.045), (0.5, 0.04)):
        recs.append({"cell_id": f"c{lvl}", "dataset": "baby", "label": "SASRecF",
                     "model": "SASRecF", "seed": 1, "status": "ok",
                     "noise": ["image", lvl] if lvl else None,
                     "test_result": {"recall@10": v, "ndcg@10": v / 2}})
    rows = bm.summarize(recs)
    md = bm.markdown_report(recs, rows, {"name": "n"})
    assert "### baby: modality-mismatch noise (image)" in md
    assert "| SASRecF | 0.5 | 0.0400 | 0.0200 | -20.0% |" in md
    assert "| SASRecF | 0 | 0.0500 | 0.0250 | +0.0% |" in md
    pngs = bm.make_plots(recs, rows, str(tmp_path))
    assert os.path.join(str(tmp_path), "noise_baby.png") in pngs


def test_noise_levels_compare_with_clean_runs_of_the_same_seeds(tmp_path):
    """Clean runs with seeds 1-3, a noisy level with seed 1 only: its change is measured
    against seed 1's clean run, not the three-seed mean; the paper's Baby drop is marked
    on another dataset's curve."""
    recs = []
    for seed, v in ((1, 0.10), (2, 0.20), (3, 0.30)):
        recs.append({"cell_id": f"c{seed}", "dataset": "sci", "label": "MISSRec",
                     "model": "MISSRec", "seed": seed, "status": "ok", "noise": None,
                     "test_result": {"recall@10": v}})
    recs.append({"cell_id": "n1", "dataset": "sci", "label": "MISSRec", "model": "MISSRec",
                 "seed": 1, "status": "ok", "noise": ["image", 0.5],
                 "test_result": {"recall@10": 0.09}})
    rows = bm.summarize(recs)
    noisy = next(r for r in rows if r["noise"])
    assert bm.seed_matched_clean(recs, noisy, "recall@10") == pytest.approx(0.10)
    md = bm.markdown_report(recs, rows, {"name": "n"})
    assert "| MISSRec | 0.5 | 0.0900 | -10.0% |" in md
    assert bm.noise_paper_drops("MISSRec", "recall@10") == [(0.5, "Baby", pytest.approx(-0.2948))]
    assert os.path.join(str(tmp_path), "noise_sci.png") in bm.make_plots(recs, rows, str(tmp_path))


def test_meta_keeps_the_union_of_grids_and_every_command(tmp_path):
    out = str(tmp_path)
    bm.merge_meta(out, {"command": "a", "date": "d1", "commit": "c", "device": "cpu",
                         "cells": ["x", "y"]})
    bm.merge_meta(out, {"command": "b", "date": "d2", "commit": "c", "device": "cpu",
                         "cells": ["y", "z"]})
    meta = bm.merge_meta(out, json.load(open(os.path.join(out, "meta.json"))) | {
        "command": "b", "date": "d2", "grid_cells": ["y", "z"]}, grid_wall_s=3.0)
    assert meta["cells"] == ["x", "y", "z"] and meta["grid_cells"] == ["y", "z"]
    assert [(h["command"], h["cells"], h["grid_wall_s"]) for h in meta["history"]] == [
        ("a", 2, None), ("b", 2, 3.0)]
    md = bm.markdown_report([], [], meta)
    assert "`a` (d1" in md and "`b` (d2" in md


def test_a_later_grid_keeps_the_folders_reference_unless_it_names_one(tmp_path):
    out = str(tmp_path)
    base = {"commit": "c", "device": "cpu", "cells": ["x"]}
    bm.merge_meta(out, base | {"command": "a", "date": "d1", "reference": "DeCoRec",
                               "reference_dir": "full", "significance_test": "ttest"})
    meta = bm.merge_meta(out, base | {"command": "b", "date": "d2", "reference": None,
                                      "significance_test": None})
    assert (meta["reference"], meta["reference_dir"], meta["significance_test"]) == (
        "DeCoRec", "full", "ttest")
    meta = bm.merge_meta(out, base | {"command": "c", "date": "d3", "reference": "MISSRec"})
    assert meta["reference"] == "MISSRec" and meta["reference_dir"] == "full"
    assert json.load(open(os.path.join(out, "meta.json")))["reference"] == "MISSRec"


def test_report_lists_planned_cells_without_results(tmp_path):
    out = str(tmp_path)
    bm.merge_meta(out, {"command": "a", "date": "d", "commit": "c", "device": "cpu",
                         "cells": ["beauty__SASRec__seed7__0123456789"]})
    rep = bm.write_report(out, plots=False)
    (rec,) = rep["records"]
    assert rec["status"] == "not run" and rec["seed"] == 7 and rec["label"] == "SASRec"
    assert "| beauty__SASRec__seed7__0123456789 | not run |" in rep["markdown"]


def test_report_folds_cells_superseded_by_a_finished_rerun():
    """A failed or unreached cell is listed as such unless the same model, dataset and seed
    finished in another cell of the folder (e.g. rerun with fewer epochs)."""
    base = {"dataset": "beauty", "model": "BERT4Rec", "label": "BERT4Rec", "seed": 1}
    recs = [dict(base, cell_id="beauty__BERT4Rec__seed1__aaaa", status="failed",
                 reason="timed out after 9.0 s"),
            dict(base, cell_id="beauty__BERT4Rec__seed1__bbbb", status="ok",
                 test_result={"recall@10": 0.1}),
            dict(base, cell_id="beauty__BERT4Rec__seed2__cccc", seed=2, status="not run",
                 reason="no result file")]
    md = bm.markdown_report(recs, bm.summarize(recs), {"name": "s"})
    assert "| beauty__BERT4Rec__seed2__cccc | not run |" in md
    assert "| beauty__BERT4Rec__seed1__aaaa |" not in md
    assert "superseded" in md and "beauty__BERT4Rec__seed1__aaaa (failed)" in md


def test_cost_tool_ratios_and_provenance(tiny_root, tmp_path):
    from recbole_mm import cost

    out_file = tmp_path / "cost.json"
    rc = cost.main(["--model=SGP4SR", "--dataset=mm_sample", f"--json={out_file}", "--eval_repeats=2",
                    f"--data_path={tiny_root}", "--hidden_size=16", "--n_layers=1", "--n_heads=2",
                    "--means_k=4", "--knn_k=3", "--train_batch_size=64", "--eval_batch_size=64"])
    assert rc == 0
    out = json.load(open(out_file))
    for side in ("model", "reference"):
        m = out[side]
        assert len(m["eval_all_s"]) == 2 and m["eval_s"] == min(m["eval_all_s"])
        assert m["train_epoch_s"] > 0 and "ndcg@10" in m["test_result"]
    assert out["model"]["model"] == "SGP4SR" and out["reference"]["model"] == "SASRec"
    assert out["train_ratio"] == pytest.approx(
        out["model"]["train_epoch_s"] / out["reference"]["train_epoch_s"], rel=1e-2)
    prov = out["provenance"]
    assert prov["command"].startswith("python -m recbole_mm.cost --model=SGP4SR")
    assert prov["commit"] and prov["date"] and prov["device"].startswith("cpu")


def test_cutoffs_recover_ranks_from_per_user_ndcg():
    """One target per row: NDCG@50 gives the rank back, so Hit/NDCG at any k <= 50 follow."""
    import numpy as np

    from recbole_mm.benchmark import cutoffs

    ranks = [1, 3, 10, 11, 12, 50, math.inf]
    ndcg50 = np.asarray([1 / math.log2(r + 1) if r <= 50 else 0.0 for r in ranks], np.float32)
    assert cutoffs.target_ranks(ndcg50, 50) == ranks
    got = cutoffs.at_cutoffs(ranks, [10, 11])
    assert got["hit@10"] == pytest.approx(3 / 7) and got["hit@11"] == pytest.approx(4 / 7)
    assert got["ndcg@11"] - got["ndcg@10"] == pytest.approx(1 / math.log2(12) / 7)
    with pytest.raises(ValueError, match="cell x: NDCG@50 value 0.800000 .* one target per test row"):
        cutoffs.target_ranks([0.8], 50, "cell x")  # two targets in the top 10, not one
    with pytest.raises(ValueError, match="NDCG@10 value"):
        cutoffs.target_ranks([1 / math.log2(13)], 10)  # rank 12 cannot come from NDCG@10


def test_cutoffs_of_a_finished_cell_equal_recboles_own(tiny_root, tmp_path, capsys):
    """The cut-offs recovered from a cell's per-user NDCG@50 are the values RecBole computes
    when the cut-off is in topk (here 11: what MISSRec's and DeCoRec's code print as @10)."""
    from recbole_mm.benchmark import cutoffs

    models = bm.parse_models("SASRec")
    cells = bm.build_grid(models, ["mm_sample"], [3], {},
                          _tiny(tiny_root, epochs=2, topk=[10, 11, 50]))
    out = str(tmp_path / "res")
    recs = bm.run_grid(cells, out, str(tmp_path / "scratch"), isolate=False, command="test",
                       log=lambda s: None)
    test = recs[0]["test_result"]
    assert recs[0]["status"] == "ok" and "recall@11" in test
    row, = cutoffs.table(out, [10, 11])
    assert row["seeds"] == 1 and row["label"] == "SASRec"
    for k in (10, 11):
        assert row[f"hit@{k}"] == pytest.approx(test[f"recall@{k}"], abs=1e-4)
        assert row[f"ndcg@{k}"] == pytest.approx(test[f"ndcg@{k}"], abs=1e-4)
    assert cutoffs.main([f"--out={out}", "--at=10,11"]) == 0
    printed = capsys.readouterr().out
    assert "| mm_sample | SASRec | 1 |" in printed and "Hit@11" in printed
    with pytest.raises(SystemExit):
        cutoffs.main([f"--out={out}", "--at=60"])  # deeper than the recorded NDCG@50
