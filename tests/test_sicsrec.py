"""SICSRec (spec shared/papers/SICSRec.md §10): shapes, LoRA, freezing, causality, ConCL,
scoring, ablation flags, Table 9 strategies and the two-step CLI run on the tiny sample."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from recbole_mm.model.layers import LoRALinear

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"hidden_size": 16, "inner_size": 16, "n_layers": 2, "n_heads": 2, "train_batch_size": 64}


def _build(make_data, **over):
    from recbole_mm.model.sicsrec import SICSRec

    cfg = dict(SMALL)
    cfg.update(over)
    config, train, valid, test = make_data("SICSRec", **cfg)
    torch.manual_seed(0)
    model = SICSRec(config, train._dataset)
    batch = next(iter(train))
    return config, model, train, valid, batch


def _seq(batch):
    return batch["item_id_list"], batch["item_length"]


def test_shapes_norms_and_loss(make_data):
    config, model, train, valid, batch = _build(make_data)
    model.eval()
    out = model.encode(*_seq(batch), full=True)
    B, d = batch["item_id_list"].shape[0], config["hidden_size"]
    for k in ("h_e", "h_content", "h_m", "h"):
        assert out[k].shape == (B, d), k
    assert torch.allclose(out["h"].norm(dim=-1), torch.ones(B), atol=1e-5)
    scores = model.full_sort_predict(batch)
    assert scores.shape == (B, model.n_items)
    model.train()
    loss = model.calculate_loss(batch)
    assert isinstance(loss, tuple) and len(loss) == 3  # CE, alpha*ConCL, lambda*reg
    total = sum(loss)
    assert torch.isfinite(total)


def test_unified_content_vectors_are_unit_norm_and_separate_removes_fusion(make_data):
    config, model, *_ , batch = _build(make_data)
    vecs = model.content_vectors(batch["item_id_list"])
    assert torch.allclose(vecs["content"].norm(dim=-1), torch.ones(vecs["content"].shape[:2]), atol=1e-5)
    # the fused vector is exactly L2norm(A_t(E_text) + A_g(E_ima)) of each item
    ids = batch["item_id_list"][0]
    ref = F.normalize(model.text_adapter(model.text_embedding.weight[ids])
                      + model.image_adapter(model.image_embedding.weight[ids]), dim=-1)
    assert torch.allclose(vecs["content"][0], ref, atol=1e-6)

    _, sep, *_, batch = _build(make_data, content_fusion="separate")
    names = {n for n, _ in sep.named_parameters()}
    assert not any(n.startswith("content_") for n in names)
    assert any(n.startswith("text_encoder") for n in names) and any(n.startswith("image_encoder") for n in names)
    assert sep.aggregation.in_features == 4 * 16  # [h_e; h_t; h_g; h_m]
    sep.eval()
    out = sep.encode(*_seq(batch))
    assert "H_content" not in out and "h_text" in out and "h_image" in out
    # the text stream sees the raw (unnormalised) adapter output: scaling it changes X_t before LN
    calls = []
    orig = F.normalize

    def spy(x, *a, **k):
        calls.append(x.shape)
        return orig(x, *a, **k)

    F.normalize = spy
    try:
        sep.encode_content(batch["item_id_list"], sep.get_attention_mask(batch["item_id_list"]),
                           sep._positions(batch["item_id_list"]))
    finally:
        F.normalize = orig
    # one normalise for the (ConCL) fused vector of distinct items, none on the stream inputs
    assert all(len(s) == 2 for s in calls)


def _sasrec_and_sicsrec(make_data, **over):
    from recbole.model.sequential_recommender import SASRec

    from recbole_mm.model.sicsrec import SICSRec

    cfg = dict(SMALL, hidden_dropout_prob=0.0, attn_dropout_prob=0.0)
    cfg.update(over)
    config, train, valid, test = make_data("SICSRec", **cfg)
    torch.manual_seed(1)
    sas = SASRec(config, train._dataset)
    torch.manual_seed(2)
    sics = SICSRec(config, train._dataset)
    return sas, sics, next(iter(train))


@pytest.mark.parametrize("mode", ["weight", "activation"])
def test_sasrec_checkpoint_loads_and_lora_starts_as_identity(make_data, mode):
    sas, sics, batch = _sasrec_and_sicsrec(make_data, lora_mode=mode)
    res = sics.load_state_dict(sas.state_dict(), strict=False)
    assert res.unexpected_keys == []
    groups = {sics.group_of(k) for k in res.missing_keys}
    assert groups <= {"lora", "content_tables", "content_adapters", "content_encoder", "fusion"}, groups
    assert "lora" in groups  # adapters are new in step 2; train_step is a buffer of SICSRec only
    for k, v in sas.state_dict().items():
        assert torch.equal(sics.state_dict()[k], v), k  # bit-identical after loading
    sas.eval(), sics.eval()
    seq, length = _seq(batch)
    ref = sas.forward(seq, length)
    sics.set_step(1)
    assert torch.allclose(sics.forward(seq, length), ref, atol=1e-6)
    sics.set_step(2)  # LoRA active, B = 0 -> identity
    assert torch.allclose(sics.encode(seq, length)["h_e"], ref, atol=1e-6)
    # a non-zero B changes the ID encoder's output
    with torch.no_grad():
        for n, p in sics.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    assert not torch.allclose(sics.encode(seq, length)["h_e"], ref, atol=1e-4)


def test_lora_linear_keeps_w0_frozen_and_starts_as_identity():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    lora = LoRALinear.from_linear(base, rank=2)
    x = torch.randn(5, 8)
    assert torch.equal(lora(x), base(x))
    assert not lora.weight.requires_grad and not lora.bias.requires_grad
    assert lora.lora_A.requires_grad and lora.lora_B.requires_grad
    assert torch.count_nonzero(lora.lora_B) == 0 and lora.lora_A.shape == (2, 8)
    opt = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.5)
    w0 = lora.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        lora(x).pow(2).sum().backward()
        opt.step()
    assert torch.equal(lora.weight, w0)
    assert torch.allclose(lora(x), x @ (w0 + lora.delta_weight()).t() + lora.bias, atol=1e-5)
    assert torch.linalg.matrix_rank(lora.delta_weight()) <= 2


@pytest.mark.parametrize("mode,targets", [("weight", ["attn", "ffn"]), ("activation", ["attn"]),
                                          ("activation", ["attn", "ffn"])])
def test_step2_freezing_and_gradients(make_data, mode, targets):
    _, model, _, _, batch = _build(make_data, lora_mode=mode, lora_targets=targets)
    model.train()
    sum(model.calculate_loss(batch)).backward()
    grads = dict(model.named_parameters())
    for n, p in grads.items():
        if n.startswith("trm_encoder") and "lora_" not in n:
            assert not p.requires_grad and p.grad is None, n
    lora = [n for n in grads if "lora_B" in n]
    assert lora
    if mode == "activation":
        assert any(n.startswith("lora_attn") for n in lora)
        assert any(n.startswith("lora_ffn") for n in lora) == ("ffn" in targets)
    for n in lora:
        assert grads[n].grad is not None and grads[n].grad.abs().sum() > 0, n
    for prefix in ("item_embedding", "position_embedding", "text_embedding", "image_embedding",
                   "content_encoder", "decoder", "aggregation", "text_adapter", "image_adapter"):
        ps = [p for n, p in grads.items() if n.startswith(prefix)]
        assert ps and any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps), prefix


def test_causality_and_padding(make_data):
    _, model, *_, batch = _build(make_data)
    model.eval()
    seq, length = _seq(batch)
    row = int(torch.argmax(length))
    L = int(length[row])
    assert L >= 3
    t = L - 2
    a = model.encode(seq[row:row + 1], length[row:row + 1], full=True)
    seq2 = seq[row:row + 1].clone()
    seq2[0, t + 1] = (seq2[0, t + 1] % (model.n_items - 1)) + 1
    b = model.encode(seq2, length[row:row + 1], full=True)
    for k in ("H_e", "H_content", "H_m"):
        assert torch.allclose(a[k][0, : t + 1], b[k][0, : t + 1], atol=1e-5), k
        assert not torch.allclose(a[k][0, t + 1], b[k][0, t + 1], atol=1e-5), k
    # padding columns never change the gathered vectors (trimmed vs full width)
    full = model.encode(seq, length)["h"]
    assert seq.shape[1] > int(length.max())
    trimmed = seq[:, : int(length.max())]
    assert torch.allclose(model.encode(trimmed, length)["h"], full, atol=1e-5)


def _concl_reference(user, keys, targets, tau, mode):
    n = user.shape[0]
    total = 0.0
    for b in range(n):
        terms = []
        for j in range(n):
            s = float(user[b] @ keys[j]) / tau
            if j != b and targets[j] == targets[b]:
                if mode == "exclude":
                    continue
                s = 0.0
            terms.append(s)
        pos = float(user[b] @ keys[b]) / tau
        total += -pos + float(torch.logsumexp(torch.tensor(terms, dtype=torch.float64), 0))
    return total / n


@pytest.mark.parametrize("mode", ["exclude", "zero_logit"])
def test_concl_matches_reference(mode):
    from recbole_mm.model.sicsrec import content_contrastive_loss

    torch.manual_seed(0)
    u = F.normalize(torch.randn(6, 8), dim=-1)
    k = F.normalize(torch.randn(6, 8), dim=-1)
    y = torch.tensor([3, 5, 3, 7, 5, 9])
    got = content_contrastive_loss(u, k, y, 0.05, mode)
    assert float(got) == pytest.approx(_concl_reference(u, k, y, 0.05, mode), rel=1e-4)
    same = torch.full((6,), 4)
    k_same = k[:1].expand(6, -1)
    assert float(content_contrastive_loss(u, k_same, same, 0.05, "exclude")) == pytest.approx(0.0, abs=1e-5)
    assert float(content_contrastive_loss(u, k_same, same, 0.05, "zero_logit")) > 0.1
    # tau is a real parameter
    assert float(content_contrastive_loss(u, k, y, 0.5, mode)) != pytest.approx(float(got))


def test_temperature_from_config(make_data):
    _, model, *_ = _build(make_data, temperature=0.3)
    assert model.temperature == 0.3


def test_scoring_mode_and_full_sort_column0(make_data):
    from recbole_mm.trainer.sicsrec import SICSRecTrainer

    config, model, train, valid, batch = _build(make_data)
    model.eval()
    h = model.forward(*_seq(batch))
    assert torch.allclose(model.full_sort_predict(batch), h @ model.item_embedding.weight.t(), atol=1e-6)
    model.predict_item_norm = True
    assert torch.allclose(model.full_sort_predict(batch),
                          h @ F.normalize(model.item_embedding.weight, dim=-1).t(), atol=1e-6)
    trainer = SICSRecTrainer(config, model)
    trainer.tot_item_num = model.n_items
    trainer.item_tensor = valid._dataset.get_item_feature()
    interaction, idx, pu, pi = next(iter(valid))
    _, scores, *_ = trainer._full_sort_batch_eval((interaction, idx, pu, pi))
    assert torch.isinf(scores[:, 0]).all() and (scores[:, 0] < 0).all()


ABLATIONS = [
    ({"use_imse": False}, "trm_encoder", ("h_e", "h_content", "h_m")),
    ({"use_cmse": False}, "content_encoder", ("h_e", "h_content", "h_m")),
    ({"use_mmsd": False}, "decoder", ("h_e", "h_content")),
    ({"lora_mode": "none"}, "lora_", ("h_e", "h_content", "h_m")),
    ({"input_modalities": ["id", "text"]}, "image_", ("h_e", "h_content", "h_m")),
    ({"input_modalities": ["text", "image"]}, "item_embedding", ("h_content",)),
]


@pytest.mark.parametrize("over,gone,keys", ABLATIONS)
def test_ablation_flags_remove_their_component(make_data, over, gone, keys):
    _, model, *_, batch = _build(make_data, **over)
    names = [n for n, _ in model.named_parameters()]
    assert not any(gone in n for n in names), gone
    model.eval()
    out = model.encode(*_seq(batch))
    for k in keys:
        assert k in out
    assert "h_m" not in out or "h_m" in keys
    B = batch["item_id_list"].shape[0]
    assert out["h"].shape == (B, 16)
    assert model.full_sort_predict(batch).shape == (B, model.n_items)
    model.train()
    loss = model.calculate_loss(batch)
    assert torch.isfinite(sum(loss) if isinstance(loss, tuple) else loss)
    if over.get("use_mmsd") is False:
        assert model.aggregation.in_features == 2 * 16


def test_alpha_zero_drops_concl(make_data):
    _, model, *_, batch = _build(make_data, alpha=0.0)
    assert len(model.calculate_loss(batch)) == 2  # CE + regulariser only


@pytest.mark.parametrize("strategy,branch,frozen", [
    ("fixed_id_enc", "id", {"id_encoder"}),
    ("fixed_id_emb", "id", {"id_embedding"}),
    ("fixed_id_emb_enc", "id", {"id_embedding", "id_encoder"}),
    ("fixed_con_enc", "content", {"content_encoder"}),
    ("fixed_con_emb", "content", {"content_tables", "content_adapters"}),
    ("end2end", "none", set()),
])
def test_training_strategies(make_data, strategy, branch, frozen):
    _, model, *_, batch = _build(make_data, training_strategy=strategy)
    assert model.pretrain_branch == branch
    got = {model.group_of(n) for n, p in model.named_parameters() if not p.requires_grad}
    assert got == frozen
    assert model.has_lora == ("id_encoder" in frozen)
    if branch != "none":
        model.set_step(1)
        trainable = {model.group_of(n) for n, p in model.named_parameters() if p.requires_grad}
        want = ({"id_embedding", "id_encoder", "shared"} if branch == "id"
                else {"content_tables", "content_adapters", "content_encoder", "shared"})
        assert trainable == want
        loss = model.calculate_loss(batch)
        assert torch.is_tensor(loss) and torch.isfinite(loss)
    else:
        with pytest.raises(ValueError, match="no step 1"):
            model.set_step(1)


def test_bad_flags_and_missing_modality(make_data):
    from recbole_mm.data.features import FeatureFileError

    with pytest.raises(ValueError, match="freeze may list"):
        _build(make_data, freeze=["everything"])
    with pytest.raises(ValueError, match="lora_mode"):
        _build(make_data, lora_mode="bogus")
    with pytest.raises(FeatureFileError, match="SICSRec needs modalities"):
        _build(make_data, text_feature="audio")


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_recbole_mm.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_step_cli_end_to_end(tiny_root, tmp_path):
    saved = tmp_path / "saved"
    res = _cli(["--model=SICSRec", "--dataset=mm_sample", f"--data_path={tiny_root}", "--epochs=2",
                "--hidden_size=16", "--inner_size=16", "--n_layers=1", "--train_batch_size=256",
                f"--checkpoint_dir={saved}", "--state=INFO"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "SICSRec step 1/2" in out and "SICSRec step 2/2" in out
    assert out.index("step 1/2") < out.index("step 2/2") < out.index("test result table")
    assert "SICSRec epochs run" in out and "step 1 1/1, step 2 1/1: 2 epochs (epochs = 2)" in out
    step1 = list(saved.glob("SICSRec-*-step1.pth"))
    final = [p for p in saved.glob("SICSRec-*.pth")
             if not p.name.endswith(("-step1.pth", ".resume.pth"))]  # nor the training state
    assert len(step1) == 1 and len(final) == 1
    assert f"Loading model structure and parameters from {final[0]}" in out.replace(str(saved) + "/", str(saved) + "/")
    from recbole_mm.compat import load_checkpoint

    assert int(load_checkpoint(str(step1[0]))["state_dict"]["train_step"]) == 1
    ck = load_checkpoint(str(final[0]))["state_dict"]
    assert int(ck["train_step"]) == 2
    # step 2 kept the ID encoder frozen: its weights equal step 1's best
    s1 = load_checkpoint(str(step1[0]))["state_dict"]
    for k, v in s1.items():
        if k.startswith("trm_encoder") and "lora_" not in k:
            assert torch.equal(ck[k], v), k


def test_step1_checkpoint_from_plugin_sasrec(tiny_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm

    common = {"data_path": tiny_root, "epochs": 1, "hidden_size": 16, "inner_size": 16,
              "n_layers": 1, "n_heads": 2, "checkpoint_dir": str(tmp_path / "saved"),
              "state": "WARNING", "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5,
              "hidden_act": "gelu", "layer_norm_eps": 1e-12}
    sas = run_recbole_mm("SASRec", "mm_sample", config_dict=common)
    res = run_recbole_mm("SICSRec", "mm_sample",
                         config_dict=dict(common, step1_checkpoint=sas["saved_model_file"]))
    assert not list((tmp_path / "saved").glob("SICSRec-*-step1.pth"))
    assert res["test_result"]


@pytest.mark.parametrize("over", [{}, {"content_fusion": "separate"}, {"use_mmsd": False},
                                  {"use_cmse": False}, {"use_imse": False},
                                  {"lora_mode": "activation", "lora_targets": ["attn", "ffn"]},
                                  {"decoder_layers": 2}])
def test_last_position_path_equals_full_computation(make_data, over):
    """Only the last position is computed where nothing else reads the others: same vectors."""
    _, model, *_, batch = _build(make_data, **over)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.3)
    model.eval()
    seq, length = _seq(batch)
    for step in ((1, 2) if model.pretrain_branch != "none" else (2,)):
        model.set_step(step)
        fast, full = model.encode(seq, length), model.encode(seq, length, full=True)
        for k in fast:
            if k.startswith("h"):
                assert torch.allclose(fast[k], full[k], atol=1e-5), (step, k)
        assert "H_e" not in fast and "H_m" not in fast
