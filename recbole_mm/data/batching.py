"""Padding-free batches for every sequential model: length buckets and trimmed history fields.

RecBole pads every history to ``MAX_ITEM_LIST_LENGTH`` and draws training rows at random, so a
batch of 512 rows whose histories hold 3 items on average still carries 50 positions per row.
With right padding (RecBole's layout: items at positions ``0 .. len-1``, zeros after), the
positions after a row's last item never change what a causal or padding-masked encoder computes
at its real positions, so they can be dropped:

* **trimming** - every per-position field of a batch (``item_id_list``, any other ``*_list``
  field, anything a dataset declares in ``position_fields``) is cut to the longest history in
  that batch. Validation and test batches are trimmed the same way.
* **length buckets** (training) - each epoch the rows are shuffled (from the run's seed), sorted
  by history length inside windows of ``bucket_window`` batches (0 = the whole epoch; ties keep
  the random order), cut into batches of ``train_batch_size`` and the batch order is shuffled, so
  a batch holds histories of similar length and little is left to pad.
* evaluation rows are ordered by history length (the metrics are means over rows, so the order of
  rows does not change them).

``trim_padding: false`` restores RecBole's own loaders (``TrainDataLoader`` and
``FullSortEvalDataLoader``, padded path) exactly; ``bucket_by_length: false`` keeps RecBole's
random batches but still trims them. A model for which trimming is not exact sets the class
attribute ``trim_exact = False`` (with the reason in its docs page); its batches keep their full
width. Everything here works on the batch :class:`~recbole.data.interaction.Interaction` before
RecBole's transforms (BERT4Rec's masking) run, so those see the trimmed rows.

**History masking** (``mask_history_items: true``, a protocol key): every sequential model ranks
only items outside the row's input sequence. The evaluation loaders give RecBole's trainer a
``history_index`` (``(row ids, item ids)`` of each row's non-padding ``item_id_list`` items,
:func:`history_index`, read before any transform) and the trainer scores those ``-inf``, as RecBole
does for general models (``scores[history_index] = -inf``); chunked evaluation honours the same
index (:mod:`recbole_mm.trainer.chunked_eval`). With trimming that is
:class:`TrimmedFullSortEvalDataLoader`; without it (``trim_padding: false``, ``trim_exact =
False``, saved dataloaders) :class:`HistoryMaskedFullSortEvalDataLoader`. With the key false (the
default) nothing changes: no index, RecBole's or the trimmed loader as before. The key true for a
non-sequential model or a sampled (non-full) evaluation raises :class:`BatchError`.
"""
from __future__ import annotations

from logging import getLogger

import numpy as np
import torch
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader, TrainDataLoader
from recbole.utils import ModelType


class BatchError(ValueError):
    """A batch or a batching setting that cannot be used (names the key and the model)."""


def trimming_enabled(config) -> bool:
    """Whether the plugin's trimmed loaders are used for ``config`` (sequential models only)."""
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or config["trim_padding"] is False:
        return False
    from recbole_mm import registry

    return getattr(registry.get_model(config["model"]), "trim_exact", True) is not False


def mask_history_enabled(config) -> bool:
    """Whether ``mask_history_items`` is true in ``config`` (absent or ``~``: false)."""
    try:
        value = config["mask_history_items"]
    except KeyError:
        return False
    if value is None or value is False:
        return False
    if value is True or isinstance(value, np.bool_):
        return bool(value)
    raise BatchError(f"mask_history_items must be true or false, got {value!r} "
                     f"(model {config['model']}).")


def history_index(item_seq: torch.Tensor):
    """RecBole's ``history_index`` for a batch of item sequences ``[B, L]`` (0 = padding):
    ``(row ids, item ids)`` of every non-padding entry, the pairs ``Trainer._full_sort_batch_eval``
    scores ``-inf`` (``scores[history_index] = -inf``). A repeated item gives a repeated pair."""
    rows, cols = torch.nonzero(item_seq > 0, as_tuple=True)
    return rows, item_seq[rows, cols]


