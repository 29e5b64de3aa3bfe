"""MMSR with real ``transformers`` encoders (tiny random configs, nothing downloads): top-k
freezing, end-to-end training on generated texts/images, tokens/pooled equivalence, file errors."""
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("PIL")

TEXT = {"model_type": "bert", "vocab_size": 30, "hidden_size": 16, "num_hidden_layers": 3,
        "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}
ROBERTA = dict(TEXT, model_type="roberta", max_position_embeddings=40)
ELECTRA = dict(TEXT, model_type="electra", embedding_size=8)
SWIN = {"model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 8, "depths": [1, 2],
        "num_heads": [1, 2], "window_size": 4}
MAE = {"model_type": "vit_mae", "image_size": 32, "patch_size": 8, "hidden_size": 16,
       "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32}
RESNET = {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1],
          "layer_type": "bottleneck"}
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "red", "blue", "green", "shoe", "shirt",
         "hat", "bag", "cotton", "leather", "small", "large", "cheap", "new"]
E2E = {"feature_mode": "end2end", "fusion": "merge_attn", "hidden_size": 16, "fusion_n_heads": 2,
       "n_layers": 1, "n_heads": 2, "inner_size": 32, "text_encoder_config": TEXT,
       "image_encoder_config": SWIN, "image_size": 32, "text_max_tokens": 8,
       "trainable_top_blocks_text": 1, "trainable_top_blocks_image": 1, "train_batch_size": 32,
       "eval_batch_size": 64, "min_feature_coverage": 0.5, "topk": [10]}


# ------------------------------------------------------------------------------ freezing
def _params(*mods):
    return {id(p) for m in mods for p in m.parameters()}


def _expected_top(model, k):
    t = model.config.model_type
    if t in ("bert", "roberta", "electra"):
        return _params(*model.encoder.layer[-k:])
    if t == "vit_mae":
        return _params(*model.layers[-k:], model.layernorm)
    if t == "swin":
        blocks = [(s, b) for s in model.encoder.layers for b in s.blocks]
        mods = [b for _, b in blocks[-k:]] + [model.layernorm]
        for s in model.encoder.layers:  # a stage's patch merging trains with its last block
            if s.downsample is not None and s.blocks[-1] in mods:
                mods.append(s.downsample)
        return _params(*mods)
    if t == "resnet":
        return _params(*[l for s in model.encoder.stages for l in s.layers][-k:])
    raise AssertionError(t)


@pytest.mark.parametrize("cfg", [TEXT, ROBERTA, ELECTRA, MAE, SWIN, RESNET],
                         ids=lambda c: c["model_type"])
def test_top_k_freezing_trains_exactly_the_top_blocks(cfg):
    from recbole_mm.model.mmsr_towers import load_hf_encoder, set_trainable_top_blocks

    model = load_hf_encoder(None, cfg)
    trainable = lambda: {id(p) for p in model.parameters() if p.requires_grad}
    for k in (1, 2):
        set_trainable_top_blocks(model, k)
        assert trainable() == _expected_top(model, k), k
    set_trainable_top_blocks(model, 0)
    assert trainable() == set()
    set_trainable_top_blocks(model, -1)
    assert trainable() == _params(model)
    with pytest.raises(ValueError, match="only"):
        set_trainable_top_blocks(model, 99)
    if cfg["model_type"] == "swin":  # 3 blocks: top-3 reaches stage 0 and its patch merging
        set_trainable_top_blocks(model, 3)
        assert _params(model.encoder.layers[0].downsample) <= trainable()
        assert not (_params(model.embeddings) & trainable())


@pytest.mark.parametrize("mtype,n", [("bert", 2 * 7_087_872), ("vit_mae", 2 * 7_087_872 + 1_536)])
def test_top2_of_a_base_encoder_has_the_paper_parameter_count(mtype, n):
    """Acceptance check 3 on the real base layouts (built on the meta device: no memory, no download)."""
    from recbole_mm.model.mmsr_towers import load_hf_encoder, set_trainable_top_blocks

    with torch.device("meta"):
        model = load_hf_encoder(None, {"model_type": mtype})
    set_trainable_top_blocks(model, 2)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n


