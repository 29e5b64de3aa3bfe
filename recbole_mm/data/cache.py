"""A cache of derived structures (graphs, clusters) keyed by their inputs and parameters.

Entries are ``.npz`` files (no pickles) written under a temporary name and renamed. The cache
lives beside the dataset (``<data folder>/.recbole_mm_cache``) when that folder is writable, else
under ``~/.cache/recbole_mm/<dataset>``; ``derived_cache_dir`` overrides, ``derived_cache: false``
turns caching off.
"""
from __future__ import annotations

import hashlib
import json
import os
from logging import getLogger

import numpy as np
import scipy.sparse as sp


class DerivedCache:
    def __init__(self, directory: str | None):
        self.directory = directory

    @classmethod
    def for_dataset(cls, config, dataset_path: str, dataset_name: str) -> "DerivedCache":
        if config["derived_cache"] is False:
            return cls(None)
        if config["derived_cache_dir"]:
            return cls(os.path.join(config["derived_cache_dir"], dataset_name))
        beside = os.path.join(dataset_path, ".recbole_mm_cache")
        if os.access(dataset_path, os.W_OK) or os.access(beside, os.W_OK):
            return cls(beside)
        home = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
        return cls(os.path.join(home, "recbole_mm", dataset_name))

    @staticmethod
    def key_name(key: dict) -> str:
        text = json.dumps(key, sort_keys=True, default=str)
        return f"{key.get('kind', 'entry')}-{hashlib.sha256(text.encode()).hexdigest()[:20]}.npz"

    def get_or_compute(self, key: dict, compute):
        if self.directory is None:
            return compute()
        path = os.path.join(self.directory, self.key_name(key))
        if os.path.isfile(path):
            try:
                return _load(path)
            except Exception as exc:  # a damaged entry is recomputed, never trusted
                getLogger().warning(f"Ignoring unreadable cache entry {path}: {exc}")
        value = compute()
        try:
            os.makedirs(self.directory, exist_ok=True)
            _save(path, value)
        except OSError as exc:
            getLogger().warning(f"Could not write cache entry {path}: {exc}")
        return value


def _save(path: str, value) -> None:
    arrays = {}
    if sp.issparse(value):
        m = value.tocsr()
        arrays = {"__kind": np.array("csr"), "data": m.data, "indices": m.indices,
                  "indptr": m.indptr, "shape": np.array(m.shape)}
    elif isinstance(value, np.ndarray):
        arrays = {"__kind": np.array("array"), "a0": value}
    elif isinstance(value, tuple) and all(isinstance(v, np.ndarray) for v in value):
        arrays = {"__kind": np.array("tuple"), **{f"a{i}": v for i, v in enumerate(value)}}
    else:
        raise TypeError(f"cannot cache a {type(value).__name__}")
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load(path: str):
    with np.load(path, allow_pickle=False) as z:
        kind = str(z["__kind"])
        if kind == "csr":
            return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        if kind == "array":
            return z["a0"]
        n = len([k for k in z.files if k.startswith("a")])
        return tuple(z[f"a{i}"] for i in range(n))
