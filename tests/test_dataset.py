"""MMSequentialDataset: layouts, alignment, feature exposure, training-only derived structures."""
import os
import shutil

import numpy as np
import pytest

from conftest import shared_data


def _id2tok(ds):
    return ds.field2id_token[ds.iid_field]


def test_sample_modalities_aligned_by_raw_token(make_data, tiny_root):
    config, train, valid, test = make_data("SASRec")
    ds = train._dataset
    assert ds.split_name == "train" and set(ds.modalities) == {"text", "image"}
    text = np.load(os.path.join(tiny_root, "mm_sample", "mm_sample.text.npy"))
    image = np.load(os.path.join(tiny_root, "mm_sample", "mm_sample.image.npy"))
    ids = open(os.path.join(tiny_root, "mm_sample", "mm_sample.image.ids")).read().split()
    row_of = {t: r for r, t in enumerate(ids)}
    tok = _id2tok(ds)
    for iid in (1, 5, ds.item_num - 1):
        np.testing.assert_array_equal(ds.modality_features["text"][iid].numpy(), text[int(tok[iid])])
        np.testing.assert_array_equal(ds.modality_features["image"][iid].numpy(), image[row_of[tok[iid]]])
    assert ds.modality_features["text"][0].abs().sum() == 0
    assert not ds.modality_present["text"][0] and ds.modality_present["text"][1:].all()


def test_features_exposed_to_recbole_feature_models(make_data):
    config, train, _, _ = make_data("SASRecF")
    ds = train._dataset
    feat = ds.get_item_feature()
    assert feat["text"].shape == (ds.item_num, 16, 2)
    np.testing.assert_array_equal(feat["text"][..., 0].numpy(), ds.modality_features["text"].numpy())
    assert "text" in config["numerical_features"] and ds.num("text") == 17


def test_training_sequences_rebuild_full_history(make_data, tiny_root):
    import pandas as pd

    _, train, _, _ = make_data("SASRec", MAX_ITEM_LIST_LENGTH=3)  # windows shorter than histories
    ds = train._dataset
    raw = pd.read_csv(os.path.join(tiny_root, "mm_sample", "mm_sample.inter"), sep="\t")
    raw.columns = ["u", "i", "t"]
    tok = _id2tok(ds)
    utok = ds.field2id_token[ds.uid_field]
    seqs = ds.training_sequences()
    assert len(seqs) == 200
    uids = np.unique(train._dataset.inter_feat[ds.uid_field].numpy())
    for uid, seq in list(zip(uids, seqs))[:20]:
        full = raw[raw.u == int(utok[uid])].sort_values("t").i.astype(str).tolist()
        assert [tok[i] for i in seq] == full[:-2]  # everything but the valid and test items


def test_no_leakage_changing_test_items_keeps_graph(tiny_root, tmp_path, make_config):
    """Only the last (test) interaction of each user changes: graphs must not change."""
    import pandas as pd
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    root2 = tmp_path / "data2"
    shutil.copytree(os.path.join(tiny_root, "mm_sample"), root2 / "mm_sample")
    path = root2 / "mm_sample" / "mm_sample.inter"
    df = pd.read_csv(path, sep="\t", dtype=str)
    last = df.groupby(df.columns[0]).tail(1).index
    rng = np.random.default_rng(0)
    df.loc[last, df.columns[1]] = rng.choice(df[df.columns[1]].unique(), size=len(last))
    df.to_csv(path, sep="\t", index=False)

    def graph(root):
        cfg = make_config("SASRec", data_path=str(root), derived_cache=False)
        train, _, _ = data_preparation(cfg, create_dataset(cfg))
        ds = train._dataset
        tok = _id2tok(ds)
        coo = ds.cooccurrence(weight="inverse_distance").tocoo()
        return {(tok[r], tok[c]): round(float(v), 5) for r, c, v in zip(coo.row, coo.col, coo.data)}

    g1, g2 = graph(tiny_root), graph(root2)
    assert g1 == g2 and len(g1) > 100


def test_derived_structures_refuse_eval_splits(make_data):
    _, train, valid, test = make_data("SASRec")
    with pytest.raises(RuntimeError, match="training split, not 'test'"):
        test._dataset.training_sequences()


def test_derived_cache_reuses_entries(make_data, tmp_path):
    _, train, _, _ = make_data("SASRec", derived_cache_dir=str(tmp_path / "cache"))
    ds = train._dataset
    a = ds.cooccurrence(weight="count")
    files = list((tmp_path / "cache" / "mm_sample").glob("cooc-*.npz"))
    assert len(files) == 1
    b = ds.cooccurrence(weight="count")
    assert (a != b).nnz == 0
    ds.cooccurrence(weight="count", topk=3)
    assert len(list((tmp_path / "cache" / "mm_sample").glob("cooc-*.npz"))) == 2
    km1 = ds.kmeans(ds.modality_features["text"][1:].numpy(), 4)
    km2 = ds.kmeans(ds.modality_features["text"][1:].numpy(), 4)
    np.testing.assert_array_equal(km1[1], km2[1])
    g = ds.knn("text", 5)
    assert g.shape == (ds.item_num, ds.item_num) and g.getnnz(axis=1).max() == 5


def test_dataset_level_feature_errors(make_config, tiny_root):
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.quick_start import create_dataset

    cfg = make_config("SASRec", modalities={"text": {"file": "missing.npy"}})
    with pytest.raises(FeatureFileError, match=r"missing\.npy"):
        create_dataset(cfg)
    cfg = make_config("SASRec", modalities={"text": {"file": "missing.npy", "optional": True,
                                                       "build": "python make_it.py"}})
    ds = create_dataset(cfg)
    with pytest.raises(FeatureFileError, match=r"'text' needs .*missing\.npy \(build it: python make_it\.py\)"):
        ds.require_modalities(["text"], "SGP4SR")


