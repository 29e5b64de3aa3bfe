"""DeCoRec: co-occurrence recipe, clusters, loss / score against brute force, phased training."""
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = dict(hidden_size=16, adapter_hidden=16, inner_size=32, n_heads=2, n_layers=1,
             hidden_dropout_prob=0.1, kmeans_niter=10, phase1_epochs=1, phase2_epochs=1,
             train_batch_size=256, eval_batch_size=256)


@pytest.fixture(scope="module")
def sample_loaders(tiny_root, tmp_path_factory):
    """The tiny sample's loaders, built once for the module (the model options don't touch data)."""
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    from conftest import FAST

    saved = str(tmp_path_factory.mktemp("decorec_saved"))
    base = {**FAST, **SMALL, "data_path": tiny_root, "checkpoint_dir": saved}
    config = MMConfig(model="DeCoRec", dataset="mm_sample", config_dict=base)
    init_seed(config["seed"], True)
    train, valid, test = data_preparation(config, create_dataset(config))
    return base, train, valid, test


@pytest.fixture
def build(sample_loaders):
    """``build(**overrides)`` -> (config, model, train, valid, test) on the tiny sample."""
    from recbole.utils import init_seed

    from recbole_mm.config import MMConfig
    from recbole_mm.model.decorec import DeCoRec

    base, train, valid, test = sample_loaders

    def _build(**overrides):
        config = MMConfig(model="DeCoRec", dataset="mm_sample", config_dict={**base, **overrides})
        init_seed(config["seed"], True)
        model = DeCoRec(config, train._dataset)
        return config, model, train, valid, test

    return _build


def _batch(loader, n=8):
    inter = next(iter(loader))
    if isinstance(inter, tuple):  # eval loaders yield (interaction, ...)
        inter = inter[0]
    return inter[torch.arange(n)]


# ---------------------------------------------------------------------- co-occurrence (spec 10.1-3)
def test_cooccurrence_recipe_on_hand_made_histories():
    from recbole_mm.data.graphs import cooccurrence_matrix

    a = cooccurrence_matrix([np.array([1, 2, 3])], 5, weight="inverse_distance",
                            distance_offset=1).toarray()
    expect = np.zeros((5, 5), dtype=np.float32)
    expect[1, 2] = expect[2, 1] = expect[2, 3] = expect[3, 2] = 1 / 2
    expect[1, 3] = expect[3, 1] = 1 / 3
    np.testing.assert_allclose(a, expect, rtol=0, atol=1e-7)
    assert a.sum() == pytest.approx(2 * (1 / 2 + 1 / 2 + 1 / 3))

    b = cooccurrence_matrix([np.array([1, 2, 1])], 5, weight="inverse_distance",
                            distance_offset=1).toarray()
    assert b[1, 2] == pytest.approx(1.0) and b[2, 1] == pytest.approx(1.0)
    assert np.all(np.diag(b) == 0) and b.sum() == pytest.approx(2.0)
    both = cooccurrence_matrix([np.array([1, 2, 3]), np.array([1, 2, 1])], 5,
                               weight="inverse_distance", distance_offset=1).toarray()
    np.testing.assert_allclose(both, a + b, atol=1e-7)


def _brute_force_training_cooc(tiny_root, dataset):
    """A from the raw file: per user, time order, drop the last two (valid, test) items."""
    inter = pd.read_csv(os.path.join(tiny_root, "mm_sample", "mm_sample.inter"), sep="\t")
    inter.columns = [c.split(":")[0] for c in inter.columns]
    n = dataset.item_num
    dense = np.zeros((n, n), dtype=np.float64)
    held_out = set()
    for _, grp in inter.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id"):
        items = dataset.token2id("item_id", grp["item_id"].astype(str).tolist())
        held_out.update(items[-2:].tolist())
        hist = items[:-2]
        for p in range(len(hist)):
            for q in range(p + 1, len(hist)):
                if hist[p] != hist[q]:
                    w = 1.0 / (q - p + 1)
                    dense[hist[p], hist[q]] += w
                    dense[hist[q], hist[p]] += w
    return dense


