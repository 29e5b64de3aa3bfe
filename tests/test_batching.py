"""Padding-free batches (recbole_mm.data.batching): exactness for every model, bucketing, errors."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, TrainDataLoader

from recbole_mm.data import batching

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "dropout_prob": 0.0,
              "item_dropout": 0.0, "hidden_size": 16, "inner_size": 32, "n_layers": 1,
              "n_heads": 2, "train_batch_size": 64, "eval_batch_size": 64}

#: model -> overrides that keep it tiny on mm_sample
MODELS = {
    "SASRec": {},
    "GRU4Rec": {"embedding_size": 16},
    "BERT4Rec": {"mask_ratio": 0.3},
    "FDSA": {"selected_features": ["text"], "pooling_mode": "mean"},
    "SASRecF": {"selected_features": ["text", "image"], "pooling_mode": "mean"},
    "SGP4SR": {"means_k": 20, "knn_k": 4, "miu_c": 0.5, "miu_m": 3},
    "DeCoRec": {"kmeans_niter": 5},
    "MISSRec": {"train_stage": "inductive_ft"},
    "SICSRec": {},
    "MMSR": {"fusion": "gated", "fusion_n_heads": 2},
}


def _loaders(make_config, model, **over):
    from recbole.utils import init_seed

    from recbole_mm.quick_start import create_dataset

    config = make_config(model, **{**NO_DROPOUT, **MODELS[model], **over})
    init_seed(config["seed"], True)
    return config, batching.data_preparation(config, create_dataset(config))


def _build_model(config, train):
    from recbole_mm import registry

    torch.manual_seed(0)
    return registry.get_model(config["model"])(config, train._dataset)


def _seeded(fn, *args):
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)
    return fn(*args)


def _value(out):
    return sum(out) if isinstance(out, tuple) else out


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_trimmed_batches_are_exact(make_config, model_name):
    """Same weights, dropout off: loss, gradients and full-ranking scores on a trimmed batch equal
    those on RecBole's padded batch of the same rows (the padded batch takes the model's
    full-width path where it has one: ``trim_padding`` off)."""
    config, (train, valid, test) = _loaders(make_config, model_name)
    assert isinstance(train, batching.BucketedTrainDataLoader)
    model = _build_model(config, train)
    rows = np.arange(min(48, train.sample_size))
    padded = _seeded(TrainDataLoader.collate_fn, train, rows)
    trimmed = _seeded(train.collate_fn, rows)
    width = padded[train._dataset.item_id_list_field].shape[1]
    assert trimmed[train._dataset.item_id_list_field].shape[1] < width
    model.train()
    results = []
    for batch, trim in ((padded, False), (trimmed, True)):
        if hasattr(model, "trim_padding"):
            model.trim_padding = trim
        model.zero_grad()
        loss = _value(_seeded(model.calculate_loss, batch))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name in results[0][1]:
        torch.testing.assert_close(results[0][1][name], results[1][1][name], rtol=1e-3, atol=1e-5,
                                   msg=name)

    model.eval()
    rows = np.arange(min(64, test.sample_size))
    scores = []
    for batch, trim in ((FullSortEvalDataLoader.collate_fn(test, rows)[0], False),
                        (test.collate_fn(rows)[0], True)):
        if hasattr(model, "trim_padding"):
            model.trim_padding = trim
        with torch.no_grad():
            scores.append(_seeded(model.full_sort_predict, batch))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-5)


def test_length_buckets_cover_every_row_once_and_reshuffle():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 51, size=1000)
    gen = torch.Generator().manual_seed(3)
    first = batching.length_buckets(lengths, 64, gen)
    second = batching.length_buckets(lengths, 64, gen)
    for epoch in (first, second):
        rows = np.concatenate(epoch)
        assert sorted(rows.tolist()) == list(range(1000))
        assert all(len(b) <= 64 for b in epoch)
    # grouped by length: the padded positions are a small share of RecBole's random batches
    waste = sum(len(b) * lengths[b].max() for b in first) / lengths.sum()
    rand = np.array_split(rng.permutation(1000), 16)
    rand_waste = sum(len(b) * lengths[b].max() for b in rand) / lengths.sum()
    assert waste < 1.1 < rand_waste
    # another epoch: other batches, in another order
    assert [b.tolist() for b in first] != [b.tolist() for b in second]
    # the same seed gives the same epochs
    again = batching.length_buckets(lengths, 64, torch.Generator().manual_seed(3))
    assert [b.tolist() for b in again] == [b.tolist() for b in first]


def test_length_buckets_window_keeps_batches_local():
    lengths = np.arange(1, 401) % 50 + 1
    batches = batching.length_buckets(lengths, 10, torch.Generator().manual_seed(0), window=4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(400))
    assert len(batches) == 40


def test_train_loader_trims_and_buckets(make_config):
    config, (train, valid, test) = _loaders(make_config, "SASRec", train_batch_size=32)
    field = train._dataset.item_id_list_field
    len_field = train._dataset.item_list_length_field
    seen, widths = 0, []
    for batch in train:
        assert batch[field].shape[1] == int(batch[len_field].max())
        widths.append(batch[field].shape[1])
        seen += len(batch)
    assert seen == train.sample_size and len(train) == len(widths)
    for batch in valid:
        interaction = batch[0]
        assert interaction[field].shape[1] == int(interaction[len_field].max())


def test_trim_padding_false_is_recboles_loaders(make_config):
    config, (train, valid, test) = _loaders(make_config, "SASRec", trim_padding=False)
    assert type(train) is TrainDataLoader and type(test) is FullSortEvalDataLoader
    batch = next(iter(train))
    assert batch[train._dataset.item_id_list_field].shape[1] == config["MAX_ITEM_LIST_LENGTH"]


def test_same_metrics_on_trimmed_and_padded_evaluation(make_config):
    from recbole.trainer import Trainer

    results = []
    for trim in (False, True):
        config, (train, valid, test) = _loaders(make_config, "SASRec", trim_padding=trim)
        model = _build_model(config, train)
        trainer = Trainer(config, model)
        results.append(trainer.evaluate(test, load_best_model=False))
    for key in results[0]:
        assert results[0][key] == pytest.approx(results[1][key], abs=1e-4), key


def test_all_empty_histories_are_refused(make_config):
    config, (train, valid, test) = _loaders(make_config, "SASRec")
    batch = train._dataset[np.arange(4)]
    batch[train._dataset.item_list_length_field] = torch.zeros(4, dtype=torch.long)
    with pytest.raises(batching.BatchError, match="item_length.*SASRec|SASRec.*item_length"):
        batching.trim_interaction(train._dataset, batch, "SASRec")


# ---------------------------------------------------------------------------- all positions
def test_window_rows_cover_every_target_once(make_config):
    config, (train, _, _) = _loaders(make_config, "SASRec", trim_padding=False)
    ds = train._dataset
    rows = batching.window_rows(ds, 4)
    uid = ds.inter_feat[ds.uid_field].numpy()
    lens = ds.inter_feat[ds.item_list_length_field].numpy()
    for u in np.unique(uid)[:30]:
        mine = np.flatnonzero(uid == u)
        kept = [r for r in rows if uid[r] == u]
        m = len(mine)
        # rows predict items 1..m; kept rows predict m, m-4, ...; each covers min(len, 4) targets
        assert len(kept) == -(-m // 4)
        assert sum(min(int(lens[r]), 4) for r in kept) >= m
    assert len(batching.window_rows(ds, 50)) == len(np.unique(uid))  # short histories: one row


@pytest.mark.parametrize("model_name", ["SASRec", "GRU4Rec", "SASRecF", "FDSA"])
def test_all_position_loss_equals_prefix_losses(make_config, model_name):
    """Fixed weights, dropout off: the all-position loss summed over positions equals the sum of
    RecBole's per-prefix losses over the same (prefix, target) pairs."""
    from recbole_mm.model.all_positions import all_position_loss

    config, (train, _, _) = _loaders(make_config, model_name, trim_padding=False)
    model = _build_model(config, train)
    model.eval()
    ds = train._dataset
    uid = ds.inter_feat[ds.uid_field].numpy()
    users = np.unique(uid)[:12]
    prefix_rows = np.flatnonzero(np.isin(uid, users))
    latest = [r for r in batching.window_rows(ds, 50) if uid[r] in set(users.tolist())]
    with torch.no_grad():
        prefix = ds[prefix_rows]
        per_prefix = model.calculate_loss(prefix) * len(prefix_rows)  # RecBole: mean over rows
        total = all_position_loss(model, ds[np.asarray(latest)], reduction="sum")
    assert len(latest) == len(users) < len(prefix_rows)
    torch.testing.assert_close(total, per_prefix, rtol=1e-4, atol=1e-4)


