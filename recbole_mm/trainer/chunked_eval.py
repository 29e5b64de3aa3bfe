"""Full-ranking evaluation in bounded memory: item chunks with a running top-k (issue 15).

RecBole's ``Trainer.evaluate`` scores every evaluation batch against every item (``[eval_batch,
n_items]`` float32) and its ``Collector`` then builds a same-sized int matrix of positives and
takes ``torch.topk`` over the scores: for 1M items and batches of 2048 rows that is 16 GB. The
metrics that only read ``rec.topk`` (Recall, NDCG, Hit, MRR, Precision) or ``rec.items``
(ShannonEntropy; ItemCoverage, GiniIndex, AveragePopularity and TailPercentage also read
``data.*`` values that RecBole 1.2.1's own collector fails on) need only the
``k = max(topk)`` best item ids of each row and which of them are positives, so for sequential
models the plugin computes exactly those per batch, without ever holding ``[B, n_items]``:

* **item chunks** (models that score by an inner product with an item table): the model gives
  ``full_sort_parts(interaction) -> (user_vectors [B, d], item_table [n_items, d])`` (optionally
  ``(users, table, bias [n_items] or None)``: a per-item bias added to every row). The
  scores ``users @ table[c0:c1].T (+ bias[c0:c1])`` of ``eval_item_chunk`` items at a time are
  reduced to their top-k, merged into a running top-k, and dropped. RecBole's SASRec, GRU4Rec,
  BERT4Rec, FDSA and SASRecF get their parts from :data:`ADAPTERS` (keyed by exact class, built on
  the models' own ``forward``); a plugin model declares the method (SICSRec, MMSR). A model whose
  ``full_sort_parts`` returns ``None`` (not a plain product in its current settings) takes:
* **row chunks** (every other model): the batch is cut into row chunks of
  ``max(1, eval_score_budget // n_items)`` rows, each scored by RecBole's own
  ``_full_sort_batch_eval`` (the model's ``full_sort_predict``, padding column ``-inf``) and
  reduced to its top-k.

Either way the padding item 0 gets ``-inf`` as in RecBole, so do the pairs of the batch's
``history_index`` (``(row ids, item ids)``; with ``mask_history_items: true`` the loaders give
each row's input-sequence items, :func:`recbole_mm.data.batching.history_index`): per item chunk
the pairs inside it, per row chunk the pairs of its rows through RecBole's own masking.
:class:`TopKCollector` writes the same ``rec.topk`` (``[B, k]`` 0/1 hits + number of positives)
and ``rec.items`` tensors as RecBole's ``Collector.eval_batch_collect``, so RecBole's evaluator,
early stopping and logging are unchanged. Metrics that need anything else (``rec.score``,
``rec.meanrank``: AUC, GAUC, LogLoss, MAE, RMSE, ...) and non-sequential models take RecBole's
own path for the whole evaluation.

**Ties.** The top-k is ordered by score, descending, and equal scores by item id, ascending (a
lower id ranks first). ``torch.topk`` leaves the order of equal scores unspecified. The two give
the same item ids, and so the same metrics, whenever no other item scores exactly as much as the
k-th or as a positive item, which models with continuous weights practically never do
(``tests/test_chunked_eval.py`` checks the metrics and the collected tensors against RecBole's
path for nine models and a trained SASRec run). Scores must not be NaN.

**Scores.** The item-chunk path computes each score as the model's ``full_sort_predict`` does
(same product, same bias addition); a BLAS may round a block of a product differently from the
whole in principle (never seen on the CPU builds tested), which can only matter for near-ties.

Settings (``properties/overall.yaml``)::

    chunked_eval: auto          # auto | true | false
    eval_item_chunk: 65536      # items per chunk (item-chunk path): B x this many floats at once
    eval_score_budget: 134217728  # floats per block of scores (row-chunk path), and auto's bound

``auto`` chunks an evaluation when RecBole's score matrix, ``eval_batch_size x n_items`` floats,
would exceed ``eval_score_budget`` (defaults: above 65,536 items with batches of 2048); ``true``
always (for sequential models and top-k metrics); ``false`` never (``registry.get_trainer`` then
returns the trainer class unchanged).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from recbole.data.dataloader.general_dataloader import FullSortEvalDataLoader
from recbole.evaluator.collector import Collector
from recbole.evaluator.register import metric_information
from recbole.trainer import Trainer
from recbole.utils import EvaluatorType, ModelType

#: What the chunked path can give RecBole's evaluator (``data.*`` come from the training data).
SUPPORTED_NEEDS = frozenset({"rec.topk", "rec.items", "data.num_items", "data.num_users",
                             "data.count_items", "data.count_users"})


class ChunkedEvalError(ValueError):
    """A chunked-evaluation setting or model output that cannot be used (names the key)."""


class FullSortParts(NamedTuple):
    """A model's full-ranking scores as a product: ``users @ items.T (+ bias)``. Items a row
    must not get (its history) come as the batch's ``history_index``, not from the model."""
    users: torch.Tensor
    items: torch.Tensor
    bias: Optional[torch.Tensor] = None


