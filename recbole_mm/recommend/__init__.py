"""Top-k recommendations from a trained checkpoint, for known users or a new item history.

From Python::

    from recbole_mm.recommend import Recommender
    rec = Recommender("saved/SASRec-<time>.pth")
    rec.recommend(["u1", "u2"], topk=10)            # [{"user": "u1", "items": [...], "scores": [...]}, ...]
    rec.recommend_history(["i1", "i2", "i3"], topk=10)

Command line: ``python -m recbole_mm.recommend --checkpoint saved/X.pth --users u1,u2 --topk 10``
(:mod:`recbole_mm.recommend.__main__`).

The checkpoint is read with the safe loader (plain data, ``weights_only=True``); its
configuration rebuilds the dataset the model was trained on (:func:`recbole_mm.quick_start.
checkpoint_config`), the model is built for its training split and given the checkpoint's
weights (:func:`recbole_mm.quick_start.restore_model`). Parts:

* :mod:`~recbole_mm.recommend.users` - tokens <-> ids, each user's full known sequence (the test
  row's history plus its target) and the items to leave out;
* :mod:`~recbole_mm.recommend.scoring` - ``full_sort_predict`` ranking, or a FAISS index for
  models whose score is an inner product with an item embedding;
* :mod:`~recbole_mm.recommend.output` - JSON lines, or an atomically written CSV.
"""
from __future__ import annotations

import numpy as np

from recbole_mm.recommend.scoring import FaissScorer, FullSortScorer, check_topk
from recbole_mm.recommend.users import RecommendError, UserHistories

__all__ = ["Recommender", "RecommendError", "recommend"]


class Recommender:
    """A checkpoint loaded for recommending (see the module docstring).

    ``config_dict`` goes on top of the checkpoint's configuration (e.g. ``data_path`` when the
    data moved; ``eval_batch_size`` is the number of users scored at once). ``faiss``: ``None``
    (full ranking by ``full_sort_predict``), ``"Flat"`` (exact inner-product index) or another
    FAISS factory string; ``nprobe`` for IVF indexes.
    """

    def __init__(self, checkpoint: str, config_dict=None, faiss: str | None = None,
                 nprobe: int | None = None):
        from recbole_mm.quick_start import checkpoint_config, create_dataset, restore_model

        try:  # missing, truncated, not plain data, not written by recbole_mm
            self.config, state = checkpoint_config(checkpoint, config_dict)
        except ValueError as exc:
            raise RecommendError(str(exc)) from None
        self.dataset = create_dataset(self.config)
        splits = self.dataset.build()
        try:
            self.model = restore_model(self.config, state, splits[0], checkpoint)
        except ValueError as exc:  # another dataset or model
            raise RecommendError(str(exc)) from None
        self.model.eval()
        self.checkpoint = str(checkpoint)
        self.histories = UserHistories(self.dataset, splits)
        n = self.dataset.item_num
        self.scorer = FullSortScorer(self.model, n) if faiss is None else \
            FaissScorer(self.model, n, factory=faiss, nprobe=nprobe)
        self.batch_size = int(self.config["eval_batch_size"] or 256)

    @property
    def n_items(self) -> int:
        """Real items in the catalogue (the padding id 0 excluded)."""
        return self.dataset.item_num - 1

    def users(self) -> list[str]:
        """Raw tokens of every user with a history."""
        return self.histories.user_tokens(self.histories.all_users())

    def recommend(self, users=None, topk: int = 10, exclude_seen: bool = True) -> list[dict]:
        """Top-``topk`` items for each raw user token in ``users`` (``None``: every user), best
        first; items the user interacted with are left out unless ``exclude_seen`` is false."""
        k = check_topk(topk, self.n_items)
        uids = self.histories.all_users() if users is None else self.histories.user_ids(list(users))
        out = []
        for start in range(0, len(uids), self.batch_size):
            batch = uids[start:start + self.batch_size]
            exclude = self.histories.interacted(batch) if exclude_seen else None
            items, scores = self.scorer.topk(self.histories.interaction(batch), k, exclude)
            for token, its, sc in zip(self.histories.user_tokens(batch), items, scores):
                out.append(self._record(token, its, sc))
        return out

    def recommend_history(self, items, topk: int = 10, exclude_seen: bool = True) -> dict:
        """Top-``topk`` items after a new history of raw item tokens (oldest first, no user); the
        history's own items are left out unless ``exclude_seen`` is false."""
        k = check_topk(topk, self.n_items)
        items = list(items)
        if not items:
            raise RecommendError("--history is empty: give at least one item token.")
        iids = self.histories.item_ids(items)
        exclude = [np.unique(iids)] if exclude_seen else None
        found, scores = self.scorer.topk(self.histories.history_interaction(iids), k, exclude)
        return self._record(None, found[0], scores[0])

    def _record(self, user, iids, scores) -> dict:
        return {"user": user, "items": self.histories.item_tokens(iids),
                "scores": [float(s) for s in scores]}


def recommend(checkpoint: str, users=None, topk: int = 10, exclude_seen: bool = True,
              **kwargs) -> list[dict]:
    """One call: load ``checkpoint`` and recommend for ``users`` (see :class:`Recommender`)."""
    return Recommender(checkpoint, **kwargs).recommend(users, topk=topk, exclude_seen=exclude_seen)
