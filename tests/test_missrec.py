"""MISSRec (spec shared/papers/MISSRec.md): parameter counts, PEFT, fusion identities, interest
discovery, losses, augmentation, variants, multi-domain pre-training -> fine-tuning end to end."""
import math
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model.missrec import (MISSRec, dedup_interest_ids, dpc_knn, dynamic_fusion,
                                      item_drop)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# spec sec. 7.5 / 11.1 decomposition at D = 300, inner 256, 4 heads, 1 + 1 layers, L = 50
SCRATCH_INDUCTIVE = 1_719_513
PEFT_INDUCTIVE = 308_401


def _build(make_data, **overrides):
    cfg = {"train_stage": "inductive_ft", "train_batch_size": 64, **overrides}
    config, train, valid, test = make_data("MISSRec", **cfg)
    torch.manual_seed(0)
    return config, MISSRec(config, train._dataset), train, valid, test


def _n_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    """Tiny data with 512-d text and image features (CLIP-sized adapters)."""
    from recbole_mm.data.sample import write_sample

    root = tmp_path_factory.mktemp("clip")
    write_sample(str(root / "mm_sample"), n_users=60, n_items=40, n_clusters=4, text_dim=512,
                 image_dim=512, min_len=4, max_len=8, seed=3)
    return str(root)


def _paper_size(**kw):
    return dict(hidden_size=300, inner_size=256, n_heads=4, n_enc_layers=1, n_dec_layers=1,
                MAX_ITEM_LIST_LENGTH=50, **kw)


# ------------------------------------------------------------------ parameter counts / PEFT
def test_formula_reproduces_spec_numbers():
    # Scientific in the official runs has 4,386 ID rows (incl. pad)
    assert SCRATCH_INDUCTIVE + 4386 * 300 == 3_035_313
    assert PEFT_INDUCTIVE + 4386 * 300 == 1_624_201
    assert 2 * (512 * 300 + 300) + 600 + 1 == PEFT_INDUCTIVE


@pytest.mark.parametrize("stage", ["inductive_ft", "transductive_ft"])
def test_parameter_counts_match_spec(stage, make_data, clip_root):
    config, model, *_ = _build(make_data, data_path=clip_root, train_stage=stage, **_paper_size())
    ids = model.n_items * 300 if stage == "transductive_ft" else 0
    assert _n_params(model) == SCRATCH_INDUCTIVE + ids
    trainable = model.freeze_for_peft()
    assert _n_params(model, trainable_only=True) == PEFT_INDUCTIVE + ids
    expected = {"adapters", "fusion_factor", "LayerNorm"} | ({"item_embedding"} if ids else set())
    assert {n.split(".")[0] for n in trainable} == expected
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"position_embedding", "encoder", "decoder"}


def test_peft_after_loading_pretrained_checkpoint(make_data, tmp_path):
    from recbole_mm.compat import atomic_torch_save
    from recbole_mm.trainer.missrec import MISSRecTrainer

    _, pre, *_ = _build(make_data, train_stage="pretrain")
    with torch.no_grad():
        for p in pre.parameters():
            p.add_(0.01)
    pre.discover_interests()
    path = str(tmp_path / "pre.pth")
    atomic_torch_save({"state_dict": pre.state_dict()}, path)
    config, model, *_ = _build(make_data, train_stage="transductive_ft", pretrained_path=path)
    before_ids = model.item_embedding.weight.detach().clone()
    trainer = MISSRecTrainer(config, model)
    for key, value in pre.state_dict().items():
        if key.startswith(("adapters.", "encoder.", "decoder.", "position_embedding.", "LayerNorm.")):
            assert torch.equal(model.state_dict()[key], value), key
    # item-count shaped state is never transferred
    assert torch.equal(model.item_embedding.weight, before_ids)
    assert int(model.interest_round) == -1
    grads = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in grads} == {"adapters", "fusion_factor", "LayerNorm",
                                                  "item_embedding"}
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    # peft: false keeps everything trainable
    config2, model2, *_ = _build(make_data, train_stage="inductive_ft", pretrained_path=path, peft=False)
    MISSRecTrainer(config2, model2)
    assert all(p.requires_grad for p in model2.parameters())


