"""The project's own demo dataset ``mm_sample``: generated, deterministic, with real signal.

Items live in latent clusters; a user's sequence walks mostly inside one cluster and sometimes
jumps. Text and image features are two different noisy views of the item's cluster (plus an
item-specific part), so a model that reads features can tell which items belong together even
for items it rarely saw, while an ID-only model has to learn that from co-occurrences.

Files (atomic RecBole format plus the feature-file contract):
``mm_sample.inter`` (user_id, item_id, timestamp), ``mm_sample.text.npy`` (row r = item token r),
``mm_sample.image.npy`` + ``mm_sample.image.ids`` (rows in another order, named by the ids file),
``mm_sample.item`` (item_id, title) for text encoders.
"""
from __future__ import annotations

import os

import numpy as np

from recbole_mm.encoders.io import atomic_save_npy, atomic_write_text

DEFAULTS = dict(n_users=1000, n_items=500, n_clusters=10, text_dim=64, image_dim=48,
                min_len=5, max_len=20, stay_prob=0.85, seed=7)

_WORDS = ["red", "blue", "green", "soft", "metal", "wooden", "small", "large", "bright", "classic",
          "travel", "kitchen", "garden", "sport", "baby", "office", "lab", "music", "winter", "summer"]


def generate(n_users=1000, n_items=500, n_clusters=10, text_dim=64, image_dim=48, min_len=5,
             max_len=20, stay_prob=0.85, seed=7):
    """Return a dict of arrays describing the sample (pure function of its arguments)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, n_clusters, size=n_items)
    cluster[:n_clusters] = np.arange(n_clusters)  # every cluster non-empty
    members = [np.flatnonzero(cluster == c) for c in range(n_clusters)]
    # popularity inside a cluster: Zipf-like
    pop = 1.0 / (1.0 + rng.permutation(n_items)) ** 0.6

    latent = rng.normal(size=(n_clusters, 32))
    proj_t = rng.normal(size=(32, text_dim)) / np.sqrt(32)
    proj_v = rng.normal(size=(32, image_dim)) / np.sqrt(32)
    item_lat = latent[cluster] + 0.35 * rng.normal(size=(n_items, 32))
    text = item_lat @ proj_t + 0.3 * rng.normal(size=(n_items, text_dim))
    image = item_lat @ proj_v + 0.3 * rng.normal(size=(n_items, image_dim))

    users, items, times = [], [], []
    t = 0
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        c = int(rng.integers(n_clusters))
        seen = set()
        for _ in range(length):
            if rng.random() > stay_prob:
                c = int(rng.integers(n_clusters))
            cand = np.array([i for i in members[c] if i not in seen]) if seen else members[c]
            if len(cand) == 0:
                cand = members[c]
            w = pop[cand] / pop[cand].sum()
            i = int(rng.choice(cand, p=w))
            seen.add(i)
            users.append(u)
            items.append(i)
            times.append(t)
            t += 1
    titles = [" ".join(rng.choice(_WORDS, size=3)) + f" item {i} type {cluster[i]}" for i in range(n_items)]
    image_order = rng.permutation(n_items)
    return dict(users=np.array(users), items=np.array(items), times=np.array(times),
                text=text.astype(np.float32), image=image.astype(np.float32),
                image_order=image_order, cluster=cluster, titles=titles)


def write_sample(folder: str, name: str = "mm_sample", **kwargs) -> str:
    """Write the sample's files into ``folder`` (created if needed); returns the folder."""
    params = {**DEFAULTS, **kwargs}
    data = generate(**params)
    os.makedirs(folder, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{t}" for u, i, t in zip(data["users"], data["items"], data["times"])]
    atomic_save_npy(os.path.join(folder, f"{name}.text.npy"), data["text"])
    order = data["image_order"]
    atomic_save_npy(os.path.join(folder, f"{name}.image.npy"), data["image"][order])
    atomic_write_text(os.path.join(folder, f"{name}.image.ids"), "\n".join(map(str, order)) + "\n")
    titles = ["item_id:token\ttitle:token_seq"] + [f"{i}\t{t}" for i, t in enumerate(data["titles"])]
    atomic_write_text(os.path.join(folder, f"{name}.item"), "\n".join(titles) + "\n")
    # the interaction file last: its presence marks a complete sample
    atomic_write_text(os.path.join(folder, f"{name}.inter"), "\n".join(lines) + "\n")
    return folder


def ensure_sample(folder: str, name: str = "mm_sample") -> str:
    if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
        write_sample(folder, name)
    return folder


def write_mmrec_standins(split_folder: str, folder: str, n_items: int, text_dim: int = 384,
                         image_dim: int = 4096, seed: int = 0) -> str:
    """STAND-IN MMRec feature files for a split whose real features are not available:
    ``text_feat.npy`` / ``image_feat.npy`` in MMRec's names, shapes and dtype (float32, random
    numbers: never a quality result), the split's real ``i_id_mapping.csv`` copied beside them,
    and a ``STAND-IN-FEATURES.txt`` marker. Used to measure what a run costs (benchmarks, the
    headline test). Returns ``folder``."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    atomic_save_npy(os.path.join(folder, "text_feat.npy"),
                    rng.standard_normal((n_items, text_dim), dtype=np.float32))
    atomic_save_npy(os.path.join(folder, "image_feat.npy"),
                    rng.standard_normal((n_items, image_dim), dtype=np.float32))
    with open(os.path.join(split_folder, "i_id_mapping.csv"), encoding="utf-8") as f:
        atomic_write_text(os.path.join(folder, "i_id_mapping.csv"), f.read())
    atomic_write_text(os.path.join(folder, "STAND-IN-FEATURES.txt"),
                      "Random float32 stand-ins in MMRec's names and shapes "
                      "(recbole_mm.data.sample.write_mmrec_standins): not real features.\n")
    return folder
