"""Configuration layering (DESIGN.md precedence) and the registry's plugin-first lookup."""
import os
import sys

import pytest

from recbole_mm import registry
from recbole_mm.config import MMConfig

LEVELS = ["overall", "model", "dataset", "file", "dict", "cmd"]


@pytest.fixture
def props(tmp_path, monkeypatch, tiny_root):
    """A properties/ tree where every layer sets `probe` (and `probe_<level>`)."""
    root = tmp_path / "properties"
    (root / "model").mkdir(parents=True)
    (root / "dataset").mkdir()
    (root / "overall.yaml").write_text("probe: overall\nprobe_overall: overall\ntrain_neg_sample_args: ~\n")
    (root / "model" / "SASRec.yaml").write_text("probe: model\nprobe_model: model\n")
    (root / "dataset" / "mm_sample.yaml").write_text(
        "probe: dataset\nprobe_dataset: dataset\nload_col: {inter: [user_id, item_id, timestamp]}\n")
    (tmp_path / "user.yaml").write_text("probe: file\nprobe_file: file\n")
    monkeypatch.setattr(registry, "properties_dir", lambda: str(root))
    monkeypatch.setattr(sys, "argv", ["x", "--probe=cmd", "--probe_cmd=cmd"])
    return tmp_path


def test_precedence_each_layer_overrides_the_one_below(props, tiny_root):
    cfg = MMConfig("SASRec", "mm_sample", config_file_list=[str(props / "user.yaml")],
                   config_dict={"probe": "dict", "probe_dict": "dict", "data_path": tiny_root})
    assert cfg["probe"] == "cmd"
    for level in LEVELS:
        assert cfg[f"probe_{level}"] == level


def test_precedence_without_cmd_and_dict(props, tiny_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x"])
    cfg = MMConfig("SASRec", "mm_sample", config_file_list=[str(props / "user.yaml")],
                   config_dict={"data_path": tiny_root})
    assert cfg["probe"] == "file"
    cfg = MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root})
    assert cfg["probe"] == "dataset"


def test_plugin_defaults_sit_above_recbole_defaults(tiny_root):
    cfg = MMConfig("SASRec", "mm_sample", config_dict={"data_path": tiny_root})
    assert cfg["topk"] == [10, 50] and cfg["valid_metric"] == "NDCG@10"  # RecBole: [10], MRR@10
    assert cfg["eval_args"]["split"] == {"LS": "valid_and_test"} and cfg["eval_args"]["mode"] == {
        "valid": "full", "test": "full"} or cfg["eval_args"]["mode"] == "full"
    assert cfg["MAX_ITEM_LIST_LENGTH"] == 50 and cfg["stopping_step"] == 10
    assert cfg["data_path"] == os.path.join(tiny_root, "mm_sample")


def test_dataset_yaml_layout_options_resolve_folder(tmp_path):
    root = tmp_path / "r"
    (root / "amazon2018_scientific_mm").mkdir(parents=True)
    cfg = MMConfig("SASRec", "scientific_mm", config_dict={"data_path": str(root)})
    assert cfg["data_path"] == str(root / "amazon2018_scientific_mm")
    assert cfg["file_prefix"] == "Scientific"


def test_registry_plugin_first_then_recbole(monkeypatch):
    from recbole.model.sequential_recommender.sasrec import SASRec

    assert registry.get_model("SASRec") is SASRec  # RecBole fallback
    shadow = type("SASRec", (SASRec,), {})
    monkeypatch.setitem(registry._MODELS, "SASRec", shadow)
    assert registry.get_model("SASRec") is shadow  # the zoo wins
    assert registry.get_model("sasrec") is shadow


def test_registry_unknown_model_lists_plugin_and_recbole():
    with pytest.raises(registry.UnknownNameError) as err:
        registry.get_model("Nope")
    msg = str(err.value)
    assert "\n" not in msg and "Unknown model 'Nope'" in msg and "BERT4Rec" in msg


def test_register_model_rejects_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", {})
    a = registry.register_model(type("Dup", (), {}))
    assert registry.register_model(a) is a
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_model(type("Dup", (), {}))


def test_dataset_class_and_trainer_choice():
    from recbole.trainer import Trainer

    from recbole_mm.data.dataset import MMSequentialDataset

    sasrec = registry.get_model("SASRec")
    assert registry.get_dataset_class(sasrec) is MMSequentialDataset
    assert registry.get_dataset_class(registry.get_model("BPR")) is None  # RecBole's own choice
    custom = type("X", (sasrec,), {"trainer_class": Trainer, "dataset_class": MMSequentialDataset})
    assert registry.get_trainer(custom, {}) is Trainer


def test_cli_values_read_exponent_floats():
    from recbole_mm.config import parse_cli_value

    assert parse_cli_value("1e-4") == 1e-4 and isinstance(parse_cli_value("1e-4"), float)
    assert parse_cli_value("3") == 3 and parse_cli_value("[a, b]") == ["a", "b"]
    assert parse_cli_value("1e") == "1e"