class TopKIds:
    """The ``[B, k]`` best item ids of an evaluation batch (in place of RecBole's scores)."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids


# --------------------------------------------------------------------------- top-k
def _order(values: torch.Tensor, ids: torch.Tensor):
    """Sort each row by value descending, equal values by id ascending."""
    ids, perm = ids.sort(dim=1)
    values = values.gather(1, perm)
    values, perm = values.sort(dim=1, descending=True, stable=True)
    return values, ids.gather(1, perm)


#: entries of scores re-read at once for rows whose tie at the k-th value is cut (int64 cumsum)
_TIE_BLOCK = 1 << 22


def chunk_topk(scores: torch.Tensor, k: int):
    """``(values, column ids)`` of the ``min(k, width)`` best entries of each row of ``scores``,
    ordered by value descending, ties by column ascending (of items tied at the k-th value, the
    lowest columns are taken)."""
    k = min(int(k), scores.shape[1])
    values, ids = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:  # the (k+1)-th equal to the k-th: a tie is cut at the k-th value
        cut = values[:, k] == values[:, k - 1]
        values, ids = values[:, :k], ids[:, :k]
        rows = cut.nonzero().squeeze(1)
    else:
        rows = ids[:0, 0]
    step = max(1, _TIE_BLOCK // scores.shape[1])
    for r in rows.split(step):  # every entry above the k-th value, then the lowest tied columns
        s, t = scores[r], values[r, k - 1:]
        above, tied = s > t, s == t
        take = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
        ids[r] = take.nonzero()[:, 1].view(len(r), k)
        values[r] = s.gather(1, ids[r])
    return _order(values, ids)


def merge_topk(best, candidates, k: int):
    """The running top-k: ``best`` and ``candidates`` are ``(values, ids)`` ordered as
    :func:`chunk_topk` leaves them, every candidate id above every id in ``best``."""
    if best is None:
        return candidates
    values = torch.cat([best[0], candidates[0]], dim=1)
    ids = torch.cat([best[1], candidates[1]], dim=1)
    values, perm = values.sort(dim=1, descending=True, stable=True)  # equal values: lower id first
    return values[:, :k], ids.gather(1, perm[:, :k])


def topk_hits(ids: torch.Tensor, positive_u: torch.Tensor, positive_i: torch.Tensor,
              n_items: int) -> torch.Tensor:
    """RecBole's ``rec.topk`` rows from top-k ids: ``[B, k]`` 1 where the item is a positive of
    the row, then the row's number of positives (int64, as ``Collector.eval_batch_collect``)."""
    n_rows = ids.shape[0]
    pairs = torch.unique(positive_u.to(ids.device) * n_items + positive_i.to(ids.device))
    pu, pi = pairs // n_items, pairs % n_items  # a set, as RecBole's 0/1 matrix
    hits = torch.zeros(ids.shape, dtype=torch.long, device=ids.device)
    hits.index_add_(0, pu, (ids[pu] == pi.unsqueeze(1)).long())
    counts = torch.bincount(pu, minlength=n_rows).unsqueeze(1)
    return torch.cat([hits, counts], dim=1)


class TopKCollector(Collector):
    """RecBole's ``Collector``; a batch given as :class:`TopKIds` fills ``rec.topk`` and
    ``rec.items`` from the ids (what RecBole computes from the scores' ``torch.topk``);
    ``n_items`` is set by the trainer before such an evaluation."""

    n_items = None

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if not isinstance(scores_tensor, TopKIds):
            return super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        ids = scores_tensor.ids
        if self.register.need("rec.items"):
            self.data_struct.update_tensor("rec.items", ids)
        if self.register.need("rec.topk"):
            self.data_struct.update_tensor("rec.topk",
                                           topk_hits(ids, positive_u, positive_i, self.n_items))


