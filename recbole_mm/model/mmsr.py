"""MMSR: ID-agnostic multi-modal sequential recommendation (Li et al., "An Empirical Study of
Training ID-Agnostic Multi-modal Sequential Recommenders", 2023; spec MMSR.md).

Item vectors come only from content: text encoder + vision encoder + a fusion module
(:class:`~recbole_mm.model.mmsr_towers.ItemTower`); they replace the ID embedding of a sequence
encoder (SASRec, GRU4Rec or NextItNet; :mod:`recbole_mm.model.mmsr_backbones`). Training is
dense next-item prediction with BCE on one sampled negative per valid position (drawn inside the
model, never an item of the user's sequence); evaluation ranks all items by encoding every item
(the item table is cached during an evaluation and dropped whenever the model changes mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_mm.data.batching import padded_width
from recbole_mm.model.layers import next_item_targets
from recbole_mm.model.mmsr_backbones import build_backbone
from recbole_mm.model.mmsr_data import MMSRDataset
from recbole_mm.model.mmsr_towers import ItemTower
from recbole_mm.registry import register_model
from recbole_mm.trainer.mmsr import MMSRTrainer


@register_model
class MMSR(SequentialRecommender):
    input_type = InputType.POINTWISE
    dataset_class = MMSRDataset
    trainer_class = MMSRTrainer
    all_positions = False  # train_all_positions (recbole_mm.model.all_positions)
    all_positions_reason = ("MMSR already trains on every position of one row per user, its "
                            "paper's dense loss (dense_train: true)")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.padded_width = padded_width(dataset)  # negatives are drawn at this width
        self.hidden_size = int(config["hidden_size"])
        if (config["loss_type"] or "BCE_dense") != "BCE_dense":
            raise ValueError(f"MMSR trains with loss_type BCE_dense (the paper's loss), got "
                             f"'{config['loss_type']}'.")
        self.neg_max_tries = int(config["neg_max_tries"] or 100)
        self.encode_chunk = int(config["item_encode_batch_size"] or 512)
        self.item_tower = ItemTower(config, dataset, self.hidden_size)
        self.seq_encoder = build_backbone(
            config["seq_arch"] or "sasrec", self.hidden_size, self.max_seq_length,
            int(config["n_layers"]), int(config["n_heads"] or 2), config["inner_size"],
            float(config["dropout_prob"]))
        self._item_table = None

    # ------------------------------------------------------------------ RecBole rhythm
    def train(self, mode: bool = True):
        self._item_table = None  # weights may change (training) or be reloaded (best model)
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, **kwargs):
        self._item_table = None
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def forward(self, item_seq, item_seq_len, item_vecs=None):
        """States ``[B, L, d]`` at every position of ``item_seq`` (right-padded)."""
        E = self.item_tower(item_seq, self.encode_chunk) if item_vecs is None else item_vecs
        return self.seq_encoder(E, item_seq)

    def _window(self, interaction):
        """``(item_seq, item_seq_len)`` cut to the last ``MAX_ITEM_LIST_LENGTH`` items (benchmark
        files can hold longer histories than the model's positions)."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        L = self.max_seq_length
        if item_seq.shape[1] <= L:
            return item_seq, item_seq_len
        start = (item_seq_len - L).clamp_min(0)[:, None]
        idx = start + torch.arange(L, device=item_seq.device)[None]
        return item_seq.gather(1, idx), item_seq_len.clamp_max(L)

    def dense_targets(self, item_seq, item_seq_len, pos_items):
        """Next item at every position (:func:`~recbole_mm.model.layers.next_item_targets`)."""
        return next_item_targets(item_seq, item_seq_len, pos_items)

    def sample_negatives(self, item_seq, targets, valid):
        """One uniform item in ``[1, n_items)`` per valid position, redrawn while it is in the
        user's sequence (history or target); padding positions get 0."""
        seen = torch.cat([item_seq, targets], dim=1)  # [B, 2L]
        B, L = targets.shape
        width = max(self.padded_width, L)

        def draw():  # drawn at the padded width, so a trimmed batch gets the same negatives
            return torch.randint(1, self.n_items, (B, width), device=targets.device)[:, :L]

        neg = draw()
        for _ in range(self.neg_max_tries):
            bad = (neg[:, :, None] == seen[:, None, :]).any(-1) & valid
            if not bad.any():
                break
            neg = torch.where(bad, draw(), neg)
        return neg * valid

    def calculate_loss(self, interaction):
        item_seq, item_seq_len = self._window(interaction)
        targets, valid = self.dense_targets(item_seq, item_seq_len, interaction[self.POS_ITEM_ID])
        neg = self.sample_negatives(item_seq, targets, valid)
        L = item_seq.shape[1]
        # every distinct item of the batch (inputs, positives, negatives) is encoded once
        vecs = self.item_tower(torch.cat([item_seq, targets, neg], dim=1), self.encode_chunk)
        E, pos_v, neg_v = vecs[:, :L], vecs[:, L: 2 * L], vecs[:, 2 * L:]
        H = self.forward(item_seq, item_seq_len, E)
        pos_logit = (H * pos_v).sum(-1)[valid]
        neg_logit = (H * neg_v).sum(-1)[valid]
        return (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
                + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit)))

    def user_vector(self, interaction, table=None):
        """State at the last position; with ``table`` (the item table) the inputs are read from it."""
        item_seq, item_seq_len = self._window(interaction)
        H = self.forward(item_seq, item_seq_len, None if table is None else table[item_seq])
        return self.gather_indexes(H, item_seq_len - 1)

    def item_table(self) -> torch.Tensor:
        """``[n_items, d]`` vectors of every item (row 0 = padding = zeros); cached until the model
        changes mode or loads weights. Computed without gradients outside training."""
        if self._item_table is None or self.training:
            ids = torch.arange(self.n_items, device=self.device)
            with torch.set_grad_enabled(self.training):
                table = self.item_tower(ids, self.encode_chunk)
            if self.training:
                return table
            self._item_table = table
        return self._item_table

    def predict(self, interaction):
        user = self.user_vector(interaction)
        items = self.item_tower(interaction[self.ITEM_ID], self.encode_chunk)
        return (user * items).sum(-1)

    def full_sort_predict(self, interaction):
        """Scores of every item. The paper's history masking (``mask_history_items: true``) is
        the evaluation loaders' ``history_index`` (recbole_mm.data.batching), as for every
        sequential model."""
        users, table = self.full_sort_parts(interaction)
        scores = users @ table.t()
        scores[:, 0] = float("-inf")  # padding is never recommended (RecBole's evaluation agrees)
        return scores

    def full_sort_parts(self, interaction):
        """``full_sort_predict`` as ``(users, item table)`` (recbole_mm.trainer.chunked_eval)."""
        table = self.item_table()
        return self.user_vector(interaction, table), table
