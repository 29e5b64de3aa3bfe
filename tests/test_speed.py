"""The speed report (recbole_mm.speed): position counts, floor, report rows (never timed)."""
from __future__ import annotations

import json

from recbole_mm.speed.floor import epoch_flops, matmul_rate


def test_epoch_flops_counts_tokens_and_softmax():
    base = epoch_flops(tokens=0, rows=10, n_items=100, hidden=8, inner=16, layers=2)
    assert base == 3.0 * 10 * 100 * 8 * 2
    more = epoch_flops(tokens=5, rows=10, n_items=100, hidden=8, inner=16, layers=2)
    assert more - base == 3.0 * 5 * 2 * (4 * 64 + 2 * 8 * 16) * 2


def test_matmul_rate_is_positive():
    rate = matmul_rate(16, 64, rows=32, repeats=1)
    assert rate["rate"] > 0 and rate["rate"] == max(rate["projection"], rate["softmax"])


def test_speed_report_on_the_sample(tiny_root, tmp_path, capsys):
    from recbole_mm.speed.__main__ import main

    out = tmp_path / "speed.json"
    main(["--models=SASRec", "--dataset=mm_sample", "--epochs_timed=1", "--eval_repeats=1",
          f"--json={out}", f"--data_path={tiny_root}", "--hidden_size=8", "--inner_size=16",
          "--n_layers=1", "--n_heads=1", "--state=WARNING"])
    result = json.loads(out.read_text())
    row = result["rows"][0]
    runs = result["runs"]["SASRec"]
    # RecBole's path pads every row to the full width; the trimmed path holds every real token
    assert row["padded_positions"] == runs["padded"]["rows"] * 50
    assert row["tokens"] <= row["trimmed_positions"] < row["padded_positions"]
    assert row["floor_s"] > 0 and row["trimmed_epoch_s"] > 0
    assert "| SASRec |" in capsys.readouterr().out
    assert result["provenance"]["command"].startswith("python -m recbole_mm.speed")


def test_epoch_parts_attributes_forward_time_to_modules(make_data):
    import torch
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_mm.speed.parts import epoch_parts

    config, train, _, _ = make_data("SASRec")
    model = SASRec(config, train._dataset)
    parts = epoch_parts(model, train, torch.optim.Adam(model.parameters()), max_batches=2)
    assert parts["batches"] == 2
    assert "trm_encoder" in parts["forward_by_module_s"]
    assert sum(parts["forward_by_module_s"].values()) <= parts["forward_s"] + 1e-6
    assert parts["backward_s"] > 0 and parts["optimizer_step_s"] > 0


def test_speed_report_one_path_and_unknown_path(tiny_root, tmp_path):
    import pytest

    from recbole_mm.speed.__main__ import main

    out = tmp_path / "one.json"
    common = ["--models=SASRec", "--dataset=mm_sample", "--epochs_timed=1", "--eval_repeats=1",
              f"--data_path={tiny_root}", "--hidden_size=8", "--inner_size=16", "--n_layers=1",
              "--n_heads=1", "--state=WARNING"]
    main(common + ["--paths=trimmed", f"--json={out}"])
    row = json.loads(out.read_text())["rows"][0]
    assert row["path"] == "trimmed" and row["tokens"] <= row["positions"]
    with pytest.raises(ValueError, match="--paths"):
        main(common + ["--paths=fast"])