def padded_width(dataset) -> int:
    """The width RecBole pads ``dataset``'s histories to (``MAX_ITEM_LIST_LENGTH``, or the files'
    own width when shorter), capped at ``MAX_ITEM_LIST_LENGTH``. A model whose computation counts
    padding positions, or draws random numbers per position, uses this instead of the width of the
    batch it gets, so a trimmed batch gives what the padded one gives."""
    width = int(dataset.field2seqlen.get(dataset.item_id_list_field, 0) or 0)
    cap = int(dataset.config["MAX_ITEM_LIST_LENGTH"])
    return min(width, cap) if width > 0 else cap


#: models whose training batches must not be grouped by length (trimming stays on), and why
NO_BUCKETING = {
    "BERT4Rec": "RecBole's BERT4Rec never counts a mask at position 0 (index 0 is its padding "
                "marker), so a batch of one-item histories has no loss term and its loss is 0/0",
}


def bucketing_allowed(model_class) -> bool:
    """Whether ``model_class`` may get length-bucketed training batches (``bucket_by_length``):
    a model sets ``bucket_by_length = False`` to refuse; RecBole's models are listed in
    :data:`NO_BUCKETING`."""
    if getattr(model_class, "bucket_by_length", True) is False:
        return False
    return not (model_class.__name__ in NO_BUCKETING
                and model_class.__module__.startswith("recbole.model."))


def position_fields(dataset, interaction) -> list[str]:
    """Names of the fields of ``interaction`` aligned to the history (``[B, L, ...]``, L = the
    width of ``item_id_list``): every ``*<LIST_SUFFIX>`` field, plus the dataset's own
    ``extra_position_fields``."""
    list_field = dataset.item_id_list_field
    width = interaction[list_field].shape[1]
    suffix = dataset.config["LIST_SUFFIX"]
    extra = set(getattr(dataset, "extra_position_fields", ()) or ())
    out = []
    for name in interaction.columns:
        value = interaction[name]
        if value.dim() < 2 or value.shape[1] != width:
            continue
        if name.endswith(suffix) or name in extra:
            out.append(name)
    return out


def trim_interaction(dataset, interaction, model_name: str = "?"):
    """Cut every history-aligned field of ``interaction`` to its longest history (in place)."""
    lengths = interaction[dataset.item_list_length_field]
    if len(lengths) == 0:
        return interaction
    longest = int(lengths.max())
    if longest <= 0:
        raise BatchError(
            f"{model_name}: every history in this batch is empty "
            f"('{dataset.item_list_length_field}' is 0 for all {len(lengths)} rows); a sequential "
            f"model needs at least one item of history per row. Check the split of dataset "
            f"'{dataset.dataset_name}' (MAX_ITEM_LIST_LENGTH, eval_args).")
    width = interaction[dataset.item_id_list_field].shape[1]
    if longest >= width:
        return interaction
    for name in position_fields(dataset, interaction):
        interaction[name] = interaction[name][:, :longest].contiguous()
    return interaction


def length_buckets(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                   window: int = 0) -> list[np.ndarray]:
    """One epoch of batches of row indices, grouped by ``lengths``.

    Rows are permuted with ``generator``; inside each window of ``window * batch_size`` rows
    (``window <= 0``: all rows) they are sorted by length (stable, so equal lengths stay in random
    order) and cut into batches of ``batch_size``; the order of all batches is then permuted.
    Every row appears exactly once.
    """
    n = len(lengths)
    if n == 0:
        return []
    perm = torch.randperm(n, generator=generator).numpy()
    span = n if window <= 0 else max(1, window) * batch_size
    batches = []
    for start in range(0, n, span):
        part = perm[start:start + span]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def length_groups(lengths: torch.Tensor, min_width: int = 4) -> list[tuple[torch.Tensor, int]]:
    """Rows of one batch grouped by history length, for a model that encodes each group apart:
    ``[(row indices, width)]``, a row of length ``n`` in the group of widths up to the next power
    of two (at least ``min_width``), ``width`` the group's longest row. The batch itself (which
    rows, hence the loss's weights) is unchanged; only the padding each row is computed with
    shrinks. Rows of length 0 go with the shortest group."""
    lengths = lengths.to("cpu", torch.long)
    ceiling = torch.clamp(lengths, min=1).float().log2().ceil().long()
    ceiling = torch.clamp(ceiling, min=int(np.log2(max(1, min_width))))
    groups = []
    for c in torch.unique(ceiling).tolist():
        rows = torch.nonzero(ceiling == c, as_tuple=True)[0]
        groups.append((rows, max(1, int(lengths[rows].max()))))
    return groups


