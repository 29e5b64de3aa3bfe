"""Reading the user's tables: format from the file name, columns from flags or common names.

Formats: ``.csv`` (comma), ``.tsv`` / ``.tab`` / ``.txt`` (tab), ``.jsonl`` / ``.ndjson`` / ``.json``
(one JSON object per line), ``.parquet`` (needs ``pyarrow``); each may end in ``.gz``, ``.bz2``,
``.zip``, ``.xz`` or ``.zst`` (pandas decompresses). Ids are read as strings, exactly as written.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from recbole_mm.prepare import PrepareError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl",
           ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".zip", ".xz", ".zst")

# guesses, in order of preference (compared case-insensitively)
USER_NAMES = ("user_id", "userid", "user", "uid", "reviewerid", "customer_id", "visitorid", "session_id")
ITEM_NAMES = ("item_id", "itemid", "item", "iid", "asin", "product_id", "productid", "movieid",
              "movie_id", "parent_asin")
TIME_NAMES = ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date", "event_time",
              "created_at")
TEXT_NAMES = ("title", "name", "brand", "categories", "category", "description", "text")
IMAGE_NAMES = ("image_path", "image", "image_file", "img", "img_path", "picture", "cover")


def table_format(path: str) -> str:
    """csv | tsv | jsonl | parquet from the file name, or a PrepareError naming the file."""
    stem = path.lower()
    for c in COMPRESSIONS:
        if stem.endswith(c):
            stem = stem[: -len(c)]
            break
    ext = os.path.splitext(stem)[1]
    if ext not in FORMATS:
        raise PrepareError(
            f"{path}: unknown format '{ext or '(no extension)'}'; expected one of "
            f"{', '.join(sorted(FORMATS))} (optionally compressed: {', '.join(COMPRESSIONS)})."
        )
    return FORMATS[ext]


def read_table(path: str, what: str = "table") -> pd.DataFrame:
    """The whole table as strings (missing cells: NaN), or a PrepareError naming the file."""
    if not os.path.isfile(path):
        raise PrepareError(f"{what} file not found: {path}")
    fmt = table_format(path)
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="," if fmt == "csv" else "\t", dtype=str,
                               keep_default_na=False, na_values=[""], low_memory=False)
        if fmt == "jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
            return df.astype(object).where(df.notna(), None).map(_json_cell) if len(df) else df
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise PrepareError(
                f"{path}: reading Parquet needs pyarrow, which is not installed: "
                f"pip install pyarrow (or save the table as .csv / .tsv / .jsonl)."
            ) from None
        df = pd.read_parquet(path)
        return df.astype(object).where(df.notna(), None).map(_json_cell) if len(df) else df
    except PrepareError:
        raise
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise PrepareError(f"{path}: cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _json_cell(v):
    """JSON / Parquet cells as the strings a CSV would hold (lists joined by spaces)."""
    if v is None:
        return np.nan
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, (list, tuple, np.ndarray)):
        return " ".join(str(x) for x in v)
    return str(v)


def pick_column(df: pd.DataFrame, path: str, given: str | None, guesses, role: str,
                flag: str, required: bool = True) -> str | None:
    """The column for ``role``: ``given`` (must exist) or the first guess present."""
    cols = list(df.columns)
    if given:
        if given not in cols:
            raise PrepareError(f"{path}: no column '{given}' ({flag}); columns are {cols}.")
        return given
    lower = {str(c).lower(): c for c in cols}
    for g in guesses:
        if g in lower:
            return lower[g]
    if required:
        raise PrepareError(
            f"{path}: no {role} column (looked for {', '.join(guesses)}); columns are {cols}. "
            f"Name it with {flag}."
        )
    return None


def parse_times(values: pd.Series, path: str, column: str, time_format: str | None) -> np.ndarray:
    """Times as float seconds: numbers as they are, or dates with ``time_format`` ("iso" or a
    strftime format). A value that is not one gives a PrepareError naming the row."""
    if time_format:
        fmt = "ISO8601" if time_format == "iso" else time_format
        t = pd.to_datetime(values, format=fmt, errors="coerce", utc=True)
        bad = t.isna().to_numpy()
        if not bad.any():
            return (t - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
        expected = f"a date in format {time_format!r}"
    else:
        t = pd.to_numeric(values, errors="coerce")
        bad = ~np.isfinite(t.to_numpy(dtype=np.float64))
        if not bad.any():
            return t.to_numpy(dtype=np.float64)
        expected = "a number (e.g. Unix seconds); pass --time_format iso (or a strftime format) for dates"
    r = int(np.flatnonzero(bad)[0])
    raise PrepareError(
        f"{where(path, r)}, column '{column}': expected {expected}, got {values.iloc[r]!r} "
        f"({int(bad.sum())} such row(s))."
    )


def where(path: str, r: int) -> str:
    """Position of data row ``r`` (0-based) as a user finds it: the line in a text file (CSV/TSV
    count their header line), the row number in a Parquet file."""
    fmt = table_format(path)
    if fmt in ("csv", "tsv"):
        return f"{path}, line {r + 2}"
    if fmt == "jsonl":
        return f"{path}, line {r + 1}"
    return f"{path}, row {r + 1}"
