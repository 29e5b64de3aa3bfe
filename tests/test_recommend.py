"""Recommendations from a checkpoint (recbole_mm.recommend) on tiny generated data."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"epochs": 1, "hidden_size": 16, "embedding_size": 16, "inner_size": 16, "n_layers": 1,
         "n_heads": 2, "train_batch_size": 64, "state": "WARNING", "show_progress": False,
         "save_resume_state": False}
#: per-model settings for a one-epoch run on the tiny sample
MODELS = {
    "SASRec": {}, "GRU4Rec": {}, "FDSA": {}, "SASRecF": {},
    "BERT4Rec": {"train_batch_size": 256},  # smaller batches can hold no masked item (NaN loss)
    "SGP4SR": {}, "MISSRec": {},
    "DeCoRec": {"epochs": 2}, "SICSRec": {"epochs": 2},  # one epoch per stage
    "MMSR": {"hidden_size": 24, "inner_size": 48, "fusion": "gated", "fusion_n_heads": 2},
}


def _train(model, tiny_root, folder, **over):
    from recbole_mm.quick_start import run_recbole_mm

    cwd = os.getcwd()
    os.makedirs(folder, exist_ok=True)
    os.chdir(folder)  # RecBole's log/ folders
    try:
        cfg = dict(SMALL, data_path=tiny_root, checkpoint_dir=os.path.join(folder, "saved"))
        cfg.update(MODELS.get(model, {}))
        cfg.update(over)
        return run_recbole_mm(model, "mm_sample", config_dict=cfg)["saved_model_file"]
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def sasrec_ckpt(tiny_root, tmp_path_factory):
    return _train("SASRec", tiny_root, str(tmp_path_factory.mktemp("sasrec")), epochs=2)


def _raw_sequences(tiny_root):
    """Each user's items in time order, read from the raw file (independent of the dataset)."""
    df = pd.read_csv(os.path.join(tiny_root, "mm_sample", "mm_sample.inter"), sep="\t")
    df.columns = [c.split(":")[0] for c in df.columns]
    df = df.sort_values(["user_id", "timestamp"], kind="stable")
    return {str(u): [str(i) for i in g["item_id"]] for u, g in df.groupby("user_id")}


def _direct_topk(rec, raw, user, k, exclude):
    """Top-k by calling the model's full_sort_predict on the user's raw sequence, built here."""
    ds = rec.dataset
    seq = raw[user]
    width = rec.config["MAX_ITEM_LIST_LENGTH"]
    ids = [ds.token2id(ds.iid_field, t) for t in seq[-width:]]
    from recbole.data.interaction import Interaction

    item_seq = torch.zeros(1, width, dtype=torch.long)
    item_seq[0, : len(ids)] = torch.tensor(ids)
    inter = Interaction({ds.item_id_list_field: item_seq,
                         ds.item_list_length_field: torch.tensor([len(ids)]),
                         ds.uid_field: torch.tensor([ds.token2id(ds.uid_field, user)])})
    with torch.no_grad():
        rec.model.eval()
        scores = rec.model.full_sort_predict(inter).view(1, -1)[0, : ds.item_num].clone()
    scores[0] = float("-inf")
    if exclude:
        scores[[ds.token2id(ds.iid_field, t) for t in seq]] = float("-inf")
    values, items = torch.topk(scores, k)
    return [str(t) for t in ds.id2token(ds.iid_field, items.numpy())], values.tolist()


def test_history_is_the_full_known_sequence(sasrec_ckpt, tiny_root):
    from recbole_mm.recommend import Recommender

    rec = Recommender(sasrec_ckpt)
    raw = _raw_sequences(tiny_root)
    users = ["0", "7", "42"]
    inter = rec.histories.interaction(rec.histories.user_ids(users))
    for row, user in enumerate(users):
        n = int(inter["item_length"][row])
        got = rec.histories.item_tokens(inter["item_id_list"][row, :n].numpy())
        assert got == raw[user][-50:]  # the test row's history plus its target


@pytest.mark.parametrize("exclude", [True, False])
def test_recommend_equals_ranking_by_full_sort_predict(sasrec_ckpt, tiny_root, exclude):
    from recbole_mm.recommend import Recommender

    rec = Recommender(sasrec_ckpt)
    raw = _raw_sequences(tiny_root)
    users = ["0", "3", "11", "150"]
    out = rec.recommend(users, topk=10, exclude_seen=exclude)
    assert [r["user"] for r in out] == users
    for r in out:
        assert len(r["items"]) == 10 and len(set(r["items"])) == 10
        items, scores = _direct_topk(rec, raw, r["user"], 10, exclude)
        assert r["items"] == items
        assert r["scores"] == pytest.approx(scores, abs=1e-5)
        assert r["scores"] == sorted(r["scores"], reverse=True)
        seen = set(raw[r["user"]])
        if exclude:
            assert not seen & set(r["items"])
    if not exclude:  # a trained sequential model ranks some of the user's own items high
        assert any(set(raw[r["user"]]) & set(r["items"]) for r in out)


