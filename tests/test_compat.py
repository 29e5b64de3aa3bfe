"""Compatibility patches for RecBole 1.2.1 on current torch/numpy."""
import pytest
import torch


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_fast_float_seq_embedding_equals_recbole(make_data, pooling):
    """The x @ E shortcut for modality vectors equals RecBole's gather-and-pool result."""
    from recbole.model.layers import ContextSeqEmbAbstractLayer, FeatureSeqEmbLayer

    config, train, _, _ = make_data("SASRecF", pooling_mode=pooling)
    ds = train._dataset
    layer = FeatureSeqEmbLayer(ds, 8, ["text", "image"], pooling, torch.device("cpu"))
    item_seq = torch.randint(0, ds.item_num, (4, 6))
    fast = layer(None, item_seq)[1]["item"]
    ContextSeqEmbAbstractLayer.embed_float_seq_fields, saved = (
        ContextSeqEmbAbstractLayer._recbole_embed_float_seq_fields,
        ContextSeqEmbAbstractLayer.embed_float_seq_fields)
    try:
        slow = layer(None, item_seq)[1]["item"]
    finally:
        ContextSeqEmbAbstractLayer.embed_float_seq_fields = saved
    assert fast.shape == (4, 6, 2, 8)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_saved_config_is_plain_data(make_config):
    from recbole_mm.compat import config_to_dict

    cfg = make_config("SASRec")
    cfg.variable_config_dict.update({"local_rank": 1, "world_size": 2, "port": "1234"})
    d = config_to_dict(cfg)
    assert d["model"] == "SASRec" and not {"local_rank", "world_size", "port"} & set(d["sources"])
    assert d["final"]["MODEL_TYPE"] == "SEQUENTIAL" and isinstance(d["final"]["device"], str)


def test_ensure_dir_survives_a_concurrent_creator(tmp_path, monkeypatch):
    """Two DDP ranks both see the folder missing, then both create it: neither may fail."""
    import os

    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils.logger

    import recbole_mm  # noqa: F401  (applies the patches)

    target = tmp_path / "log"
    target.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # the other rank won the race
    for module in (recbole.utils.logger, recbole.trainer.trainer, recbole.data.utils):
        module.ensure_dir(str(target))
    assert target.is_dir()
