"""The grid: profiles, the ``--models`` / ``--noise`` syntax, and the cells (one model under a
label, one dataset, one seed, one configuration) with their stable ids.

Configuration of a cell, lowest first: the profile (+ ``--config_files``), the full profile's
baseline settings (RecBole built-ins only), the model entry's ``{...}``, ``--key=value``, then
``feature_noise`` of a noise cell. The cell id hashes model, dataset, seed, configuration and
:data:`CELL_REVISION`, so a changed configuration (or meaning) never reuses an old result.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

from recbole_mm.benchmark.common import jsonable, safe_name
from recbole_mm.config import parse_cli_value

BASELINES = ["SASRec", "BERT4Rec", "GRU4Rec", "FDSA", "SASRecF"]
ID_ONLY_BASELINES = ["SASRec", "BERT4Rec", "GRU4Rec"]
PAPER_MODELS = ["SGP4SR", "DeCoRec", "MISSRec", "SICSRec", "MMSR"]

# Profiles: overrides applied to every model of the grid (below --config_files and --key=value).
PROFILES = {
    "quick": {
        "description": "smoke profile for CPU: tiny models (hidden 32, 1 layer, 2 heads), "
                       "2 epochs, batch 256, histories up to 20 items, no tuning; numbers are "
                       "NOT comparable with the papers",
        "config": {"epochs": 2, "hidden_size": 32, "inner_size": 64, "embedding_size": 32,
                   "n_layers": 1, "n_heads": 2, "train_batch_size": 256,
                   "eval_batch_size": 1024, "stopping_step": 2, "MAX_ITEM_LIST_LENGTH": 20},
        "datasets": ["mm_sample"],
    },
    "short": {
        "description": "short CPU profile: hidden 64, 2 layers, 2 heads, batch 512, at most "
                       "10 epochs (early stopping patience 3 on valid NDCG@10); under-trained "
                       "relative to the papers",
        "config": {"epochs": 10, "hidden_size": 64, "inner_size": 128, "embedding_size": 64,
                   "n_layers": 2, "n_heads": 2, "train_batch_size": 512,
                   "eval_batch_size": 2048, "stopping_step": 3},
        "datasets": ["scientific_mm"],
    },
    "full": {
        "description": "full profile (paper settings; fits a CPU with padding-free batches): plugin models train with their paper defaults "
                       "(properties/model/<M>.yaml); RecBole baselines use d=300 and batch 512 "
                       "(SGP4SR's baseline setting), RecBole's other defaults; every model under "
                       "the plugin-wide protocol (early stopping patience 10 on the dataset's valid "
                       "metric: NDCG@10, Hit@10 on NineRec as SICSRec selects); "
                       "epochs = each model's own total (300, MMSR 150; DeCoRec and SICSRec "
                       "share it over their two stages)",
        "config": {},
        "baseline_config": {"hidden_size": 300, "embedding_size": 300, "train_batch_size": 512},
        "datasets": ["scientific_mm"],
    },
}
# Part of every cell id: raised when the meaning of a configuration changes, so that an older
# result is never reused for it (2: plugin-wide protocol for every model, epochs = total, issue 19).
CELL_REVISION = 2
PAPER_PROTOCOL_SUFFIX = " (paper protocol)"


class Cell:
    """One model (under a label) on one dataset with one seed and one configuration."""

    def __init__(self, label, model, dataset, seed, config=None, noise=None):
        self.label, self.model, self.dataset = str(label), str(model), str(dataset)
        self.seed = int(seed)
        self.config = dict(config or {})
        self.noise = noise  # (modality, fraction) or None

    def spec(self) -> dict:
        return {"label": self.label, "model": self.model, "dataset": self.dataset,
                "seed": self.seed, "config": self.config,
                "noise": list(self.noise) if self.noise else None}

    @classmethod
    def from_spec(cls, d):
        return cls(d["label"], d["model"], d["dataset"], d["seed"], d.get("config"),
                   tuple(d["noise"]) if d.get("noise") else None)

    @property
    def key(self) -> str:
        payload = json.dumps({"model": self.model, "dataset": self.dataset, "seed": self.seed,
                              "config": jsonable(self.config), "rev": CELL_REVISION},
                             sort_keys=True)
        return hashlib.sha1(payload.encode()).hexdigest()[:10]

    @property
    def cell_id(self) -> str:
        noise = f"__noise-{self.noise[0]}-{self.noise[1]:g}" if self.noise else ""
        return f"{safe_name(self.dataset)}__{safe_name(self.label)}{noise}__seed{self.seed}__{self.key}"

    def __repr__(self):
        return f"Cell({self.cell_id})"


def parse_models(spec) -> list[tuple[str, str, dict]]:
    """``'SASRec,SGP4SR,noCGC=SGP4SR{use_cgc: false}'`` or a list of names / dicts ->
    ``[(label, model, config), ...]`` (``MMSR{protocol: paper}`` is labelled
    ``MMSR (paper protocol)``). ``all`` = the five baselines + every registered plugin
    model; ``baselines`` and ``papers`` expand to those groups."""
    if isinstance(spec, str):
        items, depth, cur = [], 0, ""
        for ch in spec:
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
                continue
            depth += ch in "{[("  # commas inside a config, a list or a label's brackets
            depth -= ch in "}])"
            cur += ch
        items.append(cur)
        spec = [s.strip() for s in items if s.strip()]
    out = []
    for item in spec:
        if isinstance(item, dict):
            model, cfg = item["model"], dict(item.get("config") or {})
            out.append((row_label(item.get("label", model), model, cfg), model, cfg))
            continue
        if item == "all":
            out += [(m, m, {}) for m in BASELINES]
            out += [(m, m, {}) for m in _registered_plugin_models() if m not in BASELINES]
            continue
        if item == "baselines":
            out += [(m, m, {}) for m in BASELINES]
            continue
        if item == "papers":
            out += [(m, m, {}) for m in PAPER_MODELS]
            continue
        m = re.fullmatch(r"\s*(?:([^{]+?)\s*=)?\s*([A-Za-z0-9_]+)\s*(\{.*\})?\s*", item)
        if not m:
            raise SystemExit(f"error: bad model entry {item!r} (expected NAME, LABEL=NAME or "
                             f"LABEL=NAME{{key: value, ...}})")
        label, model = m.group(1), m.group(2)
        cfg = parse_cli_value(m.group(3)) if m.group(3) else {}
        if not isinstance(cfg, dict):
            raise SystemExit(f"error: bad config in model entry {item!r}")
        _check_model_name(model, item)
        out.append((row_label((label or model).strip(), model, cfg), model, cfg))
    seen = set()
    uniq = []
    for t in out:
        if t[0] in seen:
            continue
        seen.add(t[0])
        uniq.append(t)
    return uniq


def _check_model_name(model: str, entry: str) -> None:
    """A clear error for an entry whose model cannot be a class name, e.g. ``SASRec d=128``
    (label ``SASRec d``, model ``128``), left when a comma outside brackets split a label. A
    well-formed name that no installed model has is not refused here: its cells are recorded
    as skipped ("model not available"), like a RecBole model whose optional library is missing."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", model):
        raise SystemExit(
            f"error: model entry {entry!r} names no model ({model!r} is not a class name); an "
            f"entry is NAME, LABEL=NAME or LABEL=NAME{{key: value, ...}}, and a comma in a label "
            f"must sit inside brackets")