def test_cooccurrence_of_the_model_is_training_history_only(build, tiny_root):
    from recbole_mm.data.graphs import normalize

    config, model, train, _, _ = build()
    ds = train._dataset
    expect = _brute_force_training_cooc(tiny_root, ds)
    adj = ds.cooccurrence(weight="inverse_distance", distance_offset=1)
    got = adj.toarray()
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert got.sum() == pytest.approx(expect.sum(), rel=1e-6)
    assert np.allclose(got, got.T) and np.all(np.diag(got) == 0) and not got[0].any()

    # 'rc' normalisation: A_hat_ij * (r_i + 1e-7)(c_j + 1e-7) = A_ij; empty rows stay empty
    a_hat = normalize(adj, "rc", eps=1e-7).toarray().astype(np.float64)
    r, c = expect.sum(1) + 1e-7, expect.sum(0) + 1e-7
    np.testing.assert_allclose(a_hat * r[:, None] * c[None, :], expect, rtol=1e-4, atol=1e-6)
    assert not a_hat[0].any()
    # the model propagates with exactly this matrix
    np.testing.assert_allclose(model.cooc_adj.to_dense().numpy(), a_hat, rtol=1e-6, atol=1e-9)


def test_id_table_is_mean_of_zero_one_two_hops(build):
    _, model, *_ = build()
    with torch.no_grad():
        model.item_embedding.weight.normal_()
        e = model.item_embedding.weight.double()
        a = model.cooc_adj.to_dense().double()
        expect = (e + a @ e + a @ a @ e) / 3
        np.testing.assert_allclose(model.collaborative_id_table().double(), expect, atol=1e-6)


def test_sym_norm_and_learned_gate_options(build):
    _, model, *_ = build(cooc_norm="sym", cooc_gate="learned")
    a = model.cooc_adj.to_dense().double()
    assert torch.allclose(a, a.t(), atol=1e-7)  # D^-1/2 A D^-1/2 stays symmetric
    assert len(model.cooc_gate_layers) == 2
    with torch.no_grad():
        e = model.item_embedding.weight.double()
        cur, acc = e, 0
        for gate in model.cooc_gate_layers:
            nxt = a @ cur
            mu = torch.sigmoid(torch.cat([cur, nxt], 1) @ gate.weight.double().t() + gate.bias.double())
            acc, cur = acc + mu * nxt, nxt
        np.testing.assert_allclose(model.collaborative_id_table().double(), e + acc / 2, atol=1e-6)


# ---------------------------------------------------------------------- clusters (spec 10.4)
def test_interest_clusters_per_modality(build):
    config, model, train, *_ = build()
    n = model.n_items
    k = int(0.1 * n)
    for m in ("text", "image"):
        assign = getattr(model, f"cluster_{m}")
        assert model.interest_embedding[m].weight.shape == (k, 16)
        assert torch.all(model.interest_embedding[m].weight == 0)  # zero-init
        assert assign.shape == (n,) and assign[0] == 0
        assert int(assign.min()) >= 0 and int(assign.max()) < k
        assert "cluster_" + m in model.state_dict()  # restored with the checkpoint
    _, again, *_ = build()
    assert torch.equal(again.cluster_text, model.cluster_text)
    _, fixed_k, *_ = build(n_clusters=5)
    assert fixed_k.interest_embedding["image"].num_embeddings == 5


# ---------------------------------------------------------------------- shapes, loss, score
def test_shapes_loss_and_full_ranking(build):
    _, model, train, _, test = build()
    model.eval()
    inter = _batch(train, 4)
    seq_out, tables = model(inter["item_id_list"], inter["item_length"])
    assert seq_out["text"].shape == (4, 16) and seq_out["image"].shape == (4, 16)
    cand = torch.cat([tables["text"], tables["image"]])
    assert cand.shape == (2 * model.n_items, 16)
    loss = model.calculate_loss(inter)
    assert loss.dim() == 0 and torch.isfinite(loss)
    scores = model.full_sort_predict(_batch(test, 4))
    assert scores.shape == (4, model.n_items) and torch.isfinite(scores).all()


