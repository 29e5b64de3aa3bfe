"""SGP4SR: CGC graph construction, CIP clusters, shapes, losses, ablation flags, noise tool."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from recbole_mm.data import graphs
from recbole_mm.data.features import FeatureFileError
from recbole_mm.data.noise import (FeatureNoiseError, apply_feature_noise, parse_feature_noise,
                                   swap_features)
from recbole_mm.model import sgp4sr as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(hidden_size=16, n_layers=1, n_heads=2, means_k=6, knn_k=4, miu_c=0.5, miu_m=3,
             train_batch_size=128)


def dense(m):
    return np.asarray(sp.csr_matrix(m).todense())


@pytest.fixture
def build(make_data):
    """``build(**overrides)`` -> (model in eval mode, config, train, test loaders)."""
    from recbole.utils import init_seed

    def _build(**overrides):
        cfg = dict(SMALL)
        cfg.update(overrides)
        config, train, valid, test = make_data("SGP4SR", **cfg)
        init_seed(config["seed"], True)
        model = S.SGP4SR(config, train.dataset)
        return model.eval(), config, train, test

    return _build


def first_batch(loader):
    for batch in loader:
        return batch[0] if isinstance(batch, tuple) else batch


# ------------------------------------------------------------------------------------ CGC
def brute_cgc(x, cooc, H, h_o, h_m):
    """Hand implementation of spec 2.4 on dense inputs (item 0 = padding)."""
    n = x.shape[0]
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    out = np.zeros((n, n))
    for i in range(1, n):
        cos = xn[1:] @ xn[i]
        cand = list(1 + np.lexsort((np.arange(n - 1), -cos))[:h_m])  # N^m, self included
        row = cooc[i]
        pos = [j for j in np.lexsort((np.arange(n), -row)) if row[j] > 0][:h_o]  # N^o
        common = [j for j in cand if j in pos]
        rest = [j for j in cand if j not in common][: H - len(common)]
        for j in common + rest:
            out[i, j] = 1.0 / H
    return out


def toy_case():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 5)).astype(np.float32)  # 8 items + padding
    x[0] = 0
    seqs = [[1, 2, 3, 4], [2, 5, 6], [7, 8, 1, 5], [3, 6, 8], [4, 7, 2]]
    cooc = graphs.cooccurrence_matrix(seqs, 9, weight="inverse_distance")
    return x, np.ones(9, bool), cooc


def test_cgc_graph_equals_hand_computation():
    x, present, cooc = toy_case()
    H, h_o, h_m = 3, 2, 6
    adj = S.build_cgc_graph(x, present, cooc, H, h_o, h_m)
    np.testing.assert_allclose(dense(adj), brute_cgc(x, dense(cooc), H, h_o, h_m), rtol=1e-6)
    d = dense(adj)
    assert (np.count_nonzero(d[1:], axis=1) == H).all()  # exactly H neighbours
    np.testing.assert_allclose(d[1:].sum(1), 1.0, rtol=1e-6)  # rows sum to 1 (1/H each)
    assert d[0].sum() == 0 and d[:, 0].sum() == 0  # [PAD] never a neighbour
    assert (np.diag(d)[1:] > 0).all()  # self is a neighbour (cos = 1)


def test_cgc_common_items_come_first():
    # N^m of item 1 in cosine order: 1, 2, 3, 4, 5; N^o of item 1: {5, 4}
    modal = np.array([[1, 2, 3, 4, 5]])
    cooc = np.array([[5, 4]])
    assert S.cgc_neighbours(modal, cooc, 3).tolist() == [[4, 5, 1]]
    assert S.cgc_neighbours(modal, np.zeros((1, 0), int), 3).tolist() == [[1, 2, 3]]
    assert S.cgc_neighbours(np.array([[1, 2, -1, -1]]), cooc, 3).tolist() == [[1, 2, -1]]


def test_cgc_mu_edge_cases():
    x, present, cooc = toy_case()
    H = 3
    top_h = S.build_cgc_graph(x, present, cooc, H, 0, 6)  # mu^o = 0: top-H cosine graph
    knn = graphs.knn_graph(x, H, include_self=True)
    np.testing.assert_allclose(dense(top_h), (dense(knn) != 0) / H, rtol=1e-6)
    for h_o in (0, 1, 2, 3):  # mu^m = 1: H^m = H, the guidance cannot change anything
        np.testing.assert_allclose(dense(S.build_cgc_graph(x, present, cooc, H, h_o, H)), dense(top_h))
    assert S.neighbour_counts(10, 0.3, 2.5) == (3, 25)
    assert S.neighbour_counts(10, 0.25, 1.05) == (2, 10)  # int() truncation
    with pytest.raises(ValueError, match="miu_m"):
        S.neighbour_counts(10, 0.3, 0.5)


def test_top_positive_per_row_ignores_zero_weights():
    a = sp.csr_matrix(np.array([[0, 3, 1, 3], [0, 0, 0, 0], [0, 2, 0, 0.]]))
    assert S.top_positive_per_row(a, 2).tolist() == [[1, 3], [-1, -1], [1, -1]]


def test_item_without_feature_keeps_its_id_embedding():
    x, present, cooc = toy_case()
    x[4] = 0  # no usable feature: never a neighbour, self loop only
    d = dense(S.build_cgc_graph(x, present, cooc, 3, 1, 6))
    assert d[4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert d[np.arange(9) != 4, 4].sum() == 0


# ------------------------------------------------------------------------------------ model graphs
def test_model_graphs_from_training_split(build):
    model, config, train, test = build()
    ds = train.dataset
    n = ds.item_num
    # A^o: inverse-distance co-occurrence of each user's training sequence, rows L2-normalised
    want = np.zeros((n, n))
    for s in ds.training_sequences():
        for p in range(len(s)):
            for q in range(p + 1, len(s)):
                if s[p] != s[q]:
                    want[s[p], s[q]] += 1.0 / (q - p)
                    want[s[q], s[p]] += 1.0 / (q - p)
    norms = np.linalg.norm(want, axis=1, keepdims=True)
    want = np.divide(want, norms, out=np.zeros_like(want), where=norms > 0)
    np.testing.assert_allclose(model.adj_o.to_dense().numpy(), want, rtol=1e-5, atol=1e-7)
    for adj_name in ("adj_image", "adj_text"):
        d = getattr(model, adj_name).to_dense().numpy()
        assert (np.count_nonzero(d[1:], axis=1) == config["knn_k"]).all()
        np.testing.assert_allclose(d[1:].sum(1), 1.0, rtol=1e-5)
        assert d[0].sum() == 0 and d[:, 0].sum() == 0
    # Ĉ = C Â^m: k rows summing to 1 (every real item in exactly one cluster)
    cm = model.centre_map_image.to_dense().numpy()
    assert cm.shape == (6, n) and cm[:, 0].sum() == 0
    nonempty = cm.sum(1) > 0
    np.testing.assert_allclose(cm.sum(1)[nonempty], 1.0, rtol=1e-5)


def test_training_sequences_exclude_valid_and_test_targets(build):
    model, config, train, test = build()
    ds = train.dataset
    inter = test.dataset.inter_feat
    uid = inter[ds.uid_field].numpy()
    # the test rows' history = training sequence + validation item; both targets are later
    hist, length = inter[ds.item_id_list_field].numpy(), inter[ds.item_list_length_field].numpy()
    train_seqs = ds.training_sequences()
    users = np.unique(ds.inter_feat[ds.uid_field].numpy())
    by_user = dict(zip(users, train_seqs))
    for u, h, l in zip(uid[:50], hist[:50], length[:50]):
        assert by_user[u].tolist() == h[: l - 1].tolist()


def test_clusters_partition_real_items():
    assign = np.array([0, 1, 1, 2, 0])
    items = np.array([1, 2, 3, 4, 5])
    c = dense(S.cluster_matrix(assign, items, 3, 6))
    assert c.shape == (3, 6) and c[:, 0].sum() == 0
    assert (np.count_nonzero(c[:, 1:], axis=0) == 1).all()
    np.testing.assert_allclose(c.sum(1), 1.0)


# ------------------------------------------------------------------------------------ forward
def test_shapes_loss_and_score_decomposition(build):
    model, config, train, test = build()
    batch = first_batch(train)
    seq, ln = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    B = seq.shape[0]
    u_s, u_v, u_t = model(seq, ln)
    assert u_s.shape == u_v.shape == u_t.shape == (B, 16)
    # score decomposition (eval, deterministic)
    tables = model.item_tables()
    scores = model.full_sort_predict(batch)
    assert scores.shape == (B, model.n_items)
    want = u_s @ tables["id"].T + 0.1 * u_v @ tables["image"].T + 0.9 * u_t @ tables["text"].T
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-5)
    # predict = the gathered full-sort scores
    assert model.ITEM_ID == model.POS_ITEM_ID  # predict scores the batch's target items
    pred = model.predict(batch)
    torch.testing.assert_close(pred, scores.gather(1, batch[model.POS_ITEM_ID][:, None])[:, 0],
                               rtol=1e-4, atol=1e-5)
    # loss decomposition in training mode with the Gumbel noise/dropout fixed by the seed
    model.train()
    torch.manual_seed(7)
    loss = model.calculate_loss(batch)
    torch.manual_seed(7)
    users, tables = model.encode(seq, ln)
    tgt = batch[model.POS_ITEM_ID]
    want = (F.cross_entropy(users["s"] @ tables["id"].T, tgt)
            + 0.1 * F.cross_entropy(users["image"] @ tables["image"].T, tgt)
            + 0.9 * F.cross_entropy(users["text"] @ tables["text"].T, tgt))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert model.item_embedding.weight.grad is not None


def test_parameter_count_matches_spec(build):
    model, config, *_ = build(hidden_size=300, n_layers=2, n_heads=4)
    n, L = model.n_items, model.max_seq_length
    assert sum(p.numel() for p in model.parameters()) == n * 300 + L * 300 + 2 * 543_000 + 600
    unshared, *_ = build(share_encoder=False)
    assert len(unshared.encoders) == 3  # image, text, id stacks


def test_gumbel_eval_determinism(build):
    model, config, train, test = build()
    batch = first_batch(test)
    with torch.no_grad():
        a, b = model.full_sort_predict(batch), model.full_sort_predict(batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    noisy, *_ = build(gumbel_eval=True)
    with torch.no_grad():
        torch.manual_seed(1)
        c = noisy.full_sort_predict(batch)
        d = noisy.full_sort_predict(batch)
        torch.manual_seed(1)
        e = noisy.full_sort_predict(batch)
    assert not torch.equal(c, d)
    torch.testing.assert_close(c, e, rtol=0, atol=0)


def _bias(mask):
    return torch.zeros(mask.shape).masked_fill(mask, float("-inf"))


def test_block_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    block = S.SGPBlock(8, 2, 0.0, 1e-8).eval()
    x, z = torch.randn(3, 6, 8), torch.randn(3, 4, 8)
    causal = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    q = block.attn_layernorm(x)
    want = block.ffn(block.ffn_layernorm(q + block.attn(q, x, x, attn_mask=causal)[0]))
    torch.testing.assert_close(block(x, torch.ones(3, 6, 1), _bias(causal)), want)
    ica = torch.arange(6)[None, :] > torch.arange(4)[:, None]
    qz = block.attn_layernorm(z)
    want_z = block.ffn(qz + block.attn(qz, x, x, attn_mask=ica)[0])
    torch.testing.assert_close(block.centres(z, block.keys_values(x), _bias(ica)), want_z)


def test_ica_official_mask_hides_later_positions():
    block = S.SGPBlock(8, 2, 0.0, 1e-8).eval()
    z, x = torch.randn(1, 4, 8), torch.randn(1, 6, 8)
    bias = _bias(torch.arange(6)[None, :] > torch.arange(4)[:, None])
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 3, 8)  # positions 3.. are invisible to centres 0..2
    a = block.centres(z, block.keys_values(x), bias)
    b = block.centres(z, block.keys_values(x2), bias)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


@pytest.mark.parametrize("ica_mask", ["official", "padding"])
def test_trimmed_padding_equals_full_width(build, ica_mask):
    model, config, train, test = build(ica_mask=ica_mask, means_k=20)
    batch = first_batch(test)
    assert int(batch[model.ITEM_SEQ_LEN].max()) < batch[model.ITEM_SEQ].shape[1] - 20  # k > T
    trimmed = _scores(model, batch)
    model.trim_padding = False
    torch.testing.assert_close(_scores(model, batch), trimmed, rtol=1e-4, atol=1e-5)


def test_packed_gradients_equal_full_width(build):
    """The key-space, bucketed ICA and packed encoders back-propagate like the full-width form."""
    model, config, train, test = build(means_k=20)
    batch = first_batch(train)
    model.eval()  # no dropout, deterministic centre choice: both paths are the same function
    grads = []
    for trim in (True, False):
        model.trim_padding = trim
        model.zero_grad()
        model.calculate_loss(batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-3, atol=1e-5, msg=n)


def test_packed_batch_buckets():
    lengths = torch.tensor([9, 8, 5, 4, 3, 1, 1, 9, 8, 5, 4, 3, 1, 1])  # two segments of 7 rows
    batch = S.PackedBatch(lengths, segment=7)
    spans = [(a, b, T) for a, b, T, _, _ in batch.buckets]
    # length classes ceil(log2 len): 9 -> 4; 8, 5 -> 3; 4, 3 -> 2; 1 -> 0; a cut at row 7
    assert spans == [(0, 1, 9), (1, 3, 8), (3, 5, 4), (5, 7, 1),
                     (7, 8, 9), (8, 10, 8), (10, 12, 4), (12, 14, 1)]
    for a, b, T, index, real in batch.buckets:
        assert T < 2 * int(lengths[a:b].min())
        assert index.shape == (b - a, T + 1) and (index[:, T] == batch.PAD).all()
    seq = torch.zeros(14, 10, dtype=torch.long)
    for r, n in enumerate(lengths.tolist()):
        seq[r, :n] = torch.arange(1, n + 1) + 100 * r
    tokens = batch.pack(seq)
    assert tokens.tolist() == seq[seq > 0].tolist() and len(tokens) == batch.n_tokens
    assert tokens[batch.last].tolist() == [100 * r + n for r, n in enumerate(lengths.tolist())]
    parts = batch.gather(batch.extend(tokens.unsqueeze(1), torch.tensor([-1])))
    for (a, b, T, _, real), part in zip(batch.buckets, parts):
        assert (part[:, T, 0] == -1).all()
        want = seq[a:b, :T].clone()
        assert torch.equal(part[:, :T, 0], want)
        assert torch.equal(part[:, :T, 0].reshape(-1)[real], want[want > 0])


# ------------------------------------------------------------------------------------ ablations
def _scores(model, batch):
    with torch.no_grad():
        return model.full_sort_predict(batch)


def test_ablation_wo_coo_changes_only_the_modal_graphs(build):
    full, _, _, test = build()
    wo, *_ = build(use_cgc_cooccurrence=False)
    assert full.h_o == 2 and wo.h_o == 0
    torch.testing.assert_close(full.adj_o.to_dense(), wo.adj_o.to_dense())
    assert not torch.equal(full.adj_image.to_dense(), wo.adj_image.to_dense())
    top_h = graphs.knn_graph(wo.feat_image if hasattr(wo, "feat_image") else
                             test.dataset.modality_features["image"].numpy(), 4, include_self=True)
    np.testing.assert_allclose(wo.adj_image.to_dense().numpy(), (dense(top_h) != 0) / 4, rtol=1e-6)
    assert [n for n, _ in full.named_parameters()] == [n for n, _ in wo.named_parameters()]
    batch = first_batch(test)
    assert not torch.allclose(_scores(full, batch), _scores(wo, batch))


def test_ablation_wo_cgc_uses_feature_projections(build):
    full, _, _, test = build()
    wo, *_ = build(use_cgc=False)
    assert not hasattr(wo, "adj_image") and not hasattr(wo, "adj_text")
    linears = [m for m in wo.adapters.modules() if isinstance(m, torch.nn.Linear)]
    assert sorted((m.in_features, m.out_features) for m in linears) == [(12, 16), (16, 16)]
    extra = sum(p.numel() for p in wo.parameters()) - sum(p.numel() for p in full.parameters())
    assert extra == 12 * 16 + 16 + 16 * 16 + 16
    assert wo.centre_map_image.shape == (6, wo.n_items)  # C^m applied to the projection
    batch = first_batch(test)
    assert not torch.allclose(_scores(full, batch), _scores(wo, batch))


def test_ablation_wo_cip_removes_centres(build):
    full, _, _, test = build()
    batch = first_batch(test)
    for wo in (build(use_cip=False)[0], build(means_k=0)[0]):
        assert not wo.use_cip
        assert not any(n.startswith("centre_map") or n == "ica_mask" for n, _ in wo.named_buffers())
        assert [n for n, _ in full.named_parameters()] == [n for n, _ in wo.named_parameters()]
        assert not torch.allclose(_scores(full, batch), _scores(wo, batch))
    # without CIP: u^m = LN_out(H^m)[last]; check the centre path really is skipped
    wo = build(use_cip=False)[0]
    called = []
    origs = {"centres": S.SGPBlock.centres, "centres_packed": S.SGPBlock.centres_packed}
    for name, orig in origs.items():
        setattr(S.SGPBlock, name, lambda *a, _o=orig, **k: called.append(1) or _o(*a, **k))
    try:
        for trim in (True, False):  # packed and full-width paths
            wo.trim_padding = full.trim_padding = trim
            called.clear()
            _scores(wo, batch)
            assert not called
            _scores(full, batch)
            assert called
    finally:
        for name, orig in origs.items():
            setattr(S.SGPBlock, name, orig)


def test_ablation_wo_mul_single_fused_branch(build):
    full, _, _, test = build()
    wo, *_ = build(separated_modality=False)
    assert [b for b, _ in wo.branches] == ["fused"]
    assert hasattr(wo, "adj_fused") and not hasattr(wo, "adj_image") and not hasattr(wo, "adj_text")
    assert wo.centre_map_fused.shape == (6, wo.n_items)
    batch = first_batch(test)
    outs = wo(batch[wo.ITEM_SEQ], batch[wo.ITEM_SEQ_LEN])
    assert len(outs) == 2  # (u^s, u^fused)
    users, tables = wo.encode(batch[wo.ITEM_SEQ], batch[wo.ITEM_SEQ_LEN])
    want = users["s"] @ tables["id"].T + users["fused"] @ tables["fused"].T
    torch.testing.assert_close(_scores(wo, batch), want.detach(), rtol=1e-4, atol=1e-5)


def test_ablation_wo_c2c_removes_cgc_and_cip(build):
    wo, _, _, test = build(use_c2c=False)
    assert not wo.use_cgc and not wo.use_cip
    names = [n for n, _ in wo.named_buffers()]
    assert not any(n.startswith(("adj_image", "adj_text", "centre_map")) for n in names)
    assert set(wo.adapters) == {"image", "text"}
    full, *_ = build()
    batch = first_batch(test)
    assert not torch.allclose(_scores(full, batch), _scores(wo, batch))


def test_bad_settings_are_refused(build):
    with pytest.raises(ValueError, match="means_k=500"):
        build(means_k=500)
    with pytest.raises(ValueError, match="ica_mask"):
        build(ica_mask="none")
    with pytest.raises(ValueError, match="miu_m"):
        build(miu_m=0.5)


def test_padding_ica_mask_changes_scores(build):
    full, _, _, test = build()
    pad, *_ = build(ica_mask="padding")
    batch = first_batch(test)
    assert not torch.allclose(_scores(full, batch), _scores(pad, batch))


def test_means_k_per_dataset_default(make_config):
    cfg = make_config("SGP4SR")
    assert cfg["means_k"] is None and cfg["means_k_by_dataset"]["clothing"] == 60
    assert cfg["hidden_size"] == 16 or cfg["hidden_size"] == 300

    class DS:
        dataset_name = "clothing"

    assert S.SGP4SR._centre_count(cfg, DS) == 60
    DS.dataset_name = "mm_sample"
    assert S.SGP4SR._centre_count(cfg, DS) == 50


# ------------------------------------------------------------------------------------ missing features
def test_missing_optional_modality_names_file_and_builder(make_data, tiny_root):
    mods = {"text": {"file": "mm_sample.text.npy"},
            "image": {"file": "mm_sample.clip.npy", "optional": True,
                      "build": "python dataset_scripts/make_clip.py --dataset mm_sample"}}
    config, train, valid, test = make_data("SGP4SR", modalities=mods, **SMALL)
    with pytest.raises(FeatureFileError) as err:
        S.SGP4SR(config, train.dataset)
    msg = str(err.value)
    assert "SGP4SR needs modalities ['image', 'text']" in msg
    assert os.path.join(tiny_root, "mm_sample", "mm_sample.clip.npy") in msg
    assert "python dataset_scripts/make_clip.py --dataset mm_sample" in msg


# ------------------------------------------------------------------------------------ noise tool
def test_swap_features_counts_sources_and_seed():
    x = np.arange(1, 43, dtype=np.float32).reshape(21, 2)  # distinct rows, row 0 = padding
    y, rows, src = swap_features(x, 0.5, seed=5)
    assert len(rows) == 10 and len(set(rows.tolist())) == 10 and (rows >= 1).all()
    assert (rows != src).all() and (src >= 1).all()
    np.testing.assert_array_equal(y[rows], x[src])  # each picked item carries another item's row
    untouched = np.setdiff1d(np.arange(21), rows)
    np.testing.assert_array_equal(y[untouched], x[untouched])
    assert (np.abs(y - x).sum(1) > 0).sum() == 10
    y2, rows2, _ = swap_features(x, 0.5, seed=5)
    np.testing.assert_array_equal(y, y2)
    _, rows3, _ = swap_features(x, 0.5, seed=6)
    assert set(rows3.tolist()) != set(rows.tolist())
    assert len(swap_features(x, 0.33, seed=1)[1]) == 6  # floor(0.33 * 20)
    assert len(swap_features(x, 0.0, seed=1)[1]) == 0
    ys, rs, ss = swap_features(x, 1.0, seed=2, in_sequence=True)
    assert len(rs) == 20


def test_parse_feature_noise():
    assert parse_feature_noise("image:0.5") == {"image": 0.5}
    assert parse_feature_noise("text:0.2,image:0.5") == {"text": 0.2, "image": 0.5}
    assert parse_feature_noise({"image": 0.3}) == {"image": 0.3}
    assert parse_feature_noise(None) == {}
    for bad in ("image", "image:1.5", "image:x", "image:0.1,image:0.2"):
        with pytest.raises(FeatureNoiseError):
            parse_feature_noise(bad)
    with pytest.raises(FeatureNoiseError, match="audio"):
        apply_feature_noise({"image": torch.zeros(3, 2)}, {}, "audio:0.5", 0)


def test_feature_noise_config_changes_only_that_modality(build, make_data):
    clean, _, clean_train, _ = build()
    noisy, config, noisy_train, test = build(feature_noise="image:0.5", feature_noise_seed=3)
    cds, nds = clean_train.dataset, noisy_train.dataset
    ci, ni = cds.modality_features["image"], nds.modality_features["image"]
    n_present = int(cds.modality_present["image"][1:].sum())
    changed = (ci != ni).any(1)
    assert int(changed.sum()) == n_present // 2
    assert not changed[0]
    torch.testing.assert_close(cds.modality_features["text"], nds.modality_features["text"])
    # each changed row is some other item's clean feature
    for i in torch.nonzero(changed)[:, 0].tolist()[:10]:
        assert ((ci == ni[i]).all(1)).any() and not torch.equal(ci[i], ni[i])
    # graphs and clusters are rebuilt from the noisy image features (no stale cache hit)
    assert not torch.equal(clean.adj_image.to_dense(), noisy.adj_image.to_dense())
    torch.testing.assert_close(clean.adj_text.to_dense(), noisy.adj_text.to_dense())
    # the same noise for any model: RecBole's SASRecF reads the noisy matrix as item features
    _, sasf_train, _, _ = make_data("SASRecF", feature_noise="image:0.5", feature_noise_seed=3,
                                    hidden_size=16)
    sds = sasf_train.dataset
    torch.testing.assert_close(sds.modality_features["image"], ni)
    torch.testing.assert_close(sds.item_feat["image"][:, :, 0], ni)


# ------------------------------------------------------------------------------------ end to end
def test_cli_one_epoch_then_checkpoint_reload(tiny_root, tmp_path):
    """One epoch through run_recbole_mm.py (with feature noise); the best checkpoint reloads
    (weights_only) into a model whose test scores equal the CLI's."""
    from recbole.trainer import Trainer

    from recbole_mm.quick_start import load_data_and_model

    env = dict(os.environ, PYTHONPATH=ROOT)
    args = ["--model=SGP4SR", "--dataset=mm_sample", f"--data_path={tiny_root}", "--epochs=1",
            "--hidden_size=16", "--n_layers=1", "--n_heads=2", "--means_k=6", "--knn_k=4",
            "--feature_noise=image:0.3", f"--checkpoint_dir={tmp_path / 'saved'}"]
    res = subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_mm.py"), *args],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "test result table" in out and "ndcg@10" in out
    assert "feature_noise: modality [image]" in out
    table = out[out.index("test result table"):].splitlines()
    printed = {l.split()[0]: float(l.split()[1]) for l in table if l.split()[:1] in
               (["recall@10"], ["recall@50"], ["ndcg@10"], ["ndcg@50"])}
    assert len(printed) == 4
    # the best checkpoint (not its training state SGP4SR-*.resume.pth beside it)
    ckpt, = [p for p in (tmp_path / "saved").glob("SGP4SR-*.pth")
             if not p.name.endswith(".resume.pth")]
    config, model, dataset, train, valid, test = load_data_and_model(str(ckpt))
    assert config["feature_noise"] == "image:0.3"
    again = Trainer(config, model).evaluate(test, load_best_model=False)
    assert {k: again[k] for k in printed} == pytest.approx(printed, abs=1e-4)


