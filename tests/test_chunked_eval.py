"""Chunked full-ranking evaluation (recbole_mm.trainer.chunked_eval): the running top-k, the
collected tensors and the metrics equal RecBole's own path, path choice, settings and errors."""
from __future__ import annotations

import pytest
import torch
from recbole.evaluator.collector import Collector
from recbole.trainer import Trainer

from recbole_mm import registry
from recbole_mm.trainer import chunked_eval as ce

TINY = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "dropout_prob": 0.0,
        "item_dropout": 0.0, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
        "train_batch_size": 64, "eval_batch_size": 64,
        "metrics": ["Recall", "NDCG", "Hit", "MRR", "Precision", "ShannonEntropy"],
        "topk": [1, 5, 10]}

#: model -> (overrides, path the chunked evaluation takes)
MODELS = {
    "SASRec": ({}, "items"),
    "GRU4Rec": ({"embedding_size": 16}, "items"),
    "BERT4Rec": ({"mask_ratio": 0.3}, "items"),
    "FDSA": ({"selected_features": ["text"], "pooling_mode": "mean"}, "items"),
    "SASRecF": ({"selected_features": ["text", "image"], "pooling_mode": "mean"}, "items"),
    "SICSRec": ({}, "items"),
    "MMSR": ({"fusion": "gated", "fusion_n_heads": 2, "mask_history_items": True}, "items"),
    "SGP4SR": ({"means_k": 20, "knn_k": 4, "miu_c": 0.5, "miu_m": 3}, "rows"),
    "DeCoRec": ({"kmeans_niter": 5}, "rows"),
}


# --------------------------------------------------------------------------- top-k
def _stable_topk_ids(scores, k):
    """The documented order: score descending, equal scores by item id ascending."""
    return scores.sort(dim=1, descending=True, stable=True)[1][:, :k]


def _running_topk(scores, k, chunk):
    best = None
    for c0 in range(0, scores.shape[1], chunk):
        values, ids = ce.chunk_topk(scores[:, c0:c0 + chunk], k)
        best = ce.merge_topk(best, (values, ids + c0), k)
    return best


@pytest.mark.parametrize("chunk", [1, 3, 7, 40, 1000])
def test_running_topk_equals_torch_topk_and_orders_ties_by_id(chunk):
    gen = torch.Generator().manual_seed(chunk)
    k = 10
    # few distinct values: many ties, also across the k-th position and across chunks
    tied = torch.randint(0, 6, (50, 97), generator=gen).float()
    tied[:, 0] = float("-inf")
    tied[3] = 1.0  # one row all equal
    values, ids = _running_topk(tied, k, chunk)
    assert torch.equal(values, torch.topk(tied, k, dim=1).values)
    assert torch.equal(ids, _stable_topk_ids(tied, k))
    # continuous scores: the very ids of torch.topk
    floats = torch.randn(50, 97, generator=gen)
    values, ids = _running_topk(floats, k, chunk)
    expect = torch.topk(floats, k, dim=1)
    assert torch.equal(values, expect.values) and torch.equal(ids, expect.indices)


def test_fewer_items_than_k_in_a_chunk():
    scores = torch.tensor([[0.5, 2.0, 2.0], [1.0, 0.0, 3.0]])
    values, ids = ce.chunk_topk(scores, 5)
    assert ids.tolist() == [[1, 2, 0], [2, 0, 1]] and values.shape == (2, 3)


def test_topk_hits_equal_recbole_collector():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(30, 50, generator=gen)
    positive_u = torch.tensor([0, 0, 1, 2, 2, 2, 5, 7, 7, 29])
    positive_i = torch.tensor([int(scores[0].argmax()), 3, 4, 1, 1, 9, int(scores[5].argmax()),
                               10, 11, 49])  # a repeated pair counts once, as in RecBole
    config = {"topk": [5], "metrics": ["Recall"], "eval_args": {"mode": "full"}, "device": "cpu"}
    reference = Collector(config)
    reference.eval_batch_collect(scores, None, positive_u, positive_i)
    ours = ce.topk_hits(torch.topk(scores, 5, dim=1).indices, positive_u, positive_i, 50)
    expect = reference.data_struct["rec.topk"]
    assert ours.dtype == expect.dtype and torch.equal(ours, expect)


# --------------------------------------------------------------------------- trainers
def _build(make_config, model_name, **over):
    from recbole.utils import init_seed

    from recbole_mm.data.batching import data_preparation
    from recbole_mm.quick_start import create_dataset

    config = make_config(model_name, **{**TINY, **MODELS[model_name][0], **over})
    init_seed(config["seed"], True)
    train, valid, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = registry.get_model(model_name)(config, train._dataset)
    return config, model, train, test


