"""MMSR: fusions, backbones, loss, dense training split, ID-free item tower, full ranking,
trainer groups/schedule, cold-start evaluation, pooled runs on the sample."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model.layers import TransformerBlock
from recbole_mm.model.mmsr_backbones import build_backbone
from recbole_mm.model.mmsr_fusion import (FUSIONS, CoAttentionFusion, MergeAttentionFusion,
                                          build_fusion, masked_mean)

POOLED = {"hidden_size": 24, "fusion": "gated", "n_layers": 1, "n_heads": 2, "inner_size": 48,
          "train_batch_size": 64, "fusion_n_heads": 2}


def _tokens(n=5, lt=7, lv=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, lt, d, generator=g)
    V = torch.randn(n, lv, d, generator=g)
    m = torch.ones(n, lt)
    for i in range(n):
        m[i, 2 + i % (lt - 2):] = 0  # at least two real text tokens, varying padding
    return T, m, V


# ------------------------------------------------------------------------------ fusions
def test_there_are_ten_fusions_and_each_gives_one_vector_per_item():
    assert len(FUSIONS) == 10
    T, m, V = _tokens()
    for name in FUSIONS:
        f = build_fusion(name, 16, dropout=0.1, n_layers=1, n_heads=2).eval()
        out = f(T, m, V)
        assert out.shape == (5, 16), name
        assert torch.isfinite(out).all(), name


def test_coarse_fusions_match_the_paper_equations():
    T, m, V = _tokens()
    t, v = masked_mean(T, m), V.mean(1)
    brute_t = torch.stack([T[i][m[i] > 0].mean(0) for i in range(len(T))])
    assert torch.allclose(t, brute_t, atol=1e-6)
    for name in ("sum", "concat", "film", "gated"):
        f = build_fusion(name, 16).eval()
        ln = lambda x: F.layer_norm(x, (16,), f.norm.weight, f.norm.bias, eps=1e-6)  # one shared LN
        if name == "sum":
            want = f.w_t(ln(t)) + f.w_v(ln(v))
        elif name == "concat":
            want = ln(t) @ f.w_o.weight[:, :16].t() + ln(v) @ f.w_o.weight[:, 16:].t() + f.w_o.bias
        elif name == "film":
            gb = f.w_f(ln(t))
            want = f.w_o(gb[:, :16] * ln(v) + gb[:, 16:])
        else:
            want = f.w_o(torch.sigmoid(f.w_t(ln(t))) * f.w_v(ln(v)))
        assert torch.allclose(f(T, m, V), want, atol=1e-5), name
        dnn = build_fusion(name + "_dnn", 16).eval()
        dnn.load_state_dict(f.state_dict(), strict=False)
        out = dnn(T, m, V)
        assert (out >= 0).all()  # final ReLU kept
        assert torch.allclose(out, dnn.mlp(f(T, m, V)), atol=1e-5)
        assert len([x for x in dnn.mlp.net if isinstance(x, torch.nn.Linear)]) == 3


def test_film_and_gate_are_conditioned_on_text():
    T, m, V = _tokens()
    for name in ("film", "gated"):
        f = build_fusion(name, 16).eval()
        T2 = T.clone()
        T2[0] = torch.randn_like(T2[0])
        out, out2 = f(T, m, V), f(T2, m, V)
        assert not torch.allclose(out[0], out2[0]) and torch.allclose(out[1:], out2[1:])


def test_merge_attention_equals_per_item_unpadded_computation():
    T, m, V = _tokens()
    f = MergeAttentionFusion(16, n_layers=2, n_heads=2).eval()
    out = f(T, m, V)
    for i in range(len(T)):
        x = torch.cat([T[i][m[i] > 0], V[i]])[None]  # no padding at all
        for layer in f.layers:
            x = layer(x)
        assert torch.allclose(out[i], x[0].mean(0), atol=1e-5)
    T2 = T.clone()
    T2[m == 0] = 123.0  # padded text tokens neither attend nor count in the mean
    assert torch.allclose(f(T2, m, V), out, atol=1e-5)
    assert not hasattr(f, "type_embedding")  # faithful: no modality-type embedding


def test_co_attention_shares_one_cross_attention_for_both_directions():
    T, m, V = _tokens()
    f = CoAttentionFusion(16, n_layers=1, n_heads=2).eval()
    calls = []
    f.blocks[0].cross.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[1]))
    out = f(T, m, V)
    assert out.shape == (5, 16)
    assert sorted(calls) == [4, 7]  # text queries and image queries through the same module
    T2 = T.clone()
    T2[m == 0] = -50.0
    assert torch.allclose(f(T2, m, V), out, atol=1e-5)


def test_transformer_block_options():
    blk = TransformerBlock(16, 2, 32, qkv_bias=False, activation="relu", layer_norm_eps=1e-6)
    assert blk.attention.attention.query.bias is None
    assert isinstance(blk.ffn.act, torch.nn.ReLU) and blk.ffn.norm.eps == 1e-6
    with pytest.raises(ValueError, match="activation"):
        TransformerBlock(16, 2, activation="tanh")


# ------------------------------------------------------------------------------ backbones
@pytest.mark.parametrize("arch", ["sasrec", "gru4rec", "nextitnet"])
def test_backbones_are_causal_and_shape_preserving(arch):
    torch.manual_seed(0)
    enc = build_backbone(arch, 16, max_len=10, n_layers=2, n_heads=2, dropout=0.1).eval()
    E = torch.randn(3, 10, 16)
    seq = torch.tensor([[1, 2, 3, 4, 5, 6, 0, 0, 0, 0]] * 3)
    H = enc(E, seq)
    assert H.shape == (3, 10, 16)
    E2 = E.clone()
    E2[:, 4:] = torch.randn(3, 6, 16)  # change the future (and the padding)
    assert torch.allclose(enc(E2, seq)[:, :4], H[:, :4], atol=1e-5)
    if arch == "sasrec":  # padded keys are masked: outputs at real positions ignore them
        E3 = E.clone()
        E3[:, 6:] = 99.0
        assert torch.allclose(enc(E3, seq)[:, :6], H[:, :6], atol=1e-5)
    if arch == "gru4rec":
        assert enc.gru.num_layers == 2 and enc.gru.bias is False
    if arch == "nextitnet":
        dil = [(b.conv1.conv.dilation[0], b.conv2.conv.dilation[0]) for b in enc.blocks]
        assert dil == [(1, 2), (4, 8), (1, 2), (4, 8)]


def test_unknown_backbone_and_fusion_are_clear_errors():
    with pytest.raises(ValueError, match="seq_arch"):
        build_backbone("bert4rec", 16, 10, 1)
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_fusion("attention", 16)


# ------------------------------------------------------------------------------ pooled model
def _model(make_data, **over):
    from recbole.utils import init_seed

    from recbole_mm.model.mmsr import MMSR

    cfg = dict(POOLED)
    cfg.update(over)
    config, train, valid, test = make_data("MMSR", **cfg)
    init_seed(0, True)
    return MMSR(config, train._dataset), config, train, valid, test


def test_model_has_no_item_id_table(make_data):
    model, config, train, *_ = _model(make_data)
    n = train._dataset.item_num
    assert n not in (24, 48, 16, 12)
    for name, p in model.named_parameters():
        assert n not in p.shape, name
    assert not any(isinstance(m, torch.nn.Embedding) and m.num_embeddings == n for m in model.modules())
    for k, v in model.state_dict().items():
        assert n not in v.shape, k  # transferable to a dataset with another item count
    idsr, *_ = _model(make_data, item_tower="id")
    assert idsr.item_tower.item_embedding.weight.shape == (n, 24)  # the IDSR baseline has one


def test_identical_content_gives_identical_vectors_and_unseen_items_are_ranked(make_data):
    model, config, train, valid, test = _model(make_data)
    model.eval()
    tower = model.item_tower
    tower.feat_text[7] = tower.feat_text[3]
    tower.feat_image[7] = tower.feat_image[3]
    vecs = tower(torch.tensor([3, 7, 0]))
    assert torch.allclose(vecs[0], vecs[1]) and torch.equal(vecs[2], torch.zeros(24))
    # every item, also one never seen in training, gets a content vector and a finite score
    from recbole_mm.evaluation import training_item_counts

    counts = training_item_counts(train._dataset)
    inter = next(iter(test))[0].to(model.device)
    scores = model.full_sort_predict(inter)
    assert scores.shape == (len(inter), train._dataset.item_num)
    table = model.item_table()
    assert (table[1:].abs().sum(1) > 0).all() and torch.isfinite(table).all()
    tower.feat_text[5] = torch.randn(16)  # a brand-new item content (as for an unseen item)
    model.train(); model.eval()
    assert not torch.allclose(model.item_table()[5], table[5])
    assert counts.shape[0] == model.n_items


def test_full_sort_uses_one_cached_item_table(make_data):
    """The model scores every item (padding -inf); history masking (the paper protocol) is the
    evaluation loaders' history_index, for every model (tests/test_mask_history.py)."""
    model, config, train, valid, test = _model(make_data, protocol="paper")
    model.eval()
    inter = next(iter(valid))[0].to(model.device)
    s1 = model.full_sort_predict(inter)
    table = model._item_table
    assert table is not None and table.shape == (model.n_items, 24)
    s2 = model.full_sort_predict(inter)
    assert model._item_table is table and torch.equal(s1, s2)
    user = model.user_vector(inter)
    brute = user @ model.item_tower(torch.arange(model.n_items)).t()
    hist = torch.zeros_like(brute, dtype=torch.bool)
    hist[:, 0] = True  # the padding item only: the model itself masks nothing else
    assert torch.isinf(s1[hist]).all() and (s1[hist] < 0).all()
    assert torch.allclose(s1[~hist], brute[~hist], atol=1e-5)
    model.train()
    assert model._item_table is None  # cache cleared when training resumes
    with torch.no_grad():
        model.item_tower.text_pooler.weight.add_(0.1)
    model.eval()
    assert not torch.allclose(model.full_sort_predict(inter)[~hist], s1[~hist])