# --------------------------------------------------------------------------- model parts
def _last_state(model, interaction):
    """SASRec, GRU4Rec, FDSA, SASRecF: ``forward(item_seq, item_seq_len) @ item_embedding.T``."""
    users = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
    return FullSortParts(users, model.item_embedding.weight)


def _bert4rec(model, interaction):
    """BERT4Rec: the mask token's output @ item table (without the mask row) + ``output_bias``."""
    item_seq_len = interaction[model.ITEM_SEQ_LEN]
    item_seq = model.reconstruct_test_data(interaction[model.ITEM_SEQ], item_seq_len)
    users = model.gather_indexes(model.forward(item_seq), item_seq_len - 1)
    return FullSortParts(users, model.item_embedding.weight[: model.n_items], model.output_bias)


def _adapters() -> dict:
    from recbole.model.sequential_recommender import BERT4Rec, FDSA, GRU4Rec, SASRec, SASRecF

    return {SASRec: _last_state, GRU4Rec: _last_state, FDSA: _last_state, SASRecF: _last_state,
            BERT4Rec: _bert4rec}


#: RecBole model class (exact) -> ``fn(model, interaction) -> FullSortParts``; filled on first use.
ADAPTERS: dict = {}


def full_sort_parts(model, interaction) -> Optional[FullSortParts]:
    """The model's scores as a product (its own ``full_sort_parts`` or an adapter), else None."""
    own = getattr(model, "full_sort_parts", None)
    if own is not None:
        parts = own(interaction)
        return None if parts is None else FullSortParts(*parts)
    if not ADAPTERS:
        ADAPTERS.update(_adapters())
    adapter = ADAPTERS.get(type(model))
    return None if adapter is None else adapter(model, interaction)


def _mask_block(scores: torch.Tensor, c0: int, history=None) -> None:
    """``-inf`` in the block of columns ``c0 .. c0 + width`` of a batch's scores: the padding
    item and the ``history`` pairs (``(row ids, item ids)``, RecBole's ``history_index``)."""
    if c0 == 0:
        scores[:, 0] = float("-inf")
    if history is not None:
        rows, items = history
        inside = (items >= c0) & (items < c0 + scores.shape[1])
        scores[rows[inside], items[inside] - c0] = float("-inf")


def _history_rows(history, r0: int, r1: int):
    """The pairs of ``history`` (``(row ids, item ids)``) in rows ``r0 .. r1``, rows from 0."""
    if history is None:
        return None
    rows, items = history
    inside = (rows >= r0) & (rows < r1)
    return rows[inside] - r0, items[inside]


def topk_by_item_chunks(parts: FullSortParts, k: int, n_items: int, chunk: int,
                        history=None) -> torch.Tensor:
    """``[B, k]`` top item ids of ``users @ items.T (+ bias)``, ``chunk`` items at a time; the
    padding item and the ``history`` pairs are scored ``-inf``."""
    best = None
    for c0 in range(0, n_items, chunk):
        c1 = min(n_items, c0 + chunk)
        scores = torch.matmul(parts.users, parts.items[c0:c1].transpose(0, 1))
        if parts.bias is not None:
            scores += parts.bias[c0:c1]  # the same elementwise sum as full_sort_predict's
        _mask_block(scores, c0, history)
        values, ids = chunk_topk(scores, k)
        best = merge_topk(best, (values, ids + c0), k)
        del scores
    return best[1]


