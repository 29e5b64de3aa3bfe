"""Dataset scripts: rebuild small raw samples made here (Amazon 2014 / 2018, NineRec), check the
statistics, the id conventions, the feature files and that the result loads in recbole-mm.

Tiny randomly initialised encoders only; no download is attempted (--offline, HF_HUB_OFFLINE=1).
"""
import gzip
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from conftest import shared_data  # noqa: E402
from dataset_scripts import amazon2014, amazon2018, common, encode_text, make_sample, ninerec  # noqa: E402

CORE_USERS = [f"U{k}" for k in range(7)]
WORDS = "red blue baby stroller lab pipette kit glove bottle soft".split()


# ------------------------------------------------------------------------------- tiny encoders
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("PIL")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    folder = str(tmp_path_factory.mktemp("clip"))
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                         cls_token="[CLS]", sep_token="[SEP]").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, pad_token_id=0,
                         bos_token_id=2, eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(folder)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def _save_images(folder, names, corrupt=()):
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    for n in names:
        Image.fromarray((rng.random((24, 36, 3)) * 255).astype(np.uint8)).save(os.path.join(folder, f"{n}.jpg"))
    for n in corrupt:
        with open(os.path.join(folder, f"{n}.jpg"), "wb") as f:
            f.write(b"not an image at all")


def _core_pairs(items):
    """7 users x 6 items: user k < 6 skips item k, U6 rates all -> every user >= 5, every item 6."""
    pairs = []
    for k, u in enumerate(CORE_USERS):
        for j, it in enumerate(items):
            if k < 6 and j == k:
                continue
            pairs.append((u, it))
    return pairs


def _read_inter(path):
    with open(path) as f:
        return [line.rstrip("\r\n").split("\t") for line in f][1:]


# ------------------------------------------------------------------------------- Amazon 2018
def _amazon2018_raw(root):
    asin = {c: f"B00000000{n}" for n, c in enumerate("ABCDEFGHI", 1)}
    core = [asin[c] for c in "ABCDEF"]
    rows = [(u, it) for u, it in _core_pairs(core)]
    rows += [("U0", asin["G"]), ("U1", asin["G"]), ("U2", asin["H"]), ("U3", asin["H"]),
             ("U4", asin["H"]), ("U5", asin["H"]), ("U6", asin["H"]),  # H: 5 users but no metadata
             ("X1", asin["A"]), ("X1", asin["B"]), ("X1", asin["I"]),  # X1: too short
             ("C", asin["A"]), ("C", asin["B"]), ("C", asin["C"]), ("C", asin["D"]), ("C", asin["G"]),
             ("C", asin["I"]), ("U0", asin["I"]), ("U1", asin["I"]), ("U2", asin["I"])]
    # cascade: G (3 users) goes, then C has 5 left; I loses X1 -> 4 users, goes; then C has 4, goes.
    rng = np.random.default_rng(3)
    times = rng.permutation(len(rows)) * 10 + 1000  # file order != time order
    lines = [f"{it},{u},5.0,{t}" for (u, it), t in zip(rows, times)]
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "ratings.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    metas = []
    for c in "ABCDEFGI":
        metas.append({"asin": asin[c], "title": f"Lab kit {c} &amp; \"pipette\"...",
                      "category": ["Industrial &amp; Scientific", f"Cat{c}"], "brand": f"Brand{c}",
                      "imageURLHighRes": [f"https://example.invalid/{c}.jpg"]})
    with gzip.open(os.path.join(root, "meta.json.gz"), "wt") as f:
        for m in metas:
            f.write(json.dumps(m) + "\n")
    return asin, list(zip(rows, times))