class _TrimmedLoader:
    """What the plugin's training and evaluation loaders share: a precomputed list of batches of
    row indices (``_epoch_batches``), collated and trimmed in the main process."""

    def _setup_trimming(self):
        from recbole_mm import registry

        self._model_name = str(self.config["model"])
        self._model_class = registry.get_model(self.config["model"])

    def _trim(self, data):
        return trim_interaction(self._dataset, data, self._model_name)

    def _shard_rows(self, rows: np.ndarray) -> np.ndarray:
        """Distributed runs: this rank's share of ``rows``, as RecBole's ``DistributedSampler``
        gives it (rows repeated from the start until every rank has as many)."""
        if self.config["single_spec"]:
            return rows
        ws, rank = int(self.config["world_size"]), int(self.config["local_rank"])
        if len(rows) % ws:
            rows = np.concatenate([rows, rows[: ws - len(rows) % ws]])
        return rows[rank::ws]

    def __iter__(self):
        for index in self._epoch_batches():
            yield self.collate_fn(index)

    def __len__(self):
        return len(self._batch_plan())


class BucketedTrainDataLoader(_TrimmedLoader, TrainDataLoader):
    """RecBole's ``TrainDataLoader`` with length-bucketed batches cut to their longest history.

    Negative sampling and transforms are RecBole's own (``collate_fn``), run on the trimmed rows.
    """

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._setup_trimming()
        self._lengths = dataset.inter_feat[dataset.item_list_length_field].numpy()
        self._bucket = config["bucket_by_length"] is not False and bucketing_allowed(self._model_class)
        self._window = int(config["bucket_window"] or 0)
        self._bucket_gen = torch.Generator()
        self._bucket_gen.manual_seed(int(config["seed"]))

    def _batch_plan(self):
        n, step = len(self._shard_rows(np.arange(self.sample_size))), self.step
        if self._bucket and self.shuffle and self._window > 0:
            span = self._window * step
            sizes = [min(span, n - s) for s in range(0, n, span)]
        else:
            sizes = [n]
        return [None] * sum(-(-k // step) for k in sizes)

    def _epoch_batches(self):
        step = self.step
        rows = np.arange(self.sample_size)
        if self.shuffle and not self.config["single_spec"]:  # the same permutation on every rank
            rows = torch.randperm(self.sample_size, generator=self._bucket_gen).numpy()
        rows = self._shard_rows(rows)
        if self._bucket and self.shuffle:
            return [rows[b] for b in length_buckets(self._lengths[rows], step, self._bucket_gen,
                                                    self._window)]
        if self.shuffle:
            rows = rows[torch.randperm(len(rows), generator=self._bucket_gen).numpy()]
        return [rows[i:i + step] for i in range(0, len(rows), step)]

    def collate_fn(self, index):
        index = np.asarray(index)
        data = self._trim(self._dataset[index])
        return self._neg_sampling(self.transform(self._dataset, data))


class TrimmedFullSortEvalDataLoader(_TrimmedLoader, FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` (sequential models) with rows ordered by history
    length and every batch cut to its longest history."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        self._setup_trimming()
        lengths = dataset.inter_feat[dataset.item_list_length_field].numpy()
        self._order = np.argsort(lengths, kind="stable")

    def _batch_plan(self):
        return self._epoch_batches()

    def _epoch_batches(self):
        rows = self._shard_rows(self._order)
        return [rows[i:i + self.step] for i in range(0, len(rows), self.step)]

    def collate_fn(self, index):
        index = np.asarray(index)
        interaction = self._trim(self._dataset[index])
        history = (history_index(interaction[self._dataset.item_id_list_field])
                   if mask_history_enabled(self.config) else None)
        interaction = self.transform(self._dataset, interaction)
        positive_u = torch.arange(len(interaction))
        return interaction, history, positive_u, interaction[self.iid_field]


class HistoryMaskedFullSortEvalDataLoader(FullSortEvalDataLoader):
    """RecBole's ``FullSortEvalDataLoader`` (sequential models, full width, RecBole's row order)
    whose batches carry the :func:`history_index` of their input sequences: the loader
    :func:`data_preparation` uses in place of RecBole's when ``mask_history_items`` is true and
    batches are not trimmed."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=shuffle)
        if not self.is_sequential:
            raise BatchError(f"mask_history_items: sequential models only (model "
                             f"{config['model']}).")

    def collate_fn(self, index):
        index = np.array(index)
        interaction = self._dataset[index]
        history = history_index(interaction[self._dataset.item_id_list_field])
        interaction = self.transform(self._dataset, interaction)
        positive_u = torch.arange(len(interaction))
        return interaction, history, positive_u, interaction[self.iid_field]


def window_rows(train_dataset, width: int) -> np.ndarray:
    """Rows of the training split that all-position training keeps (``train_all_positions``).

    A user's training rows predict items ``1 .. m`` of their training sequence (row ``i`` in time
    order predicts item ``i + 1`` from the items before it, RecBole's prefix augmentation). The
    rows kept predict items ``m, m - W, m - 2W, ...`` (``W`` = ``width``, the history window): the
    loss at every position of each kept row's history then covers every training target exactly
    once. For users with at most ``W + 1`` training items (almost all of them) that is their latest
    row alone, which sees exactly the (prefix, target) pairs of RecBole's rows; a longer user's
    earlier windows start with shorter contexts than RecBole's sliding rows.
    """
    feat = train_dataset.inter_feat
    uid = feat[train_dataset.uid_field].numpy()
    length = feat[train_dataset.item_list_length_field].numpy()
    order = np.argsort(uid, kind="stable")
    uid_sorted = uid[order]
    starts = np.flatnonzero(np.r_[True, uid_sorted[1:] != uid_sorted[:-1]])
    ends = np.r_[starts[1:], len(uid_sorted)]
    keep = []
    for s, e in zip(starts, ends):
        rows = order[s:e]  # file order of this user's rows
        if length[rows[0]] > length[rows[-1]]:  # newest first (UniSRec files): time order
            rows = rows[::-1]
        m = len(rows)
        keep.extend(rows[i] for i in range(m - 1, -1, -width))
    return np.sort(np.asarray(keep, dtype=np.int64))


def _keep_all_position_rows(config, train_dataset) -> None:
    """``train_all_positions``: check the model supports it, keep :func:`window_rows`."""
    from recbole_mm.model.all_positions import check_support

    check_support(config)
    if getattr(train_dataset, "all_position_rows", False):  # e.g. MMSR's dense_train
        return
    keep = window_rows(train_dataset, padded_width(train_dataset))
    before = len(train_dataset.inter_feat)
    train_dataset.inter_feat = train_dataset.inter_feat[torch.as_tensor(keep, dtype=torch.long)]
    train_dataset.all_position_rows = True
    getLogger().info(f"train_all_positions: {len(keep)} of {before} training rows kept "
                     f"(one per user and history window); loss at every position")


def _check_mask_history(config, loaders) -> None:
    """``mask_history_items: true`` must reach every evaluation batch: refuse what cannot."""
    for phase, loader in zip(("valid", "test"), loaders[1:]):
        if not isinstance(loader, (TrimmedFullSortEvalDataLoader,
                                   HistoryMaskedFullSortEvalDataLoader)):
            raise BatchError(
                f"mask_history_items: true needs full-ranking evaluation (eval_args mode: full), "
                f"but the {phase} data of model {config['model']} is evaluated by "
                f"{type(loader).__name__} (eval_args: {config['eval_args']}); set "
                f"mask_history_items: false or evaluate by full ranking.")


def _with_history_mask(config, loaders):
    """RecBole's loaders with its full-ranking evaluation loaders replaced by
    :class:`HistoryMaskedFullSortEvalDataLoader` over the same data (saved dataloaders)."""
    out = list(loaders)
    for i in (1, 2):
        if type(out[i]) is FullSortEvalDataLoader:
            out[i] = HistoryMaskedFullSortEvalDataLoader(config, out[i]._dataset, out[i]._sampler,
                                                         shuffle=False)
    _check_mask_history(config, out)
    return tuple(out)


def data_preparation(config, dataset):
    """RecBole's ``data_preparation`` with the plugin's trimmed loaders for sequential models (see
    the module docstring), ``train_all_positions``' row selection and ``mask_history_items``.
    ``trim_padding: false`` (or a model with ``trim_exact = False``) keeps RecBole's loader
    classes; saved dataloaders (``save_dataloaders`` / ``dataloaders_save_path``) take RecBole's
    function unchanged. With ``mask_history_items: true`` the full-ranking evaluation loaders
    are the trimmed ones or :class:`HistoryMaskedFullSortEvalDataLoader` (saved dataloaders too);
    a non-sequential model or a sampled evaluation is refused."""
    from recbole.data import data_preparation as rb_data_preparation
    from recbole.data.utils import create_samplers, get_dataloader, load_split_dataloaders

    mask = mask_history_enabled(config)
    if mask and config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        kind = config["MODEL_TYPE"].name.lower()
        raise BatchError(
            f"mask_history_items: true applies to sequential models (it masks the items of each "
            f"row's input sequence), but {config['model']} is a {kind} "
            f"model (RecBole's full ranking of general models always excludes the user's "
            f"training items). Set mask_history_items: false for {config['model']}.")
    if config["MODEL_TYPE"] != ModelType.SEQUENTIAL or config["save_dataloaders"] \
            or load_split_dataloaders(config):
        if config["train_all_positions"]:
            raise ValueError(f"train_all_positions: true needs a sequential model and no saved "
                             f"dataloaders (model {config['model']}, save_dataloaders / "
                             f"dataloaders_save_path).")
        loaders = rb_data_preparation(config, dataset)
        return _with_history_mask(config, loaders) if mask else loaders
    trim = trimming_enabled(config)
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL and config["trim_padding"] is not False and not trim:
        getLogger().info(f"{config['model']} declares trim_exact = False: its batches keep "
                         f"the full width ({config['MAX_ITEM_LIST_LENGTH']}).")
    built = dataset.build()
    if config["train_all_positions"]:
        _keep_all_position_rows(config, built[0])
    samplers = create_samplers(config, dataset, built)
    loaders = []
    for phase, ds, sampler in zip(("train", "valid", "test"), built, samplers):
        cls = get_dataloader(config, phase)
        if trim:
            cls = TRIMMED.get(cls, cls)
        elif mask:
            cls = HISTORY_MASKED.get(cls, cls)
        shuffle = config["shuffle"] if phase == "train" else False
        loaders.append(cls(config, ds, sampler, shuffle=shuffle))
    getLogger().info(
        f"[Batching]: {type(loaders[0]).__name__} / {type(loaders[1]).__name__}"
        + (f"; histories cut to each batch's longest (trim_padding), training rows bucketed by "
           f"length: {config['bucket_by_length'] is not False}" if trim else "")
        + ("; input-sequence items masked at ranking (mask_history_items)" if mask else ""))
    if mask:
        _check_mask_history(config, loaders)
    return tuple(loaders)


#: RecBole loader -> the plugin's trimmed counterpart.
TRIMMED = {TrainDataLoader: BucketedTrainDataLoader,
           FullSortEvalDataLoader: TrimmedFullSortEvalDataLoader}

#: RecBole loader -> its counterpart with history masking (untrimmed, ``mask_history_items``).
HISTORY_MASKED = {FullSortEvalDataLoader: HistoryMaskedFullSortEvalDataLoader}
