"""``mask_history_items`` for every sequential model (recbole_mm.data.batching.history_index):
no top-k item of a row is in its input sequence, trimmed / untrimmed and chunked / unchunked
evaluation agree, the key false changes nothing, MMSR's paper protocol still masks, and what
cannot be honoured is refused."""
from __future__ import annotations

import sys

import pytest
import torch
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader

from recbole_mm import registry
from recbole_mm.data import batching
from recbole_mm.trainer import chunked_eval as ce

TINY = {"hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0, "dropout_prob": 0.0,
        "item_dropout": 0.0, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
        "train_batch_size": 64, "eval_batch_size": 64, "metrics": ["Recall", "NDCG", "Hit", "MRR"],
        "topk": [5, 20], "valid_metric": "NDCG@5", "chunked_eval": False}

#: model -> overrides that keep it tiny on mm_sample (SICSRec: item-chunk path, DeCoRec: row chunks)
MODELS = {"SASRec": {}, "SICSRec": {}, "DeCoRec": {"kmeans_niter": 5}}
K = 20


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["x"])  # RecBole's Config reads --key=value from sys.argv


def _prepare(make_config, model_name, **over):
    from recbole.utils import init_seed

    from recbole_mm.quick_start import create_dataset

    config = make_config(model_name, **{**TINY, **MODELS.get(model_name, {}), **over})
    init_seed(config["seed"], True)
    return config, batching.data_preparation(config, create_dataset(config))


def _model(config, train):
    torch.manual_seed(0)
    model = registry.get_model(config["model"])(config, train._dataset)
    return model.eval()


def _evaluate(config, model, data, train):
    """``(metrics, [(item_id_list, top-K ids, scores or None)] per batch, collected struct)``
    through the trainer ``registry.get_trainer`` gives for ``config``."""
    trainer = registry.get_trainer(type(model), config)(config, model)
    collector = trainer.eval_collector
    batches, structs = [], []
    original = collector.eval_batch_collect

    def spy(scores, interaction, positive_u, positive_i):
        if isinstance(scores, ce.TopKIds):
            batches.append((interaction["item_id_list"].cpu(), scores.ids.cpu(), None))
        else:
            batches.append((interaction["item_id_list"].cpu(),
                            scores.topk(K, dim=1).indices.cpu(), scores.detach().cpu()))
        return original(scores, interaction, positive_u, positive_i)

    collector.eval_batch_collect = spy
    evaluate = trainer.evaluator.evaluate
    trainer.evaluator.evaluate = lambda struct: (structs.append(struct), evaluate(struct))[1]
    collector.data_collect(train)
    with torch.no_grad():
        result = trainer.evaluate(data, load_best_model=False)
    return result, batches, structs[0], trainer


def _in_history(item_seq, ids):
    """``[B, K]`` bool: top-K id is an item of the row's input sequence."""
    return (ids[:, :, None] == item_seq[:, None, :]).any(-1) & (ids > 0)


def test_history_index_is_recboles_format_without_padding():
    seq = torch.tensor([[3, 5, 3, 0], [7, 0, 0, 0], [0, 0, 0, 0]])
    rows, items = batching.history_index(seq)
    assert rows.tolist() == [0, 0, 0, 1] and items.tolist() == [3, 5, 3, 7]
    scores = torch.zeros(3, 9)
    scores[(rows, items)] = float("-inf")  # as Trainer._full_sort_batch_eval does
    assert torch.isinf(scores).sum() == 3 and torch.isinf(scores[0, [3, 5]]).all()


@pytest.mark.parametrize("model_name", ["SASRec", "SICSRec"])
def test_top_k_never_holds_a_history_item_and_false_is_unchanged(make_config, model_name):
    config, (train, valid, test) = _prepare(make_config, model_name, mask_history_items=True)
    assert isinstance(test, batching.TrimmedFullSortEvalDataLoader)
    model = _model(config, train)
    _, batches, _, _ = _evaluate(config, model, test, train)
    assert sum(len(seq) for seq, _, _ in batches) == len(test._dataset)
    for seq, ids, scores in batches:
        assert not _in_history(seq, ids).any()
        hist = torch.zeros_like(scores, dtype=torch.bool).scatter(1, seq, True)
        hist[:, 0] = True  # padding
        assert torch.isinf(scores[hist]).all() and torch.isfinite(scores[~hist]).all()
    # the key false: no history index, the same loader classes as before, unmasked scores
    config_off, (train_off, _, test_off) = _prepare(make_config, model_name)
    assert config_off["mask_history_items"] is False
    assert type(test_off) is batching.TrimmedFullSortEvalDataLoader
    assert next(iter(test_off))[1] is None
    _, batches_off, _, _ = _evaluate(config_off, _model(config_off, train_off), test_off, train_off)
    assert any(_in_history(seq, ids).any() for seq, ids, _ in batches_off)  # masking changed ranks
    for (seq, ids, scores), (seq_off, _, scores_off) in zip(batches, batches_off):
        assert torch.equal(seq, seq_off)
        hist = torch.zeros_like(scores, dtype=torch.bool).scatter(1, seq, True)
        hist[:, 0] = True  # padding: -inf either way
        assert torch.isinf(scores_off[:, 0]).all() and torch.isfinite(scores_off[:, 1:]).all()
        assert torch.equal(scores[~hist], scores_off[~hist])
    _, (_, _, plain) = _prepare(make_config, model_name, trim_padding=False)
    assert type(plain) is FullSortEvalDataLoader and next(iter(plain))[1] is None