def test_amazon2018_rebuild_from_raw_sample(tiny_clip, tmp_path):
    raw = str(tmp_path / "raw")
    asin, rows = _amazon2018_raw(raw)
    _save_images(os.path.join(raw, "img"), [asin[c] for c in "ABCD"], corrupt=[asin["E"]])
    out = tmp_path / "data" / "amz18"
    res = amazon2018.main(["--domain", "scientific", "--out", str(out), "--offline",
                           "--ratings", os.path.join(raw, "ratings.csv"),
                           "--meta", os.path.join(raw, "meta.json.gz"),
                           "--images_dir", os.path.join(raw, "img"),
                           "--text_kind", "clip", "--text_model", tiny_clip,
                           "--image_model", tiny_clip, "--device", "cpu", "--batch_size", "4",
                           "--shard_size", "4", "--no_progress", "--legacy_feat"])
    st = res["stats"]
    assert (st["users"], st["items"], st["interactions"]) == (7, 6, 36)
    assert st["sparsity"] == pytest.approx(1 - 36 / 42)
    assert json.load(open(out / "Scientific.stats.json"))["interactions"] == 36
    # UniSRec ids: users by first appearance in the ratings file, items by first appearance
    user2index = common.read_map(str(out / "Scientific.user2index"))
    first_users = list(dict.fromkeys(u for (u, _), _ in rows if u in CORE_USERS))
    assert list(user2index) == first_users and sorted(user2index.values()) == list(range(7))
    item2index = common.read_map(str(out / "Scientific.item2index"))
    assert set(item2index) == {asin[c] for c in "ABCDEF"}
    # each user's sequence is time-sorted; test row = history + last item
    tests = {r[0]: r[1].split() + [r[2]] for r in _read_inter(out / "Scientific.test.inter")}
    for u, idx in user2index.items():
        expect = [item2index[it] for (uu, it), t in sorted(rows, key=lambda x: x[1])
                  if uu == u and it in item2index]
        assert tests[str(idx)] == [str(x) for x in expect]
    train = _read_inter(out / "Scientific.train.inter")
    assert len(train) == 36 - 3 * 7 and len(_read_inter(out / "Scientific.valid.inter")) == 7
    # item text, UniSRec cleaning
    texts = dict(r for r in _read_inter(out / "Scientific.text"))
    assert texts[asin["A"]] == 'Lab kit A & pipette. Industrial & Scientific CatA. BrandA. '
    # features: rows = item tokens, images missing/corrupt -> zero rows + report
    img = np.load(out / "Scientific.image.npy")
    ids = open(out / "Scientific.image.ids").read().split()
    assert ids == [str(i) for i in range(6)] and img.shape == (6, 8)
    rep = json.load(open(out / "Scientific.image.report.json"))
    assert rep["n_missing"] == 1 and list(rep["corrupt"]) == [str(item2index[asin["E"]])]
    assert np.fromfile(out / "Scientific.feat3CLS", np.float32).reshape(-1, 8).tolist() == img.tolist()
    # the folder loads as a recbole-mm dataset with both modalities
    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    cfg = MMConfig("SASRec", "amz18", config_dict={
        "data_path": str(tmp_path / "data"), "file_prefix": "Scientific",
        "benchmark_filename": ["train", "valid", "test"], "alias_of_item_id": ["item_id_list"],
        "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
        "modalities": {"text": {"file": "Scientific.text.npy"}, "image": {"file": "Scientific.image.npy"}},
        "min_feature_coverage": 0.5, "state": "WARNING", "show_progress": False})
    ds = create_dataset(cfg)
    assert ds.user_num - 1 == 7 and ds.item_num - 1 == 6
    assert int(ds.modality_present["text"].sum()) == 6 and int(ds.modality_present["image"].sum()) == 4


def test_amazon2018_offline_says_which_file_to_put_where(tmp_path, capsys):
    code = common.run_main(amazon2018.main, ["--domain", "pantry", "--out", str(tmp_path / "o"), "--offline"])
    err = capsys.readouterr().err
    assert code == 2
    assert "categoryFilesSmall/Prime_Pantry.csv" in err
    assert os.path.join(str(tmp_path / "o"), "raw", "Prime_Pantry.csv") in err
    assert "no download attempted" in err.lower()