def test_sequence_file_layout(make_config, tmp_path):
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    folder = tmp_path / "seqroot" / "seqs"
    folder.mkdir(parents=True)
    lines = [f"u{u} " + " ".join(f"i{(u * 3 + k) % 25}" for k in range(6 + u % 3)) for u in range(40)]
    (folder / "Seqs.txt").write_text("\n".join(lines) + "\n")
    cfg = make_config("SASRec", dataset="seqs", data_path=str(tmp_path / "seqroot"),
                      file_prefix="Seqs", sequence_file="Seqs.txt",
                      load_col={"inter": ["user_id", "item_id", "timestamp"]})
    ds = create_dataset(cfg)
    assert ds.user_num == 41 and ds.item_num == 26
    train, valid, test = data_preparation(cfg, ds)
    assert len(test._dataset.inter_feat) == 40
    seq0 = train._dataset.training_sequences()[0]
    tok = _id2tok(train._dataset)
    assert [tok[i] for i in seq0] == [f"i{k}" for k in range(4)]  # u0: 6 items, last two held out

    (folder / "Seqs.txt").write_text("u1\n")
    with pytest.raises(ValueError, match=r"Seqs\.txt, line 1: expected 'user item"):
        create_dataset(cfg)


def test_missing_benchmark_file_is_named(make_config, tmp_path):
    from recbole_mm.data.dataset import DatasetFilesError
    from recbole_mm.quick_start import create_dataset

    (tmp_path / "r" / "bm").mkdir(parents=True)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n1\t1 2\t3\n"
    for part in ("valid", "test"):
        (tmp_path / "r" / "bm" / f"bm.{part}.inter").write_text(head)
    cfg = make_config("SASRec", dataset="bm", data_path=str(tmp_path / "r"),
                      benchmark_filename=["train", "valid", "test"],
                      alias_of_item_id=["item_id_list"],
                      load_col={"inter": ["user_id", "item_id_list", "item_id"]})
    with pytest.raises(DatasetFilesError, match=r"bm\.train\.inter.*benchmark_rebuild_train"):
        create_dataset(cfg)


def test_benchmark_rebuild_train_from_valid(make_config, tmp_path):
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    folder = tmp_path / "r" / "bm"
    folder.mkdir(parents=True)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    seqs = {u: [(u + k) % 9 + 1 for k in range(5 + u % 3)] for u in range(12)}
    (folder / "bm.valid.inter").write_text(head + "".join(
        f"{u}\t{' '.join(map(str, s[:-2]))}\t{s[-2]}\n" for u, s in seqs.items()))
    (folder / "bm.test.inter").write_text(head + "".join(
        f"{u}\t{' '.join(map(str, s[:-1]))}\t{s[-1]}\n" for u, s in seqs.items()))
    cfg = make_config("SASRec", dataset="bm", data_path=str(tmp_path / "r"),
                      benchmark_filename=["train", "valid", "test"], benchmark_rebuild_train=True,
                      alias_of_item_id=["item_id_list"],
                      load_col={"inter": ["user_id", "item_id_list", "item_id"]})
    train, valid, test = data_preparation(cfg, create_dataset(cfg))
    assert len(train._dataset.inter_feat) == sum(len(s) - 3 for s in seqs.values())
    tok = _id2tok(train._dataset)
    utok = train._dataset.field2id_token["user_id"]
    got = {utok[u]: [tok[i] for i in s] for u, s in zip(
        np.unique(train._dataset.inter_feat["user_id"].numpy()), train._dataset.training_sequences())}
    assert got == {str(u): [str(i) for i in s[:-2]] for u, s in seqs.items()}


def test_scientific_mm_real_data(make_config):
    shared_data("amazon2018_scientific_mm")
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    cfg = make_config("SASRec", dataset="scientific_mm")
    ds = create_dataset(cfg)
    assert ds.user_num == 2928 + 1 and ds.item_num == 1585 + 1
    train, valid, test = data_preparation(cfg, ds)
    assert len(test._dataset.inter_feat) == 2928
    seqs = train._dataset.training_sequences()
    assert sum(len(s) for s in seqs) == 16784 - 2928  # training part of DeCoRec Table 1's count
    raw = np.fromfile(os.path.join(cfg["data_path"], "Scientific.feat3CLS"), np.float32).reshape(-1, 512)
    tok = _id2tok(ds)
    for iid in (1, 700, 1585):
        np.testing.assert_array_equal(ds.modality_features["image"][iid].numpy(), raw[int(tok[iid])])
    assert ds.modality_present["text"][1:].all()


def test_benchmark_histories_keep_the_latest_items(make_config):
    """Histories longer than MAX_ITEM_LIST_LENGTH keep their latest items (no overflow)."""
    shared_data("amazon2018_scientific_mm")
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    cfg = make_config("SASRec", dataset="scientific_mm", MAX_ITEM_LIST_LENGTH=5)
    ds = create_dataset(cfg)
    train, valid, test = data_preparation(cfg, ds)
    feat = test._dataset.inter_feat
    assert feat["item_id_list"].shape[1] == 5 and int(feat["item_length"].max()) == 5
    tok = _id2tok(ds)
    utok = ds.field2id_token["user_id"]
    row = int(np.flatnonzero(np.array([utok[u] for u in feat["user_id"].numpy()]) == "1")[0])
    assert [tok[i] for i in feat["item_id_list"][row].tolist()] == ["10", "11", "12", "13", "14"]
