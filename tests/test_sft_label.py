"""Issue 16: SICSRec on features that did not go through the SFT alignment step is the paper's
"w/o SFT" setting; the model says so, the benchmark records it and the report shows it."""
import csv
import json
import logging
import os

import pytest

from recbole_mm import benchmark as bm


def _dataset(tiny_root, **over):
    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    cfg = {"data_path": tiny_root, "state": "WARNING", "hidden_size": 16, "inner_size": 16,
           "n_layers": 1, "n_heads": 2, **over}
    config = MMConfig("SICSRec", "mm_sample", config_dict=cfg)
    return config, create_dataset(config)


def _sicsrec(config, dataset):
    from recbole_mm.model.sicsrec import SICSRec

    return SICSRec(config, dataset)


@pytest.fixture(scope="module")
def aligned_dir(tiny_root, tmp_path_factory):
    """The alignment CLI's output (feature-head SFT, one epoch) on the tiny sample."""
    from recbole_mm.alignment.__main__ import align

    tmp = tmp_path_factory.mktemp("sft")
    titles = tmp / "titles.csv"
    titles.write_text("".join(f"{i},title {i % 5} group {i % 3}\n" for i in range(200)))
    out = tmp / "aligned"
    cwd = os.getcwd()
    os.chdir(tmp)  # RecBole's log/ lands here
    try:
        align({"dataset": "mm_sample", "data_path": tiny_root, "out_dir": str(out),
               "titles": str(titles), "judge": "lexical", "sft_mode": "feature_head",
               "sft_epochs": 1})
    finally:
        os.chdir(cwd)
    return out


def test_raw_features_are_not_sft_aligned_and_the_model_says_so(tiny_root, caplog):
    from recbole_mm.alignment.export import feature_alignment

    config, ds = _dataset(tiny_root)
    got = feature_alignment(ds, "text")
    assert not got.aligned and got.file == os.path.join(tiny_root, "mm_sample", "mm_sample.text.npy")
    assert "alignment_report.json" in got.reason
    caplog.set_level(logging.INFO)
    model = _sicsrec(config, ds)
    assert model.sft_aligned is False and model.setting_note == "w/o SFT"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SICSRec:")]
    assert len(lines) == 1 and "mm_sample.text.npy are not SFT-aligned" in lines[0]
    assert "mm_sample.image.npy" in lines[0] and "'w/o SFT' setting" in lines[0]
    # ID-only input has no content features, hence no note
    config, ds = _dataset(tiny_root, input_modalities=["id"])
    model = _sicsrec(config, ds)
    assert model.sft_aligned is None and model.setting_note is None


def test_features_from_the_alignment_step_are_aligned(tiny_root, aligned_dir, caplog):
    from recbole_mm.alignment.export import feature_alignment

    report = json.loads((aligned_dir / "alignment_report.json").read_text())
    assert report["file_names"] == {"text": "mm_sample.text.npy", "image": "mm_sample.image.npy"}
    assert {"pairs", "sft_target", "judge", "sft_mode", "loss_history", "files"} <= set(report)
    config, ds = _dataset(tiny_root, feature_dir=str(aligned_dir))
    assert feature_alignment(ds, "text").aligned and feature_alignment(ds, "image").aligned
    caplog.set_level(logging.INFO)
    model = _sicsrec(config, ds)
    assert model.sft_aligned is True and model.setting_note is None
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("SICSRec:")]
    assert "are SFT-aligned" in line and "w/o SFT" not in line
    # text only from the aligned folder: the image features are raw
    config, ds = _dataset(tiny_root, feature_dir=str(aligned_dir), input_modalities=["id", "text"])
    assert _sicsrec(config, ds).sft_aligned is True


def test_reports_that_do_not_vouch_for_the_file(tiny_root, aligned_dir, tmp_path):
    """An export without SFT, a report not listing the file, an older report (``files`` only,
    a relative path): only the last counts as aligned."""
    import shutil

    from recbole_mm.alignment.export import feature_alignment

    folder = tmp_path / "feat"
    shutil.copytree(aligned_dir, folder)
    rep = json.loads((folder / "alignment_report.json").read_text())

    def check(report):
        (folder / "alignment_report.json").write_text(json.dumps(report))
        _, ds = _dataset(tiny_root, feature_dir=str(folder))
        return feature_alignment(ds, "text")

    assert not check(dict(rep, sft_mode="none")).aligned
    got = check({k: v for k, v in rep.items() if k not in ("files", "file_names")})
    assert not got.aligned and "does not list mm_sample.text.npy" in got.reason
    old = {k: v for k, v in rep.items() if k != "file_names"}
    old["files"] = {"text": "aligned/mm_sample.text.npy"}
    assert check(old).aligned
    (folder / "alignment_report.json").write_text("{not json")
    _, ds = _dataset(tiny_root, feature_dir=str(folder))
    assert not feature_alignment(ds, "text").aligned
    # a dataset that recorded no file for the modality (e.g. merged pre-training sources)
    ds.modality_files.pop("text")
    assert not feature_alignment(ds, "text").aligned