def test_all_users_and_new_history(sasrec_ckpt, tiny_root):
    from recbole_mm.recommend import Recommender

    rec = Recommender(sasrec_ckpt, config_dict={"eval_batch_size": 64})  # several batches
    everyone = rec.recommend(topk=3)
    raw = _raw_sequences(tiny_root)
    assert sorted(r["user"] for r in everyone) == sorted(raw)
    by_user = {r["user"]: r for r in everyone}
    alone = rec.recommend(["5"], topk=3)[0]  # the same in a batch of one
    assert alone["items"] == by_user["5"]["items"]
    assert alone["scores"] == pytest.approx(by_user["5"]["scores"], abs=1e-5)
    # a new history scored like a user with that sequence (SASRec reads only the items)
    hist = raw["5"]
    new = rec.recommend_history(hist, topk=3)
    assert new["user"] is None and new["items"] == by_user["5"]["items"]
    assert new["scores"] == pytest.approx(by_user["5"]["scores"], abs=1e-5)
    kept = rec.recommend_history(hist[:2], topk=5, exclude_seen=False)
    dropped = rec.recommend_history(hist[:2], topk=5)
    assert not set(hist[:2]) & set(dropped["items"])
    assert len(kept["items"]) == 5


def test_faiss_flat_index_equals_full_ranking(sasrec_ckpt):
    from recbole_mm.recommend import Recommender

    users = ["1", "2", "99"]
    full = Recommender(sasrec_ckpt).recommend(users, topk=8)
    flat = Recommender(sasrec_ckpt, faiss="Flat").recommend(users, topk=8)
    for a, b in zip(full, flat):
        assert a["items"] == b["items"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
    ivf = Recommender(sasrec_ckpt, faiss="IVF4,Flat", nprobe=4).recommend(users, topk=8)
    assert all(len(set(r["items"])) == 8 for r in ivf)  # nprobe = nlist: exhaustive
    assert [r["items"] for r in ivf] == [r["items"] for r in full]


def test_bad_inputs_name_what_is_wrong(sasrec_ckpt, tiny_root, tmp_path):
    from recbole_mm.data.sample import write_sample
    from recbole_mm.recommend import Recommender, RecommendError

    rec = Recommender(sasrec_ckpt)
    with pytest.raises(RecommendError, match=r"unknown user token 'nobody' in dataset 'mm_sample'"):
        rec.recommend(["0", "nobody"])
    with pytest.raises(RecommendError, match=r"unknown item tokens 'x1', 'x2'"):
        rec.recommend_history(["1", "x1", "x2"])
    with pytest.raises(RecommendError, match=r"--topk 121 is larger than the catalogue \(120 items\)"):
        rec.recommend(["0"], topk=121)
    with pytest.raises(RecommendError, match="--topk must be a positive integer"):
        rec.recommend(["0"], topk=0)
    with pytest.raises(RecommendError, match=r"Checkpoint .*nothing\.pth not found"):
        Recommender(str(tmp_path / "nothing.pth"))
    cut = tmp_path / "cut.pth"
    data = open(sasrec_ckpt, "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(RecommendError, match=r"cut\.pth is not a complete torch checkpoint"):
        Recommender(str(cut))
    other = tmp_path / "other"
    write_sample(str(other / "mm_sample"), n_users=150, n_items=90, n_clusters=6, text_dim=16,
                 image_dim=12, min_len=5, max_len=12)
    with pytest.raises(RecommendError, match=r"does not fit dataset 'mm_sample' as it is now .*"
                                             r"'item_embedding.weight'"):
        Recommender(sasrec_ckpt, config_dict={"data_path": str(other)})
    with pytest.raises(RecommendError, match="BERT4Rec does not declare an inner-product score"):
        Recommender(_train("BERT4Rec", tiny_root, str(tmp_path / "b")), faiss="Flat")


def _cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "recbole_mm.recommend", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=600)


def test_cli_json_lines_csv_and_errors(sasrec_ckpt, tmp_path):
    from recbole_mm.recommend import Recommender

    expected = Recommender(sasrec_ckpt).recommend(["0", "4"], topk=4)
    res = _cli(["--checkpoint", sasrec_ckpt, "--users", "0,4", "--topk", "4"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(d["user"], d["items"]) for d in lines] == [(r["user"], r["items"]) for r in expected]
    (tmp_path / "users.txt").write_text("0\n\n4\n")
    out = tmp_path / "recs" / "out.csv"
    res = _cli(["--checkpoint", sasrec_ckpt, "--users-file", "users.txt", "--topk", "4",
                "--out", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert [(r["user"], r["rank"], r["item"]) for r in rows][:4] == \
        [("0", str(i + 1), item) for i, item in enumerate(expected[0]["items"])]
    assert len(rows) == 8 and os.listdir(out.parent) == ["out.csv"]  # no temporary left
    res = _cli(["--checkpoint", sasrec_ckpt, "--users", "ghost", "--out", str(tmp_path / "x.csv")],
               tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(lines) == 1 and "'ghost'" in lines[0]
    assert not (tmp_path / "x.csv").exists()
    res = _cli(["--checkpoint", sasrec_ckpt, "--users", "0", "--topk", "500"], tmp_path)
    assert res.returncode == 2 and "larger than the catalogue (120 items)" in res.stderr


@pytest.mark.parametrize("model", [m for m in MODELS if m != "SASRec"])
def test_every_model_recommends_by_its_own_full_sort_predict(model, tiny_root, tmp_path):
    from recbole_mm.recommend import Recommender

    rec = Recommender(_train(model, tiny_root, str(tmp_path)))
    raw = _raw_sequences(tiny_root)
    users = ["0", "9"]
    for r in rec.recommend(users, topk=5):
        items, scores = _direct_topk(rec, raw, r["user"], 5, exclude=True)
        assert r["items"] == items and len(set(items)) == 5
        assert r["scores"] == pytest.approx(scores, abs=1e-4)
