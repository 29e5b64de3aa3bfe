"""Atomic file writing for feature files and reports (temp name in the same folder + rename)."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: str, path: str) -> None:
    """Give the temp file normal permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _tmp_in(path: str, suffix: str = ""):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + "-", suffix=suffix)


def atomic_save_npy(path: str, arr: np.ndarray) -> None:
    """``np.save`` to a temp file beside ``path``, then rename: readers never see half a file."""
    fd, tmp = _tmp_in(path, ".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    fd, tmp = _tmp_in(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_lines(path: str, lines) -> None:
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))


def atomic_write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def feature_paths(folder: str, name: str, feature: str) -> dict:
    """Paths of one feature in the feature-file contract: ``<name>.<feature>.{npy,ids}`` + report."""
    stem = os.path.join(folder, f"{name}.{feature}")
    return {"npy": stem + ".npy", "ids": stem + ".ids", "report": stem + ".report.json",
            "parts": stem + ".parts"}


def write_feature(folder: str, name: str, feature: str, matrix: np.ndarray, ids=None,
                  dtype: str = "float32", report: dict | None = None) -> dict:
    """Write ``<name>.<feature>.npy`` (+ ``.ids`` one raw token per line, + optional report).

    The matrix is written last-but-one and the ids file right after it; both atomically. Returns
    the paths written.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise ValueError(f"feature matrix must be 2-d [items, dim], got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"feature matrix for {name}.{feature} contains NaN or inf")
    paths = feature_paths(folder, name, feature)
    if ids is not None:
        ids = [str(t) for t in ids]
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} rows")
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids in feature file")
    atomic_save_npy(paths["npy"], matrix.astype(dtype))
    out = {"npy": paths["npy"]}
    if ids is not None:
        atomic_write_lines(paths["ids"], ids)
        out["ids"] = paths["ids"]
    if report is not None:
        atomic_write_json(paths["report"], report)
        out["report"] = paths["report"]
    return out


def write_raw_float32(path: str, matrix: np.ndarray) -> None:
    """Headerless float32 (``ndarray.tofile``), the UniSRec/MISSRec ``.featNCLS`` layout."""
    atomic_write_bytes(path, np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
