"""The feature-file contract: alignment by raw token and a clear error for each bad input."""
import numpy as np
import pytest

from recbole_mm.data.features import FeatureFileError, align_feature, read_matrix

TOKENS = {"[PAD]": 0, "10": 1, "11": 2, "12": 3, "13": 4}  # raw token -> internal id


def _npy(tmp_path, arr, name="f.npy"):
    p = tmp_path / name
    np.save(p, arr)
    return str(p)


def test_align_by_ids_file_and_padding_row(tmp_path):
    mat = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) + 1
    path = _npy(tmp_path, mat)
    (tmp_path / "f.ids").write_text("13\n10\n12\n11\n")
    feat = align_feature("text", path, TOKENS, item_num=5)
    assert feat.matrix.shape == (5, 3)
    assert np.all(feat.matrix[0] == 0) and not feat.present[0]
    np.testing.assert_array_equal(feat.matrix[TOKENS["13"]], mat[0])
    np.testing.assert_array_equal(feat.matrix[TOKENS["10"]], mat[1])
    np.testing.assert_array_equal(feat.matrix[TOKENS["11"]], mat[3])
    assert feat.present[1:].all() and feat.coverage == 1.0


def test_row_r_is_token_r_without_ids(tmp_path):
    mat = np.random.default_rng(0).normal(size=(15, 4)).astype(np.float16)
    path = _npy(tmp_path, mat)
    feat = align_feature("image", path, TOKENS, item_num=5)
    assert feat.matrix.dtype == np.float32
    np.testing.assert_allclose(feat.matrix[TOKENS["12"]], mat[12].astype(np.float32))


def test_headerless_float32_with_dim(tmp_path):
    mat = np.random.default_rng(1).normal(size=(14, 8)).astype(np.float32)
    p = tmp_path / "x.feat1CLS"
    mat.tofile(p)
    feat = align_feature("text", str(p), TOKENS, item_num=5, dim=8)
    np.testing.assert_array_equal(feat.matrix[TOKENS["13"]], mat[13])


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FeatureFileError, match=r"modality 'text' not found: .*nope\.npy"):
        align_feature("text", str(tmp_path / "nope.npy"), TOKENS, item_num=5)


def test_size_not_divisible_by_dim(tmp_path):
    p = tmp_path / "x.feat"
    np.zeros(10, dtype=np.float32).tofile(p)
    with pytest.raises(FeatureFileError, match=r"40 bytes.*not a multiple of 4 \* dim = 12"):
        read_matrix(str(p), dim=3)


def test_headerless_needs_dim(tmp_path):
    p = tmp_path / "x.feat"
    np.zeros(12, dtype=np.float32).tofile(p)
    with pytest.raises(FeatureFileError, match="set `dim:`"):
        read_matrix(str(p), dim=None, name="image")


def test_nan_and_inf_are_refused(tmp_path):
    mat = np.ones((14, 2), dtype=np.float32)
    mat[3, 1] = np.nan
    mat[7, 0] = np.inf
    with pytest.raises(FeatureFileError, match=r"NaN or inf in 2 row\(s\), first rows \[3, 7\]"):
        align_feature("text", _npy(tmp_path, mat), TOKENS, item_num=5)


def test_wrong_dtype_and_shape(tmp_path):
    with pytest.raises(FeatureFileError, match="dtype int64; expected float32 or float16"):
        read_matrix(_npy(tmp_path, np.ones((3, 2), dtype=np.int64)))
    with pytest.raises(FeatureFileError, match="expected a 2-d matrix"):
        read_matrix(_npy(tmp_path, np.ones(3, dtype=np.float32), "v.npy"))


def test_coverage_below_threshold(tmp_path):
    mat = np.ones((12, 2), dtype=np.float32)  # tokens 0..11: covers 10 and 11 only
    with pytest.raises(FeatureFileError, match=r"covers 50\.0% of the dataset's 4 items.*min_feature_coverage is 90%"):
        align_feature("text", _npy(tmp_path, mat), TOKENS, item_num=5, min_coverage=0.9)
    feat = align_feature("text", _npy(tmp_path, mat), TOKENS, item_num=5, min_coverage=0.5)
    assert feat.present.tolist() == [False, True, True, False, False]


def test_all_zero_row_is_not_present(tmp_path):
    mat = np.ones((14, 2), dtype=np.float32)
    mat[11] = 0
    feat = align_feature("image", _npy(tmp_path, mat), TOKENS, item_num=5)
    assert not feat.present[TOKENS["11"]] and feat.present[TOKENS["12"]]


def test_duplicate_ids(tmp_path):
    path = _npy(tmp_path, np.ones((3, 2), dtype=np.float32))
    (tmp_path / "f.ids").write_text("10\n11\n10\n")
    with pytest.raises(FeatureFileError, match=r"lists item '10' twice \(lines 1 and 3\)"):
        align_feature("text", path, TOKENS, item_num=5)


def test_ids_count_mismatch(tmp_path):
    path = _npy(tmp_path, np.ones((3, 2), dtype=np.float32))
    (tmp_path / "f.ids").write_text("10\n11\n")
    with pytest.raises(FeatureFileError, match="has 2 ids but its matrix has 3 rows"):
        align_feature("text", path, TOKENS, item_num=5)
