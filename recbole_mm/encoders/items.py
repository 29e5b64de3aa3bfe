"""Item-level feature extraction: texts and images keyed by raw item token.

Items without a text or an image get a zero row (so the dataset class marks them "not present")
and are listed in ``<name>.<feature>.report.json``; an image file that cannot be decoded is
reported as corrupt and also gets a zero row, it never stops the run.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from recbole_mm.encoders.extract import ExtractionResult, extract_features

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


def open_image(path: str):
    """Open an image as RGB (fully decoded). Raises on a missing or corrupt file."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        return img.convert("RGB")


def find_images(folder: str, tokens: Sequence[str], exts=IMAGE_EXTS) -> dict:
    """``{token: path}`` for files named ``<token><ext>`` in ``folder`` (first extension wins)."""
    if not folder or not os.path.isdir(folder):
        return {}
    names = {}
    for fname in os.listdir(folder):
        stem, ext = os.path.splitext(fname)
        if ext.lower() in exts and stem not in names:
            names[stem] = os.path.join(folder, fname)
    return {t: names[t] for t in tokens if t in names}


def encode_item_texts(tokens: Sequence[str], texts: Mapping[str, str], encoder, folder: str,
                      name: str, feature: str = "text", **kwargs) -> ExtractionResult:
    """Encode ``texts[token]`` for every token (row order = ``tokens``); absent/empty -> zeros."""
    dim = encoder.dim

    def encode_batch(keys):
        out = np.zeros((len(keys), dim), dtype=np.float32)
        idx = [i for i, k in enumerate(keys) if texts.get(k) not in (None, "") and str(texts[k]).strip()]
        if idx:
            out[idx] = encoder.encode([str(texts[keys[i]]) for i in idx])
        return out, {"missing": [keys[i] for i in range(len(keys)) if i not in set(idx)]}

    return extract_features(tokens, encode_batch, folder, name, feature,
                            signature=encoder.signature(), **kwargs)


def encode_item_images(tokens: Sequence[str], image_paths: Mapping[str, str], encoder, folder: str,
                       name: str, feature: str = "image", **kwargs) -> ExtractionResult:
    """Encode the image file of every token; no file -> ``missing``, undecodable -> ``corrupt``."""
    dim = encoder.dim

    def encode_batch(keys):
        out = np.zeros((len(keys), dim), dtype=np.float32)
        images, idx, missing, corrupt = [], [], [], {}
        for i, k in enumerate(keys):
            path = image_paths.get(k)
            if not path or not os.path.isfile(path):
                missing.append(k)
                continue
            try:
                images.append(open_image(path))
                idx.append(i)
            except Exception as exc:  # PIL raises many types for broken files
                corrupt[k] = f"{os.path.basename(path)}: {type(exc).__name__}: {exc}"[:300]
        if images:
            out[idx] = encoder.encode(images)
        return out, {"missing": missing, "corrupt": corrupt}

    return extract_features(tokens, encode_batch, folder, name, feature,
                            signature=encoder.signature(), **kwargs)
