"""Write aligned item features in the core's feature-file format (DESIGN "Feature files"):
``<name>.npy`` float32 [rows, dim] plus ``<name>.ids`` (one raw item token per line, row order);
both written to a temporary name and renamed, so a reader never sees a half-written file.

The alignment CLI writes :data:`REPORT_NAME` beside them, listing the files it wrote
(``files``, ``file_names``); :func:`feature_alignment` reads it back to tell whether a loaded
dataset's modality came out of the SFT step (SICSRec's "w/o SFT" setting when it did not)."""
from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

REPORT_NAME = "alignment_report.json"


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


class FeatureAlignment(NamedTuple):
    """Whether a modality's feature file came out of the SFT alignment step."""
    aligned: bool
    file: Optional[str]    # the feature file the dataset read (None: not traced to a file)
    report: Optional[str]  # the alignment report beside it, when there is one
    reason: str            # why (not) aligned, for log lines


def feature_alignment(dataset, modality: str) -> FeatureAlignment:
    """Did ``dataset``'s ``modality`` features come out of ``python -m recbole_mm.alignment``?

    Aligned means: the dataset recorded the file it read the modality from
    (``dataset.modality_files``), an :data:`REPORT_NAME` lies in the same folder, the report
    lists that file (by name, under ``file_names`` or ``files``) and its ``sft_mode`` is not
    ``none`` (an export without SFT is the "w/o SFT" setting too)."""
    path = (getattr(dataset, "modality_files", None) or {}).get(modality)
    if not path:
        return FeatureAlignment(False, None, None, f"modality '{modality}' was not read from a "
                                                   "feature file of its own")
    report_path = os.path.join(os.path.dirname(os.path.abspath(path)), REPORT_NAME)
    if not os.path.isfile(report_path):
        return FeatureAlignment(False, path, None, f"no {REPORT_NAME} beside it")
    try:
        with open(report_path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        return FeatureAlignment(False, path, report_path, f"unreadable {report_path}: {exc}")
    if not isinstance(report, dict):
        return FeatureAlignment(False, path, report_path, f"{report_path} is not a report")
    listed = list((report.get("file_names") or {}).values()) + list((report.get("files") or {}).values())
    name = os.path.basename(path)
    if name not in {os.path.basename(str(p)) for p in listed}:
        return FeatureAlignment(False, path, report_path, f"{report_path} does not list {name}")
    mode = report.get("sft_mode")
    if mode == "none":
        return FeatureAlignment(False, path, report_path, f"{report_path} says sft_mode none "
                                                          "(exported without SFT)")
    return FeatureAlignment(True, path, report_path, f"listed in {report_path} (sft_mode {mode}, "
                                                     f"judge {report.get('judge')})")