def test_dense_loss_equals_hand_computation_and_negatives_avoid_the_sequence(make_data):
    model, config, train, *_ = _model(make_data, dropout_prob=0.0)
    model.eval()
    inter = next(iter(train)).to(model.device)
    seq, L = inter["item_id_list"], inter["item_length"]
    targets, valid = model.dense_targets(seq, L, inter["item_id"])
    for b in range(len(seq)):
        n = int(L[b])
        assert targets[b, : n - 1].tolist() == seq[b, 1:n].tolist()
        assert int(targets[b, n - 1]) == int(inter["item_id"][b]) and not targets[b, n:].any()
    torch.manual_seed(5)
    neg = model.sample_negatives(seq, targets, valid)
    assert ((neg > 0) == valid).all()  # one negative per valid position, none on padding
    for b in range(len(seq)):
        user_items = set(seq[b].tolist()) | {int(inter["item_id"][b])}
        assert not (set(neg[b][valid[b]].tolist()) & user_items)
    torch.manual_seed(5)
    loss = model.calculate_loss(inter)
    E = model.item_tower(seq)
    H = model.seq_encoder(E, seq)
    pos = (H * model.item_tower(targets)).sum(-1)
    ng = (H * model.item_tower(neg)).sum(-1)
    want = sum(F.binary_cross_entropy_with_logits(x[valid], torch.full_like(x[valid], y))
               for x, y in ((pos, 1.0), (ng, 0.0)))
    assert torch.allclose(loss, want, atol=1e-5)