def _brute_force_loss(model, inter, alpha, pad_in_softmax, official=False):
    seq_out, tables = model(inter["item_id_list"], inter["item_length"])
    n, tau = model.n_items, model.temperature
    cand = torch.cat([tables["text"], tables["image"]]).double().detach().numpy()
    total = 0.0
    for si, m in enumerate(("text", "image")):
        h = seq_out[m].double().detach().numpy()
        per = []
        for b in range(h.shape[0]):
            logits = [float(h[b] @ cand[c]) / tau for c in range(2 * n)]
            keep = [c for c in range(2 * n) if pad_in_softmax or c % n != 0]
            shift = max(logits)
            denom = sum(math.exp(logits[c] - shift) for c in keep)
            i = int(inter["item_id"][b])
            own, other = (i, n + i) if si == 0 else (n + i, i)
            if official:  # released code: -log( (e^pos1 + e^pos2) / tau / sum_all e^l )
                pos = (math.exp(logits[own] - shift) + math.exp(logits[other] - shift)) / tau
                per.append(-math.log(pos / denom))
            else:
                pos = math.exp(logits[own] - shift) + alpha * math.exp(logits[other] - shift)
                per.append(math.log(denom) - math.log(pos))
        total += sum(per) / len(per)
    return total


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_loss_equals_brute_force(build, alpha):
    _, model, train, *_ = build(alpha=alpha)
    model.eval()
    inter = _batch(train, 6)
    with torch.no_grad():
        got = model.calculate_loss(inter).item()
    assert got == pytest.approx(_brute_force_loss(model, inter, alpha, False), rel=1e-5)


def test_loss_with_padding_kept_is_official_formula_minus_log_tau(build):
    _, model, train, *_ = build(compat_pad_in_softmax=True)
    model.eval()
    inter = _batch(train, 6)
    with torch.no_grad():
        got = model.calculate_loss(inter).item()
    official = _brute_force_loss(model, inter, 1.0, True, official=True)
    assert got == pytest.approx(official - 2 * math.log(model.temperature), rel=1e-5)


def test_fused_score_is_stable_log_sum_exp(build):
    _, model, *_ = build()
    n = model.n_items
    g = torch.Generator().manual_seed(0)
    logits = {m: torch.randn(3, 2 * n, generator=g, dtype=torch.float64) for m in ("text", "image")}
    ref = sum(torch.exp(logits[m][:, :n]) + torch.exp(logits[m][:, n:]) for m in logits)
    got = model.score_from_logits(logits)
    assert torch.allclose(got, torch.log(ref), atol=1e-10)
    assert torch.equal(got.argsort(dim=1, stable=True), torch.log(ref).argsort(dim=1, stable=True))
    big = {m: v.float() * 1e3 for m, v in logits.items()}  # exp would overflow float32
    assert torch.isfinite(model.score_from_logits(big)).all()
    # alpha < 1 down-weights the other-modality copies (Eq. 17 on probabilities)
    _, half, *_ = build(alpha=0.5)
    ref = (torch.exp(logits["text"][:, :n]) + 0.5 * torch.exp(logits["text"][:, n:])
           + torch.exp(logits["image"][:, n:]) + 0.5 * torch.exp(logits["image"][:, :n]))
    assert torch.allclose(half.score_from_logits(logits), torch.log(ref), atol=1e-10)


def test_uni_modal_inference_and_intra_retrieval(build):
    _, model, *_ = build(inference_modalities=["image"])
    n = model.n_items
    logits = {m: torch.randn(2, 2 * n) for m in ("text", "image")}
    assert torch.equal(model.score_from_logits(logits), logits["image"][:, n:])
    _, intra, train, *_ = build(retrieval="intra")
    intra.eval()
    inter = _batch(train, 4)
    seq_out, tables = intra(inter["item_id_list"], inter["item_length"])
    lg = intra.logits(seq_out, tables)
    assert lg["text"].shape == (4, n)
    assert torch.allclose(intra.score_from_logits(lg), lg["text"] + lg["image"])
    expect = sum(torch.nn.functional.cross_entropy(
        lg[m].masked_fill(torch.arange(n) == 0, float("-inf")), inter["item_id"])
        for m in ("text", "image"))
    assert intra.calculate_loss(inter).item() == pytest.approx(expect.item(), rel=1e-5)


