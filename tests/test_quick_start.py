"""End-to-end runs through the CLI and the quick-start API on tiny generated data."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_mm.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("model", ["SASRec", "SASRecF", "FDSA"])
def test_cli_end_to_end_on_sample(model, tiny_root, tmp_path):
    res = _cli([f"--model={model}", "--dataset=mm_sample", f"--data_path={tiny_root}",
                "--epochs=1", "--hidden_size=16", "--inner_size=16", "--n_layers=1",
                "--show_progress=False",
                f"--checkpoint_dir={tmp_path / 'saved'}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "test result table" in out
    assert "ndcg@10" in out
    assert list((tmp_path / "saved").glob(f"{model}-*.pth"))


def test_cli_unknown_model_is_one_line(tmp_path):
    res = _cli(["--model=NoSuchModel", "--dataset=mm_sample"], cwd=tmp_path)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Unknown model 'NoSuchModel'" in lines[0]
    assert "SASRec" in lines[0]


def test_cli_unknown_dataset_lists_known(tmp_path):
    res = _cli(["--model=SASRec", "--dataset=no_such_set"], cwd=tmp_path)
    assert res.returncode == 2
    lines = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Unknown dataset 'no_such_set'" in lines[0]
    assert "mm_sample" in lines[0] and "scientific_mm" in lines[0]


def test_checkpoint_round_trip(tiny_root, tmp_path):
    """Train, save the best checkpoint, reload it (weights_only) into a fresh model: same scores."""
    from recbole_mm.compat import load_checkpoint
    from recbole_mm.quick_start import load_data_and_model, run_recbole_mm

    result = run_recbole_mm("SASRec", "mm_sample", config_dict={
        "data_path": tiny_root, "epochs": 2, "hidden_size": 16, "inner_size": 16, "n_layers": 1,
        "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING"})
    path = result["saved_model_file"]
    ckpt = torch.load(path, weights_only=True)  # plain data only: this is the real guarantee
    assert isinstance(ckpt["config"], dict) and ckpt["config"]["model"] == "SASRec"
    assert load_checkpoint(path)["epoch"] == ckpt["epoch"]

    config, model, dataset, train, valid, test = load_data_and_model(path)
    assert config["hidden_size"] == 16 and config["data_path"].startswith(tiny_root)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k].cpu(), v.cpu()), k
    from recbole.trainer import Trainer

    trainer = Trainer(config, model)
    again = trainer.evaluate(test, load_best_model=True, model_file=path)
    assert again == pytest.approx(dict(result["test_result"]), abs=1e-4)
