"""recbole_mm.tune: search-space files and their errors, the shipped grids, and a small Optuna
study on tiny mm_sample data that prunes, resumes and writes a best yaml the config accepts."""
from __future__ import annotations

import csv
import os

import pytest
import yaml

optuna = pytest.importorskip("optuna")

from recbole_mm.tune import study as tune_study  # noqa: E402
from recbole_mm.tune.__main__ import main  # noqa: E402
from recbole_mm.tune.objective import plain_argv  # noqa: E402
from recbole_mm.config import MMConfig  # noqa: E402
from recbole_mm.quick_start import run_recbole_mm  # noqa: E402
from recbole_mm.tune.space import (Param, SpaceError, check_keys, decode,  # noqa: E402
                                   default_space_file, load_space, parse_param, suggest)

MODELS = ["SGP4SR", "DeCoRec", "MISSRec", "SICSRec", "MMSR"]
# short runs: 2 epochs, small widths, quiet
TINY = ["--epochs=2", "--hidden_size=16", "--n_layers=1", "--n_heads=2", "--means_k=6",
        "--knn_k=4", "--train_batch_size=256", "--eval_batch_size=256", "--show_progress=False",
        "--state=WARNING"]


def write(path, text):
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------ space files
def test_space_forms_and_suggestions():
    space = {
        "learning_rate": parse_param("learning_rate", [1.0e-4, 1.0e-3], "f.yaml"),
        "knn_k": parse_param("knn_k", {"low": 2, "high": 20, "step": 2}, "f.yaml"),
        "miu_c": parse_param("miu_c", {"low": 0.0, "high": 1.0, "step": 0.1}, "f.yaml"),
        "weight_decay": parse_param("weight_decay", {"low": 1e-6, "high": 1e-2, "log": True}, "f.yaml"),
        "lora_targets": parse_param("lora_targets", {"choices": [["attn"], ["attn", "ffn"]]}, "f.yaml"),
    }
    assert [p.kind for p in space.values()] == ["categorical", "int", "float", "float", "categorical"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, space)
        assert values["learning_rate"] in (1.0e-4, 1.0e-3)
        assert values["knn_k"] in range(2, 21, 2)
        assert values["miu_c"] in [round(0.1 * i, 1) for i in range(11)]  # no 0.30000000000000004
        assert 1e-6 <= values["weight_decay"] <= 1e-2
        assert values["lora_targets"] in (["attn"], ["attn", "ffn"])
        assert decode(space, trial.params) == values  # the stored params give back the values
        seen.add(tuple(values["lora_targets"]))
        study.tell(trial, 0.0)
    assert seen == {("attn",), ("attn", "ffn")}


def test_space_values_read_as_recbole_reads_yaml(tmp_path):
    space = load_space(write(tmp_path / "space.yaml", "learning_rate: [1e-4, 1.0e-3]\n"
                                                       "weight_decay: {low: 1e-6, high: 1e-2, log: true}\n"))
    assert space["learning_rate"].choices == [1e-4, 1e-3]
    assert (space["weight_decay"].low, space["weight_decay"].kind) == (1e-6, "float")


