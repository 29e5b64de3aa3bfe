"""MMRec folders read as they are: ``<name>.inter`` with its x_label split, ``text_feat.npy`` /
``image_feat.npy`` with ``i_id_mapping.csv`` as the row -> item map, the item-map check; and the
headline ``SGP4SR`` on the real Baby split with STAND-IN features (random numbers in MMRec's
names, shapes and dtype: a test of the data path and its cost, never a quality result)."""
import os
import time

import numpy as np
import pytest

from conftest import SHARED_DATA, shared_data

# A toy MMRec folder: users 0..5, items 0..7; x_label 0 train, 1 valid, 2 test (MMRec's columns).
TOY = [  # user, item, timestamp, x_label
    (0, 0, 10, 0), (0, 1, 11, 0), (0, 2, 12, 0), (0, 3, 13, 1), (0, 4, 14, 2),
    (1, 2, 20, 0), (1, 5, 21, 0), (1, 6, 22, 1), (1, 7, 23, 2),
    (2, 1, 5, 0), (2, 3, 6, 0), (2, 0, 7, 0), (2, 6, 8, 0), (2, 2, 9, 1), (2, 5, 1, 2),  # test item earliest in time
    (3, 4, 30, 0), (3, 7, 31, 1), (3, 0, 32, 2),
    (4, 3, 40, 0), (4, 2, 41, 0), (4, 1, 42, 0), (4, 5, 43, 2),
    (5, 6, 50, 1),  # no train item: its only interaction has no history, so it is no target
]


def write_mmrec_folder(folder, rows=TOY, n_items=8, text_dim=6, image_dim=5, map_items=None):
    """MMRec's files: <name>.inter, text_feat.npy, image_feat.npy (row r = itemID r), i_id_mapping.csv."""
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(folder)
    with open(os.path.join(folder, f"{name}.inter"), "w") as f:
        f.write("userID\titemID\trating\ttimestamp\tx_label\n")
        f.writelines(f"{u}\t{i}\t5.0\t{t}\t{x}\n" for u, i, t, x in rows)
    map_items = n_items if map_items is None else map_items
    with open(os.path.join(folder, "i_id_mapping.csv"), "w") as f:
        f.write("asin\titemID\n")
        f.writelines(f"B{r:09d}\t{r}\n" for r in range(map_items))
    with open(os.path.join(folder, "u_id_mapping.csv"), "w") as f:
        f.write("user_id\tuserID\n")
        f.writelines(f"A{u:05d}\t{u}\n" for u in sorted({r[0] for r in rows}))
    text = np.arange(n_items * text_dim, dtype=np.float32).reshape(n_items, text_dim) + 1
    image = -np.arange(n_items * image_dim, dtype=np.float32).reshape(n_items, image_dim) - 1
    np.save(os.path.join(folder, "text_feat.npy"), text)
    np.save(os.path.join(folder, "image_feat.npy"), image)
    return text, image


def _tokens(ds, field="item_id"):
    return ds.field2id_token[field]


def _rows(ds):
    """{(user, target): history} of a split, in raw tokens."""
    feat = ds.inter_feat
    it, ut = _tokens(ds), _tokens(ds, "user_id")
    out = {}
    for u, i, h, n in zip(feat["user_id"].numpy(), feat["item_id"].numpy(),
                          feat["item_id_list"].numpy(), feat["item_length"].numpy()):
        out[(ut[u], it[i])] = [it[x] for x in h[:n]]
    return out


