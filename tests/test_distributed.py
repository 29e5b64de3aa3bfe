"""Distributed data parallel on the CPU (gloo): two processes train, metrics are gathered."""
import socket

import pytest


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return str(port)


def test_two_process_cpu_training_matches_single_process_eval(tiny_root, tmp_path):
    from recbole.trainer import Trainer

    from recbole_mm.quick_start import load_data_and_model, run_recbole_mm

    result = run_recbole_mm("SASRec", "mm_sample", nproc=2, port=_free_port(), config_dict={
        "data_path": tiny_root, "epochs": 1, "hidden_size": 16, "inner_size": 16, "n_layers": 1,
        "checkpoint_dir": str(tmp_path / "saved"), "state": "WARNING", "eval_batch_size": 64})
    assert result is not None, "rank 0 returned no result"
    path = result["saved_model_file"]
    config, model, dataset, train, valid, test = load_data_and_model(path)
    assert config["single_spec"] and config["local_rank"] == 0
    single = Trainer(config, model).evaluate(test, load_best_model=False)
    # 200 test users split evenly over 2 ranks: the gathered means equal one global evaluation
    assert dict(result["test_result"]) == pytest.approx(dict(single), abs=2e-4)
