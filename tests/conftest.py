"""Shared fixtures: tiny generated data, configs and RecBole data objects for fast tests."""
from __future__ import annotations

import os

import pytest

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# keep the 2 CI cores for the test process itself
os.environ.setdefault("OMP_NUM_THREADS", "2")

FAST = {
    "epochs": 1,
    "train_batch_size": 256,
    "eval_batch_size": 256,
    "hidden_size": 16,
    "inner_size": 32,
    "embedding_size": 16,
    "n_layers": 1,
    "n_heads": 2,
    "show_progress": False,
    "state": "WARNING",
    "reproducibility": True,
}


def shared_data(subdir: str) -> str:
    """Path of a ../shared/data folder, or skip the test with a clear reason."""
    path = os.path.join(SHARED_DATA, subdir)
    if not os.path.isdir(path):
        pytest.skip(f"real data not available: {path} (../shared/data is not beside the project)")
    return path


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A data root holding a small ``mm_sample`` (200 users, 120 items)."""
    from recbole_mm.data.sample import write_sample

    root = tmp_path_factory.mktemp("data")
    write_sample(str(root / "mm_sample"), n_users=200, n_items=120, n_clusters=6,
                 text_dim=16, image_dim=12, min_len=5, max_len=12)
    return str(root)


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run every test in its own folder so RecBole's log/ and saved/ never land in the repo."""
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
def make_config(tiny_root, tmp_path):
    """``make_config(model, dataset='mm_sample', **overrides)`` -> MMConfig on tiny data."""
    from recbole_mm.config import MMConfig

    def _make(model="SASRec", dataset="mm_sample", config_file_list=None, **overrides):
        cfg = dict(FAST)
        if dataset == "mm_sample":
            cfg["data_path"] = tiny_root
        cfg["checkpoint_dir"] = str(tmp_path / "saved")
        cfg.update(overrides)
        return MMConfig(model=model, dataset=dataset, config_file_list=config_file_list,
                        config_dict=cfg)

    return _make


@pytest.fixture
def make_data(make_config):
    """``make_data(model, **overrides)`` -> (config, train_data, valid_data, test_data)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.quick_start import create_dataset

    def _make(model="SASRec", dataset="mm_sample", **overrides):
        config = make_config(model, dataset, **overrides)
        init_seed(config["seed"], True)
        ds = create_dataset(config)
        train, valid, test = data_preparation(config, ds)
        return config, train, valid, test

    return _make