@pytest.mark.parametrize("text, message", [
    ("learning_rate: []\n", "key 'learning_rate': empty range: 'choices' is an empty list"),
    ("knn_k: {low: 5, high: 2}\n", "key 'knn_k': empty range: low 5 > high 2"),
    ("knn_k: {low: 2}\n", "key 'knn_k': a range needs both 'low' and 'high'"),
    ("miu_c: {low: 0.1, high: 1.0, stpe: 0.1}\n", "key 'miu_c': unknown field(s) 'stpe'"),
    ("learning_rate: {low: 0, high: 0.1, log: true}\n", "key 'learning_rate': a log range needs low > 0"),
    ("learning_rate: {low: 0.1, high: 1, step: 0.1, log: true}\n", "'step' and 'log' cannot be combined"),
    ("learning_rate: 0.001\n", "key 'learning_rate': expected a list of values or a mapping"),
    ("", "no keys to search (the file is empty)"),
])
def test_bad_space_file_forms(tmp_path, text, message):
    path = write(tmp_path / "space.yaml", text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unknown_key_is_refused_with_a_hint(tmp_path, tiny_root):
    path = write(tmp_path / "space.yaml", "learning_rate: [1.0e-3]\nknn_K: [4, 8]\n")
    with pytest.raises(SpaceError) as info:
        tune_study.prepare("SGP4SR", "mm_sample", path, fixed={"data_path": tiny_root})
    msg = str(info.value)
    assert msg.startswith(f"{path}: key 'knn_K': not a configuration key of SGP4SR on mm_sample")
    assert "did you mean 'knn_k'?" in msg
    # a key of another model is unknown to this one
    path = write(tmp_path / "space2.yaml", "lora_rank: [4, 8]\n")
    with pytest.raises(SpaceError, match="key 'lora_rank': not a configuration key of SGP4SR"):
        tune_study.prepare("SGP4SR", "mm_sample", path, fixed={"data_path": tiny_root})


def test_cli_bad_space_gives_one_line(tmp_path, tiny_root, capsys):
    path = write(tmp_path / "space.yaml", "learning_rate: [1.0e-3]\nno_such_key: {low: 1, high: 2}\n")
    rc = main(["--model=SGP4SR", "--dataset=mm_sample", f"--space={path}", "--trials=1",
               f"--out={tmp_path / 'out'}", f"--data_path={tiny_root}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err == [f"error: {path}: key 'no_such_key': not a configuration key of SGP4SR on "
                   f"mm_sample (not in RecBole's defaults nor the plugin's yaml files)"]
    assert not os.path.exists(tmp_path / "out" / "study.db")  # refused before any study exists


def test_fixed_keys_are_not_searched(tmp_path, tiny_root):
    path = write(tmp_path / "space.yaml", "learning_rate: [1.0e-3, 1.0e-2]\nknn_k: [4, 8]\n")
    _, _, space, meta = tune_study.prepare("SGP4SR", "mm_sample", path,
                                           fixed={"data_path": tiny_root, "knn_k": 6})
    assert list(space) == ["learning_rate"] and meta["fixed"]["knn_k"] == 6
    with pytest.raises(SpaceError, match="every key is fixed on the command line"):
        tune_study.prepare("SGP4SR", "mm_sample", path,
                           fixed={"data_path": tiny_root, "knn_k": 6, "learning_rate": 0.1})


@pytest.mark.parametrize("model", MODELS)
def test_shipped_spaces_are_valid_for_their_model(model, tiny_root):
    path = default_space_file(model)
    assert path.endswith(os.path.join("properties", "spaces", f"{model}.yaml"))
    name, _, space, meta = tune_study.prepare(model, "mm_sample", fixed={"data_path": tiny_root})
    assert name == model and space and meta["space_file"] == path
    # keys left commented out in the shipped files must be real keys too, once uncommented
    commented = [line.lstrip("# ") for line in open(path) if line.startswith("# ") and
                 ": " in line and line.split(":")[0][2:].isidentifier() and
                 line.split(":")[1].strip().startswith(("[", "{"))]
    if commented:
        extra = yaml.safe_load("\n".join(c.split("  #")[0] for c in commented))
        full = {k: parse_param(k, v, path) for k, v in extra.items()}
        known = MMConfig(model=model, dataset="mm_sample", config_dict={"data_path": tiny_root})
        check_keys(full, known.final_config_dict, path, model)


def test_sgp4sr_space_is_the_paper_grid():
    space = load_space(default_space_file("SGP4SR"))
    assert space["learning_rate"].choices == [1e-4, 1e-3, 1e-2, 1e-1]
    assert (space["knn_k"].low, space["knn_k"].high, space["knn_k"].step) == (2, 20, 2)
    assert (space["miu_c"].low, space["miu_c"].high, space["miu_c"].step) == (0.0, 1.0, 0.1)
    assert (space["miu_m"].low, space["miu_m"].high, space["miu_m"].step) == (1.0, 6.0, 0.5)
    assert (space["means_k"].low, space["means_k"].high, space["means_k"].step) == (0, 100, 10)
    assert isinstance(space["knn_k"], Param) and space["knn_k"].kind == "int"


def test_unknown_shipped_space(tmp_path):
    with pytest.raises(SpaceError, match=r"no shipped search space for model SASRec .*--space"):
        default_space_file("SASRec")


# ------------------------------------------------------------------------------ a small study
def test_study_prunes_resumes_and_writes_a_usable_best_yaml(tmp_path, tiny_root, capsys):
    """Trial 0 (lr 1e-2) completes; trial 1 (lr 1e-9: the untrained model) is pruned at its first
    validation by the median rule; a second invocation continues the same study to 3 trials; the
    best configuration loads through MMConfig with the searched and the fixed values."""
    out = tmp_path / "out"
    space = write(tmp_path / "space.yaml", "learning_rate: [1.0e-2, 1.0e-9]\n")
    args = ["--model=SGP4SR", "--dataset=mm_sample", f"--space={space}", f"--out={out}",
            "--prune_startup=1", "--prune_warmup=0", f"--data_path={tiny_root}", *TINY]
    os.makedirs(out)
    storage = tune_study.default_storage(str(out))
    pre = optuna.create_study(storage=storage, study_name="SGP4SR_mm_sample", direction="maximize")
    pre.enqueue_trial({"learning_rate": 1.0e-2})
    pre.enqueue_trial({"learning_rate": 1.0e-9})

    assert main(["--trials=2", *args]) == 0
    study = optuna.load_study(study_name="SGP4SR_mm_sample", storage=storage)
    t0, t1 = study.get_trials()
    S = optuna.trial.TrialState
    assert (t0.state, t1.state) == (S.COMPLETE, S.PRUNED)
    assert sorted(t0.intermediate_values) == [0, 1]  # one report per epoch (2 epochs)
    assert sorted(t1.intermediate_values) == [0]  # stopped at its first validation
    assert t1.intermediate_values[0] < t0.intermediate_values[0]
    assert t0.value == pytest.approx(max(t0.intermediate_values.values()))
    assert t1.user_attrs["validations"] == 1 and "ndcg@10" in t0.user_attrs["test_result"]
    assert not list((out / "checkpoints").iterdir())  # trial checkpoints removed by default

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["state"], float(r["learning_rate"])) for r in rows] == \
        [("0", "complete", 1e-2), ("1", "pruned", 1e-9)]
    assert float(rows[0]["valid ndcg@10"]) == pytest.approx(t0.value, rel=1e-5)
    assert rows[0]["test ndcg@10"] and not rows[1]["test ndcg@10"]
    md = (out / "results.md").read_text()
    assert "1 complete, 1 pruned" in md and "Best: trial 0" in md
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = {t.number: t.datetime_start for t in study.get_trials()}

    # resume: the same command with --trials=3 runs only the missing trial
    assert main(["--trials=3", *args]) == 0
    study = optuna.load_study(study_name="SGP4SR_mm_sample", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 3 and {t.number: t.datetime_start for t in trials[:2]} == first
    assert trials[2].state in (S.COMPLETE, S.PRUNED)
    with open(out / "results.csv") as f:
        assert [r["trial"] for r in csv.DictReader(f)] == ["0", "1", "2"]
    # a study that already holds its trials runs nothing more
    assert main(["--trials=3", *args]) == 0
    assert len(optuna.load_study(study_name="SGP4SR_mm_sample", storage=storage).trials) == 3

    # the best yaml goes through the normal configuration layering
    best_file = out / "best.yaml"
    best = yaml.safe_load(best_file.read_text())
    assert best["learning_rate"] == study.best_params["learning_rate"] == 1e-2
    assert best["epochs"] == 2 and best["hidden_size"] == 16
    assert f"--config_files=\"{best_file}\"" in best_file.read_text()
    config = MMConfig(model="SGP4SR", dataset="mm_sample", config_file_list=[str(best_file)])
    assert config["learning_rate"] == 1e-2 and config["epochs"] == 2
    assert config["hidden_size"] == 16 and config["knn_k"] == 4
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]  # nothing half-written
    # ... and an ordinary run of it gives the best trial's scores (same layering, same seed)
    with plain_argv():  # RecBole reads --key=value from sys.argv: not pytest's
        rerun = run_recbole_mm("SGP4SR", "mm_sample", config_file_list=[str(best_file)],
                               config_dict={"checkpoint_dir": str(tmp_path / "saved")})
    assert rerun["best_valid_score"] == pytest.approx(study.best_value, abs=1e-4)
    assert rerun["test_result"]["ndcg@10"] == pytest.approx(
        study.best_trial.user_attrs["test_result"]["ndcg@10"], abs=1e-4)

    # continuing with another search is refused, naming what differs
    other = write(tmp_path / "other.yaml", "learning_rate: [1.0e-3]\n")
    capsys.readouterr()
    assert main(["--trials=4", *[a if not a.startswith("--space=") else f"--space={other}"
                                 for a in args]]) == 2
    err = capsys.readouterr().err
    assert "study 'SGP4SR_mm_sample' was created with space = " in err
    assert len(optuna.load_study(study_name="SGP4SR_mm_sample", storage=storage).trials) == 3