def row_label(label: str, model: str, config: dict) -> str:
    """A row under ``protocol: paper`` named only by its model is ``'<model> (paper protocol)'``."""
    if config.get("protocol") == "paper" and label == model:
        return model + PAPER_PROTOCOL_SUFFIX
    return label


def _registered_plugin_models() -> list[str]:
    try:
        from recbole_mm import registry

        return list(registry.plugin_models())
    except Exception:  # a half-written model module must not take the harness down
        return []


def parse_noise(spec):
    """``'image:0,0.1,0.5'`` -> ``('image', [0.0, 0.1, 0.5])``."""
    if not spec:
        return None
    if ":" not in spec:
        raise SystemExit("error: --noise expects MODALITY:F1,F2,... (e.g. image:0,0.1,0.3,0.5)")
    name, levels = spec.split(":", 1)
    try:
        values = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: --noise fractions must be numbers, got {levels!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise SystemExit("error: --noise fractions must lie in [0, 1]")
    if 0.0 not in values:
        values = [0.0] + values  # the clean run is the curve's reference point
    return name.strip(), sorted(set(values))


def has_model_properties(model: str) -> bool:
    """A model with its own ``properties/model/<M>.yaml`` (the plugin's paper defaults)."""
    from recbole_mm import registry

    try:
        return os.path.isfile(os.path.join(registry.properties_dir(), "model", f"{model}.yaml"))
    except FileNotFoundError:
        return False


def build_grid(models, datasets, seeds, profile_config, overrides, noise=None,
               baseline_config=None, model_config=None) -> list[Cell]:
    """Cells in a stable order: dataset, model, noise level, seed.

    Configuration per cell, lowest first: ``profile_config``, ``baseline_config`` (only for models
    without their own properties/model/<M>.yaml, i.e. RecBole's built-ins), the profile's
    ``model_config[model]``, the model entry's own config, ``overrides`` (``--key=value``), then
    ``feature_noise`` for noisy cells. A cell under ``protocol: paper`` whose label is the bare
    model name is labelled ``<model> (paper protocol)``.
    """
    cells = []
    for dataset in datasets:
        for label, model, model_cfg in models:
            levels = [None]
            if noise:
                levels = [None if f == 0 else (noise[0], f) for f in noise[1]]
            for lvl in levels:
                for seed in seeds:
                    cfg = dict(profile_config)
                    if baseline_config and not has_model_properties(model):
                        cfg.update(baseline_config)
                    cfg.update((model_config or {}).get(model, {}))
                    cfg.update(model_cfg)
                    cfg.update(overrides)
                    if lvl is not None:
                        cfg["feature_noise"] = f"{lvl[0]}:{lvl[1]:g}"
                    cells.append(Cell(row_label(label, model, cfg), model, dataset, seed, cfg, lvl))
    return cells