def test_dense_train_keeps_the_latest_sample_per_user(make_data):
    config, train, valid, test = make_data("MMSR", **POOLED)
    tr, va = train._dataset, valid._dataset
    assert len(tr.inter_feat) == len(np.unique(tr.inter_feat["user_id"].numpy()))
    vhist = {int(u): h[:n].tolist() for u, h, n in zip(va.inter_feat["user_id"].numpy(),
                                                        va.inter_feat["item_id_list"].numpy(),
                                                        va.inter_feat["item_length"].numpy())}
    for u, h, n, t in zip(tr.inter_feat["user_id"].numpy(), tr.inter_feat["item_id_list"].numpy(),
                          tr.inter_feat["item_length"].numpy(), tr.inter_feat["item_id"].numpy()):
        assert h[:n].tolist() + [int(t)] == vhist[int(u)][-(n + 1):]
    _, train_sw, *_ = make_data("MMSR", **dict(POOLED, dense_train=False))
    assert len(train_sw._dataset.inter_feat) > len(tr.inter_feat)


def test_pooled_mode_refuses_attention_fusion(make_data):
    with pytest.raises(ValueError, match="tokens or end2end"):
        _model(make_data, fusion="merge_attn")


def test_tokens_mode_without_files_is_a_clear_error(make_data):
    from recbole_mm.data.features import FeatureFileError

    with pytest.raises(FeatureFileError, match="text_tokens"):
        _model(make_data, feature_mode="tokens", fusion="merge_attn")