def test_initial_centres_share_one_dropout_mask(build):
    """Spec 3.3: Z_0 = Dropout(s · Z_init) broadcast to every user (one mask per batch)."""
    model, _, _, test = build(hidden_dropout_prob=0.5)
    batch = first_batch(test)
    B = batch[model.ITEM_SEQ].shape[0]
    seen = {}
    for path in ("_run_packed", "_run_encoders"):  # packed: [k, d] shared; full width: [B, k, d]
        orig = getattr(model, path)

        def spy(inputs, keep, centres, *rest, _orig=orig, _path=path):
            seen[_path] = dict(centres)
            return _orig(inputs, keep, centres, *rest)

        setattr(model, path, spy)
    model.train()
    for trim in (True, False):
        model.trim_padding = trim
        with torch.no_grad():
            model.calculate_loss(batch)
    assert set(seen["_run_packed"]) == set(seen["_run_encoders"]) == {"image", "text"}
    for z in seen["_run_packed"].values():
        assert z.shape == (model.means_k, model.hidden_size)
        assert (z == 0).any()  # dropout did act
    for z in seen["_run_encoders"].values():
        assert z.shape == (B, model.means_k, model.hidden_size) and B > 1
        assert (z == 0).any()
        torch.testing.assert_close(z, z[:1].expand_as(z), rtol=0, atol=0)
