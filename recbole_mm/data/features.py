"""Reading and validating pre-extracted item feature matrices (the feature-file contract).

A modality is declared in the dataset yaml::

    modalities:
      text:  {file: baby.text.npy}                    # .npy, float32 or float16
      image: {file: Scientific.feat3CLS, dim: 512}    # headerless float32, dim required
      # optional per modality: ids: <file>  (one raw item token per line, row order)

Row order comes from the ids file (``ids:``, or ``<file stem>.ids`` beside the matrix when it
exists); without one, row ``r`` belongs to raw item token ``r`` (MMRec / UniSRec convention).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


class FeatureFileError(ValueError):
    """A feature file is missing or does not satisfy the feature-file contract."""


@dataclass
class AlignedFeature:
    """One modality aligned to RecBole's internal item ids."""

    name: str
    path: str
    matrix: np.ndarray  # [item_num, dim] float32, row 0 (padding) zeros
    present: np.ndarray  # [item_num] bool, False for padding and items without a usable row

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def coverage(self) -> float:
        n_real = len(self.present) - 1
        return float(self.present[1:].sum()) / max(n_real, 1)


def _ids_path_for(path: str) -> str:
    stem = path[: -len(".npy")] if path.endswith(".npy") else path
    return stem + ".ids"


def read_matrix(path: str, dim: int | None = None, name: str = "feature") -> np.ndarray:
    """Read a feature matrix: ``.npy`` (float32/float16) or headerless float32 with ``dim``.

    Returns a read-only float32/float16 array (memory-mapped for ``.npy``); validates shape,
    dtype and finiteness with errors that name the file and what was expected.
    """
    if not os.path.isfile(path):
        raise FeatureFileError(
            f"Feature file for modality '{name}' not found: {path}. Declare it under "
            f"`modalities: {{{name}: {{file: ...}}}}` in the dataset yaml, or build it with the "
            f"scripts in dataset_scripts/ (see README, 'Datasets')."
        )
    if path.endswith(".npy"):
        try:
            mat = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FeatureFileError(f"Feature file {path} is not a valid .npy matrix: {exc}") from exc
        if mat.dtype not in (np.float32, np.float16):
            raise FeatureFileError(
                f"Feature file {path} has dtype {mat.dtype}; expected float32 or float16 "
                f"(convert with arr.astype(np.float32))."
            )
        if mat.ndim != 2:
            raise FeatureFileError(
                f"Feature file {path} has shape {mat.shape}; expected a 2-d matrix [items, dim]."
            )
        if dim is not None and mat.shape[1] != int(dim):
            raise FeatureFileError(
                f"Feature file {path} has dim {mat.shape[1]} but the yaml declares dim {dim}."
            )
    else:
        if dim is None:
            raise FeatureFileError(
                f"Feature file {path} is headerless raw float32: set `dim:` for modality "
                f"'{name}' in the dataset yaml (e.g. dim: 512)."
            )
        size = os.path.getsize(path)
        if size % (4 * int(dim)) != 0:
            raise FeatureFileError(
                f"Feature file {path} has {size} bytes, which is not a multiple of "
                f"4 * dim = {4 * int(dim)} (float32 x dim {dim}); wrong `dim` or a truncated file."
            )
        mat = np.memmap(path, dtype=np.float32, mode="r").reshape(-1, int(dim))
    bad = ~np.isfinite(np.asarray(mat, dtype=np.float32)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise FeatureFileError(
            f"Feature file {path} contains NaN or inf in {len(rows)} row(s), first rows "
            f"{rows[:5].tolist()}; features must be finite."
        )
    return mat


def read_ids(path: str, n_rows: int) -> list[str]:
    """Read an ids file (one raw token per line) and check it against the matrix."""
    with open(path, encoding="utf-8") as f:
        ids = [line.rstrip("\n").rstrip("\r") for line in f if line.strip() != ""]
    if len(ids) != n_rows:
        raise FeatureFileError(
            f"Ids file {path} has {len(ids)} ids but its matrix has {n_rows} rows; they must match."
        )
    seen: dict[str, int] = {}
    for r, tok in enumerate(ids):
        if tok in seen:
            raise FeatureFileError(
                f"Ids file {path} lists item '{tok}' twice (lines {seen[tok] + 1} and {r + 1}); "
                f"each item must have exactly one row."
            )
        seen[tok] = r
    return ids


def align_feature(
    name: str,
    path: str,
    token2id: dict,
    item_num: int,
    dim: int | None = None,
    ids_path: str | None = None,
    min_coverage: float = 0.0,
) -> AlignedFeature:
    """Load a matrix and align its rows to internal item ids (``token2id``: raw token -> id).

    Rows for tokens that are not in the dataset are ignored. Items without a row, or with an
    all-zero row, get a zero vector and ``present=False``.
    """
    mat = read_matrix(path, dim=dim, name=name)
    n_rows = mat.shape[0]
    if ids_path is None and os.path.isfile(_ids_path_for(path)):
        ids_path = _ids_path_for(path)
    if ids_path is not None:
        if not os.path.isfile(ids_path):
            raise FeatureFileError(f"Ids file for modality '{name}' not found: {ids_path}.")
        tokens = read_ids(ids_path, n_rows)
    else:
        tokens = [str(r) for r in range(n_rows)]
    rows, targets = [], []
    for r, tok in enumerate(tokens):
        iid = token2id.get(tok)
        if iid is not None and iid != 0:
            rows.append(r)
            targets.append(iid)
    out = np.zeros((item_num, n_rows and mat.shape[1]), dtype=np.float32)
    if rows:
        rows_arr = np.asarray(rows)
        out[np.asarray(targets)] = np.asarray(mat[rows_arr], dtype=np.float32)
    present = np.zeros(item_num, dtype=bool)
    present[np.asarray(targets, dtype=np.int64)] = True
    present &= np.abs(out).sum(axis=1) > 0
    present[0] = False
    feat = AlignedFeature(name=name, path=path, matrix=out, present=present)
    if feat.coverage < min_coverage:
        missing = int((~present[1:]).sum())
        how = f"ids file {ids_path}" if ids_path else "row r = raw item token r"
        raise FeatureFileError(
            f"Feature file {path} (modality '{name}') covers {feat.coverage:.1%} of the dataset's "
            f"{item_num - 1} items ({missing} without a usable row; row order: {how}); "
            f"min_feature_coverage is {min_coverage:.0%}. Check that the file belongs to this "
            f"dataset, or lower min_feature_coverage."
        )
    return feat