def test_all_position_training_runs_and_keeps_one_row_per_user(make_config):
    from recbole_mm import registry
    from recbole_mm.trainer.all_positions import AllPositionTraining

    config, (train, valid, test) = _loaders(make_config, "SASRec", train_all_positions=True)
    ds = train._dataset
    assert len(ds.inter_feat) == len(np.unique(ds.inter_feat[ds.uid_field].numpy()))
    model = _build_model(config, train)
    trainer = registry.get_trainer(type(model), config)(config, model)
    assert isinstance(trainer, AllPositionTraining)
    loss = trainer._train_epoch(train, 0)
    assert np.isfinite(loss)


@pytest.mark.parametrize("model_name", ["BERT4Rec"])
def test_all_positions_refused_for_unsupported_models(make_config, model_name):
    with pytest.raises(ValueError, match=f"train_all_positions.*{model_name}"):
        _loaders(make_config, model_name, train_all_positions=True)


@pytest.mark.parametrize("model_name", ["SGP4SR", "DeCoRec", "MISSRec", "SICSRec", "MMSR"])
def test_plugin_models_declare_all_position_support(model_name):
    from recbole_mm import registry
    from recbole_mm.model.all_positions import support

    ok, why = support(registry.get_model(model_name))
    assert not ok and len(why) > 20  # each says why, for the error and its docs page


