"""Modality-mismatch noise: give a fraction of items another item's features (seeded).

The robustness experiment of SGP4SR (Figure 3): pick a random fraction ``p`` of the items and
overwrite each picked item's image feature with the image feature of another, randomly chosen
item; the other modalities stay untouched; then train and evaluate as usual. The tool works for
any modality and any model because it is applied by the dataset, right after the feature files
have been aligned and before anything (graphs, clusters, models) reads them:

    python run_recbole_mm.py --model=SGP4SR --dataset=scientific_mm --feature_noise=image:0.5
    python run_recbole_mm.py --model=SASRecF --dataset=scientific_mm --feature_noise=text:0.2,image:0.5

``feature_noise`` (a string ``name:fraction[,name:fraction]`` or a mapping ``{name: fraction}``)
and ``feature_noise_seed`` (``~`` = the run's ``seed``) are config keys. Derived structures are
cached by the feature contents, so noisy features never reuse clean graphs or clusters.
"""
from __future__ import annotations

import zlib
from logging import getLogger

import numpy as np

from recbole_mm.data.features import FeatureFileError


class FeatureNoiseError(FeatureFileError):
    """A malformed ``feature_noise`` setting (a FeatureFileError: the CLI prints it in one line)."""


def parse_feature_noise(spec) -> dict[str, float]:
    """``'image:0.5'`` / ``'text:0.2,image:0.5'`` / ``{'image': 0.5}`` -> ``{name: fraction}``."""
    if spec is None or spec == "" or spec == {}:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = []
        for part in spec.replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            if ":" not in part:
                raise FeatureNoiseError(
                    f"feature_noise: expected 'modality:fraction' (e.g. image:0.5), got {part!r}.")
            name, frac = part.rsplit(":", 1)
            items.append((name.strip(), frac.strip()))
    else:
        raise FeatureNoiseError(
            f"feature_noise must be 'modality:fraction[,modality:fraction]' or a mapping, got {spec!r}.")
    out = {}
    for name, frac in items:
        try:
            value = float(frac)
        except (TypeError, ValueError):
            raise FeatureNoiseError(f"feature_noise: fraction for '{name}' is not a number: {frac!r}.") from None
        if not 0.0 <= value <= 1.0:
            raise FeatureNoiseError(f"feature_noise: fraction for '{name}' must lie in [0, 1], got {value}.")
        if name in out:
            raise FeatureNoiseError(f"feature_noise: modality '{name}' given twice.")
        out[str(name)] = value
    return out


def swap_features(matrix: np.ndarray, fraction: float, seed, candidates=None,
                  in_sequence: bool = False):
    """Replace ``floor(fraction * N)`` rows of ``matrix`` with copies of other rows.

    ``candidates`` are the row ids that take part (default: every row but the padding row 0);
    ``N = len(candidates)``. The picked rows are distinct and drawn uniformly; each gets the row
    of a uniformly drawn *different* candidate. By default the source is the clean matrix (every
    picked item carries another item's true feature); ``in_sequence=True`` copies in place one
    after another as the official SGP4SR helper did (a source may already have been replaced).
    Returns ``(noisy copy, replaced row ids, source row ids)``; ``matrix`` is not modified.
    Same inputs and seed give the same result.
    """
    x = np.array(matrix, copy=True)
    if candidates is None:
        candidates = np.arange(1, x.shape[0])
    candidates = np.asarray(candidates, dtype=np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise FeatureNoiseError(f"noise fraction must lie in [0, 1], got {fraction}.")
    n = len(candidates)
    m = int(np.floor(fraction * n + 1e-9))
    if m == 0:
        return x, np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n < 2:
        raise FeatureNoiseError(f"cannot swap features among {n} item(s).")
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=m, replace=False)
    # a uniformly drawn different candidate: draw from n-1 and skip the picked position
    other = rng.integers(0, n - 1, size=m)
    other = other + (other >= picked)
    rows, sources = candidates[picked], candidates[other]
    if in_sequence:
        for r, s in zip(rows, sources):
            x[r] = x[s]
    else:
        x[rows] = np.asarray(matrix)[sources]
    return x, rows, sources


def apply_feature_noise(modality_features: dict, modality_present: dict, spec, seed: int,
                        logger=None) -> dict:
    """Apply ``spec`` (see :func:`parse_feature_noise`) to a dataset's aligned features in place.

    ``modality_features`` maps a name to a float tensor ``[item_num, dim]`` (row 0 padding);
    only items whose feature is present take part (as targets and as sources). Each modality
    uses its own stream derived from ``seed`` and the modality name. Returns
    ``{name: (replaced ids, source ids)}``.
    """
    import torch

    noise = parse_feature_noise(spec)
    logger = logger or getLogger()
    report = {}
    for name, frac in noise.items():
        if name not in modality_features:
            raise FeatureNoiseError(
                f"feature_noise names modality '{name}', but the dataset has {sorted(modality_features) or 'none'}.")
        feat = modality_features[name]
        present = modality_present[name].numpy() if name in modality_present else None
        cand = np.arange(1, feat.shape[0]) if present is None else np.flatnonzero(present[1:]) + 1
        stream = [int(seed), zlib.crc32(name.encode())]
        noisy, rows, src = swap_features(feat.numpy(), frac, stream, candidates=cand)
        modality_features[name] = torch.from_numpy(noisy)
        report[name] = (rows, src)
        logger.warning(f"feature_noise: modality [{name}] - {len(rows)} of {len(cand)} items "
                       f"({frac:.0%}) now carry another item's features (seed {seed}).")
    return report
