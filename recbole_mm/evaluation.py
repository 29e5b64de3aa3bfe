"""Evaluation options that work with every model (plugin models and RecBole built-ins).

Cold-start evaluation (MMSR paper, Table 8; cold = fewer than 10 occurrences in the training
set, following MoRec)::

    cold_start_eval: true     # evaluate only cases whose target item is cold
    cold_threshold: 10        # cold = fewer than this many occurrences in the training split

Validation and test cases are restricted to those whose target item occurs fewer than
``cold_threshold`` times in the *training split* (never counting validation or test
interactions, so the choice of cases leaks nothing). Training is unchanged; history masking
(RecBole's ``used_ids`` for general models) still uses the full validation data. Items never
seen in training (count 0) are cold too. It is applied by :func:`apply_eval_options`, which
``recbole_mm.quick_start`` calls right after RecBole's ``data_preparation``.
"""
from __future__ import annotations

from logging import getLogger

import numpy as np
import torch


def training_item_counts(train_dataset) -> np.ndarray:
    """Occurrences of every internal item id in the training split ``[item_num]``.

    Sequential data (``item_id_list`` rows, one per training target): every target once, plus
    the history of each user's shortest row (the items that are never a training target).
    Other data: one per interaction row. A dataset may provide ``train_item_counts`` itself
    (MMSR's dense training split keeps the counts of the full training data).
    """
    pre = getattr(train_dataset, "train_item_counts", None)
    if pre is not None:
        return np.asarray(pre)
    feat = train_dataset.inter_feat
    iid = train_dataset.iid_field
    n = train_dataset.item_num
    counts = np.bincount(feat[iid].numpy(), minlength=n).astype(np.int64)
    list_field = getattr(train_dataset, "item_id_list_field", None)
    if list_field and list_field in feat.columns:
        uid = feat[train_dataset.uid_field].numpy()
        lens = feat[train_dataset.item_list_length_field].numpy()
        hist = feat[list_field].numpy()
        order = np.lexsort((lens, uid))  # per user, shortest row first
        first = order[np.r_[True, uid[order][1:] != uid[order][:-1]]]
        for r in first:
            items = hist[r, : lens[r]]
            np.add.at(counts, items[items > 0], 1)
    counts[0] = 0
    return counts


def cold_item_mask(train_dataset, threshold: int) -> np.ndarray:
    """``[item_num]`` bool: items with fewer than ``threshold`` training occurrences (padding False)."""
    mask = training_item_counts(train_dataset) < int(threshold)
    mask[0] = False
    return mask


def restrict_eval_loader(config, loader, keep_items: np.ndarray, what: str = "cold"):
    """A new evaluation loader of the same class over the cases whose target is in ``keep_items``
    (bool ``[item_num]``), sharing the original sampler (history masking unchanged)."""
    ds = loader._dataset
    targets = ds.inter_feat[ds.iid_field].numpy()
    keep = np.flatnonzero(keep_items[targets])
    if len(keep) == 0:
        raise ValueError(f"{what} evaluation: no {ds.split_name if hasattr(ds, 'split_name') else ''} "
                         f"case has a {what} target item; raise cold_threshold or turn it off.")
    new_ds = ds.copy(ds.inter_feat[torch.as_tensor(keep, dtype=torch.long)])
    if hasattr(ds, "split_name"):
        new_ds.split_name = ds.split_name
    return type(loader)(config, new_ds, loader._sampler, shuffle=False)


def apply_eval_options(config, train_data, valid_data, test_data):
    """Apply the evaluation options of ``config`` to RecBole's three loaders (no-op by default)."""
    if not config["cold_start_eval"]:
        return train_data, valid_data, test_data
    threshold = int(config["cold_threshold"] or 10)
    cold = cold_item_mask(train_data._dataset, threshold)
    logger = getLogger()
    out = []
    for name, loader in (("valid", valid_data), ("test", test_data)):
        before = len(loader._dataset.inter_feat)
        new = restrict_eval_loader(config, loader, cold)
        logger.info(f"cold_start_eval: {name} keeps {len(new._dataset.inter_feat)} of {before} cases "
                    f"(target with < {threshold} training occurrences; {int(cold.sum())} cold items)")
        out.append(new)
    return train_data, out[0], out[1]