def _evaluate(trainer, data, train):
    """Metrics and the tensors RecBole's evaluator received."""
    trainer.eval_collector.data_collect(train)  # what fit does first (ItemCoverage's item count)
    structs = []
    original = trainer.evaluator.evaluate
    trainer.evaluator.evaluate = lambda struct: (structs.append(struct), original(struct))[1]
    result = trainer.evaluate(data, load_best_model=False)
    return result, structs[0]


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_metrics_equal_recboles_path(make_config, model_name):
    config, model, train, test = _build(make_config, model_name, chunked_eval=True,
                                        eval_item_chunk=7, eval_score_budget=300)
    base_class = getattr(model, "trainer_class", None) or Trainer
    reference, ref_struct = _evaluate(base_class(config, model), test, train)
    trainer_class = registry.get_trainer(type(model), config)
    assert issubclass(trainer_class, ce.ChunkedEvalMixin) and issubclass(trainer_class, base_class)
    assert trainer_class.__name__ == base_class.__name__
    trainer = trainer_class(config, model)
    model.eval()
    with torch.no_grad():
        batch = next(iter(test))[0]
        path = "items" if ce.full_sort_parts(model, batch) is not None else "rows"
    assert path == MODELS[model_name][1]
    result, struct = _evaluate(trainer, test, train)
    said = {"items": "(item-table product)", "rows": "(full_sort_predict)"}[path]
    assert [m for m in trainer._chunked_logged if m.endswith(said)]  # the chunked path ran
    assert result == reference
    for key in ("rec.topk", "rec.items"):
        assert torch.equal(struct[key], ref_struct[key]), key
    assert trainer.eval_item_chunk < test._dataset.item_num  # several item chunks ran
    assert trainer.eval_score_budget // test._dataset.item_num < config["eval_batch_size"]


def test_item_chunk_scores_equal_full_sort_predict(make_config):
    """The parts reproduce full_sort_predict (plugin models declaring full_sort_parts)."""
    for name in ("SICSRec", "MMSR"):
        config, model, train, test = _build(make_config, name)
        model.eval()
        with torch.no_grad():
            batch = next(iter(test))[0]
            users, items, bias = ce.full_sort_parts(model, batch)
            scores = users @ items.t()
            ce._mask_block(scores, 0)
            expect = model.full_sort_predict(batch)
            expect[:, 0] = float("-inf")
        assert torch.equal(scores, expect), name


def test_trained_run_same_test_result(make_config, tiny_root):
    from recbole_mm import run_recbole_mm

    results, trainers = [], []
    for mode in (False, True):
        cfg = {**TINY, "data_path": tiny_root, "epochs": 2, "state": "WARNING",
               "show_progress": False, "chunked_eval": mode, "eval_item_chunk": 16}
        results.append(run_recbole_mm("SASRec", "mm_sample", config_dict=cfg, saved=False,
                                      trainer_hook=lambda trainer, **_: trainers.append(trainer)))
    assert not isinstance(trainers[0], ce.ChunkedEvalMixin)
    assert isinstance(trainers[1], ce.ChunkedEvalMixin) and trainers[1]._chunked_logged
    assert results[0]["test_result"] == results[1]["test_result"]
    assert results[0]["best_valid_result"] == results[1]["best_valid_result"]


# --------------------------------------------------------------------------- switch and errors
def test_auto_chunks_only_above_the_budget(make_config):
    config, model, train, test = _build(make_config, "SASRec")
    assert config["chunked_eval"] == "auto"
    trainer = registry.get_trainer(type(model), config)(config, model)
    assert not trainer._use_chunked(test)  # 64 x 121 floats << eval_score_budget
    config["eval_score_budget"] = 64 * test._dataset.item_num - 1
    trainer = registry.get_trainer(type(model), config)(config, model)
    assert trainer._use_chunked(test)


def test_metrics_beyond_topk_take_recboles_path(make_config):
    config, model, train, test = _build(make_config, "SASRec", chunked_eval=True,
                                        metrics=["Recall", "GAUC"], valid_metric="Recall@10")
    trainer = registry.get_trainer(type(model), config)(config, model)
    assert not trainer._use_chunked(test)
    reference = Trainer(config, model).evaluate(test, load_best_model=False)
    assert trainer.evaluate(test, load_best_model=False) == reference


def test_switch_off_returns_the_trainer_class_itself(make_config):
    config, model, *_ = _build(make_config, "SASRec", chunked_eval=False)
    assert registry.get_trainer(type(model), config) is Trainer
    assert registry.get_trainer(type(model), {"MODEL_TYPE": config["MODEL_TYPE"],
                                              "model": "SASRec"}) is Trainer  # no key: unchanged


@pytest.mark.parametrize("key,value", [("chunked_eval", "sometimes"), ("eval_item_chunk", 0),
                                       ("eval_score_budget", 2.5), ("eval_item_chunk", "big")])
def test_bad_settings_name_the_key(make_config, key, value):
    config, model, *_ = _build(make_config, "SASRec")
    config[key] = value
    with pytest.raises(ce.ChunkedEvalError, match=key):
        registry.get_trainer(type(model), config)(config, model)


def test_a_trainer_scoring_batches_its_own_way_gets_row_chunks(make_config):
    calls = []

    class OwnScoring(Trainer):
        def _full_sort_batch_eval(self, batched_data):
            calls.append(len(batched_data[0]))
            return super()._full_sort_batch_eval(batched_data)

    config, model, train, test = _build(make_config, "SASRec", chunked_eval=True,
                                        eval_score_budget=1000)
    reference = Trainer(config, model).evaluate(test, load_best_model=False)
    trainer = ce.with_chunked_eval(OwnScoring, config)(config, model)
    assert trainer.evaluate(test, load_best_model=False) == reference
    assert calls and max(calls) == 1000 // test._dataset.item_num  # its own method, per row chunk


def test_parts_of_the_wrong_size_are_refused(make_config):
    config, model, train, test = _build(make_config, "SICSRec", chunked_eval=True)
    model.full_sort_parts = lambda interaction: (torch.zeros(len(interaction), 4), torch.zeros(5, 4))
    trainer = registry.get_trainer(type(model), config)(config, model)
    with pytest.raises(ce.ChunkedEvalError, match="full_sort_parts"):
        trainer.evaluate(test, load_best_model=False)
