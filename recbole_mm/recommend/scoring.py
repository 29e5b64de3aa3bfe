"""Scoring: the model's own ``full_sort_predict`` over every item, or a FAISS index over the item
table for models whose score is an inner product with an item embedding.

**Full ranking** (default, every model): ``full_sort_predict`` gives ``[B, n_items]`` scores; the
padding item and (by default) every item the user interacted with get ``-inf``; the top ``k``
finite scores are the recommendation (fewer when a user has seen almost the whole catalogue).

**FAISS** (``index="Flat"`` or any FAISS factory string, e.g. ``"IVF256,Flat"``): a model
qualifies when ``full_sort_predict`` is ``users @ items.T`` and it says so by a method
``score_factors(interaction) -> (users [B, d], items [n_items, d])``. RecBole's SASRec, GRU4Rec,
FDSA and SASRecF qualify through :data:`BUILTIN_FACTORS` (their ``forward`` and
``item_embedding``); a model that does not gets a :class:`RecommendError` naming it. ``Flat`` is
exact (the same items and scores as full ranking, up to float rounding); other factory strings
are approximate, trained on the item table, searched with ``nprobe`` lists. The index lives on the
GPU when FAISS sees one.
"""
from __future__ import annotations

import numpy as np
import torch

from recbole_mm.recommend.users import RecommendError


def _forward_and_item_embedding(model, interaction):
    users = model.forward(interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN])
    return users, model.item_embedding.weight


#: RecBole built-ins whose ``full_sort_predict`` is ``forward(seq, len) @ item_embedding.weight.T``.
BUILTIN_FACTORS = {name: _forward_and_item_embedding
                   for name in ("SASRec", "GRU4Rec", "FDSA", "SASRecF")}


def score_factors(model):
    """``fn(interaction) -> (users, items)`` for a model that qualifies for FAISS, else ``None``."""
    own = getattr(model, "score_factors", None)
    if callable(own):
        return own
    fn = BUILTIN_FACTORS.get(type(model).__name__)
    if fn is not None and type(model).__module__.startswith("recbole.model."):
        return lambda interaction: fn(model, interaction)
    return None


def check_topk(topk, n_items: int) -> int:
    """``topk`` as an int in ``[1, n_items]`` (``n_items`` real items, padding excluded)."""
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise RecommendError(f"--topk must be a positive integer, got {topk!r}.")
    if topk > n_items:
        raise RecommendError(f"--topk {topk} is larger than the catalogue ({n_items} items).")
    return int(topk)


def _missing_field(model, exc: KeyError) -> RecommendError:
    field = exc.args[0] if exc.args else "?"
    return RecommendError(f"{type(model).__name__} reads the field {field!r}, which a bare item "
                          f"history does not have: --history needs a model that scores from the "
                          f"item sequence alone (e.g. SASRec); recommend for a known user instead.")


class FullSortScorer:
    """Top-k by ``full_sort_predict`` (see the module docstring)."""

    def __init__(self, model, n_items: int):
        self.model, self.n_items = model, n_items  # n_items counts the padding item 0

    @torch.no_grad()
    def scores(self, interaction) -> torch.Tensor:
        """``[B, n_items]`` float scores of the model for ``interaction`` (on the CPU)."""
        self.model.eval()
        try:
            out = self.model.full_sort_predict(interaction.to(self.model.device))
        except KeyError as exc:
            raise _missing_field(self.model, exc) from None
        return out.view(len(interaction), -1)[:, : self.n_items].float().cpu()

    def topk(self, interaction, k: int, exclude: list | None):
        scores = self.scores(interaction)
        scores[:, 0] = float("-inf")
        if exclude is not None:
            for row, items in enumerate(exclude):
                scores[row, torch.as_tensor(items, dtype=torch.long)] = float("-inf")
        values, items = torch.topk(scores, k, dim=1)
        return _finite_rows(items.numpy(), values.numpy())


class FaissScorer:
    """Top-k from a FAISS index over the item table (see the module docstring)."""

    def __init__(self, model, n_items: int, factory: str = "Flat", nprobe: int | None = None):
        import faiss

        from recbole_mm.data.cluster import faiss_gpu_available

        self.factors = score_factors(model)
        if self.factors is None:
            raise RecommendError(
                f"{type(model).__name__} does not declare an inner-product score "
                f"(score_factors), so it cannot be served from a FAISS index; drop --faiss.")
        self.model, self.n_items = model, n_items  # n_items counts the padding item 0
        self._index = None  # built from the item table on the first batch
        self._factory, self._nprobe = factory, nprobe
        self._faiss, self._gpu = faiss, faiss_gpu_available()

    def _build(self, items: torch.Tensor):
        faiss = self._faiss
        table = np.ascontiguousarray(items[1: self.n_items].detach().float().cpu().numpy())
        d = table.shape[1]
        if self._factory == "Flat":
            index = faiss.IndexFlatIP(d)
        else:
            try:
                index = faiss.index_factory(d, self._factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                raise RecommendError(f"--faiss {self._factory!r} is not a FAISS index factory "
                                     f"string ({str(exc).strip().splitlines()[-1]}).") from None
            if not index.is_trained:
                index.train(table)
            if self._nprobe:
                faiss.ParameterSpace().set_index_parameter(index, "nprobe", int(self._nprobe))
        if self._gpu:  # pragma: no cover - needs a GPU
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(table)
        self._index = index

    @torch.no_grad()
    def topk(self, interaction, k: int, exclude: list | None):
        self.model.eval()
        try:
            users, items = self.factors(interaction.to(self.model.device))
        except KeyError as exc:
            raise _missing_field(self.model, exc) from None
        if self._index is None:
            self._build(items)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        want = min(k + extra, self.n_items - 1)
        query = np.ascontiguousarray(users.float().cpu().numpy())
        values, found = self._index.search(query, want)
        found = np.where(found >= 0, found + 1, 0)  # row r of the table is item r + 1
        out_items, out_scores = [], []
        for row in range(len(found)):
            keep = found[row] > 0
            if exclude is not None:
                keep &= ~np.isin(found[row], exclude[row])
            out_items.append(found[row][keep][:k])
            out_scores.append(values[row][keep][:k])
        return out_items, out_scores


def _finite_rows(items: np.ndarray, values: np.ndarray):
    keep = np.isfinite(values)
    return [items[r][keep[r]] for r in range(len(items))], [values[r][keep[r]] for r in range(len(items))]