def test_item_tower_variants(make_data):
    for tower in ("text", "image"):
        model, *_ = _model(make_data, item_tower=tower)
        assert not hasattr(model.item_tower, "fusion")
        assert hasattr(model.item_tower, "text_pooler") == (tower == "text")
        assert hasattr(model.item_tower, "cv_proj") == (tower == "image")


# ------------------------------------------------------------------------------ trainer
def test_trainer_groups_and_step_schedule(make_data):
    from recbole_mm.trainer.mmsr import MMSRTrainer, lr_factor

    model, config, *_ = _model(make_data, learning_rate=1e-3, weight_decay=0.1, lr_step_epochs=3)
    trainer = MMSRTrainer(config, model)
    groups = trainer.optimizer.param_groups
    assert [g["name"] for g in groups] == ["rest"]  # pooled: no encoder parameters
    assert groups[0]["weight_decay"] == 0.1 and isinstance(trainer.optimizer, torch.optim.AdamW)
    names = {id(p) for p in groups[0]["params"]}
    assert id(model.item_tower.text_pooler.weight) in names and id(model.item_tower.fusion.w_o.weight) in names
    trainer.set_epoch_lr(2)
    assert groups[0]["lr"] == pytest.approx(1e-3)
    trainer.set_epoch_lr(3)
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert lr_factor(119, 120) == 1.0 and lr_factor(120, 120) == pytest.approx(0.1)


# ------------------------------------------------------------------------------ end-to-end runs
@pytest.mark.parametrize("arch,fusion", [("sasrec", "gated"), ("gru4rec", "concat_dnn"),
                                         ("nextitnet", "sum")])
