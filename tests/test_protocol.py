"""Comparable by default (issue 19): one evaluation protocol for every model of a comparison, a
model's paper protocol on request, and ``epochs`` = a run's total over its phases / steps."""
import glob
import json
import os
import sys

import pytest
import yaml

from recbole_mm import benchmark as bm
from recbole_mm import registry
from recbole_mm.config import (PROTOCOL_KEYS, ConfigError, MMConfig, check_model_protocol,
                               split_epochs)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden_size=16", "--inner_size=16", "--embedding_size=16", "--n_layers=1",
        "--n_heads=2", "--train_batch_size=256", "--eval_batch_size=256"]


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x"])  # RecBole's Config reads --key=value from sys.argv


def _protocol(cfg):
    return {k: cfg[k] for k in ("protocol",) + PROTOCOL_KEYS}


# ------------------------------------------------------------------------------ configuration
def test_every_model_gets_the_plugin_protocol_and_mmsr_its_paper_one_on_request(tiny_root):
    base = {"data_path": tiny_root}
    sas = _protocol(MMConfig("SASRec", "mm_sample", config_dict=base))
    assert sas == {"protocol": "plugin", "metrics": ["Recall", "NDCG"], "topk": [10, 50],
                   "valid_metric": "NDCG@10", "eval_step": 1, "stopping_step": 10,
                   "mask_history_items": False}
    for model in ("MMSR", "DeCoRec", "SICSRec", "MISSRec", "SGP4SR"):
        assert _protocol(MMConfig(model, "mm_sample", config_dict=base)) == sas, model
    mmsr = MMConfig("MMSR", "mm_sample", config_dict=dict(base, protocol="paper"))
    assert _protocol(mmsr) == {"protocol": "paper", "metrics": ["Hit", "NDCG"],
                               "topk": [10, 20, 50], "valid_metric": "Hit@10", "eval_step": 5,
                               "stopping_step": 1000, "mask_history_items": True}
    # training-side settings stay the model's own under either protocol
    assert mmsr["train_batch_size"] == 64 and mmsr["loss_type"] == "BCE_dense"
    # the user's own keys win over the paper protocol; the saved configuration keeps the protocol
    mine = MMConfig("MMSR", "mm_sample", config_dict=dict(base, protocol="paper", topk=[10]))
    assert mine["topk"] == [10] and mine["metrics"] == ["Hit", "NDCG"]
    from recbole_mm.compat import config_to_dict

    again = MMConfig("MMSR", "mm_sample", config_dict=config_to_dict(mine)["sources"])
    assert _protocol(again) == _protocol(mine)


def test_protocol_errors_name_the_key_and_the_file(tiny_root, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="SASRec has no paper protocol.*Models with one: DeCoRec, MISSRec, MMSR"):
        MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root, "protocol": "paper"})
    with pytest.raises(ConfigError, match="protocol: expected one of plugin, paper, got 'own'"):
        MMConfig("MMSR", "mm_sample", config_dict={"data_path": tiny_root, "protocol": "own"})
    # a validation metric that is not computed fails at once, naming the key (not a KeyError
    # after the first epoch); Recall@10 is the Hit@10 of one target per user
    with pytest.raises(ConfigError, match=r"valid_metric: Hit@10 is not computed: metrics are "
                                          r"\['Recall', 'NDCG'\]"):
        MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root, "valid_metric": "Hit@10"})
    with pytest.raises(ConfigError, match=r"valid_metric: NDCG@20 uses cut-off 20, but topk is \[10, 50\]"):
        MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root, "valid_metric": "NDCG@20"})
    assert MMConfig("SASRec", "mm_sample", config_dict={
        "data_path": tiny_root, "valid_metric": "Recall@10"})["valid_metric"] == "Recall@10"
    props = tmp_path / "properties"
    (props / "model").mkdir(parents=True)
    (props / "dataset").mkdir()
    (props / "overall.yaml").write_text(open(os.path.join(ROOT, "properties", "overall.yaml")).read())
    (props / "model" / "SASRec.yaml").write_text("hidden_size: 8\ntopk: [5]\nvalid_metric: Hit@5\n")
    monkeypatch.setattr(registry, "properties_dir", lambda: str(props))
    with pytest.raises(ConfigError, match=r"SASRec.yaml sets the evaluation-protocol key\(s\) "
                                          r"topk, valid_metric at top level.*paper_protocol"):
        MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root})
    (props / "model" / "SASRec.yaml").write_text("paper_protocol: {topk: [5], hidden_size: 8}\n")
    with pytest.raises(ConfigError, match="paper_protocol may set only .*; got hidden_size"):
        MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root})