# ------------------------------------------------------------------------------ generated data
@pytest.fixture(scope="module")
def e2e_root(tmp_path_factory):
    """mm_sample (50 users, 30 items) plus end2end files from generated texts and PNG images."""
    from PIL import Image

    from recbole_mm.data.sample import write_sample
    from recbole_mm.model.mmsr_data import write_end2end_files

    root = tmp_path_factory.mktemp("e2e")
    folder = root / "mm_sample"
    write_sample(str(folder), n_users=50, n_items=30, n_clusters=3, text_dim=16, image_dim=12,
                 min_len=5, max_len=9)
    with open(folder / "mm_sample.inter") as f:
        tokens = sorted({line.split("\t")[1] for line in list(f)[1:]}, key=int)
    rng = np.random.default_rng(0)
    texts, images = {}, {}
    img_dir = root / "images"
    img_dir.mkdir()
    for i, tok in enumerate(tokens):
        words = rng.choice(VOCAB[5:], size=2 + i % 6)
        texts[tok] = " ".join(words).upper()  # lower-cased by the writer
        if i % 7 == 3:
            continue  # a few items without an image: black image
        arr = np.zeros((40, 48, 3), dtype=np.uint8)
        arr[..., i % 3] = 40 + 7 * i
        arr[: 10 + i % 20] = rng.integers(0, 255, 3, dtype=np.uint8)
        Image.fromarray(arr).save(img_dir / f"{tok}.png")
        images[tok] = str(img_dir / f"{tok}.png")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(vocab))
    write_end2end_files(str(folder), "mm_sample", texts, images, tok, max_tokens=10, image_size=32)
    return str(root)


def _build(e2e_root, tmp_path, **over):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.config import MMConfig
    from recbole_mm.model.mmsr import MMSR
    from recbole_mm.quick_start import create_dataset

    cfg = dict(E2E, data_path=e2e_root, state="WARNING", show_progress=False,
               checkpoint_dir=str(tmp_path / "saved"))
    cfg.update(over)
    config = MMConfig(model="MMSR", dataset="mm_sample", config_dict=cfg)
    init_seed(0, True)
    ds = create_dataset(config)
    train, valid, test = data_preparation(config, ds)
    init_seed(0, True)
    return MMSR(config, train._dataset), config, train, valid, test


def test_written_files_follow_the_documented_format(e2e_root):
    folder = os.path.join(e2e_root, "mm_sample")
    ids = np.load(os.path.join(folder, "mm_sample.text_ids.npy"))
    mask = np.load(os.path.join(folder, "mm_sample.text_mask.npy"))
    pix = np.load(os.path.join(folder, "mm_sample.image_pixels.npy"))
    assert ids.dtype == np.int32 and ids.shape == (30, 10) and mask.shape == (30, 10)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1} and (mask[:, 0] == 1).all()
    assert pix.dtype == np.uint8 and pix.shape == (30, 32, 32, 3)
    with open(os.path.join(folder, "mm_sample.image_pixels.ids")) as f:
        assert len(f.read().split()) == 30
    assert (pix.reshape(30, -1).max(1) == 0).sum() == len([i for i in range(30) if i % 7 == 3])


def test_end2end_trains_only_top_blocks_and_ranks_all_items(e2e_root, tmp_path):
    from recbole_mm.trainer.mmsr import MMSRTrainer

    model, config, train, valid, test = _build(e2e_root, tmp_path, text_lr=3e-4, image_lr=2e-4,
                                               learning_rate=1e-3, weight_decay=0.1)
    tower = model.item_tower
    assert not any(model.n_items in p.shape for p in model.parameters())
    trainer = MMSRTrainer(config, model)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {"text_encoder", "image_encoder", "rest"}
    assert (groups["text_encoder"]["lr"], groups["text_encoder"]["weight_decay"]) == (3e-4, 0.0)
    assert (groups["image_encoder"]["lr"], groups["image_encoder"]["weight_decay"]) == (2e-4, 0.0)
    assert (groups["rest"]["lr"], groups["rest"]["weight_decay"]) == (1e-3, 0.1)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    top = {n: p.detach().clone() for n, p in tower.text_encoder.encoder.layer[-1].named_parameters()}
    assert frozen and all(n.startswith("item_tower.") for n in frozen)
    trainer._train_epoch(train, 0)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())  # lower blocks untouched
    changed = [n for n, p in tower.text_encoder.encoder.layer[-1].named_parameters()
               if not torch.equal(p, top[n])]
    assert changed  # the top block trained
    result = trainer.evaluate(test, load_best_model=False)
    assert 0.0 <= result["ndcg@10"] <= result["recall@10"] <= 1.0
    assert model._item_table is not None and model._item_table.shape == (model.n_items, 16)