def test_pretrained_shape_mismatch_is_clear(make_data, tmp_path):
    _, pre, *_ = _build(make_data, train_stage="pretrain", hidden_size=24, inner_size=24)
    _, model, *_ = _build(make_data)
    with pytest.raises(ValueError, match="hidden_size"):
        model.load_pretrained(pre.state_dict())


# ------------------------------------------------------------------ dynamic fusion
def test_fusion_identities():
    torch.manual_seed(0)
    s_t, s_v = torch.rand(5, 7) * 2 - 1, torch.rand(5, 7) * 2 - 1
    assert torch.allclose(dynamic_fusion([s_t, s_v], torch.tensor(0.0)), (s_t + s_v) / 2)
    assert torch.allclose(dynamic_fusion([s_t, s_v], torch.tensor(1e4)), torch.maximum(s_t, s_v),
                          atol=1e-4)
    assert torch.allclose(dynamic_fusion([s_t, s_v], torch.tensor(3.0), "static"), (s_t + s_v) / 2)
    # the general softmax form agrees with the sigmoid form for two modalities
    a = torch.tensor(2.5)
    s = torch.stack([s_t, s_v], -1)
    assert torch.allclose(dynamic_fusion([s_t, s_v], a), (s * torch.softmax(a * s, -1)).sum(-1), atol=1e-6)


@pytest.mark.parametrize("stage,fusion", [("inductive_ft", "dynamic_shared"),
                                          ("transductive_ft", "dynamic_shared"),
                                          ("inductive_ft", "dynamic_instance")])
def test_full_ranking_equals_bruteforce_loop(stage, fusion, make_data):
    _, model, *_ = _build(make_data, train_stage=stage, item_mm_fusion=fusion)
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        model.fusion_factor.copy_(torch.rand_like(model.fusion_factor) * 4 - 1)
        u = F.normalize(torch.randn(3, model.hidden_size), dim=-1)
        tables = model.item_tables()
        fast = model.score_all(u, tables)
        assert fast.shape == (3, model.n_items)
        for b in range(3):
            for k in range(model.n_items):
                x = [F.normalize(tables[r][k], dim=0) for r in model.roles]
                a = model.fusion_factor if model.fusion_factor.dim() == 0 else model.fusion_factor[k]
                w = torch.softmax(a * torch.stack([u[b] @ xi for xi in x]), 0)
                v = w[0] * x[0] + w[1] * x[1]  # the user-adaptive item vector v_k (paper Eq. 2)
                score = u[b] @ v
                if stage == "transductive_ft":
                    score = (u[b] @ F.normalize(model.item_embedding.weight[k], dim=0) + 2 * score) / 3
                assert abs(float(fast[b, k]) - float(score)) < 1e-5
        items = torch.randint(1, model.n_items, (3,))
        assert torch.allclose(model.score_items(u, items, tables), fast[torch.arange(3), items], atol=1e-6)


def test_full_sort_predict_and_loss_use_tau(make_data):
    config, model, train, *_ = _build(make_data, gamma=0.0)
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        logits = model.full_sort_predict(batch)
        assert logits.shape == (len(batch), model.n_items)
        u = model.forward(batch["item_id_list"], batch["item_length"])
        assert torch.allclose(logits, model.score_all(u, model.item_tables()) / 0.07, atol=1e-4)
        # fine-tuning loss = CE over all items (pad column included) of the same logits
        ce = model.calculate_loss(batch)
        assert torch.allclose(ce, F.cross_entropy(logits, batch["item_id"]), atol=1e-5)
        pred = model.predict(batch)
        assert torch.allclose(pred, logits[torch.arange(len(batch)), batch["item_id"]], atol=1e-4)


# ------------------------------------------------------------------ interests
def test_dedup_interest_ids():
    ids = torch.tensor([[3, 1, 3, 0, 0, 2], [5, 5, 5, 0, 0, 0], [1, 2, 4, 4, 2, 7]])
    out = dedup_interest_ids(ids)
    assert out.shape == (3, 4)
    for row_in, row_out in zip(ids, out):
        distinct = set(row_in.tolist()) - {0}
        assert int((row_out != 0).sum()) == len(distinct)
        assert set(row_out.tolist()) - {0} == distinct
        n = len(distinct)
        assert (row_out[:n] != 0).all() and (row_out[n:] == 0).all()


