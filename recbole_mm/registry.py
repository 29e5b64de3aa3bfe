"""Model, dataset-class and trainer lookup: the plugin's zoo first, RecBole next.

Plugin models register explicitly::

    @register_model
    class SGP4SR(SequentialRecommender):
        dataset_class = MMSequentialDataset   # optional; the default for sequential models
        trainer_class = None                  # optional; RecBole's Trainer by default
"""
from __future__ import annotations

import importlib
import os
import pkgutil

_MODELS: dict[str, type] = {}


class UnknownNameError(ValueError):
    """An unknown model or dataset name (one-line message listing what exists)."""


def register_model(cls):
    """Class decorator: add a model to the plugin zoo under its class name."""
    name = cls.__name__
    if name in _MODELS and _MODELS[name] is not cls:
        raise ValueError(f"model name '{name}' registered twice")
    _MODELS[name] = cls
    return cls


def _load_zoo() -> None:
    importlib.import_module("recbole_mm.model")


def plugin_models() -> dict[str, type]:
    _load_zoo()
    return dict(sorted(_MODELS.items()))


def recbole_models() -> list[str]:
    """Names of RecBole's built-in models (scans recbole.model.*_recommender)."""
    import recbole.model as rm
    from recbole.model.abstract_recommender import AbstractRecommender

    names = set()
    for pkg in pkgutil.iter_modules(rm.__path__):
        if not pkg.ispkg or not pkg.name.endswith("_recommender"):
            continue
        try:
            sub = importlib.import_module(f"recbole.model.{pkg.name}")
        except Exception:  # e.g. exlib_recommender without lightgbm / xgboost
            continue
        for mod in pkgutil.iter_modules(sub.__path__):
            try:
                m = importlib.import_module(f"recbole.model.{pkg.name}.{mod.name}")
            except Exception:  # a RecBole model with an optional dependency missing
                continue
            for obj in vars(m).values():
                if isinstance(obj, type) and issubclass(obj, AbstractRecommender) and obj.__module__ == m.__name__:
                    names.add(obj.__name__)
    return sorted(names)


def get_model(name: str) -> type:
    """The model class for ``name``: plugin zoo first, then RecBole's built-ins."""
    if not isinstance(name, str):
        return name
    zoo = plugin_models()
    if name in zoo:
        return zoo[name]
    lower = {k.lower(): v for k, v in zoo.items()}
    if name.lower() in lower:
        return lower[name.lower()]
    from recbole.utils import get_model as rb_get_model

    try:
        return rb_get_model(name)
    except Exception:  # RecBole raises ValueError, or ImportError from optional model libraries
        raise UnknownNameError(
            f"Unknown model '{name}'. Plugin models: {', '.join(zoo) or 'none'}; "
            f"RecBole models: {', '.join(recbole_models())}."
        ) from None


def is_plugin_model(model_class) -> bool:
    return model_class in plugin_models().values()


def get_dataset_class(model_class):
    """The dataset class a model reads: its ``dataset_class`` or, for sequential models,
    :class:`~recbole_mm.data.dataset.MMSequentialDataset` (same split and features for every
    model); ``None`` means RecBole's own ``create_dataset`` choice."""
    from recbole.utils import ModelType

    from recbole_mm.data.dataset import MMSequentialDataset

    cls = getattr(model_class, "dataset_class", None)
    if cls is not None:
        return cls
    if getattr(model_class, "type", None) == ModelType.SEQUENTIAL:
        return MMSequentialDataset
    return None


def get_trainer(model_class, config):
    """The trainer class: the model's ``trainer_class`` or RecBole's choice; with
    ``train_all_positions`` the loss is taken at every position (recbole_mm.trainer.all_positions);
    unless ``chunked_eval`` is false (or not in ``config``), full-ranking evaluation runs in
    bounded memory (recbole_mm.trainer.chunked_eval)."""
    cls = getattr(model_class, "trainer_class", None)
    if cls is None:
        from recbole.utils import get_trainer as rb_get_trainer

        cls = rb_get_trainer(config["MODEL_TYPE"], config["model"])
    if _setting(config, "train_all_positions"):
        from recbole_mm.trainer.all_positions import with_all_positions

        cls = with_all_positions(cls)
    from recbole_mm.trainer.chunked_eval import with_chunked_eval

    return with_chunked_eval(cls, config)


def _setting(config, key):
    try:
        return config[key]
    except KeyError:
        return None


def properties_dir() -> str:
    """``properties/`` of the project (next to the package) or packaged copy."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(os.path.dirname(here), "properties"), os.path.join(here, "properties")):
        if os.path.isdir(cand):
            return cand
    raise FileNotFoundError("recbole_mm: cannot find the properties/ folder")


def known_datasets() -> list[str]:
    folder = os.path.join(properties_dir(), "dataset")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