def test_mmrec_folder_as_data_root(make_config, tmp_path):
    """--data_path at an MMRec root, a dataset without a yaml: x_label split and MMRec features."""
    from recbole.data import data_preparation

    from recbole_mm.quick_start import create_dataset

    root = tmp_path / "MMRec" / "data"
    text, image = write_mmrec_folder(str(root / "toy"))
    cfg = make_config("SASRec", dataset="toy", data_path=str(root))
    ds = create_dataset(cfg)
    assert ds.mmrec_split_file == str(root / "toy" / "toy.inter")
    train, valid, test = (d.dataset for d in data_preparation(cfg, ds))
    tr, va, te = _rows(train), _rows(valid), _rows(test)
    # train targets: every train item but each user's first; histories hold train items only
    assert tr[("0", "2")] == ["0", "1"] and ("0", "0") not in tr
    assert tr[("2", "6")] == ["1", "3", "0"]
    # valid sees all train items; test sees train + valid, even when its timestamp is earlier
    assert va[("0", "3")] == ["0", "1", "2"] and te[("0", "4")] == ["0", "1", "2", "3"]
    assert te[("2", "5")] == ["1", "3", "0", "6", "2"]
    assert ("5", "6") not in va  # no history: no target
    assert len(tr) == 8 and len(va) == 4 and len(te) == 5
    # features: row r of text_feat.npy is itemID r, aligned to internal ids
    it = _tokens(ds)
    for iid in range(1, ds.item_num):
        np.testing.assert_array_equal(ds.modality_features["text"][iid].numpy(), text[int(it[iid])])
        np.testing.assert_array_equal(ds.modality_features["image"][iid].numpy(), image[int(it[iid])])
    assert ds.modality_present["text"][1:].all()


def test_baby_yaml_finds_mmrec_folder_in_roots(make_config, tmp_path, monkeypatch):
    """--dataset=baby with only MMRec's baby/ folder in a data root: its baby.inter is the split."""
    from recbole_mm.quick_start import create_dataset

    root = tmp_path / "roots"
    write_mmrec_folder(str(root / "baby"))
    cfg = make_config("SASRec", dataset="baby", data_path=str(root))
    assert cfg["data_path"] == str(root / "baby") and cfg["mmrec_path"] == str(root / "baby")
    ds = create_dataset(cfg)
    assert ds.mmrec_split_file.endswith(os.path.join("baby", "baby.inter"))
    assert set(ds.modality_features) == {"text", "image"} and ds.modality_features["text"].shape[1] == 6


def test_item_map_mismatch_is_refused(make_config, tmp_path):
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.quick_start import create_dataset

    root = tmp_path / "r"
    write_mmrec_folder(str(root / "toy"), n_items=12, map_items=12)  # 4 items the split never uses
    cfg = make_config("SASRec", dataset="toy", data_path=str(root))
    with pytest.raises(FeatureFileError, match=r"i_id_mapping\.csv \(12 items\) does not match the "
                                               r"items of .*toy\.inter \(8 items\).*4 mapped item"):
        create_dataset(cfg)


def test_feature_rows_must_match_item_map(tmp_path):
    from recbole_mm.data.features import FeatureFileError, align_feature

    write_mmrec_folder(str(tmp_path / "toy"), n_items=8, map_items=7)
    with pytest.raises(FeatureFileError, match=r"text_feat\.npy.*has 8 rows but its item map .*"
                                               r"i_id_mapping\.csv lists 7 items"):
        align_feature("text", str(tmp_path / "toy" / "text_feat.npy"), {"[PAD]": 0, "1": 1}, 2,
                      item_map=str(tmp_path / "toy" / "i_id_mapping.csv"))


def test_item_map_errors_name_the_line(tmp_path):
    from recbole_mm.data.features import FeatureFileError, read_item_map

    p = tmp_path / "i_id_mapping.csv"
    p.write_text("asin\titemID\nA\t0\nB\tx\n")
    with pytest.raises(FeatureFileError, match=r"i_id_mapping\.csv, line 3: expected 'asin<TAB>itemID'"):
        read_item_map(str(p))
    p.write_text("asin\titemID\nA\t0\nB\t2\n")
    with pytest.raises(FeatureFileError, match=r"itemIDs must be 0\.\.1 .*got 0\.\.2"):
        read_item_map(str(p))


def test_bad_x_label_names_the_row(make_config, tmp_path):
    from recbole_mm.data.dataset import DatasetFilesError
    from recbole_mm.quick_start import create_dataset

    rows = list(TOY)
    rows[3] = (0, 3, 13, 7)
    write_mmrec_folder(str(tmp_path / "r" / "toy"), rows=rows)
    cfg = make_config("SASRec", dataset="toy", data_path=str(tmp_path / "r"))
    with pytest.raises(DatasetFilesError, match=r"toy\.inter, row 5: column 'x_label' must be 0 "
                                                r"\(train\), 1 \(valid\) or 2 \(test\), got 7"):
        create_dataset(cfg)


