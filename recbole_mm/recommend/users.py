"""Users, items and histories of a rebuilt dataset: raw tokens <-> internal ids, each user's full
known sequence (what the model reads to recommend) and the items each user interacted with.

**Which history.** Recommending comes after everything the data holds, so a user's history is
their *whole known sequence*: the history of their test row **plus the test row's target** (the
last interaction), cut to the model's last ``MAX_ITEM_LIST_LENGTH`` items like every history.
Under leave-one-out this is every interaction of the user in time order; with benchmark files
(UniSRec splits) it is the test file's history and target. A user without a test row (too few
interactions for one) uses their validation row, else their longest training row (the last one on
ties), in the same way. Other per-position fields of that row (``timestamp_list`` ...) are
extended with the row's own value the same way.

**Already interacted.** The items to leave out are every item in any of the user's rows, in any
split (histories and targets): all the user's known interactions, not only the last window.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from recbole.data.interaction import Interaction


class RecommendError(ValueError):
    """An input that cannot be served (the message names the token, file or option)."""


def _ids(dataset, field: str, tokens, what: str) -> np.ndarray:
    """Internal ids of raw ``tokens`` of ``field``; unknown tokens stop with one line naming them."""
    table = dataset.field2token_id[field]
    tokens = [str(t) for t in tokens]
    unknown = [t for t in tokens if t not in table or table[t] == 0]
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise RecommendError(
            f"unknown {what} token{'s' if len(unknown) > 1 else ''} {shown} in dataset "
            f"'{dataset.dataset_name}' ({len(table) - 1} {what}s; tokens are the raw ids of its "
            f"files).")
    return np.asarray([table[t] for t in tokens], dtype=np.int64)


def _extend(values: torch.Tensor, lengths: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Append ``last`` to each right-padded row of ``values`` ``[n, W, ...]``; full rows drop
    their oldest entry first."""
    out = values.clone()
    full = lengths >= values.shape[1]
    if full.any():
        out[full] = torch.roll(values[full], -1, dims=1)
    pos = torch.where(full, torch.full_like(lengths, values.shape[1] - 1), lengths)
    out[torch.arange(len(out)), pos] = last.to(out.dtype)
    return out


class UserHistories:
    """Full known sequences and interacted items of every user of ``dataset`` (see the module
    docstring); ``splits`` are ``dataset.build()``'s train, valid and test datasets."""

    def __init__(self, dataset, splits):
        self.dataset = dataset
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.list_field = dataset.item_id_list_field
        self.len_field = dataset.item_list_length_field
        self.width = int(dataset.config["MAX_ITEM_LIST_LENGTH"])
        self.row_of = {}  # internal user id -> (split index, row)
        for s, split in reversed(list(enumerate(splits))):  # test first, then valid, then train
            feat = split.inter_feat
            uids = feat[self.uid_field].numpy()
            lens = feat[self.len_field].numpy()
            best = {}
            for r in np.lexsort((np.arange(len(uids)), lens)):  # longest last, later rows on ties
                best[int(uids[r])] = int(r)
            for u, r in best.items():
                self.row_of.setdefault(u, (s, r))
        self.splits = splits
        self.seen = self._interacted(dataset.inter_feat)

    def _interacted(self, feat) -> sp.csr_matrix:
        uids = feat[self.uid_field].numpy()
        hist = feat[self.list_field].numpy()
        lens = feat[self.len_field].numpy()
        mask = np.arange(hist.shape[1])[None, :] < lens[:, None]
        rows = np.concatenate([np.repeat(uids, mask.sum(1)), uids])
        cols = np.concatenate([hist[mask], feat[self.iid_field].numpy()])
        shape = (self.dataset.user_num, self.dataset.item_num)
        m = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=shape)
        m.sum_duplicates()
        return m

    # ------------------------------------------------------------------ tokens
    def user_ids(self, tokens) -> np.ndarray:
        uids = _ids(self.dataset, self.uid_field, tokens, "user")
        missing = [t for t, u in zip(tokens, uids) if int(u) not in self.row_of]
        if missing:
            raise RecommendError(f"user {missing[0]!r} has no interaction row in dataset "
                                 f"'{self.dataset.dataset_name}' (no history to recommend from).")
        return uids

    def item_ids(self, tokens) -> np.ndarray:
        return _ids(self.dataset, self.iid_field, tokens, "item")

    def all_users(self) -> np.ndarray:
        return np.asarray(sorted(self.row_of), dtype=np.int64)

    def user_tokens(self, uids) -> list[str]:
        return [str(t) for t in self.dataset.id2token(self.uid_field, np.asarray(uids))]

    def item_tokens(self, iids) -> list[str]:
        return [str(t) for t in self.dataset.id2token(self.iid_field, np.asarray(iids))]

    # ------------------------------------------------------------------ model input
    def interaction(self, uids) -> Interaction:
        """The batch the model scores for users ``uids``: each user's full known sequence."""
        parts = []
        for s, split in enumerate(self.splits):
            rows = [(i, self.row_of[int(u)][1]) for i, u in enumerate(uids) if self.row_of[int(u)][0] == s]
            if rows:
                order, index = zip(*rows)
                parts.append((np.asarray(order), split.inter_feat[torch.as_tensor(index)]))
        position = np.concatenate([p[0] for p in parts])
        rows = parts[0][1] if len(parts) == 1 else _concat([p[1] for p in parts])
        rows = rows[torch.as_tensor(np.argsort(position, kind="stable"))]
        lengths = rows[self.len_field]
        suffix = self.dataset.config["LIST_SUFFIX"]
        data = {self.uid_field: rows[self.uid_field]}
        for name in rows.columns:
            base = name[: -len(suffix)] if name.endswith(suffix) else None
            if base is not None and base in rows.columns:
                data[name] = _extend(rows[name], lengths, rows[base])
        data[self.len_field] = torch.clamp(lengths + 1, max=rows[self.list_field].shape[1])
        return Interaction(data)

    def history_interaction(self, iids: np.ndarray) -> Interaction:
        """The batch for one new history (no user): its last ``MAX_ITEM_LIST_LENGTH`` items."""
        iids = np.asarray(iids, dtype=np.int64)[-self.width:]
        seq = torch.zeros(1, self.width, dtype=torch.long)
        seq[0, : len(iids)] = torch.as_tensor(iids)
        return Interaction({self.list_field: seq,
                            self.len_field: torch.tensor([len(iids)], dtype=torch.long)})

    def interacted(self, uids) -> list[np.ndarray]:
        return [self.seen.indices[self.seen.indptr[u]: self.seen.indptr[u + 1]] for u in uids]


def _concat(interactions) -> Interaction:
    from recbole.data.interaction import cat_interactions

    return cat_interactions(interactions)
