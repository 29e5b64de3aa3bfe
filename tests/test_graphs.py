"""Sparse graph and clustering utilities against hand-computed small cases."""
import numpy as np
import pytest
import scipy.sparse as sp

from recbole_mm.data import graphs
from recbole_mm.data.cluster import kmeans


def dense(m):
    return np.asarray(sp.csr_matrix(m).todense())


def test_cooccurrence_counts_hand_case():
    a = graphs.cooccurrence_matrix([[1, 2, 3], [2, 3], [0, 4]], n_items=5)
    want = np.zeros((5, 5))
    for i, j, v in [(1, 2, 1), (1, 3, 1), (2, 3, 2)]:
        want[i, j] = want[j, i] = v
    np.testing.assert_allclose(dense(a), want)
    assert a.dtype == np.float32 and sp.isspmatrix_csr(a)


def test_cooccurrence_inverse_distance_with_offset_and_window():
    seqs = [[1, 2, 3, 1]]  # the repeated item 1 skips its self pair
    a = graphs.cooccurrence_matrix(seqs, 4, weight="inverse_distance", distance_offset=1)
    want = np.zeros((4, 4))
    # pairs (p,q): (0,1)=1/2 (1,2) (0,2)=1/3 (1,3) (0,3)=self (1,2)=1/2 (2,3) (1,3)=1/3 (2,1) (2,3)=1/2 (3,1)
    for i, j, v in [(1, 2, 1 / 2 + 1 / 3), (1, 3, 1 / 3 + 1 / 2), (2, 3, 1 / 2)]:
        want[i, j] = want[j, i] = v
    np.testing.assert_allclose(dense(a), want, rtol=1e-6)
    w = graphs.cooccurrence_matrix(seqs, 4, weight="inverse_distance", window=1)
    want1 = np.zeros((4, 4))
    for i, j, v in [(1, 2, 1.0), (2, 3, 1.0), (3, 1, 1.0)]:
        want1[i, j] = want1[j, i] = v
    np.testing.assert_allclose(dense(w), want1)


def test_cooccurrence_self_loops_and_topk():
    a = graphs.cooccurrence_matrix([[1, 1, 2]], 3, self_loops=True)
    assert dense(a)[1, 1] == 1 and dense(a)[1, 2] == 2
    b = graphs.cooccurrence_matrix([[1, 2, 3], [1, 2], [1, 2], [1, 3]], 4, topk=1)
    d = dense(b)
    assert (np.count_nonzero(d, axis=1) <= 1).all()
    assert d[1, 2] == 3 and d[1, 3] == 0


def test_cooccurrence_rejects_unknown_weight():
    with pytest.raises(ValueError, match="co-occurrence weight must be one of"):
        graphs.cooccurrence_matrix([[1, 2]], 3, weight="pmi")


def test_cooccurrence_chunked_equals_single_pass():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, size=rng.integers(2, 15)) for _ in range(300)]
    a = graphs.cooccurrence_matrix(seqs, 50, weight="inverse_distance")
    b = graphs.cooccurrence_matrix(seqs, 50, weight="inverse_distance", chunk_pairs=7)
    np.testing.assert_allclose(dense(a), dense(b), rtol=1e-5)
    np.testing.assert_allclose(dense(a), dense(a).T, rtol=1e-6)


@pytest.mark.parametrize("mode", ["row", "sym", "rc", "row_l2", "none"])
def test_normalisations_match_dense_formulas(mode):
    rng = np.random.default_rng(1)
    m = rng.random((6, 6)) * (rng.random((6, 6)) > 0.5)
    m = m + m.T
    m[5] = 0
    m[:, 5] = 0  # an empty row/column stays empty
    r, c = m.sum(1), m.sum(0)
    inv = lambda v: np.where(v > 0, 1 / np.where(v > 0, v, 1), 0)  # noqa: E731
    want = {
        "row": inv(r)[:, None] * m,
        "sym": np.sqrt(inv(r))[:, None] * m * np.sqrt(inv(r))[None, :],
        "rc": inv(r)[:, None] * m * inv(c)[None, :],
        "row_l2": inv(np.linalg.norm(m, axis=1))[:, None] * m,
        "none": m,
    }[mode]
    np.testing.assert_allclose(dense(graphs.normalize(sp.csr_matrix(m), mode)), want, rtol=1e-5, atol=1e-7)


def test_knn_matches_brute_force_and_excludes_self_padding_and_absent():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    x[0] = 0  # padding
    present = np.ones(30, dtype=bool)
    present[7] = False
    g, idx, sims = graphs.knn_graph(x, 4, present=present, return_arrays=True)
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    cos = xn @ xn.T
    for i in range(1, 30):
        if i == 7:
            assert (idx[i] == -1).all()
            continue
        cand = [j for j in range(1, 30) if j not in (i, 7)]
        best = sorted(cand, key=lambda j: -cos[i, j])[:4]
        assert idx[i].tolist() == best
        np.testing.assert_allclose(sims[i], cos[i, best], rtol=1e-5)
    assert (idx[0] == -1).all()
    d = dense(g)
    assert d[:, 0].sum() == 0 and d[:, 7].sum() == 0 and np.all(np.diag(d) == 0)
    assert (np.count_nonzero(d, axis=1) <= 4).all()


def test_knn_include_self_and_ivf_path():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    _, idx, _ = graphs.knn_graph(x, 3, include_self=True, return_arrays=True)
    assert (idx[1:, 0] == np.arange(1, 400)).all()
    _, exact, _ = graphs.knn_graph(x, 5, return_arrays=True)
    _, approx, _ = graphs.knn_graph(x, 5, exact_max_items=10, nprobe=1000, return_arrays=True)
    assert (exact[1:] == approx[1:]).mean() > 0.95  # IVF probing every list is exact up to ties


def test_to_torch_sparse_round_trip():
    m = sp.random(7, 7, density=0.3, random_state=0, format="csr", dtype=np.float32)
    t = graphs.to_torch_sparse(m)
    np.testing.assert_allclose(t.to_dense().numpy(), m.toarray())


def test_kmeans_deterministic_and_shapes():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.normal(loc=c, size=(40, 6)) for c in (-5, 0, 5)]).astype(np.float32)
    c1, a1 = kmeans(x, 3, seed=11)
    c2, a2 = kmeans(x, 3, seed=11)
    assert c1.shape == (3, 6) and a1.shape == (120,) and a1.dtype == np.int64
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_allclose(c1, c2)
    # the three blobs are recovered
    assert all(len(set(a1[i * 40:(i + 1) * 40])) == 1 for i in range(3))
    assert len(set(a1)) == 3


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k=5 clusters requested for 3 points"):
        kmeans(np.ones((3, 2), dtype=np.float32), 5)