# ------------------------------------------------------------------ the headline command
BABY_ITEMS, TEXT_DIM, IMAGE_DIM = 7050, 384, 4096


@pytest.fixture
def baby_standins(tmp_path):
    """STAND-IN MMRec feature files for Baby in a data root: MMRec's names, shapes and dtype,
    random values (never a quality result); the item map is the real one, read from the split
    folder in place and copied into the temporary folder only."""
    from recbole_mm.data.sample import write_mmrec_standins

    split = shared_data("amazon2014_baby")
    write_mmrec_standins(split, str(tmp_path / "standin_root" / "baby"), BABY_ITEMS, TEXT_DIM,
                         IMAGE_DIM)
    return str(tmp_path / "standin_root")


def test_sgp4sr_baby_headline_with_standin_features(baby_standins, make_config, tmp_path, monkeypatch):
    """run_recbole_mm.py --model=SGP4SR --dataset=baby, in Python: the real Baby split from the
    usual roots, MMRec-named stand-in features found through $RECBOLE_MM_DATA, the model built,
    one training batch (loss + backward) and one full-ranking evaluation batch."""
    import torch
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_mm.model.sgp4sr import SGP4SR
    from recbole_mm.quick_start import create_dataset

    monkeypatch.setenv("RECBOLE_MM_DATA", baby_standins)
    t0 = time.perf_counter()
    cfg = make_config("SGP4SR", dataset="baby", derived_cache_dir=str(tmp_path / "cache"),
                      hidden_size=16, n_layers=1, n_heads=2, train_batch_size=256, eval_batch_size=256)
    assert cfg["data_path"] == os.path.join(SHARED_DATA, "amazon2014_baby")
    assert cfg["mmrec_path"] == os.path.join(baby_standins, "baby")
    init_seed(cfg["seed"], True)
    ds = create_dataset(cfg)
    assert ds.item_num == BABY_ITEMS + 1 and ds.user_num == 19445 + 1
    assert ds.modality_features["text"].shape == (BABY_ITEMS + 1, TEXT_DIM)
    assert ds.modality_features["image"].shape == (BABY_ITEMS + 1, IMAGE_DIM)
    assert ds.modality_present["image"][1:].all()
    # row r of the MMRec file is itemID r
    raw = np.load(os.path.join(baby_standins, "baby", "text_feat.npy"), mmap_mode="r")
    tok = ds.field2id_token["item_id"]
    for iid in (1, 3000, BABY_ITEMS):
        np.testing.assert_array_equal(ds.modality_features["text"][iid].numpy(), raw[int(tok[iid])])
    train, valid, test = data_preparation(cfg, ds)
    assert len(test.dataset.inter_feat) == 19445
    model = SGP4SR(cfg, train.dataset)
    batch = next(iter(train))
    batch = batch[0] if isinstance(batch, tuple) else batch
    model.train()
    loss = model.calculate_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    ev = next(iter(test))
    with torch.no_grad():
        scores = model.full_sort_predict(ev[0])
    assert scores.shape == (len(ev[0]), BABY_ITEMS + 1) and torch.isfinite(scores).all()
    print(f"[headline] SGP4SR/baby with stand-in features: {time.perf_counter() - t0:.1f} s")


def test_mmrec_features_refused_for_another_split(tmp_path, make_config, monkeypatch):
    """Baby's split with a (stand-in) MMRec folder of another size: the item check refuses it."""
    shared_data("amazon2014_baby")
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.quick_start import create_dataset

    root = tmp_path / "other"
    write_mmrec_folder(str(root / "baby"), n_items=9000, text_dim=2, image_dim=2)
    monkeypatch.setenv("RECBOLE_MM_DATA", str(root))
    cfg = make_config("SASRec", dataset="baby")
    with pytest.raises(FeatureFileError, match=r"\(9000 items\) does not match the items of .*"
                                               r"baby\.\{train,valid,test\}\.inter \(7050 items\)"):
        create_dataset(cfg)