def test_shipped_model_yamls_keep_protocol_keys_under_paper_protocol():
    names = [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "properties", "model", "*.yaml"))]
    assert "MMSR" in names
    papers = {n: check_model_protocol(n) for n in names}  # raises on a top-level protocol key
    assert papers["MMSR"]["metrics"] == ["Hit", "NDCG"]
    # DeCoRec's and MISSRec's code print @K over the top K+1: their protocol records K+1
    for name in ("DeCoRec", "MISSRec"):
        assert papers[name]["topk"] == [10, 11, 50, 51] and papers[name]["valid_metric"] == "NDCG@11"


def test_ninerec_dataset_yamls_carry_sicsrecs_protocol():
    """SICSRec's code (finetune.yaml) computes Hit/NDCG@5,10 and early-stops and selects the
    checkpoint on valid Hit@10; every NineRec set, baselines included, is run that way."""
    paths = sorted(glob.glob(os.path.join(ROOT, "properties", "dataset", "ninerec_*.yaml")))
    assert len(paths) == 4
    for path in paths:
        with open(path) as f:
            cfg = yaml.safe_load(f)
        assert cfg["metrics"] == ["Hit", "NDCG"] and cfg["topk"] == [5, 10], path
        assert cfg["valid_metric"] == "Hit@10", path


def test_split_epochs_divides_the_total():
    keys = ["phase1_epochs", "phase2_epochs"]

    def split(epochs, **kw):
        return split_epochs({"epochs": epochs, "phase1_epochs": None, "phase2_epochs": None, **kw},
                            keys, "DeCoRec")

    assert split(2) == [1, 1] and split(5) == [2, 3] and split(300) == [150, 150]
    assert split(10, phase1_epochs=3) == [3, 7] and split(10, phase2_epochs=9) == [1, 9]
    assert split(2, phase1_epochs=300, phase2_epochs=300) == [300, 300]  # the paper's schedule
    assert split_epochs({"epochs": 4}, [], "X") == [4]
    with pytest.raises(ConfigError, match="epochs = 1 is the total over phase1_epochs, "
                                          "phase2_epochs.*at least 1 epoch each"):
        split(1)
    with pytest.raises(ConfigError, match="phase1_epochs leave 0"):
        split(3, phase1_epochs=3)
    with pytest.raises(ConfigError, match="phase2_epochs must be a positive integer"):
        split(3, phase2_epochs=0)


# ------------------------------------------------------------------------------ the benchmark
def test_paper_protocol_rows_are_labelled():
    models = bm.parse_models("MMSR,MMSR{protocol: paper},own=MMSR{protocol: paper}")
    cells = bm.build_grid(models, ["mm_sample"], [1], {}, {})
    assert [c.label for c in cells] == ["MMSR", "MMSR (paper protocol)", "own"]
    everyone = bm.build_grid(bm.parse_models("SASRec"), ["mm_sample"], [1], {}, {"protocol": "paper"})
    assert everyone[0].label == "SASRec (paper protocol)"


def _bench(tmp_path, tiny_root, *args):
    out = tmp_path / "res"
    rc = bm.main([*args, "--datasets=mm_sample", "--seeds=1", f"--out={out}",
                  f"--scratch={tmp_path / 'scratch'}", "--no_isolate", "--no_plots",
                  f"--data_path={tiny_root}", *TINY])
    assert rc == 0
    recs = {r["label"]: r for r in bm.load_cells(str(out)).values()}
    return recs, (out / "summary.md").read_text()


def _table(md, title):
    """The markdown table under ``title``: {row label: {column: cell}}."""
    lines = md.split(title + "\n\n", 1)[1].splitlines()
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def test_benchmark_mmsr_and_sasrec_share_columns_and_paper_protocol_is_apart(tiny_root, tmp_path):
    recs, md = _bench(tmp_path, tiny_root, "--epochs=1",
                      "--models=SASRec,MMSR{fusion_n_heads: 2},MMSR{fusion_n_heads: 2, protocol: paper}")
    assert all(r["status"] == "ok" for r in recs.values()), {k: r.get("reason") for k, r in recs.items()}
    plugin = {"recall@10", "recall@50", "ndcg@10", "ndcg@50"}
    assert set(recs["SASRec"]["test_result"]) == set(recs["MMSR"]["test_result"]) == plugin
    assert recs["MMSR"]["protocol"] == "plugin" and recs["MMSR"]["valid_metric"] == "ndcg@10"
    paper = recs["MMSR (paper protocol)"]
    assert set(paper["test_result"]) == {"hit@10", "hit@20", "hit@50", "ndcg@10", "ndcg@20", "ndcg@50"}
    assert paper["protocol"] == "paper" and paper["valid_metric"] == "hit@10"
    assert paper["effective_config"]["mask_history_items"] is True
    # the comparison table: both rows, the same metric columns, every cell filled
    main = _table(md, "## mm_sample")
    assert set(main) == {"SASRec", "MMSR"}
    for row in main.values():
        assert [c for c in row if "@" in c] == ["recall@10", "recall@50", "ndcg@10", "ndcg@50"]
        assert all(row[c] != "-" for c in row if "@" in c)
    # the paper-protocol row is tabled apart with its own metrics, and labelled
    apart = _table(md, "### mm_sample: paper protocols (each row its paper's metrics and "
                       "selection; not comparable with the table above)")
    assert list(apart) == ["MMSR (paper protocol)"]
    assert "hit@20" in apart["MMSR (paper protocol)"]
    rows = {line.split("|")[2].strip(): line for line in md.splitlines()
            if line.startswith("| mm_sample |")}
    assert "| paper | metrics=[\"Hit\", \"NDCG\"], topk=[10, 20, 50]" in rows["MMSR (paper protocol)"]
    assert "| plugin | metrics=[\"Recall\", \"NDCG\"], topk=[10, 50]" in rows["MMSR"]
    assert "epochs=1" in rows["SASRec"] and "hidden_size=16" in rows["SASRec"]