@pytest.mark.parametrize("model_name", ["SASRec", "DeCoRec"])
def test_trimmed_and_untrimmed_give_the_same_metrics(make_config, model_name):
    results = []
    for trim in (True, False):
        config, (train, _, test) = _prepare(make_config, model_name, mask_history_items=True,
                                            trim_padding=trim)
        expect = batching.TrimmedFullSortEvalDataLoader if trim else \
            batching.HistoryMaskedFullSortEvalDataLoader
        assert type(test) is expect
        result, batches, _, _ = _evaluate(config, _model(config, train), test, train)
        assert not any(_in_history(seq, ids).any() for seq, ids, _ in batches)
        results.append(result)
    assert results[0] == results[1]


@pytest.mark.parametrize("model_name,path", [("SASRec", "(item-table product)"),
                                             ("DeCoRec", "(full_sort_predict)")])
def test_chunked_and_unchunked_give_the_same_metrics(make_config, model_name, path):
    runs = []
    for chunked in (False, True):
        config, (train, _, test) = _prepare(make_config, model_name, mask_history_items=True,
                                            chunked_eval=chunked, eval_item_chunk=7,
                                            eval_score_budget=300,
                                            metrics=TINY["metrics"] + ["ShannonEntropy"])
        result, batches, struct, trainer = _evaluate(config, _model(config, train), test, train)
        assert not any(_in_history(seq, ids).any() for seq, ids, _ in batches)
        runs.append((result, struct, trainer))
    (ref, ref_struct, _), (result, struct, trainer) = runs
    assert [m for m in trainer._chunked_logged if m.endswith(path)]  # the chunked path ran
    assert result == ref
    for key in ("rec.topk", "rec.items"):
        assert torch.equal(struct[key], ref_struct[key]), key


def test_mmsr_paper_protocol_masks_history_in_the_data_layer(make_config, monkeypatch):
    from recbole_mm.config import MMConfig

    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", "--protocol=paper"])
    over = {**{k: v for k, v in TINY.items() if k != "valid_metric"},  # the paper's Hit@10
            "fusion": "gated", "fusion_n_heads": 2, "topk": [10, 20]}
    config = make_config("MMSR", **over)
    assert isinstance(config, MMConfig) and config["protocol"] == "paper"
    assert config["mask_history_items"] is True
    from recbole.utils import init_seed

    from recbole_mm.quick_start import create_dataset

    init_seed(config["seed"], True)
    train, valid, test = batching.data_preparation(config, create_dataset(config))
    model = _model(config, train)
    assert not hasattr(model, "mask_history")  # one place for the idea: the loaders
    for data in (valid, test):
        _, batches, _, _ = _evaluate(config, model, data, train)
        assert batches and not any(_in_history(seq, ids).any() for seq, ids, _ in batches)


def test_saved_dataloaders_are_masked_too(make_config, tmp_path):
    config, (train, valid, test) = _prepare(make_config, "SASRec", mask_history_items=True,
                                            save_dataloaders=True)
    for loader in (valid, test):
        assert type(loader) is batching.HistoryMaskedFullSortEvalDataLoader
        interaction, history, _, _ = next(iter(loader))
        seq = interaction["item_id_list"]
        assert torch.equal(history[0], seq.nonzero()[:, 0])
        assert torch.equal(history[1], seq[seq > 0])
    saved = sorted((tmp_path / "saved").glob("*-for-SASRec-dataloader.pth"))
    assert saved
    config, (_, _, again) = _prepare(make_config, "SASRec", mask_history_items=True,
                                     dataloaders_save_path=str(saved[0]))
    assert type(again) is batching.HistoryMaskedFullSortEvalDataLoader


def test_what_cannot_be_honoured_is_refused(make_config):
    with pytest.raises(batching.BatchError, match="mask_history_items: true applies to sequential "
                                                  "models.*BPR is a general model"):
        _prepare(make_config, "BPR", mask_history_items=True)
    with pytest.raises(batching.BatchError, match="mask_history_items: true needs full-ranking "
                                                  "evaluation.*SASRec"):
        _prepare(make_config, "SASRec", mask_history_items=True,
                 eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "uni100",
                            "group_by": "user"})
    with pytest.raises(batching.BatchError, match="mask_history_items must be true or false"):
        _prepare(make_config, "SASRec", mask_history_items="sometimes")
    _prepare(make_config, "BPR")  # the key false: general models as before
