"""Item features from the item table: texts joined from text columns, images from local paths,
encoded by the project's encoders (``recbole_mm.encoders``: batched, resumable shards, atomic
files, a report of items without input). Items of the log without a row, a text or an image get a
zero row, which the dataset marks "not present"."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from recbole_mm.prepare import PrepareError
from recbole_mm.prepare.read import IMAGE_NAMES, ITEM_NAMES, TEXT_NAMES, pick_column, where

MISSING_IMAGE_POLICIES = ("zero", "error")


@dataclass
class ItemTable:
    path: str
    item_col: str
    text_cols: list
    image_col: str | None
    texts: dict = field(default_factory=dict)        # token -> text (log items with a non-empty text)
    images: dict = field(default_factory=dict)       # token -> existing image file
    missing_images: dict = field(default_factory=dict)  # token -> path that does not exist
    covered: int = 0                                  # log items with a row
    n_log_items: int = 0

    @property
    def coverage(self) -> float:
        return self.covered / max(self.n_log_items, 1)


def read_item_table(df: pd.DataFrame, path: str, log_items, item_col=None, text_cols=None,
                    image_col=None, image_root=None, min_coverage: float = 0.9,
                    missing_images: str = "zero") -> ItemTable:
    """Check the item table against the log's items and collect texts and image paths."""
    if missing_images not in MISSING_IMAGE_POLICIES:
        raise PrepareError(f"--missing_images must be one of {', '.join(MISSING_IMAGE_POLICIES)}, "
                           f"got {missing_images!r}.")
    icol = pick_column(df, path, item_col, ITEM_NAMES, "item id", "--items_item_col")
    if text_cols:
        missing = [c for c in text_cols if c not in df.columns]
        if missing:
            raise PrepareError(f"{path}: no column(s) {missing} (--text_cols); columns are {list(df.columns)}.")
        tcols = list(text_cols)
    else:
        lower = {str(c).lower(): c for c in df.columns}
        tcols = [lower[g] for g in TEXT_NAMES if g in lower]
    mcol = pick_column(df, path, image_col, IMAGE_NAMES, "image path", "--image_col", required=False)
    ids = df[icol]
    if ids.isna().any():
        r = int(ids.isna().to_numpy().nonzero()[0][0])
        raise PrepareError(f"{where(path, r)}, column '{icol}': an item row needs an item id.")
    ids = ids.astype(str).str.strip()
    dup = ids.duplicated().to_numpy()
    if dup.any():
        r = int(dup.nonzero()[0][0])
        first = int((ids == ids.iloc[r]).to_numpy().nonzero()[0][0])
        raise PrepareError(f"{where(path, r)}, column '{icol}': item {ids.iloc[r]!r} already has a "
                           f"row ({where(path, first).split(', ')[-1]}); one row per item.")
    log_items = set(log_items)
    present = ids.isin(log_items).to_numpy()
    table = ItemTable(path=path, item_col=icol, text_cols=tcols, image_col=mcol,
                      covered=int(present.sum()), n_log_items=len(log_items))
    if table.coverage < min_coverage:
        absent = sorted(log_items - set(ids))
        raise PrepareError(
            f"{path} has rows for {table.covered:,} of the log's {len(log_items):,} items "
            f"({table.coverage:.1%}), below --min_item_coverage {min_coverage:.0%}: "
            f"{len(absent):,} item(s) of the log are not in column '{icol}' (e.g. {absent[:5]}). "
            f"Check --items_item_col and that both files use the same item ids, or lower "
            f"--min_item_coverage."
        )
    rows = df[present]
    kept = ids[present]
    if tcols:
        parts = rows[tcols].fillna("").astype(str).apply(lambda c: c.str.strip())
        joined = parts.apply(lambda r: ". ".join(x for x in r if x), axis=1) if len(parts) else pd.Series([], dtype=str)
        table.texts = {t: s for t, s in zip(kept, joined) if s}
    if mcol:
        root = image_root or os.path.dirname(os.path.abspath(path))
        for t, p in zip(kept, rows[mcol]):
            if p is None or (isinstance(p, float) and pd.isna(p)) or not str(p).strip():
                continue
            full = str(p).strip()
            full = full if os.path.isabs(full) else os.path.join(root, full)
            (table.images if os.path.isfile(full) else table.missing_images)[t] = full
        if table.missing_images and missing_images == "error":
            ex = list(table.missing_images.items())[:5]
            raise PrepareError(
                f"{path}, column '{mcol}': {len(table.missing_images):,} image file(s) do not exist "
                f"(relative paths are read from {root}; --image_root changes it), e.g. "
                + "; ".join(f"item {t}: {p}" for t, p in ex)
                + ". Fix the paths, or pass --missing_images zero (a zero row, marked not present)."
            )
    return table


def build_text_encoder(kind: str, model: str, device: str = "auto"):
    """The project's text encoder, or None for kind ``none``; EncoderUnavailable says what to do."""
    if kind in (None, "", "none"):
        return None
    from recbole_mm.encoders import build_text_encoder as build

    return build(kind, model, device=device)


def build_image_encoder(kind: str, model: str, device: str = "auto", pooling: str | None = None,
                        log_fn=print):
    """The project's image encoder; None (with the reason printed) when its weights or library
    are not available: images are optional, the dataset is still written."""
    if kind in (None, "", "none"):
        return None
    from recbole_mm.encoders import EncoderUnavailable
    from recbole_mm.encoders import build_image_encoder as build

    kw = {"device": device}
    if pooling and kind in ("hf", "vit", "swin"):
        kw["pooling"] = pooling
    try:
        return build(kind, model, **kw)
    except EncoderUnavailable as exc:
        log_fn(f"[image] no image features: {exc} Then rerun with --image_model DIR "
               f"(or --image_kind none to skip images).")
        return None


def encode_texts(tokens, table: ItemTable, encoder, out: str, name: str, batch_size: int,
                 progress: bool = True, log_fn=print):
    from recbole_mm.encoders import encode_item_texts

    res = encode_item_texts(tokens, table.texts, encoder, out, name, "text",
                            batch_size=batch_size, progress=progress, log=log_fn)
    n = len(tokens)
    log_fn(f"[text] {n - len(res.missing):,}/{n:,} items with a text ({(n - len(res.missing)) / max(n, 1):.1%}), "
           f"{res.matrix.shape[1]}-d ({encoder.model_name}); {len(res.missing):,} zero row(s)")
    return res


def encode_images(tokens, table: ItemTable, encoder, out: str, name: str, batch_size: int,
                  progress: bool = True, log_fn=print):
    from recbole_mm.encoders import encode_item_images

    res = encode_item_images(tokens, table.images, encoder, out, name, "image",
                             batch_size=batch_size, progress=progress, log=log_fn)
    n = len(tokens)
    ok = n - len(res.missing) - len(res.corrupt)
    log_fn(f"[image] {ok:,}/{n:,} items with an image ({ok / max(n, 1):.1%}); "
           f"{len(table.missing_images):,} path(s) that do not exist, {len(res.corrupt):,} "
           f"undecodable, the rest without a path: zero rows (listed in {res.paths.get('report')})")
    return res