def test_probe_records_the_models_note(make_data):
    from recbole_mm.model.sicsrec import SICSRec

    config, train, _valid, _test = make_data("SICSRec", hidden_size=16, inner_size=16, n_layers=1)
    model = SICSRec(config, train._dataset)
    probe = bm.Probe()

    class Trainer:  # the probe wraps these; nothing runs here
        def _train_epoch(self, *a): ...
        def _valid_epoch(self, *a): ...
        def evaluate(self, *a): ...
        def fit(self, *a): ...

    probe.attach(config, train._dataset, model, Trainer())
    assert probe.info["setting_note"] == "w/o SFT"


def _rec(label, seed, note="absent", value=0.1, dataset="ninerec_cartoon"):
    r = {"cell_id": f"{dataset}__{label}__seed{seed}", "dataset": dataset, "label": label,
         "model": "SICSRec", "seed": seed, "status": "ok",
         "test_result": {"hit@10": value, "ndcg@10": value / 2}, "best_epoch": 1, "epochs_run": 2}
    if note != "absent":
        r["setting_note"] = note
    return r


def test_report_marks_rows_without_sft(tmp_path):
    recs = [_rec("SICSRec", 1, "w/o SFT"), _rec("SICSRec", 2, "w/o SFT"),
            _rec("SICSRec (ID+T, SFT)", 1, None), _rec("SICSRec (ID+T, w/o SFT)", 1, "w/o SFT"),
            _rec("SICSRec old", 1), _rec("SICSRec mixed", 1, "w/o SFT"), _rec("SICSRec mixed", 2)]
    rows = bm.summarize(recs)
    by = {r["label"]: r for r in rows}  # grouping by label is untouched
    assert by["SICSRec"]["setting_note"] == "w/o SFT" and by["SICSRec"]["n_ok"] == 2
    assert by["SICSRec mixed"]["setting_note"] == "" and by["SICSRec old"]["setting_note"] == ""
    md = bm.markdown_report(recs, rows, {"name": "t"})
    assert "| SICSRec (w/o SFT) | 0.1000 ± 0.0000 |" in md                  # metric table
    assert "| ninerec_cartoon | SICSRec (w/o SFT) | - |" in md               # configuration
    beside = [line for line in md.splitlines()                                # beside the papers
              if line.startswith("| ninerec_cartoon | SICSRec (w/o SFT) | hit@10 |")]
    assert beside and all("(model only: this row's setting differs)" in line for line in beside)
    assert "| SICSRec (ID+T, SFT) |" in md and "SICSRec (ID+T, SFT) (" not in md
    assert "| SICSRec (ID+T, w/o SFT) |" in md and "w/o SFT) (w/o SFT)" not in md
    assert "| SICSRec old |" in md and "| SICSRec mixed |" in md and "SICSRec old (" not in md
    assert bm.display_label("SICSRec sft-aligned", "w/o SFT") == "SICSRec sft-aligned"
    assert bm.display_label("SICSRec", "w/o SFT on image") == "SICSRec (w/o SFT on image)"
    # CSVs: the label column as it was, the note in a column of its own
    bm.write_csvs(recs, rows, str(tmp_path))
    with open(tmp_path / "results.csv") as f:
        cells = list(csv.DictReader(f))
    assert [c["label"] for c in cells] == [r["label"] for r in recs]
    assert [c["setting_note"] for c in cells] == ["w/o SFT", "w/o SFT", "", "w/o SFT", "", "w/o SFT", ""]
    with open(tmp_path / "summary.csv") as f:
        summary = {r["label"]: r for r in csv.DictReader(f)}
    assert summary["SICSRec"]["setting_note"] == "w/o SFT" and summary["SICSRec old"]["setting_note"] == ""


def test_significance_lines_show_the_displayed_label():
    from recbole_mm.benchmark.significance import markdown

    comp = {"reference": "SASRec", "test": "wilcoxon", "notes": [], "results": [
        {"label": "SICSRec", "metric": "hit@10", "seeds": "1", "users": 10, "diff": 0.01,
         "p": 0.5, "mark": ""}]}
    assert any(line.startswith("| SICSRec (w/o SFT) | 1 |") for line in
               markdown(comp, display=lambda lab: bm.display_label(lab, "w/o SFT")))
    assert any(line.startswith("| SICSRec | 1 |") for line in markdown(comp))
