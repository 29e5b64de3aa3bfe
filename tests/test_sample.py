"""The generated demo dataset: deterministic, the documented size, features that carry signal."""
import filecmp

import numpy as np

from recbole_mm.data.sample import DEFAULTS, generate, write_sample


def test_sample_is_deterministic(tmp_path):
    a = write_sample(str(tmp_path / "a"), n_users=50, n_items=40)
    b = write_sample(str(tmp_path / "b"), n_users=50, n_items=40)
    for suffix in ("inter", "text.npy", "image.npy", "image.ids", "item"):
        assert filecmp.cmp(f"{a}/mm_sample.{suffix}", f"{b}/mm_sample.{suffix}", shallow=False)


def test_sample_size_and_signal():
    d = generate(**DEFAULTS)
    assert len(np.unique(d["users"])) == 1000 and len(np.unique(d["items"])) <= 500
    assert 0.9 * 500 <= len(np.unique(d["items"]))
    cluster = d["cluster"]
    # users move inside clusters: consecutive items mostly share one
    same_user = d["users"][1:] == d["users"][:-1]
    stay = (cluster[d["items"][1:]] == cluster[d["items"][:-1]])[same_user].mean()
    assert stay > 0.7
    # each modality is a view of the cluster: the nearest item by cosine is in the same cluster
    for name in ("text", "image"):
        x = d[name] / np.linalg.norm(d[name], axis=1, keepdims=True)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        nn = sim.argmax(1)
        assert (cluster[nn] == cluster).mean() > 0.8, name
