"""Cleaning the log: ids, repeated pairs, k-core, time order. Vectorised (pandas / numpy), every
step returns what it dropped so the pipeline can print it.

The log is a DataFrame with columns ``user`` and ``item`` (str tokens), ``time`` (float) and
``order`` (the row's position in the input file, the tie-breaker for equal times).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recbole_mm.prepare import PrepareError
from recbole_mm.prepare.read import where

DUPLICATE_POLICIES = ("first", "last", "keep")


def make_log(df: pd.DataFrame, path: str, user_col: str, item_col: str,
             times: np.ndarray) -> tuple[pd.DataFrame, int]:
    """The log's four columns; rows without a user or item id are dropped (their count returned).
    An id holding a tab or a line break (which would break RecBole's tab-separated files) is an
    error naming the row."""
    log = pd.DataFrame({"user": df[user_col], "item": df[item_col], "time": times,
                        "order": np.arange(len(df), dtype=np.int64)})
    for col, name in (("user", user_col), ("item", item_col)):
        s = log[col]
        bad = s.notna() & s.astype(str).str.contains(r"[\t\r\n]", regex=True)
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise PrepareError(
                f"{where(path, r)}, column '{name}': an id may not contain a tab or a line break, "
                f"got {s.iloc[r]!r}."
            )
    missing = log["user"].isna() | log["item"].isna() | (log["user"].astype(str).str.strip() == "") \
        | (log["item"].astype(str).str.strip() == "")
    log = log[~missing.to_numpy()].reset_index(drop=True)
    log["user"] = log["user"].astype(str).str.strip()
    log["item"] = log["item"].astype(str).str.strip()
    return log, int(missing.sum())


def drop_duplicates(log: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, int]:
    """Repeated (user, item) pairs: ``first`` keeps the earliest, ``last`` the latest (ties: file
    order), ``keep`` keeps them all (re-consumption). Returns the log and the rows dropped."""
    if policy not in DUPLICATE_POLICIES:
        raise PrepareError(f"--duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {policy!r}.")
    if policy == "keep":
        return log, 0
    ordered = log.sort_values(["time", "order"], kind="mergesort")
    kept = ordered.drop_duplicates(["user", "item"], keep=policy)
    kept = kept.sort_values("order", kind="mergesort").reset_index(drop=True)
    return kept, len(log) - len(kept)


def k_core(log: pd.DataFrame, user_k: int, item_k: int, log_fn=print) -> tuple[pd.DataFrame, dict]:
    """Repeatedly drop users with fewer than ``user_k`` and items with fewer than ``item_k``
    interactions until none is left. Returns the log and ``{rounds, interactions, users, items}``
    dropped."""
    n0, u0, i0 = len(log), log["user"].nunique(), log["item"].nunique()
    rounds = 0
    while user_k > 1 or item_k > 1:
        uc = log["user"].map(log["user"].value_counts()).to_numpy()
        ic = log["item"].map(log["item"].value_counts()).to_numpy()
        keep = (uc >= user_k) & (ic >= item_k)
        if keep.all():
            break
        rounds += 1
        log = log[keep].reset_index(drop=True)
        log_fn(f"[k-core] round {rounds}: {int((~keep).sum()):,} interactions dropped, "
               f"{len(log):,} left")
    dropped = {"rounds": rounds, "interactions": n0 - len(log),
               "users": u0 - log["user"].nunique(), "items": i0 - log["item"].nunique()}
    return log, dropped


def sort_by_time(log: pd.DataFrame) -> pd.DataFrame:
    """Stable sort by time (equal times keep the file order)."""
    return log.sort_values(["time", "order"], kind="mergesort").reset_index(drop=True)


def counts(log: pd.DataFrame) -> dict:
    n_users, n_items = log["user"].nunique(), log["item"].nunique()
    per_user = log.groupby("user", sort=False).size()
    return {"interactions": int(len(log)), "users": int(n_users), "items": int(n_items),
            "avg_length": round(len(log) / max(n_users, 1), 4),
            "users_under_3": int((per_user < 3).sum())}