@pytest.mark.parametrize("fusion", ["merge_attn", "co_attn", "gated_dnn"])
def test_tokens_mode_equals_end2end_with_frozen_encoders(fusion, e2e_root, tmp_path):
    """Acceptance check 8: frozen encoders, eval mode -> tokens == end2end (and pooled == end2end
    for coarse fusion)."""
    import shutil

    from recbole_mm.model.mmsr_data import write_token_files

    root = tmp_path / "data"
    shutil.copytree(os.path.join(e2e_root, "mm_sample"), root / "mm_sample")
    frozen = dict(trainable_top_blocks_text=0, trainable_top_blocks_image=0, fusion=fusion)
    e2e, config, train, *_ = _build(str(root), tmp_path, **frozen)
    e2e.eval()
    write_token_files(e2e, train._dataset, str(root / "mm_sample"), "mm_sample", dtype=np.float32)
    ids = torch.arange(1, e2e.n_items)
    want = e2e.item_tower(ids)
    tok, *_ = _build(str(root), tmp_path, feature_mode="tokens", **frozen)
    res = tok.load_state_dict(e2e.state_dict(), strict=False)
    assert not res.missing_keys and all(k.startswith("item_tower.") and "_encoder." in k
                                        for k in res.unexpected_keys)
    tok.eval()
    assert torch.allclose(tok.item_tower(ids), want, atol=1e-5)
    if fusion == "gated_dnn":  # pooled features = masked token means -> same item vectors
        t = np.load(root / "mm_sample" / "mm_sample.text_tokens.npy")
        m = np.load(root / "mm_sample" / "mm_sample.text_mask.npy")[..., None].astype(np.float32)
        v = np.load(root / "mm_sample" / "mm_sample.image_tokens.npy")
        np.save(root / "mm_sample" / "t_pool.npy", ((t * m).sum(1) / m.sum(1)).astype(np.float32))
        np.save(root / "mm_sample" / "v_pool.npy", v.mean(1).astype(np.float32))
        for name in ("t_pool", "v_pool"):
            shutil.copy(root / "mm_sample" / "mm_sample.text_tokens.ids", root / "mm_sample" / f"{name}.ids")
        pooled, *_ = _build(str(root), tmp_path, feature_mode="pooled", **frozen,
                            modalities={"tp": {"file": "t_pool.npy"}, "vp": {"file": "v_pool.npy"}},
                            text_feature="tp", image_feature="vp", selected_features=[])
        pooled.load_state_dict(e2e.state_dict(), strict=False)
        pooled.eval()
        assert torch.allclose(pooled.item_tower(ids), want, atol=1e-5)


def test_resnet_uses_grid_tokens_for_attention_and_pooled_vector_otherwise(e2e_root, tmp_path):
    grid, *_ = _build(e2e_root, tmp_path, image_encoder_config=RESNET, fusion="merge_attn")
    assert hasattr(grid.item_tower, "cv_grid") and not hasattr(grid.item_tower, "cv_proj")
    ids = torch.tensor([1, 2, 3])
    raw = grid.item_tower.encode_image_raw(ids)
    assert raw.shape == (3, 16, 16)  # 4x4 grid of 16 channels (the paper's 7x7 at 224 px)
    assert grid.item_tower.project_image(raw).shape == (3, 16, 16)
    pooled, *_ = _build(e2e_root, tmp_path, image_encoder_config=RESNET, item_tower="image")
    assert pooled.item_tower.project_image(pooled.item_tower.encode_image_raw(ids)).shape == (3, 1, 16)


def test_mae_mask_ratio_sets_the_visible_patches(e2e_root, tmp_path):
    for ratio, tokens in ((0.75, 1 + 4), (0.0, 1 + 16)):
        model, *_ = _build(e2e_root, tmp_path, image_encoder_config=MAE, mae_mask_ratio=ratio,
                           item_tower="image")
        assert model.item_tower.image_encoder.config.mask_ratio == ratio
        assert model.item_tower.encode_image_raw(torch.tensor([1, 2])).shape == (2, tokens, 16)


def test_text_only_tower_with_other_text_encoders(e2e_root, tmp_path):
    for cfg in (ROBERTA, ELECTRA):
        model, *_ = _build(e2e_root, tmp_path, text_encoder_config=cfg, item_tower="text")
        assert not hasattr(model.item_tower, "image_encoder")
        model.eval()
        assert model.item_tower(torch.tensor([1, 2, 0])).shape == (3, 16)


def test_bad_item_file_is_a_clear_error(e2e_root, tmp_path):
    import shutil

    from recbole_mm.data.features import FeatureFileError

    root = tmp_path / "bad"
    shutil.copytree(os.path.join(e2e_root, "mm_sample"), root / "mm_sample")
    pix = root / "mm_sample" / "mm_sample.image_pixels.npy"
    np.save(pix, np.load(pix).astype(np.float32))
    with pytest.raises(FeatureFileError, match="image_pixels.*uint8"):
        _build(str(root), tmp_path)
    os.remove(pix)
    with pytest.raises(FeatureFileError, match="image_pixels.*not found"):
        _build(str(root), tmp_path)


def test_end2end_cli_run(e2e_root, tmp_path):
    from recbole_mm.quick_start import run_recbole_mm

    cfg = dict(E2E, data_path=e2e_root, epochs=1, eval_step=1, state="WARNING", protocol="paper",
               checkpoint_dir=str(tmp_path / "saved"), seq_arch="gru4rec", fusion="co_attn")
    result = run_recbole_mm("MMSR", "mm_sample", config_dict=cfg)
    assert "hit@10" in result["test_result"]
    ckpt = torch.load(result["saved_model_file"], weights_only=True)
    assert any(k.startswith("item_tower.text_encoder.") for k in ckpt["state_dict"])