def test_pooled_run_on_sample(arch, fusion, tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm

    result = run_recbole_mm("MMSR", "mm_sample", config_dict=dict(
        POOLED, data_path=tiny_root, epochs=1, eval_step=1, seq_arch=arch, fusion=fusion,
        checkpoint_dir=str(tmp_path / "saved"), state="WARNING", protocol="paper"))
    res = result["test_result"]
    assert set(res) >= {"hit@10", "ndcg@10", "hit@50"}
    assert 0.0 <= res["ndcg@10"] <= res["hit@10"] <= res["hit@50"] <= 1.0
    ckpt = torch.load(result["saved_model_file"], weights_only=True)
    assert not any(k.startswith("item_tower.feat_") for k in ckpt["state_dict"])


def test_checkpoint_transfers_to_a_dataset_with_another_item_count(tmp_path, make_config):
    """Tables 9-10: an ID-free state dict loads with no missing or unexpected keys."""
    from recbole.data import data_preparation

    from recbole_mm.data.sample import write_sample
    from recbole_mm.model.mmsr import MMSR
    from recbole_mm.quick_start import create_dataset

    def build(root, n_items):
        write_sample(str(root / "mm_sample"), n_users=60, n_items=n_items, n_clusters=3,
                     text_dim=16, image_dim=12, min_len=5, max_len=8)
        config = make_config("MMSR", data_path=str(root), **POOLED)
        train, _, _ = data_preparation(config, create_dataset(config))
        return MMSR(config, train._dataset)

    src, dst = build(tmp_path / "a", 50), build(tmp_path / "b", 80)
    assert src.n_items != dst.n_items
    res = dst.load_state_dict(src.state_dict())
    assert not res.missing_keys and not res.unexpected_keys


# ------------------------------------------------------------------------------ cold start
def test_cold_counts_equal_a_brute_force_count_of_training_interactions(make_data, tiny_root):
    import pandas as pd

    from recbole_mm.evaluation import cold_item_mask, training_item_counts

    config, train, valid, test = make_data("SASRec")
    ds = train._dataset
    counts = training_item_counts(ds)
    df = pd.read_csv(f"{tiny_root}/mm_sample/mm_sample.inter", sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    train_rows = df[df.groupby("user_id").cumcount(ascending=False) >= 2]  # all but the last two
    brute = np.zeros(ds.item_num, dtype=np.int64)
    for tok, c in train_rows["item_id"].astype(str).value_counts().items():
        brute[ds.token2id(ds.iid_field, tok)] = c
    assert np.array_equal(counts, brute)
    # MMSR's dense split keeps the counts of the full training data
    _, mtrain, *_ = make_data("MMSR", **POOLED)
    assert np.array_equal(training_item_counts(mtrain._dataset), brute)
    assert np.array_equal(cold_item_mask(ds, 10)[1:], brute[1:] < 10)


@pytest.mark.parametrize("model", ["SASRec", "MMSR", "BPR"])
def test_cold_start_eval_keeps_only_cold_targets(model, make_data, tiny_root, tmp_path):
    from recbole_mm.evaluation import apply_eval_options, training_item_counts
    from recbole_mm.quick_start import run_recbole_mm

    over = dict(POOLED) if model == "MMSR" else {}
    if model == "BPR":  # a general (non-sequential) RecBole model
        over = {"train_neg_sample_args": {"distribution": "uniform", "sample_num": 1}}
    config, train, valid, test = make_data(model, cold_start_eval=True, cold_threshold=8, **over)
    _, v2, t2 = apply_eval_options(config, train, valid, test)
    counts = training_item_counts(train._dataset)
    for loader, orig in ((v2, valid), (t2, test)):
        items = loader._dataset.inter_feat["item_id"].numpy()
        assert len(items) and (counts[items] < 8).all()
        all_items = orig._dataset.inter_feat["item_id"].numpy()
        assert len(items) == int((counts[all_items] < 8).sum()) < len(all_items)
        assert type(loader) is type(orig)
    small = {"hidden_size": 16, "embedding_size": 16, "inner_size": 16, "n_layers": 1}
    result = run_recbole_mm(model, "mm_sample", config_dict=dict(
        small, **over, data_path=tiny_root, epochs=1, cold_start_eval=True, cold_threshold=8,
        checkpoint_dir=str(tmp_path / "saved"), state="WARNING"))
    assert result["test_result"]


def test_histories_longer_than_the_model_window_keep_their_latest_items(make_data):
    from recbole.data.interaction import Interaction

    model, *_ = _model(make_data, MAX_ITEM_LIST_LENGTH=4)
    seq = torch.tensor([[5, 6, 7, 8, 9, 10, 0], [3, 4, 0, 0, 0, 0, 0]])
    inter = Interaction({"item_id_list": seq, "item_length": torch.tensor([6, 2]),
                         "item_id": torch.tensor([11, 12])})
    s, n = model._window(inter)
    assert s.tolist() == [[7, 8, 9, 10], [3, 4, 0, 0]] and n.tolist() == [4, 2]
    model.eval()
    assert model.full_sort_predict(inter).shape == (2, model.n_items)
    assert torch.isfinite(model.calculate_loss(inter))


def test_dense_train_on_newest_first_benchmark_files(make_data):
    """Scientific's UniSRec train file lists each user's rows newest first: the kept row must
    still be the latest one (its history + target = the validation history; both keep only their
    latest MAX_ITEM_LIST_LENGTH items)."""
    from conftest import shared_data

    shared_data("amazon2018_scientific_mm")
    config, train, valid, test = make_data("MMSR", dataset="scientific_mm", **POOLED)
    tr, va = train._dataset, valid._dataset
    assert len(tr.inter_feat) == len(va.inter_feat)
    vh = {int(u): h[:n].tolist() for u, h, n in zip(va.inter_feat["user_id"].numpy(),
                                                     va.inter_feat["item_id_list"].numpy(),
                                                     va.inter_feat["item_length"].numpy())}
    for u, h, n, t in zip(tr.inter_feat["user_id"].numpy(), tr.inter_feat["item_id_list"].numpy(),
                          tr.inter_feat["item_length"].numpy(), tr.inter_feat["item_id"].numpy()):
        full = h[:n].tolist() + [int(t)]
        assert len(vh[int(u)]) == min(len(full), config["MAX_ITEM_LIST_LENGTH"])
        assert full[-len(vh[int(u)]):] == vh[int(u)]
