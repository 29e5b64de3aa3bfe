"""Search spaces: a yaml file naming configuration keys and the values a search may give them.

    learning_rate: [1.0e-4, 1.0e-3, 1.0e-2]          # a list: one of these values
    knn_k: {low: 2, high: 20, step: 2}               # integers 2, 4, ..., 20
    miu_c: {low: 0.0, high: 1.0, step: 0.1}          # floats on a grid
    weight_decay: {low: 1.0e-6, high: 1.0e-2, log: true}   # floats, sampled on a log scale
    lora_targets: {choices: [[attn], [attn, ffn]]}   # choices may be lists or mappings too

Values are read as RecBole reads its yaml files (``1e-4`` is a float). A range is integer when
``low``, ``high`` (and ``step``) are all integers, float otherwise. Every
key must be a configuration key that the layered configuration of the model and dataset defines
(RecBole's defaults, ``properties/overall.yaml``, the model's and the dataset's yaml): a typo would
otherwise be searched without effect. The papers' grids ship as ``properties/spaces/<Model>.yaml``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from recbole_mm import registry

RANGE_FIELDS = {"low", "high", "step", "log"}


class SpaceError(ValueError):
    """A search-space file that cannot be used (one line naming the file and key)."""


@dataclass
class Param:
    """One searched key: a categorical choice or a numeric range."""

    key: str
    choices: list | None = None
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    labels: dict = field(default_factory=dict)  # label -> value, for non-scalar choices

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "categorical"
        return "int" if all(_is_int(v) for v in (self.low, self.high, self.step) if v is not None) else "float"

    def spec(self):
        """The file form of this parameter (stored with the study, compared on resume)."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out = {"low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _label(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def spaces_dir() -> str:
    return os.path.join(registry.properties_dir(), "spaces")


def default_space_file(model: str) -> str:
    """The shipped search space of ``model``: ``properties/spaces/<Model>.yaml``."""
    name = getattr(registry.get_model(model), "__name__", str(model))
    path = os.path.join(spaces_dir(), f"{name}.yaml")
    if not os.path.isfile(path):
        shipped = sorted(f[:-5] for f in os.listdir(spaces_dir()) if f.endswith(".yaml"))
        raise SpaceError(f"{path}: no shipped search space for model {name} (shipped: "
                         f"{', '.join(shipped)}); pass --space file.yaml")
    return path


def parse_param(key: str, entry, where: str) -> Param:
    """One entry of a space file -> ``Param``; ``SpaceError`` naming ``where`` and ``key``."""
    def fail(msg):
        return SpaceError(f"{where}: key '{key}': {msg}")

    if isinstance(entry, list):
        entry = {"choices": entry}
    if not isinstance(entry, dict):
        raise fail(f"expected a list of values or a mapping with 'choices' or 'low'/'high', "
                   f"got {entry!r}")
    if "choices" in entry:
        if set(entry) != {"choices"}:
            extra = sorted(set(entry) - {"choices"})
            raise fail(f"'choices' cannot be combined with {', '.join(map(repr, extra))}")
        choices = entry["choices"]
        if not isinstance(choices, list):
            raise fail(f"'choices' must be a list, got {choices!r}")
        if not choices:
            raise fail("empty range: 'choices' is an empty list")
        labels = {}
        if not all(_is_scalar(c) for c in choices):
            labels = {_label(c): c for c in choices}
            if len(labels) != len(choices):
                raise fail("'choices' holds the same value twice")
        elif len(set(map(repr, choices))) != len(choices):
            raise fail("'choices' holds the same value twice")
        return Param(key, choices=choices, labels=labels)
    unknown = sorted(set(entry) - RANGE_FIELDS)
    if unknown:
        raise fail(f"unknown field(s) {', '.join(map(repr, unknown))} (expected 'choices', or "
                   f"'low' and 'high' with optional 'step' or 'log')")
    if "low" not in entry or "high" not in entry:
        raise fail("a range needs both 'low' and 'high'")
    low, high, step, log = entry["low"], entry["high"], entry.get("step"), entry.get("log", False)
    for name, v in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
        if not _is_number(v):
            raise fail(f"'{name}' must be a number, got {v!r}")
    if not isinstance(log, bool):
        raise fail(f"'log' must be true or false, got {log!r}")
    if low > high:
        raise fail(f"empty range: low {low} > high {high}")
    if step is not None and step <= 0:
        raise fail(f"'step' must be positive, got {step}")
    if step is not None and log:
        raise fail("'step' and 'log' cannot be combined")
    if log and low <= 0:
        raise fail(f"a log range needs low > 0, got {low}")
    return Param(key, low=low, high=high, step=step, log=log)


def load_space(path: str) -> dict[str, Param]:
    """Read and check the form of a space file (keys are checked by ``check_keys``)."""
    if not os.path.isfile(path):
        raise SpaceError(f"{path}: search-space file not found")
    from recbole.config import Config

    try:
        with open(path, encoding="utf-8") as f:  # RecBole's yaml loader: 1e-4 is a float
            raw = yaml.load(f, Loader=Config._build_yaml_loader(None))
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise SpaceError(f"{path}: not valid YAML ({' '.join(first[:2])})") from None
    if raw is None:
        raise SpaceError(f"{path}: no keys to search (the file is empty)")
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: expected a mapping of configuration keys, got {type(raw).__name__}")
    return {str(k): parse_param(str(k), v, path) for k, v in raw.items()}


def check_keys(space: dict[str, Param], known, path: str, what: str) -> None:
    """Every searched key must be one the layered configuration ``what`` defines."""
    known = set(known)
    for key in space:
        if key not in known:
            close = sorted(k for k in known if k.lower() == key.lower() or
                           k.replace("_", "") == key.replace("_", ""))
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SpaceError(f"{path}: key '{key}': not a configuration key of {what} (not in "
                             f"RecBole's defaults nor the plugin's yaml files){hint}")


def suggest(trial, space: dict[str, Param]) -> dict:
    """Ask the trial for one value per key; returns configuration values (choices decoded)."""
    out = {}
    for key, p in space.items():
        if p.choices is not None:
            if p.labels:
                out[key] = p.labels[trial.suggest_categorical(key, list(p.labels))]
            else:
                out[key] = trial.suggest_categorical(key, p.choices)
        elif p.kind == "int":
            out[key] = trial.suggest_int(key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            value = trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
            out[key] = float(f"{value:.12g}")  # 0.30000000000000004 -> 0.3 on a stepped grid
    return out


def decode(space: dict[str, Param], params: dict) -> dict:
    """A trial's stored params -> configuration values (the inverse of the labels)."""
    out = {}
    for key, value in params.items():
        p = space.get(key)
        if p is not None and p.labels:
            value = p.labels.get(value, value)
        elif isinstance(value, float):
            value = float(f"{value:.12g}")
        out[key] = value
    return out
