"""Reading and validating pre-extracted item feature matrices (the feature-file contract).

A modality is declared in the dataset yaml::

    modalities:
      text:  {file: baby.text.npy}                    # .npy, float32 or float16
      image: {file: Scientific.feat3CLS, dim: 512}    # headerless float32, dim required
      # optional per modality: ids: <file>  (one raw item token per line, row order)

Row order comes from the ids file (``ids:``, or ``<file stem>.ids`` beside the matrix when it
exists); without one, row ``r`` belongs to raw item token ``r`` (MMRec / UniSRec convention).

MMRec folders (``text_feat.npy``, ``image_feat.npy``, ``i_id_mapping.csv``) are read as they are:
the item map ``i_id_mapping.csv`` (``asin<TAB>itemID``, with a header) lists the items; row ``r``
of a feature file is itemID ``r``. :func:`read_item_map` checks the map against the matrix (one
row per mapped item) and :func:`check_item_map` against the split's item tokens.
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


MMREC_ITEM_MAP = "i_id_mapping.csv"


def read_item_map(path: str) -> list[str]:
    """The item tokens of an MMRec item map (``asin<TAB>itemID`` per line, header first), in
    itemID order; itemIDs must be exactly ``0 .. n-1`` (row ``r`` of a feature file = itemID ``r``)."""
    if not os.path.isfile(path):
        raise FeatureFileError(
            f"MMRec item map not found: {path}. An MMRec feature file (text_feat.npy, "
            f"image_feat.npy) is read with the {MMREC_ITEM_MAP} of its folder (asin<TAB>itemID)."
        )
    ids: dict[int, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if line_no == 1 and (len(parts) < 2 or not parts[-1].strip().isdigit()):
                continue  # header (asin<TAB>itemID)
            if not line.strip():
                continue
            if len(parts) != 2 or not parts[1].strip().isdigit():
                raise FeatureFileError(
                    f"{path}, line {line_no}: expected 'asin<TAB>itemID' with an integer itemID, "
                    f"got {line.rstrip()!r}."
                )
            iid = int(parts[1])
            if iid in ids:
                raise FeatureFileError(
                    f"{path}: itemID {iid} is listed twice (lines {ids[iid]} and {line_no})."
                )
            ids[iid] = line_no
    n = len(ids)
    if n and (min(ids) != 0 or max(ids) != n - 1):
        raise FeatureFileError(
            f"{path}: itemIDs must be 0..{n - 1} (row r of a feature file = itemID r), "
            f"got {min(ids)}..{max(ids)} for {n} items."
        )
    return [str(i) for i in range(n)]


def check_item_map(map_path: str, map_tokens, split_tokens, split_desc: str) -> None:
    """Refuse an item map whose items are not exactly the split's items (another dataset's
    features, or a split filtered differently)."""
    mapped, used = set(map_tokens), set(split_tokens)
    if mapped == used:
        return
    only_split = sorted(used - mapped, key=_token_key)
    only_map = sorted(mapped - used, key=_token_key)
    raise FeatureFileError(
        f"Item map {map_path} ({len(mapped)} items) does not match the items of {split_desc} "
        f"({len(used)} items): {len(only_split)} item(s) of the split are not in the map"
        + (f" (e.g. {only_split[:5]})" if only_split else "")
        + f", {len(only_map)} mapped item(s) never occur in the split"
        + (f" (e.g. {only_map[:5]})" if only_map else "")
        + ". The feature files belong to another dataset or another filtering of it."
    )


def _token_key(tok: str):
    return (0, int(tok), "") if tok.isdigit() else (1, 0, tok)


def align_feature(
    name: str,
    path: str,
    token2id: dict,
    item_num: int,
    dim: int | None = None,
    ids_path: str | None = None,
    min_coverage: float = 0.0,
    item_map: str | None = None,
) -> AlignedFeature:
    """Load a matrix and align its rows to internal item ids (``token2id``: raw token -> id).

    Rows for tokens that are not in the dataset are ignored. Items without a row, or with an
    all-zero row, get a zero vector and ``present=False``. ``item_map``: an MMRec
    ``i_id_mapping.csv`` giving the rows' items (row r = itemID r, one row per mapped item).
    """
    mat = read_matrix(path, dim=dim, name=name)
    n_rows = mat.shape[0]
    if item_map is not None:
        tokens = read_item_map(item_map)
        if len(tokens) != n_rows:
            raise FeatureFileError(
                f"Feature file {path} (modality '{name}') has {n_rows} rows but its item map "
                f"{item_map} lists {len(tokens)} items; they must match (row r = itemID r)."
            )
    else:
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
        how = (f"item map {item_map}" if item_map else f"ids file {ids_path}" if ids_path
               else "row r = raw item token r")
        raise FeatureFileError(
            f"Feature file {path} (modality '{name}') covers {feat.coverage:.1%} of the dataset's "
            f"{item_num - 1} items ({missing} without a usable row; row order: {how}); "
            f"min_feature_coverage is {min_coverage:.0%}. Check that the file belongs to this "
            f"dataset, or lower min_feature_coverage."
        )
    return feat