# ---------------------------------------------------------------------- encoder (spec 10.11)
def test_causal_and_padding_invariance(build):
    _, model, train, *_ = build()
    model.eval()
    tables = model.item_tables()
    seq = torch.tensor([[3, 5, 7, 9, 0, 0], [4, 6, 0, 0, 0, 0]])
    hid = model.encode(seq, tables["text"])
    changed = seq.clone()
    changed[0, 3] = 11
    hid2 = model.encode(changed, tables["text"])
    assert torch.allclose(hid[0, :3], hid2[0, :3], atol=1e-6)
    assert not torch.allclose(hid[0, 3], hid2[0, 3])
    lens = torch.tensor([4, 2])
    out, _ = model(seq, lens, tables)
    longer = torch.cat([seq, torch.zeros(2, 4, dtype=torch.long)], 1)
    out2, _ = model(longer, lens, tables)
    assert torch.allclose(out["image"], out2["image"], atol=1e-5)
    assert torch.allclose(out["text"], out2["text"], atol=1e-5)


# ---------------------------------------------------------------------- phases (spec 10.8-10)
def test_phase1_does_not_use_collaborative_tables(build):
    _, model, train, *_ = build()
    assert model.phase == 1
    model.eval()
    inter = _batch(train, 6)
    before = model.calculate_loss(inter)
    with torch.no_grad():
        model.item_embedding.weight.normal_()
        for t in model.interest_embedding.values():
            t.weight.normal_()
    after = model.calculate_loss(inter)
    assert torch.equal(before, after)
    model.train()
    model.calculate_loss(inter).backward()
    assert model.item_embedding.weight.grad is None
    assert all(t.weight.grad is None for t in model.interest_embedding.values())
    assert all(p.grad is not None for p in model.adapter.parameters())
    model.set_phase(2)
    assert not torch.equal(model.calculate_loss(inter), after)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("compat", [False, True])
def test_phase2_freezes_adapters_and_trains_id_and_interest_tables(build, compat):
    from recbole_mm.trainer.decorec import DeCoRecTrainer

    config, model, train, *_ = build(compat_frozen_embeddings=compat)
    trainer = DeCoRecTrainer(config, model)
    trainer.enter_phase2(load_best=False)
    assert model.phase == 2
    assert all(not p.requires_grad for p in model.adapter.parameters())
    groups = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in groups for p in model.adapter.parameters())
    if not compat:
        assert groups[id(model.item_embedding.weight)] == pytest.approx(1e-4)
        assert groups[id(model.interest_embedding["text"].weight)] == pytest.approx(1e-3)
    before = _snapshot(model)
    trainer._train_epoch(train, 0)
    after = _snapshot(model)
    for k in before:
        if k.startswith("adapter."):
            assert torch.equal(before[k], after[k]), k  # frozen: bit-identical
    assert not torch.equal(before["LayerNorm.weight"], after["LayerNorm.weight"])
    enc = [k for k in before if k.startswith("trm_encoder.")]
    assert any(not torch.equal(before[k], after[k]) for k in enc)
    tables = ["item_embedding.weight", "interest_embedding.text.weight", "interest_embedding.image.weight"]
    for k in tables:
        assert torch.equal(before[k], after[k]) == compat, k
    if compat:  # released behaviour: interest tables stay exactly zero
        assert torch.all(after["interest_embedding.text.weight"] == 0)


def test_phase2_starts_from_best_phase1_checkpoint(build):
    from recbole.trainer import Trainer

    from recbole_mm.compat import load_checkpoint
    from recbole_mm.trainer.decorec import DeCoRecTrainer

    config, model, train, valid, _ = build(phase1_epochs=2)
    trainer = DeCoRecTrainer(config, model)
    trainer.start_phase1()
    best_score, best_result = Trainer.fit(trainer, train, valid, saved=True)
    ckpt = load_checkpoint(trainer.phase_model_files[1])
    trainer.enter_phase2(load_best=True)
    state = model.state_dict()
    for k, v in ckpt["state_dict"].items():
        if k.startswith(("adapter.", "trm_encoder.", "LayerNorm.")):
            assert torch.equal(state[k], v), k
    assert int(ckpt["state_dict"]["training_phase"]) == 1 and model.phase == 2
    with torch.no_grad():  # with zero ID / interest tables phase 2 reduces to phase 1 exactly
        model.item_embedding.weight.zero_()
        for t in model.interest_embedding.values():
            t.weight.zero_()
    again = trainer.evaluate(valid, load_best_model=False)
    assert dict(again) == dict(best_result)


