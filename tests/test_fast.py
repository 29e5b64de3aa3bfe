"""Training-speed settings (recbole_mm.fast): fast dropout swap, BERT4Rec length groups, bf16
mixed precision."""
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


# ------------------------------------------------------------------ length groups (BERT4Rec)
BERT_TINY = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "hidden_size": 16,
             "inner_size": 32, "n_layers": 1, "n_heads": 2, "mask_ratio": 0.3,
             "train_batch_size": 64}


def test_length_groups_cover_every_row_once_at_its_own_width():
    from recbole_mm.data.batching import length_groups

    lengths = torch.tensor([0, 1, 3, 4, 5, 8, 9, 17, 33, 50, 2, 16])
    groups = length_groups(lengths)
    rows = torch.cat([r for r, _ in groups]).sort().values
    assert rows.tolist() == list(range(len(lengths)))
    for r, width in groups:
        assert width == max(1, int(lengths[r].max()))
        # a group spans one power-of-two band (lengths up to 4 together)
        band = torch.clamp(lengths[r], min=1).float().log2().ceil().clamp(min=2)
        assert len(band.unique()) == 1
    assert sorted(w for _, w in groups) == [4, 8, 16, 17, 50]  # 33 and 50 share (32, 64]


def test_bert4rec_length_grouped_loss_equals_recboles(make_data):
    """Same padded RecBole batch (mask draws included), dropout off: the length-grouped loss that
    scores only the real masks equals RecBole's BERT4Rec loss, and so do the gradients."""
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    from recbole_mm.data.batching import length_groups
    from recbole_mm.fast import grouped_masked_item_loss

    config, train, _, _ = make_data("BERT4Rec", **BERT_TINY)
    torch.manual_seed(0)
    model = BERT4Rec(config, train._dataset)
    batch = next(iter(train))
    seq = batch[model.MASK_ITEM_SEQ]
    assert len(length_groups((seq > 0).sum(1))) > 1 and (seq == 0).any()
    results = []
    for loss_fn in (model.calculate_loss, lambda b: grouped_masked_item_loss(model, b)):
        model.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_length_groups_apply_to_bert4rec_ce_only_and_can_be_switched_off(make_data):
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec
    from recbole.model.sequential_recommender.sasrec import SASRec

    from recbole_mm.fast import use_length_groups

    config, train, _, _ = make_data("BERT4Rec", **BERT_TINY)
    model = BERT4Rec(config, train._dataset)
    prepare_training(config, model)
    assert model.length_grouped_loss and "calculate_loss" in vars(model)  # bound to this model
    assert torch.isfinite(model.calculate_loss(next(iter(train))))
    for over in ({"length_groups": False}, {"trim_padding": False}):
        config, train, _, _ = make_data("BERT4Rec", **BERT_TINY, **over)
        model = BERT4Rec(config, train._dataset)
        prepare_training(config, model)
        assert "calculate_loss" not in vars(model)
        assert not getattr(model, "length_grouped_loss", False)
    config, train, _, _ = make_data("BERT4Rec", **BERT_TINY, loss_type="BPR")
    assert not use_length_groups(BERT4Rec(config, train._dataset))
    config, train, _, _ = make_data("SASRec")
    assert not use_length_groups(SASRec(config, train._dataset))
