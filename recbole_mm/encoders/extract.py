"""Resumable, sharded, deterministic feature extraction for item lists.

``extract_features`` walks the items in fixed shards of ``shard_size`` rows. Every finished shard
is written atomically to ``<name>.<feature>.parts/shard-NNNNN.npy`` (plus a small json with the
items it could not encode), so an interrupted run restarts where it stopped: shards already on
disk are skipped as long as the manifest (encoder signature, item list, shard size) matches.
When all shards exist they are concatenated into ``<name>.<feature>.npy`` + ``.ids`` (+
``.report.json`` listing items without input and corrupt inputs; they get zero rows), written
atomically, and the parts folder is removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from recbole_mm.encoders.io import atomic_save_npy, atomic_write_json, feature_paths, write_feature

# encode_batch(keys) -> (matrix [len(keys), dim] float32, {"missing": [...], "corrupt": {...}})
EncodeBatch = Callable[[Sequence[str]], "tuple[np.ndarray, dict]"]


@dataclass
class ExtractionResult:
    matrix: np.ndarray
    ids: list
    paths: dict
    missing: list = field(default_factory=list)
    corrupt: dict = field(default_factory=dict)
    shards_done_before: int = 0
    shards_computed: int = 0

    @property
    def report(self) -> dict:
        return {"n_items": len(self.ids), "dim": int(self.matrix.shape[1]),
                "n_missing": len(self.missing), "n_corrupt": len(self.corrupt),
                "missing": self.missing, "corrupt": self.corrupt}


def _keys_hash(keys: Sequence[str]) -> str:
    h = hashlib.sha256()
    for k in keys:
        h.update(str(k).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:20]


def extract_features(keys: Sequence[str], encode_batch: EncodeBatch, folder: str, name: str,
                     feature: str, *, batch_size: int = 64, shard_size: int = 4096,
                     signature: dict | None = None, dtype: str = "float32", progress: bool = True,
                     keep_parts: bool = False, log=print) -> ExtractionResult:
    """Encode ``keys`` in order with ``encode_batch`` and write the feature file (see module doc)."""
    keys = [str(k) for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError("extract_features: item keys must be unique")
    if batch_size < 1 or shard_size < 1:
        raise ValueError("batch_size and shard_size must be >= 1")
    paths = feature_paths(folder, name, feature)
    parts = paths["parts"]
    manifest = {"signature": signature or {}, "n_items": len(keys), "keys": _keys_hash(keys),
                "shard_size": int(shard_size), "batch_size": int(batch_size)}
    man_path = os.path.join(parts, "manifest.json")
    if os.path.isdir(parts):
        old = None
        if os.path.isfile(man_path):
            with open(man_path, encoding="utf-8") as f:
                try:
                    old = json.load(f)
                except ValueError:
                    old = None
        if old != json.loads(json.dumps(manifest)):
            log(f"[extract] {parts}: shards from a different run (encoder, items or shard size "
                f"changed); starting over.")
            shutil.rmtree(parts)
    os.makedirs(parts, exist_ok=True)
    atomic_write_json(man_path, manifest)

    n_shards = (len(keys) + shard_size - 1) // shard_size
    shard_file = lambda s: os.path.join(parts, f"shard-{s:05d}")  # noqa: E731
    done = [s for s in range(n_shards)
            if os.path.isfile(shard_file(s) + ".npy") and os.path.isfile(shard_file(s) + ".json")]
    if done:
        log(f"[extract] {name}.{feature}: {len(done)}/{n_shards} shards already on disk, skipping them.")
    bar = None
    if progress:
        from tqdm import tqdm

        done_rows = sum(min(shard_size, len(keys) - s * shard_size) for s in done)
        bar = tqdm(total=len(keys), initial=done_rows, desc=f"{name}.{feature}", unit="item")
    computed = 0
    done_set = set(done)
    for s in range(n_shards):
        if s in done_set:
            continue
        shard_keys = keys[s * shard_size:(s + 1) * shard_size]
        mats, missing, corrupt = [], [], {}
        for b in range(0, len(shard_keys), batch_size):
            batch = shard_keys[b:b + batch_size]
            mat, info = encode_batch(batch)
            mat = np.asarray(mat, dtype=np.float32)
            if mat.ndim != 2 or mat.shape[0] != len(batch):
                raise ValueError(f"encoder returned shape {mat.shape} for a batch of {len(batch)}")
            if not np.isfinite(mat).all():
                raise ValueError(f"encoder returned NaN/inf for items {batch[:5]}...")
            mats.append(mat)
            missing += list(info.get("missing", []))
            corrupt.update(info.get("corrupt", {}))
            if bar is not None:
                bar.update(len(batch))
        # json first, npy last: the npy marks the shard as complete
        atomic_write_json(shard_file(s) + ".json", {"missing": missing, "corrupt": corrupt})
        atomic_save_npy(shard_file(s) + ".npy", np.concatenate(mats, axis=0))
        computed += 1
    if bar is not None:
        bar.close()

    mats, missing, corrupt = [], [], {}
    for s in range(n_shards):
        mats.append(np.load(shard_file(s) + ".npy"))
        with open(shard_file(s) + ".json", encoding="utf-8") as f:
            info = json.load(f)
        missing += info["missing"]
        corrupt.update(info["corrupt"])
    matrix = np.concatenate(mats, axis=0) if mats else np.zeros((0, 0), np.float32)
    result = ExtractionResult(matrix=matrix, ids=keys, paths={}, missing=missing, corrupt=corrupt,
                              shards_done_before=len(done), shards_computed=computed)
    report = dict(result.report, signature=signature or {})
    result.paths = write_feature(folder, name, feature, matrix, ids=keys, dtype=dtype, report=report)
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    msg = f"[extract] wrote {result.paths['npy']} {matrix.shape} {dtype}"
    if missing or corrupt:
        msg += (f"; {len(missing)} item(s) without input and {len(corrupt)} corrupt input(s) got "
                f"zero rows (listed in {result.paths['report']})")
    log(msg)
    return result