def test_discover_interests_buffers(make_data):
    _, model, *_ = _build(make_data, interest_ratio=0.3)
    n = model.n_items - 1
    assert model.n_interests == math.ceil(0.3 * 2 * n)
    info = model.discover_interests()
    assert info["K"] == model.n_interests and info["round"] == 0
    for r in ("text", "image"):
        table = getattr(model, f"{r}_interest")
        assert table[0] == 0 and table[1:].min() >= 1 and table[1:].max() <= model.n_interests
    c = model.interest_centroids
    assert not c.requires_grad and torch.all(c[0] == 0)
    with torch.no_grad():
        x = torch.cat([model.item_tables()[r][1:] for r in model.roles])
    assign = torch.cat([model.text_interest[1:], model.image_interest[1:]])
    for k in assign.unique()[:10]:
        assert torch.allclose(c[k], x[assign == k].mean(0), atol=1e-5)
    keys = model.state_dict().keys()
    assert {"text_interest", "image_interest", "interest_centroids", "interest_round"} <= set(keys)
    assert not any(k.startswith("feat_") for k in keys)  # features are non-persistent


def test_interest_tokens_count_and_permutation_invariance(make_data):
    _, model, train, *_ = _build(make_data)
    model.discover_interests()
    model.eval()
    batch = next(iter(train))
    seq, length = batch["item_id_list"], batch["item_length"]
    ids = model.interest_ids(seq)
    for b in range(8):
        items = seq[b][seq[b] != 0]
        want = set(model.text_interest[items].tolist()) | set(model.image_interest[items].tolist())
        assert int((ids[b] != 0).sum()) == len(want)
    with torch.no_grad():
        u = model.forward(seq, length)
        original = model.interest_ids
        model.interest_ids = lambda s: original(s).flip(1)  # pads first, order reversed
        u_perm = model.forward(seq, length)
        model.interest_ids = lambda s: torch.cat([original(s), torch.zeros_like(original(s))], 1)
        u_pad = model.forward(seq, length)
    assert torch.allclose(u, u_perm, atol=1e-5)
    assert torch.allclose(u, u_pad, atol=1e-5)  # padded interests are masked in the encoder
    assert torch.allclose(u.norm(dim=-1), torch.ones(len(u)), atol=1e-5)


def test_readout_is_last_item_and_non_causal(make_data):
    _, model, train, *_ = _build(make_data, train_stage="transductive_ft")
    model.eval()
    batch = next(iter(train))
    seq, length = batch["item_id_list"].clone(), batch["item_length"]
    b = int(torch.argmax(length))
    assert length[b] >= 3
    with torch.no_grad():
        u = model.forward(seq, length)
        seq2 = seq.clone()
        seq2[b, 0] = 1 + (seq[b, 0] % (model.n_items - 1))  # change the first item only
        u2 = model.forward(seq2, length)
        # dropping the last item changes the readout position
        u3 = model.forward(seq, length - (torch.arange(len(length)) == b).long())
    assert not torch.allclose(u[b], u2[b])  # bidirectional decoder sees every item
    others = torch.arange(len(u)) != b
    assert torch.allclose(u[others], u2[others], atol=1e-6)
    assert not torch.allclose(u[b], u3[b])


def test_interests_rebuilt_every_epoch_and_saved_with_best(make_data):
    from recbole_mm.compat import load_checkpoint
    from recbole_mm.trainer.missrec import MISSRecTrainer

    config, model, train, valid, test = _build(make_data, epochs=2, learning_rate=0.01,
                                             train_batch_size=256)
    trainer = MISSRecTrainer(config, model)
    seen = []
    original = model.discover_interests

    def spy(*a, **k):
        out = original(*a, **k)
        seen.append((out["round"], model.text_interest.clone()))
        return out

    model.discover_interests = spy
    trainer.fit(train, valid, saved=True)
    assert [r for r, _ in seen] == [0, 1]
    ckpt = load_checkpoint(trainer.saved_model_file)
    state = ckpt["state_dict"]
    best_round = int(state["interest_round"])
    assert torch.equal(state["text_interest"], seen[best_round][1])
    _, fresh, *_ = _build(make_data)
    fresh.load_state_dict(state)
    fresh.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        fresh.full_sort_predict(batch)
    assert int(fresh.interest_round) == best_round  # restored, not re-discovered
    assert torch.equal(fresh.interest_centroids, state["interest_centroids"])


