"""Training-speed settings (recbole_mm.fast): fast dropout swap, bf16 mixed precision."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from recbole_mm.fast import apply_mixed_precision, prepare_training, use_fast_dropout
from recbole_mm.model.layers import Dropout


def _recbole_sasrec(make_data, **over):
    from recbole.model.sequential_recommender.sasrec import SASRec

    config, train, _, _ = make_data("SASRec", **over)
    return config, SASRec(config, train._dataset)


def test_fast_dropout_replaces_every_plain_dropout(make_data):
    config, model = _recbole_sasrec(make_data, hidden_dropout_prob=0.3, attn_dropout_prob=0.2)
    before = [m.p for m in model.modules() if type(m) is nn.Dropout]
    assert before
    assert use_fast_dropout(model) == len(before)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    assert sorted(m.p for m in model.modules() if isinstance(m, Dropout)) == sorted(before)


def test_fast_dropout_keeps_the_distribution():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = Dropout(0.3)(x)
    kept = (y > 0).float().mean().item()
    assert kept == pytest.approx(0.7, abs=0.01)
    assert y[y > 0].unique().tolist() == pytest.approx([1 / 0.7])
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)


def test_trim_padding_false_keeps_recboles_modules(make_data):
    config, model = _recbole_sasrec(make_data, trim_padding=False)
    prepare_training(config, model)
    assert any(type(m) is nn.Dropout for m in model.modules())
    assert not any(isinstance(m, Dropout) for m in model.modules())


def test_bf16_sets_recboles_autocast_and_trains(make_data):
    from recbole.trainer import Trainer

    config, train, _, _ = make_data("SASRec", mixed_precision="bf16")
    from recbole.model.sequential_recommender.sasrec import SASRec

    model = SASRec(config, train._dataset)
    prepare_training(config, model)
    assert config["enable_amp"] is True and config["enable_scaler"] is False
    loss = Trainer(config, model)._train_epoch(train, 0)
    assert torch.isfinite(torch.tensor(loss))


@pytest.mark.parametrize("bad", ["fp16", "half", 3])
def test_unknown_mixed_precision_is_refused(make_config, bad):
    config = make_config("SASRec", mixed_precision=bad)
    with pytest.raises(ValueError, match="mixed_precision"):
        apply_mixed_precision(config)
