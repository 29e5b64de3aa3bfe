"""Write aligned item features in the core's feature-file format (DESIGN "Feature files"):
``<name>.npy`` float32 [rows, dim] plus ``<name>.ids`` (one raw item token per line, row order);
both written to a temporary name and renamed, so a reader never sees a half-written file."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np


def write_feature_file(path: str, matrix: np.ndarray, tokens: Optional[Sequence[str]] = None) -> str:
    """Atomically write ``matrix`` to ``path`` (``.npy``) and, with ``tokens``, ``<stem>.ids``."""
    if not path.endswith(".npy"):
        raise ValueError(f"feature files are .npy, got {path}")
    mat = np.ascontiguousarray(np.asarray(matrix, dtype=np.float32))
    if mat.ndim != 2 or not np.isfinite(mat).all():
        raise ValueError(f"feature matrix must be finite and 2-d, got shape {mat.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, mat)
    if tokens is not None:
        tokens = [str(t) for t in tokens]
        if len(tokens) != mat.shape[0] or len(set(tokens)) != len(tokens):
            os.remove(tmp)
            raise ValueError("tokens must be unique and one per matrix row")
        ids_path = path[:-4] + ".ids"
        with open(ids_path + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
        os.replace(ids_path + ".tmp", ids_path)
    os.replace(tmp, path)
    return path


def export_dataset_features(dataset, features: dict, out_dir: str, file_names: dict) -> dict:
    """Export ``{modality: [item_num, dim]}`` matrices indexed by *internal* item id (row 0 =
    padding, skipped) with the dataset's raw tokens; returns ``{modality: path}``."""
    iid = dataset.iid_field
    tokens = [dataset.id2token(iid, i) for i in range(1, dataset.item_num)]
    out = {}
    for name, mat in features.items():
        out[name] = write_feature_file(os.path.join(out_dir, file_names[name]), np.asarray(mat)[1:], tokens)
    return out