# ---------------------------------------------------------------------- ablation flags (spec 10.12)
def test_ablation_flags_remove_their_component(build):
    names = lambda m: {n.split(".")[0] for n, _ in m.named_parameters()}
    _, full, *_ = build()
    assert {"item_embedding", "interest_embedding", "adapter"} <= names(full)
    _, p1, *_ = build(phase_schedule="phase1_only")
    assert not {"item_embedding", "interest_embedding"} & names(p1)
    _, no_ci, *_ = build(use_cluster_embedding=False)
    assert "interest_embedding" not in names(no_ci) and "item_embedding" in names(no_ci)
    _, no_id, *_ = build(use_id_embedding=False)
    assert "item_embedding" not in names(no_id) and "interest_embedding" in names(no_id)
    _, lin, *_ = build(adapter_type="linear")
    assert isinstance(lin.adapter["text"].net, torch.nn.Linear)
    _, joint, *_ = build(phase_schedule="joint")
    assert joint.phase == 2 and all(p.requires_grad for p in joint.parameters())
    _, unfrozen, *_ = build(freeze_adapter_phase2=False)
    unfrozen.set_phase(2)
    assert all(p.requires_grad for p in unfrozen.adapter.parameters())
    _, text_only, train, *_ = build(stream_modalities=["text"])
    assert list(text_only.adapter) == ["text"] and not hasattr(text_only, "feat_image")
    inter = _batch(train, 3)
    seq_out, tables = text_only(inter["item_id_list"], inter["item_length"])
    assert text_only.logits(seq_out, tables)["text"].shape == (3, text_only.n_items)
    assert torch.isfinite(text_only.calculate_loss(inter))
    _, pos, *_ = build(use_position_embedding=True)
    assert "position_embedding" in names(pos) and "position_embedding" not in names(full)


def test_bad_configuration_gives_clear_errors(build):
    from recbole_mm.data.features import FeatureFileError

    with pytest.raises(FeatureFileError, match="audio"):
        build(stream_modalities=["text", "audio"])
    with pytest.raises(ValueError, match="phase_schedule"):
        build(phase_schedule="three_phase")
    with pytest.raises(ValueError, match="inference_modalities"):
        build(stream_modalities=["text"], inference_modalities=["image"])
    with pytest.raises(ValueError, match="alpha"):
        build(alpha=2.0)


# ---------------------------------------------------------------------- end to end (CLI)
def test_cli_runs_both_phases_and_tests_phase2_best(tiny_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    saved = tmp_path / "saved"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_mm.py"), "--model=DeCoRec",
         "--dataset=mm_sample", f"--data_path={tiny_root}", "--phase1_epochs=2", "--phase2_epochs=1",
         "--hidden_size=16", "--adapter_hidden=16", "--inner_size=16", "--n_heads=2",
         "--kmeans_niter=10", f"--checkpoint_dir={saved}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert "phase 1/2" in out and "phase 2/2" in out and "[phase 2] epoch 0 training" in out
    assert "loaded best phase-1 weights" in out and "test result table" in out
    phase1 = list(saved.glob("DeCoRec-*-phase1.pth"))
    final = [p for p in saved.glob("DeCoRec-*.pth")
             if p not in phase1 and not p.name.endswith(".resume.pth")]  # not the training state
    assert len(phase1) == 1 and len(final) == 1
    assert f"Loading model structure and parameters from {final[0]}" in out
    ckpt = torch.load(final[0], weights_only=True)
    assert int(ckpt["state_dict"]["training_phase"]) == 2
    assert int(torch.load(phase1[0], weights_only=True)["state_dict"]["training_phase"]) == 1
    from recbole_mm.quick_start import load_data_and_model

    _, model, *_ = load_data_and_model(str(final[0]))  # reloads into phase 2, same clusters
    assert model.phase == 2
    assert torch.equal(model.cluster_text, ckpt["state_dict"]["cluster_text"])
