"""SFT pair construction (spec §2.1, §2.3.2): one ``(target, similar)`` pair per user.

``sft_target``:

* ``last_train`` (default, leakage-free): the target is the last item of the user's *training*
  part and the candidates are the earlier training items, so no validation or test interaction
  can enter the SFT data. :func:`pairs_from_dataset` reads these sequences from the training
  split (``MMSequentialDataset.training_sequences``), which never holds a held-out item.
* ``last`` (paper / official code): the target is the user's final item = the test item.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

SFT_TARGETS = ("last_train", "last")


@dataclass(frozen=True)
class Pair:
    user: object
    target: int
    similar: int


def select_target(seq: Sequence[int], sft_target: str, n_holdout: int = 2):
    """``(target, earlier items)`` of one full user sequence, or ``None`` when too short.

    ``n_holdout`` is the number of held-out items at the end (valid + test = 2) that
    ``last_train`` skips."""
    if sft_target not in SFT_TARGETS:
        raise ValueError(f"sft_target must be one of {SFT_TARGETS}, got '{sft_target}'.")
    seq = list(seq)
    if sft_target == "last_train":
        seq = seq[: len(seq) - n_holdout] if n_holdout else seq
    if len(seq) < 2:
        return None
    return seq[-1], seq[:-1]


def build_pairs(sequences: Mapping[object, Sequence[int]], titles: Mapping[int, str], judge: Callable,
                sft_target: str = "last_train", n_holdout: int = 2) -> list:
    """Ask ``judge`` once per user; keep validated answers (a candidate, not the target)."""
    pairs = []
    for user, seq in sequences.items():
        picked = select_target(seq, sft_target, n_holdout)
        if picked is None:
            continue
        target, earlier = picked
        cands = [(int(i), titles.get(int(i), "")) for i in earlier]
        choice = judge((int(target), titles.get(int(target), "")), cands, user=user)
        if choice is None:
            continue
        choice = int(choice)
        if choice == int(target) or choice not in {c for c, _ in cands}:
            raise ValueError(f"judge returned {choice} for user {user}: not one of the candidates")
        pairs.append(Pair(user, int(target), choice))
    return pairs


def check_leakage_free(pairs: Sequence[Pair], held_out: Mapping[object, set]) -> None:
    """Raise if a pair uses one of its user's held-out (valid/test) items."""
    bad = [p for p in pairs if {p.target, p.similar} & set(held_out.get(p.user, ()))]
    if bad:
        raise AssertionError(f"{len(bad)} SFT pair(s) use a held-out item, e.g. {bad[0]}")


def pairs_from_dataset(train_ds, test_ds, titles: Mapping[int, str], judge: Callable,
                       sft_target: str = "last_train") -> list:
    """Pairs over internal item ids from RecBole splits.

    ``last_train`` reads the training split only (history + targets of the training rows);
    ``last`` reads the test split (history + test item; histories are cut at
    ``MAX_ITEM_LIST_LENGTH``)."""
    if sft_target == "last_train":
        seqs = train_ds.training_sequences()
        users = _train_users(train_ds)
        sequences = dict(zip(users, seqs))
        return build_pairs(sequences, titles, judge, "last_train", n_holdout=0)
    feat = test_ds.inter_feat
    uid = feat[test_ds.uid_field].numpy()
    hist = feat[test_ds.item_id_list_field].numpy()
    length = feat[test_ds.item_list_length_field].numpy()
    target = feat[test_ds.iid_field].numpy()
    sequences = {int(u): list(h[:n]) + [int(t)] for u, h, n, t in zip(uid, hist, length, target)}
    return build_pairs(sequences, titles, judge, "last", n_holdout=0)


def _train_users(train_ds) -> list:
    uid = train_ds.inter_feat[train_ds.uid_field].numpy()
    order = np.argsort(uid, kind="stable")
    u = uid[order]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return [int(x) for x in u[starts]]  # same order as training_sequences()


def load_sequence_file(path: str) -> dict:
    """``user item item ...`` per line (official ``sequential_data.txt``) -> {user: [items]}."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = [int(x) for x in parts[1:]]
    return out