# --------------------------------------------------------------------------- trainer
def _setting_int(config, key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or int(value) < 1:
        raise ChunkedEvalError(f"{key} must be a positive whole number, got {value!r}.")
    return int(value)


def chunked_mode(config):
    """``'auto'``, ``True`` or ``False`` from ``chunked_eval`` (absent from ``config``: False;
    ``~``: auto)."""
    if "chunked_eval" not in config:
        return False
    value = config["chunked_eval"]
    if value is None or isinstance(value, bool):
        return "auto" if value is None else value
    words = {"auto": "auto", "true": True, "false": False}
    if isinstance(value, str) and value.lower() in words:
        return words[value.lower()]
    raise ChunkedEvalError(f"chunked_eval must be auto, true or false, got {value!r}.")


class ChunkedEvalMixin:
    """Put before a RecBole ``Trainer`` (sub)class: full-sort evaluation of sequential models in
    bounded memory (module docstring). Everything else is the trainer's own."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.chunked_eval = chunked_mode(config)
        self.eval_item_chunk = _setting_int(config, "eval_item_chunk")
        self.eval_score_budget = _setting_int(config, "eval_score_budget")
        self.eval_collector = TopKCollector(config)
        self._chunked_active = False
        self._chunked_logged = set()

    def _log_once(self, message: str, warning: bool = False) -> None:
        if message not in self._chunked_logged:
            self._chunked_logged.add(message)
            (self.logger.warning if warning else self.logger.info)(message)

    def _use_chunked(self, eval_data) -> bool:
        """Whether this evaluation goes through the chunked path (module docstring)."""
        if self.chunked_eval is False or not isinstance(eval_data, FullSortEvalDataLoader) \
                or self.config["eval_type"] != EvaluatorType.RANKING \
                or self.config["MODEL_TYPE"] != ModelType.SEQUENTIAL:
            return False
        n_items = int(eval_data._dataset.item_num)
        if self.chunked_eval == "auto" and int(self.test_batch_size) * n_items <= self.eval_score_budget:
            return False
        needs = {need for m in self.config["metrics"] for need in metric_information[m.lower()]}
        other = sorted(needs - SUPPORTED_NEEDS)
        if other:
            self._log_once(
                f"[chunked_eval] metrics {self.config['metrics']} need {other}: RecBole's full "
                f"score matrix is used ({self.test_batch_size} x {n_items} floats per batch).",
                warning=True)
            return False
        self.eval_collector.n_items = n_items
        return True

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        self._chunked_active = self._use_chunked(eval_data)
        try:
            return super().evaluate(eval_data, load_best_model=load_best_model,
                                    model_file=model_file, show_progress=show_progress)
        finally:
            self._chunked_active = False

    def _full_sort_batch_eval(self, batched_data):
        interaction, history_index, positive_u, positive_i = batched_data
        if not self._chunked_active:
            return super()._full_sort_batch_eval(batched_data)
        k = max(self.config["topk"])
        n_items = int(self.tot_item_num)
        interaction = interaction.to(self.device)
        history = None if history_index is None else \
            tuple(torch.as_tensor(t).to(self.device) for t in history_index)
        parts = None
        if type(self)._recbole_batch_eval:  # a trainer scoring batches its own way: row chunks
            parts = full_sort_parts(self.model, interaction)
        if parts is not None:
            if parts.items.shape[0] != n_items or parts.users.shape[0] != len(interaction):
                raise ChunkedEvalError(
                    f"{type(self.model).__name__}.full_sort_parts gave users {tuple(parts.users.shape)}"
                    f" and items {tuple(parts.items.shape)} for {len(interaction)} rows and "
                    f"{n_items} items.")
            self._log_once(f"[chunked_eval] {type(self.model).__name__}: top-{k} of {n_items} items "
                           f"in chunks of {self.eval_item_chunk} items (item-table product)")
            ids = topk_by_item_chunks(parts, k, n_items, self.eval_item_chunk, history)
        else:
            rows = max(1, self.eval_score_budget // n_items)
            self._log_once(f"[chunked_eval] {type(self.model).__name__}: top-{k} of {n_items} items "
                           f"in chunks of {rows} rows (full_sort_predict)")
            ids = []
            for r0 in range(0, len(interaction), rows):
                part = interaction[r0:r0 + rows]
                part_history = _history_rows(history, r0, r0 + rows)
                _, scores, _, _ = super()._full_sort_batch_eval((part, part_history, None, None))
                ids.append(chunk_topk(scores, k)[1])
                del scores
            ids = torch.cat(ids, dim=0)
        return interaction, TopKIds(ids), positive_u, positive_i


_WRAPPED: dict = {}


def with_chunked_eval(trainer_class, config):
    """``trainer_class`` with :class:`ChunkedEvalMixin` in front (same name and module, so logs
    and benchmark records name the schedule), unless ``chunked_eval`` is false or absent from
    ``config``, or the class is no RecBole ``Trainer``: then ``trainer_class`` itself."""
    if chunked_mode(config) is False or not issubclass(trainer_class, Trainer) \
            or issubclass(trainer_class, ChunkedEvalMixin):
        return trainer_class
    if trainer_class not in _WRAPPED:
        _WRAPPED[trainer_class] = type(trainer_class.__name__, (ChunkedEvalMixin, trainer_class), {
            "__module__": trainer_class.__module__, "__qualname__": trainer_class.__qualname__,
            "__doc__": trainer_class.__doc__,
            "_recbole_batch_eval": trainer_class._full_sort_batch_eval is Trainer._full_sort_batch_eval,
        })
    return _WRAPPED[trainer_class]
