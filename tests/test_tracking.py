"""TensorBoard and W&B through run_recbole_mm (recbole_mm.tracking) on tiny generated data."""
import glob
import sys
import types

import pytest


def _settings(tiny_root, tmp_path, **over):
    cfg = {"data_path": tiny_root, "epochs": 2, "hidden_size": 16, "inner_size": 16,
           "n_layers": 1, "checkpoint_dir": str(tmp_path / "saved"), "state": "INFO",
           "show_progress": False, "save_resume_state": False}
    cfg.update(over)
    return cfg


class FakeRun:
    def __init__(self):
        self.summary = {}


def _fake_wandb():
    """Stands in for the wandb package: records what RecBole and the plugin send."""
    calls = {"init": [], "runs": [], "log": [], "finish": 0}
    mod = types.ModuleType("wandb")
    mod.run = None

    def init(**kwargs):
        calls["init"].append(kwargs)
        mod.run = FakeRun()
        calls["runs"].append(mod.run)
        return mod.run

    def finish():
        calls["finish"] += 1
        mod.run = None

    mod.init, mod.finish = init, finish
    mod.log = lambda metrics, commit=True: calls["log"].append(dict(metrics))
    mod.define_metric = lambda *a, **k: None
    return mod, calls


def test_wandb_switch_logs_train_valid_and_test(tiny_root, tmp_path, monkeypatch):
    from recbole_mm import tracking
    from recbole_mm.quick_start import run_recbole_mm

    mod, calls = _fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", mod)
    result = run_recbole_mm("SASRec", "mm_sample", config_dict=_settings(
        tiny_root, tmp_path, log_wandb=True, wandb_project="mm-test"))
    assert len(calls["init"]) == 1
    init = calls["init"][0]
    assert init["project"] == "mm-test" and init["name"] == "SASRec-mm_sample"
    assert isinstance(init["config"], dict) and init["config"]["model"] == "SASRec"
    assert init["config"]["hidden_size"] == 16
    train = [m for m in calls["log"] if "train/train_loss" in m]
    valid = [m for m in calls["log"] if "valid/ndcg@10" in m]
    assert [m["train_step"] for m in train] == [0, 1] and len(valid) == 2
    summary = calls["runs"][0].summary
    assert summary["test/ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"])
    assert summary["eval/ndcg@10"] == pytest.approx(result["test_result"]["ndcg@10"])
    assert calls["finish"] == 1 and mod.run is None and not tracking._OPENED


def test_wandb_missing_is_one_clear_error(tiny_root, tmp_path, monkeypatch):
    from recbole_mm.quick_start import run_recbole_mm
    from recbole_mm.tracking import TrackingError

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(TrackingError, match="log_wandb is true but the 'wandb' package"):
        run_recbole_mm("SASRec", "mm_sample",
                       config_dict=_settings(tiny_root, tmp_path, log_wandb=True))
    assert not glob.glob(str(tmp_path / "saved" / "*.pth"))  # stopped before training


def test_tensorboard_events_written_per_epoch(tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from recbole_mm.quick_start import run_recbole_mm

    run_recbole_mm("SASRec", "mm_sample", config_dict=_settings(tiny_root, tmp_path))
    runs = glob.glob(str(tmp_path / "log_tensorboard" / "*"))  # named after the log file
    assert len(runs) == 1
    events = EventAccumulator(runs[0])
    events.Reload()
    assert [e.step for e in events.Scalars("Loss/Train")] == [0, 1]
    assert [e.step for e in events.Scalars("Vaild_score")] == [0, 1]