def test_benchmark_epochs_is_the_total_for_multi_stage_models(tiny_root, tmp_path):
    recs, md = _bench(tmp_path, tiny_root, "--epochs=2",
                      "--models=DeCoRec{adapter_hidden: 16, kmeans_niter: 5},SICSRec,MISSRec")
    assert all(r["status"] == "ok" for r in recs.values()), {k: r.get("reason") for k, r in recs.items()}
    for label in ("DeCoRec", "SICSRec", "MISSRec"):
        assert recs[label]["epochs_run"] == 2, label
        assert sum(s["run"] for s in recs[label]["stage_epochs"].values()) == 2, label
    assert recs["DeCoRec"]["stage_epochs"] == {"phase 1": {"budget": 1, "run": 1},
                                               "phase 2": {"budget": 1, "run": 1}}
    assert recs["SICSRec"]["stage_epochs"] == {"step 1": {"budget": 1, "run": 1},
                                               "step 2": {"budget": 1, "run": 1}}
    assert recs["MISSRec"]["stage_epochs"] == {"train": {"budget": 2, "run": 2}}
    main = _table(md, "## mm_sample")
    # mm_sample's raw features: SICSRec's row is shown as its paper's "w/o SFT" setting
    assert main["DeCoRec"]["epochs"] == "2 (1 + 1)" and main["SICSRec (w/o SFT)"]["epochs"] == "2 (1 + 1)"
    assert main["MISSRec"]["epochs"] == "2"
    assert "| phase 1 <= 1, phase 2 <= 1 |" in md and "| step 1 <= 1, step 2 <= 1 |" in md


def test_report_of_cells_recorded_before_protocols(tmp_path):
    """Older cells (no protocol, no effective configuration) still report, marked as such; one
    with other metrics (MMSR under its yaml's protocol) is tabled apart, never in mixed columns."""
    rec = {"cell_id": "c", "dataset": "d", "label": "SASRec", "model": "SASRec", "seed": 1,
           "status": "ok", "config": {"epochs": 3}, "test_result": {"recall@10": 0.1},
           "epochs_run": 3}
    gru = dict(rec, cell_id="g", label="GRU4Rec", model="GRU4Rec")
    old_mmsr = dict(rec, cell_id="m", label="MMSR", model="MMSR", test_result={"hit@10": 0.2})
    recs = [rec, gru, old_mmsr]
    md = bm.markdown_report(recs, bm.summarize(recs), {"name": "old"})
    assert "| d | SASRec | - | - | epochs=3 (overrides only) | - |" in md
    main = _table(md, "## d")
    assert list(main) == ["SASRec", "GRU4Rec"] and main["SASRec"]["epochs"] == "3"
    assert "hit@10" not in main["SASRec"]
    other = _table(md, "### d: " + bm.GROUP_TITLES["other"])
    assert list(other) == ["MMSR"] and other["MMSR"]["hit@10"] == "0.2000"
    assert json.loads(bm.summarize([rec])[0]["config"]) == {"epochs": 3}


def test_cli_protocol_option(tiny_root, tmp_path, monkeypatch, capsys):
    """``run_recbole_mm.py --protocol=paper``: the model's paper protocol, or a one-line error."""
    sys.path.insert(0, ROOT)
    import run_recbole_mm

    args = ["--model=SASRec", "--dataset=mm_sample", f"--data_path={tiny_root}", "--protocol=paper"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *args])
    assert run_recbole_mm.main(args) == 2
    assert "error: protocol: paper, but SASRec has no paper protocol" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: plugin | paper
        run_recbole_mm.main(["--model=MMSR", "--protocol=mine"])
