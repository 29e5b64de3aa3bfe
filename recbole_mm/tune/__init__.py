"""Hyper-parameter search on Optuna: ``python -m recbole_mm.tune --model=M --dataset=D``.

Parts: ``space`` (search-space files, their checks, suggestions), ``objective`` (one trial = one
ordinary ``run_recbole_mm`` run, pruned on its per-epoch validation score), ``study`` (the stored,
resumable Optuna study: TPE sampling, median pruning), ``report`` (results table, best
configuration yaml, plot). See docs/TUNING.md.
"""
from recbole_mm.tune.space import SpaceError, load_space
from recbole_mm.tune.study import StudyMismatchError, tune

__all__ = ["tune", "load_space", "SpaceError", "StudyMismatchError"]
