"""Outputs of ``prepare``: the atomic ``<name>.inter``, the dataset yaml, the report and the
command line that runs the dataset. Every file is written atomically (``recbole_mm.encoders.io``)."""
from __future__ import annotations

import io
import os
import shlex
import sys

import pandas as pd

from recbole_mm.encoders.io import atomic_write_json, atomic_write_text

INTER_HEADER = ["user_id:token", "item_id:token", "timestamp:float"]


def write_inter(log: pd.DataFrame, out: str, name: str) -> str:
    """RecBole atomic ``<name>.inter`` (user_id, item_id, timestamp), rows in the log's order."""
    buf = io.StringIO()
    frame = log[["user", "item", "time"]].set_axis(INTER_HEADER, axis=1)
    frame.to_csv(buf, sep="\t", index=False, lineterminator="\n", float_format="%.17g")
    path = os.path.join(out, f"{name}.inter")
    atomic_write_text(path, buf.getvalue())
    return path


def dataset_yaml(name: str, out: str, modalities: dict, source: str) -> str:
    """The dataset yaml: folder, prefix, fields and the feature files written."""
    lines = [
        f"# Dataset '{name}', written by `python -m recbole_mm.prepare` from {source}.",
        f"# Files: {name}.inter (RecBole atomic, split leave-one-out by time)"
        + "".join(f", {spec['file']}" for spec in modalities.values()) + ".",
        f"# Folder: <data_path>/{os.path.basename(os.path.normpath(out))}/",
        f"dataset_dir: {os.path.basename(os.path.normpath(out))}",
        f"file_prefix: {name}",
        "load_col:",
        "  inter: [user_id, item_id, timestamp]",
    ]
    if modalities:
        lines.append("modalities:")
        lines += [f"  {m}: {{{', '.join(f'{k}: {v}' for k, v in spec.items())}}}"
                  for m, spec in modalities.items()]
    else:
        lines.append("modalities: {}")
    path = os.path.join(out, f"{name}.yaml")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def run_command(name: str, out: str, yaml_path: str) -> str:
    """The complete command that trains on the dataset; append ``--model=X``."""
    from recbole_mm.config import PROJECT_DIR

    root = os.path.dirname(os.path.abspath(os.path.normpath(out)))
    return shlex.join([sys.executable, os.path.join(PROJECT_DIR, "run_recbole_mm.py"),
                       f"--dataset={name}", f"--data_path={root}",
                       f"--config_files={os.path.abspath(yaml_path)}"])


def write_report(out: str, name: str, report: dict) -> str:
    path = os.path.join(out, f"{name}.prepare.json")
    atomic_write_json(path, report)
    return path