# ------------------------------------------------------------------------------- Amazon 2014
def test_amazon2014_rebuild_with_cnn_image_features(tiny_clip, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    asins = ["B0000Z", "B0000A", "B0000M", "B0000C", "B0000Q", "B0000B"]  # not sorted on purpose
    reviews = []
    t = 100
    for u, it in _core_pairs(asins):
        reviews.append({"reviewerID": u, "asin": it, "overall": 4.0, "unixReviewTime": t})
        t -= 1  # reverse time order inside the file
    reviews.append({"reviewerID": "U6", "asin": asins[0], "overall": 1.0, "unixReviewTime": 5000})
    reviews += [{"reviewerID": "short", "asin": a, "overall": 3.0, "unixReviewTime": 1} for a in asins[:2]]
    with gzip.open(raw / "reviews.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews) + "\n")
    with open(raw / "meta.json", "w") as f:  # 2014 metadata: Python literals, not JSON
        for a in asins:
            f.write(repr({"asin": a, "title": f"stroller {a}", "brand": "Graco",
                          "categories": [["Baby", "Strollers"], ["Other"]],
                          "description": "soft\nbottle"}) + "\n")
    rng = np.random.default_rng(0)
    vecs = {a: rng.random(4096).astype(np.float32) for a in asins[:4]}
    with open(raw / "image_features.b", "wb") as f:
        for a, v in vecs.items():
            f.write(a.encode("ascii").ljust(10) + v.tobytes())
    out = tmp_path / "baby"
    res = amazon2014.main(["--domain", "baby", "--out", str(out), "--offline",
                           "--reviews", str(raw / "reviews.json.gz"), "--meta", str(raw / "meta.json"),
                           "--image_features", str(raw / "image_features.b"),
                           "--text_kind", "clip", "--text_model", tiny_clip, "--device", "cpu",
                           "--no_progress"])
    st = res["stats"]
    assert (st["users"], st["items"], st["interactions"]) == (7, 6, 36)
    assert st["sparsity"] == pytest.approx(1 - 36 / 42)
    imap = common.read_map(str(out / "i_id_mapping.csv"))
    assert list(imap) == sorted(asins) and list(imap.values()) == list(range(6))  # MMRec: sorted ASIN
    # the repeated (U6, asins[0]) review is dropped: U6 keeps 6 items, the earliest review counts
    tests = {r[0]: r[1].split() + [r[2]] for r in _read_inter(out / "baby.test.inter")}
    umap = common.read_map(str(out / "u_id_mapping.csv"))
    assert len(tests[str(umap["U6"])]) == 6
    assert tests[str(umap["U0"])] == [str(imap[a]) for a in reversed(asins[1:])]
    text = dict(r for r in _read_inter(out / "baby.text"))
    assert text[str(imap["B0000Z"])] == "stroller B0000Z Graco Baby Strollers soft bottle"
    img = np.load(out / "baby.image.npy")
    assert img.shape == (6, 4096)
    for a in asins:
        row = img[imap[a]]
        assert np.array_equal(row, vecs[a]) if a in vecs else not row.any()
    rep = json.load(open(out / "baby.image.report.json"))
    assert sorted(rep["missing"]) == sorted(str(imap[a]) for a in asins[4:])
    # features only for an existing id map, MMRec's mean fill for items without an image
    out2 = tmp_path / "feat"
    amazon2014.main(["--domain", "baby", "--out", str(out2), "--offline", "--features_only",
                     "--item_map", str(out / "i_id_mapping.csv"), "--no_text",
                     "--image_features", str(raw / "image_features.b"), "--missing_image", "mean"])
    img2 = np.load(out2 / "baby.image.npy")
    np.testing.assert_allclose(img2[imap[asins[5]]], np.mean([vecs[a] for a in asins[:4]], 0), rtol=1e-6)


# ------------------------------------------------------------------------------- NineRec
def test_ninerec_from_bundle_then_from_sicsrec_layout(tiny_clip, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    titles = [(f"v{k}", f"标题{k}", f"red baby, kit {k}") for k in range(1, 9)]  # v8: never watched
    with open(raw / "texts.csv", "w", encoding="utf-8") as f:
        for vid, zh, en in titles:
            f.write(f'{vid},{zh},"{en}"\n')
    seqs = {"ua": "v3 v1 v2 v5 v4", "ub": "v2 v6 v7 v1 v3 v4", "uc": "v1 v2 v3 v4 v5 v6 v7",
            "ud": "v1 v2 v3 v4"}  # ud too short (min 5)
    with open(raw / "behaviors.tsv", "w") as f:
        f.write("".join(f"{u}\t{s}\n" for u, s in seqs.items()))
    _save_images(str(raw / "covers"), ["v1", "v2", "v3"], corrupt=["v4"])
    out = tmp_path / "food"
    common_args = ["--text_kind", "clip", "--text_model", tiny_clip, "--image_model", tiny_clip,
                   "--device", "cpu", "--no_progress"]
    res = ninerec.main(["--domain", "food", "--out", str(out), "--behaviors", str(raw / "behaviors.tsv"),
                        "--texts", str(raw / "texts.csv"), "--covers", str(raw / "covers")] + common_args)
    st = res["stats"]
    assert (st["users"], st["items"], st["interactions"]) == (3, 7, 18)
    assert st["sparsity"] == pytest.approx(1 - 18 / 21)
    # item id = order in the title file (0-based); tokens in the split files = id + 1
    tests = [r[1].split() + [r[2]] for r in _read_inter(out / "Bili_Food.test.inter")]
    assert tests[0] == ["3", "1", "2", "5", "4"] and [r[0] for r in _read_inter(out / "Bili_Food.test.inter")] == ["1", "2", "3"]
    assert open(out / "Bili_Food.text.ids").read().split() == [str(k) for k in range(1, 8)]
    rep = json.load(open(out / "Bili_Food.image.report.json"))
    assert rep["missing"] == ["5", "6", "7"] and list(rep["corrupt"]) == ["4"]
    # covers are "<video id>.jpg" in the bundle; rebuilding from the written SICSRec layout with
    # covers renamed to "<0-based id>.jpg" gives identical files
    _save_images(str(raw / "covers0"), ["0", "1", "2"], corrupt=["3"])
    out2 = tmp_path / "food2"
    ninerec.main(["--domain", "food", "--out", str(out2), "--source", str(out),
                  "--covers", str(raw / "covers0")] + common_args)
    for name in ("Bili_Food.train.inter", "Bili_Food.valid.inter", "Bili_Food.test.inter",
                 "Bili_Food_item_sort.csv", "sequential_data.txt", "Bili_Food.text.ids"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes(), name
    np.testing.assert_array_equal(np.load(out / "Bili_Food.text.npy"), np.load(out2 / "Bili_Food.text.npy"))
    np.testing.assert_array_equal(np.load(out / "Bili_Food.image.npy"), np.load(out2 / "Bili_Food.image.npy"))


def test_ninerec_bundle_missing_says_where(tmp_path, capsys):
    assert common.run_main(ninerec.main, ["--domain", "dance", "--out", str(tmp_path)]) == 2
    assert "westlake-repl/NineRec" in capsys.readouterr().err


# ------------------------------------------------------------------------------- encode_text
def test_encode_text_maps_unisrec_text_through_item2index(tiny_clip, tmp_path):
    folder = tmp_path / "uni"
    folder.mkdir()
    texts = {"ASIN9": "lab pipette kit", "ASIN1": "red glove", "ASIN5": "blue bottle"}
    (folder / "Toy.text").write_text("item_id:token\ttext:token_seq\n" +
                                     "".join(f"{a}\t{t}\n" for a, t in sorted(texts.items())))
    (folder / "Toy.item2index").write_text("ASIN5\t0\nASIN9\t1\nASIN1\t2\n")
    res = encode_text.main(["--dataset", "toy", "--folder", str(folder), "--prefix", "Toy",
                            "--out", str(tmp_path / "f"), "--text_kind", "clip",
                            "--text_model", tiny_clip, "--device", "cpu", "--no_progress"])
    assert res["name"] == "Toy" and res["feature"] == "text"
    ids = open(tmp_path / "f" / "Toy.text.ids").read().split()
    assert ids == ["0", "1", "2"]
    from recbole_mm.encoders import build_text_encoder

    enc = build_text_encoder("clip", tiny_clip, device="cpu")
    ref = enc.encode([texts["ASIN5"], texts["ASIN9"], texts["ASIN1"]])
    np.testing.assert_allclose(np.load(tmp_path / "f" / "Toy.text.npy"), ref, atol=1e-5)


def test_encode_text_output_names_follow_dataset_yamls():
    cfg = encode_text.dataset_yaml("scientific")
    assert encode_text.output_name(cfg, "Scientific", "text") == ("Scientific", "text_st")
    cfg = encode_text.dataset_yaml("ninerec_food")
    assert encode_text.output_name(cfg, "Bili_Food", "text") == ("Bili_Food", "text")


def test_real_text_layouts_resolve_to_item_tokens():
    sci = shared_data("amazon2018_scientific")
    texts, layout = encode_text.read_item_texts(sci, "Scientific")
    assert "item2index" in layout and set(texts) == {str(i) for i in range(4385)}
    food = shared_data("ninerec_bili_food")
    texts, _ = encode_text.read_item_texts(food, "Bili_Food", lang="en")
    assert set(texts) == {str(i) for i in range(1, 1580)}
    assert texts["1"].startswith("Visit America's Cheap Pizza Place")


# ------------------------------------------------------------------------------- conventions
def test_benchmark_writer_reproduces_published_splits_exactly(tmp_path):
    """SICSRec's Food splits (from sequential_data.txt, ids + 1) and SGP4SR's Baby splits (from the
    full sequences in test.inter) are regenerated byte for byte (line ends aside)."""
    food = shared_data("ninerec_bili_food")
    seqs = {int(u) + 1: [int(i) + 1 for i in s]
            for u, s in ninerec.read_sequences(os.path.join(food, "sequential_data.txt")).items()}
    common.write_benchmark(str(tmp_path), "Bili_Food", seqs)
    baby = shared_data("amazon2014_baby")
    seqs = {int(r[0]): r[1].split() + [r[2]] for r in _read_inter(os.path.join(baby, "baby.test.inter"))}
    common.write_benchmark(str(tmp_path), "baby", seqs, max_len=0)  # SGP4SR keeps whole histories
    for folder, prefix in ((food, "Bili_Food"), (baby, "baby")):
        for split in ("train", "valid", "test"):
            with open(os.path.join(folder, f"{prefix}.{split}.inter")) as f:
                want = f.read().replace("\r", "")
            got = (tmp_path / f"{prefix}.{split}.inter").read_text()
            assert got == want, (prefix, split)  # compared as one string: a short message
    st = common.sequence_stats(seqs)
    assert (st["users"], st["items"], st["interactions"]) == (19445, 7050, 160792)


def test_k_core_is_iterative():
    inters = [("a", 1), ("a", 2), ("b", 1), ("b", 2), ("c", 1)]
    assert common.k_core(inters, 2, 2) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert common.k_core(inters, 3, 1) == []


def test_make_sample_calls_package_generator(tmp_path):
    folder = make_sample.main(["--out", str(tmp_path / "s"), "--n_users", "20", "--n_items", "15",
                               "--n_clusters", "3"])
    names = sorted(os.listdir(folder))
    assert names == ["mm_sample.image.ids", "mm_sample.image.npy", "mm_sample.inter",
                     "mm_sample.item", "mm_sample.text.npy"]
    assert np.load(os.path.join(folder, "mm_sample.text.npy")).shape[0] == 15