def test_bert4rec_batches_are_trimmed_but_not_bucketed(make_config):
    """RecBole's BERT4Rec never counts a mask at position 0: a bucket of one-item histories would
    have a 0/0 loss, so its training batches stay random (and trimmed)."""
    config, (train, _, _) = _loaders(make_config, "BERT4Rec", train_batch_size=16)
    assert not train._bucket
    model = _build_model(config, train)
    for batch in train:
        ds = train._dataset
        assert batch[ds.item_id_list_field].shape[1] == int(batch[ds.item_list_length_field].max())
        assert torch.isfinite(model.calculate_loss(batch))


def test_distributed_ranks_share_rows_like_recboles_sampler(make_config):
    """Each rank gets every world_size-th row (rows repeated from the start to even out, as
    RecBole's DistributedSampler does); train ranks get as many batches as each other."""
    config, (train, valid, test) = _loaders(make_config, "SASRec", train_batch_size=16)
    n = test.sample_size
    shares, plans = [], []
    for rank in (0, 1, 2):
        cfg = dict(config.final_config_dict, single_spec=False, world_size=3, local_rank=rank)
        test.config = cfg
        shares.append(np.concatenate(test._epoch_batches()))
        train.config = cfg
        plans.append((len(train._batch_plan()), len(train._epoch_batches())))
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == -(-n // 3)
    assert set(np.concatenate(shares).tolist()) == set(range(n))
    assert len(set(plans)) == 1 and plans[0][0] == plans[0][1]