def test_dpc_knn_finds_separated_groups():
    torch.manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.3 * torch.randn(20, 2) for c in centers])
    assign = dpc_knn(x, 3, 5, chunk=16)
    groups = [set(assign[i * 20:(i + 1) * 20].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3


# ------------------------------------------------------------------ pre-training losses
def test_item_drop():
    torch.manual_seed(0)
    seq = torch.tensor([[5, 6, 7, 8, 9, 0], [3, 4, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])
    length = torch.tensor([5, 2, 6])
    same, same_len = item_drop(seq, length, 0.0)
    assert torch.equal(same, seq) and torch.equal(same_len, length)
    only_first, n1 = item_drop(seq, length, 1.0)
    assert n1.tolist() == [1, 1, 1] and only_first[:, 0].tolist() == [5, 3, 1]
    assert (only_first[:, 1:] == 0).all()
    for _ in range(20):
        new, n = item_drop(seq, length, 0.5)
        for b in range(3):
            kept = new[b, :n[b]].tolist()
            assert kept[0] == int(seq[b, 0]) and (new[b, n[b]:] == 0).all()
            orig = seq[b, :length[b]].tolist()
            pos = [orig.index(i) for i in kept]
            assert pos == sorted(pos)  # order preserved


def test_pretrain_loss_reduces_to_in_batch_seq_item(make_data):
    _, model, train, *_ = _build(make_data, train_stage="pretrain", **{"lambda": 0.0, "gamma": 0.0})
    assert not hasattr(model, "item_embedding") and model.n_interests == math.ceil(0.02 * 2 * (model.n_items - 1))
    model.eval()
    batch = next(iter(train))
    with torch.no_grad():
        (loss,) = model.calculate_loss(batch)
        u = model.forward(batch["item_id_list"], batch["item_length"])
        tgt = batch["item_id"]
        xt = F.normalize(model.adapters["text"](model.feat_text[tgt]), dim=-1)
        xv = F.normalize(model.adapters["image"](model.feat_image[tgt]), dim=-1)
        fused = ((u @ xt.T) + (u @ xv.T)) / 2  # alpha = 0 at init
        want = F.cross_entropy(fused / 0.07, torch.arange(len(tgt)))
    assert torch.allclose(loss, want, atol=1e-5)


def test_pretrain_loss_terms(make_data):
    _, model, train, *_ = _build(make_data, train_stage="pretrain")
    batch = next(iter(train))
    losses = model.calculate_loss(batch)
    assert len(losses) == 3 and all(torch.isfinite(l) for l in losses)
    sum(losses).backward()
    assert model.adapters["text"].net.weight.grad is not None
    assert model.encoder.layers[0].linear1.weight.grad is not None


def test_orth_reg_code_form(make_data):
    _, model, *_ = _build(make_data)
    torch.manual_seed(0)
    h = torch.randn(4, 5, model.hidden_size)
    mask = torch.tensor([[False] * 5, [False, False, True, True, True], [False] + [True] * 4,
                         [False] * 3 + [True] * 2])
    want = 0.0
    for b in range(4):
        n = int((~mask[b]).sum())
        want += float(((n / 5) * h[b].sum(0)).pow(2).sum()) / model.hidden_size
    assert abs(float(model.orth_reg(h, mask)) - want) < 1e-3
    model.orth_reg_form = "paper"
    paper = np.mean([float(h[b][~mask[b]].mean(0).pow(2).sum()) for b in range(4)])
    assert abs(float(model.orth_reg(h, mask)) - paper) < 1e-4


# ------------------------------------------------------------------ variants and errors
@pytest.mark.parametrize("overrides", [
    {"train_stage": "transductive_ft"},
    {"modal_type": "text"},
    {"modal_type": "image", "train_stage": "transductive_ft"},
    {"missrec_arch": "paper_v1", "seq_mm_fusion": "contextual"},
    {"seq_mm_fusion": "contextual"},
    {"missrec_arch": "context_encoder"},
    {"missrec_arch": "interest_encoder", "item_mm_fusion": "static"},
    {"interest_cluster": "dpc_knn"},
])
def test_variants_train_and_rank(overrides, make_data):
    _, model, train, *_ = _build(make_data, **overrides)
    batch = next(iter(train))
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert model.full_sort_predict(batch).shape == (len(batch), model.n_items)
    if overrides.get("modal_type") == "text":
        assert list(model.adapters) == ["text"] and not hasattr(model, "image_interest")
        assert model.n_interests == math.ceil(0.5 * (model.n_items - 1))
    if overrides.get("missrec_arch") == "context_encoder":
        assert model.decoder is None and len(model.encoder.layers) == 2


def test_without_adapters_width_is_feature_dim(make_data, clip_root):
    _, model, train, *_ = _build(make_data, data_path=clip_root, use_adapter=False)
    assert model.hidden_size == 512
    assert all(isinstance(a, torch.nn.Identity) for a in model.adapters.values())
    assert model.calculate_loss(next(iter(train))) is not None


def test_bad_settings_are_rejected(make_data):
    with pytest.raises(ValueError, match="train_stage"):
        _build(make_data, train_stage="finetune")
    with pytest.raises(ValueError, match="missrec_arch"):
        _build(make_data, missrec_arch="v3")
    with pytest.raises(ValueError, match="dynamic_instance"):
        _build(make_data, train_stage="pretrain", item_mm_fusion="dynamic_instance")
    with pytest.raises(Exception, match="modalities"):
        _build(make_data, image_modality="audio")


# ------------------------------------------------------------------ multi-domain pre-training
def _write_domain(root, name, seed, n_items):
    from recbole_mm.data.sample import write_sample

    write_sample(str(root / name), name, n_users=60, n_items=n_items, n_clusters=4, text_dim=16,
                 image_dim=12, min_len=4, max_len=8, seed=seed)
    return {"modalities": {"text": {"file": f"{name}.text.npy"}, "image": {"file": f"{name}.image.npy"}},
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]}}


def test_multi_domain_corpus_prefixes_tokens_and_aligns_features(tmp_path, make_data):
    from recbole_mm.config import MMConfig
    from recbole_mm.data.dataset import MMSequentialDataset
    from recbole_mm.data.pretrain import MultiDomainDataset

    domains = {"src_a": _write_domain(tmp_path, "src_a", 1, 30),
               "src_c": _write_domain(tmp_path, "src_c", 2, 25)}
    base = {"data_path": str(tmp_path), "state": "WARNING", "train_stage": "pretrain"}
    cfg = MMConfig("MISSRec", "src_a", config_dict={**base, "pretrain_datasets": domains})
    merged = MultiDomainDataset(cfg)
    single = MMSequentialDataset(MMConfig("MISSRec", "src_c", config_dict={**base, **domains["src_c"]}))
    tokens = merged.field2id_token["item_id"][1:]
    a_items = MMSequentialDataset(MMConfig("MISSRec", "src_a", config_dict={**base, **domains["src_a"]})).item_num
    assert merged.item_num - 1 == (a_items - 1) + (single.item_num - 1)
    assert all(t.split("-", 1)[0] in ("0", "1") for t in tokens)
    users = merged.field2id_token["user_id"][1:]
    assert len(users) == 120 and all(u.startswith(("0-", "1-")) for u in users)
    tok2id = single.field2token_id["item_id"]
    for i, tok in enumerate(tokens[:60], start=1):
        if tok.startswith("1-"):
            j = tok2id[tok[2:]]
            assert torch.equal(merged.modality_features["text"][i], single.modality_features["text"][j])
            assert torch.equal(merged.modality_features["image"][i], single.modality_features["image"][j])
    assert merged.inter_num == single.inter_num + MMSequentialDataset(
        MMConfig("MISSRec", "src_a", config_dict={**base, **domains["src_a"]})).inter_num


def _n_items(root, name):
    lines = (root / name / f"{name}.inter").read_text().splitlines()[1:]
    return len({line.split("\t")[1] for line in lines})


def _cli(args, monkeypatch):
    """``python run_recbole_mm.py <args>``, run in this process (same argv path, no re-import)."""
    if ROOT not in sys.path:
        monkeypatch.syspath_prepend(ROOT)
    import run_recbole_mm

    monkeypatch.setattr(sys, "argv", ["run_recbole_mm.py", *args])
    return run_recbole_mm.main(args)


def test_pretrain_then_finetune_on_new_item_set_via_cli(tmp_path, monkeypatch, caplog):
    import logging

    import yaml

    from recbole_mm.compat import load_checkpoint

    domains = {"src_a": _write_domain(tmp_path, "src_a", 1, 30),
               "src_c": _write_domain(tmp_path, "src_c", 2, 25)}
    target = _write_domain(tmp_path, "tgt_b", 5, 60)
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump({"pretrain_datasets": domains}))
    (tmp_path / "target.yaml").write_text(yaml.safe_dump(target))
    common = [f"--data_path={tmp_path}", "--topk=[10]", "--hidden_size=16", "--inner_size=16", "--n_heads=2",
              f"--checkpoint_dir={tmp_path / 'saved'}", "--train_batch_size=64"]
    caplog.set_level(logging.INFO)
    assert _cli(["--model=MISSRec", "--dataset=src_a", "--train_stage=pretrain", "--epochs=2",
                 f"--config_files={tmp_path / 'pretrain.yaml'}", *common], monkeypatch) == 0
    pre_path = tmp_path / "saved" / "MISSRec-src_a+src_c-2.pth"
    assert pre_path.is_file()
    pre = load_checkpoint(str(pre_path))["state_dict"]
    assert "item_embedding.weight" not in pre
    assert pre["text_interest"].shape[0] == sum(_n_items(tmp_path, n) for n in domains) + 1

    caplog.clear()
    assert _cli(["--model=MISSRec", "--dataset=tgt_b", "--train_stage=transductive_ft", "--epochs=1",
                 f"--pretrained_path={pre_path}", f"--config_files={tmp_path / 'target.yaml'}", *common],
                monkeypatch) == 0
    out = caplog.text
    assert "test result table" in out and "ndcg@10" in out
    ft = [p for p in (tmp_path / "saved").glob("MISSRec-*.pth") if p != pre_path
          and "src_a" not in p.name and not p.name.endswith(".resume.pth")]  # nor training states
    assert len(ft) == 1
    state = load_checkpoint(str(ft[0]))["state_dict"]
    n_items = _n_items(tmp_path, "tgt_b") + 1
    assert state["item_embedding.weight"].shape[0] == n_items  # the target's own item set
    for key in ("encoder.layers.0.linear1.weight", "decoder.layers.0.multihead_attn.in_proj_weight",
                "position_embedding.weight"):
        assert torch.equal(state[key], pre[key]), key  # frozen trunk (PEFT)
    assert not torch.equal(state["adapters.text.net.weight"], pre["adapters.text.net.weight"])
    d = 16
    peft = 16 * d + d + 12 * d + d + 2 * d + 1 + n_items * d
    assert f"{peft:,} of" in out


def test_scientific_mm_sizes_and_parameter_count(make_config):
    """Real data (skips without ../shared/data): DeCoRec's Scientific with CLIP features."""
    from conftest import shared_data
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    shared_data("amazon2018_scientific_mm")
    config = make_config("MISSRec", "scientific_mm", train_stage="inductive_ft", **_paper_size())
    train, valid, test = data_preparation(config, create_dataset(config))
    ds = train._dataset
    assert (ds.item_num, ds.user_num, len(ds.inter_feat)) == (1586, 2929, 10928)
    assert len(valid._dataset.inter_feat) == len(test._dataset.inter_feat) == 2928
    model = MISSRec(config, ds)
    assert _n_params(model) == SCRATCH_INDUCTIVE
    assert model.n_interests == 1585  # ceil(0.5 * 2 * 1585)
    assert model.feat_text.shape == model.feat_image.shape == (1586, 512)
    assert torch.all(model.feat_text[0] == 0) and bool(model.present_image[1:].all())
