r"""DeCoRec: Decoupled Collaborative Refinement for multi-modal sequential recommendation.

Chen et al., ACM MM 2025. Specification: ``shared/papers/DeCoRec.md`` ([R] rulings win).

The model, as the paper describes it:

* **Co-occurrence representation** (Sec. 4.2, Eqs. 1-3): an item-item matrix ``A`` from the
  *training* sequences, ``A_ij = sum_u 1 / (q - p + 1)`` over position pairs ``p < q`` of items i, j
  (symmetric, no self pairs), normalised (``cooc_norm``: ``D_r^-1 A D_c^-1`` by default) and used
  (a) to smooth the ID table, ``E_bar = (E + A E + A^2 E) / 3`` (or the learned gate of Eq. 2 with
  ``cooc_gate: learned``), recomputed every batch, and (b) to enrich the raw modality features
  before clustering, ``X_bar = X + 0.01 A X``.
* **Collaborative interest clustering** (Sec. 4.3): per modality, FAISS k-means over ``X_bar``
  (``k = n_clusters_ratio * N``), each item's cluster id looked up in a zero-initialised
  ``interest_embedding`` table.
* **Modal adapters** (Eq. 8): per modality ``Linear-ReLU-Linear`` (``adapter_type: linear`` for
  the ablation) on frozen CLIP features, then one causal Transformer encoder shared by the text
  and image streams (post-LN, final LayerNorm, no position embedding by default).
* **Phased training** (Sec. 4.4): phase 1 uses only the adapted modality vectors; phase 2 adds
  ``E_bar[i] + T_m[c_m(i)]`` to every item vector (Eq. 10) with the adapters frozen. The schedule
  is run by :class:`recbole_mm.trainer.decorec.DeCoRecTrainer`; the current phase is a persistent
  buffer, so a checkpoint reloads into the phase it was saved in.
* **Cross-modal retrieval** (Sec. 4.5, Eqs. 12-18): each stream's sequence vector is scored
  against the ``2N``-row candidate table (text copies, then image copies); the text and the image
  copy of the target are both positives. Full ranking fuses the four (query x candidate modality)
  scores in log-sum-exp form.

Ablation switches (one config key each, see ``properties/model/DeCoRec.yaml``):
``phase_schedule`` (two_phase | phase1_only | joint), ``freeze_adapter_phase2``,
``use_cluster_embedding``, ``use_id_embedding``, ``adapter_type``, ``stream_modalities``,
``retrieval`` (cross | intra), ``inference_modalities`` and the ``compat_*`` flags that reproduce
the released code.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender

from recbole_mm.data import graphs
from recbole_mm.model.layers import ModalityAdapter, register_feature_buffers, sparse_propagate, init_weights
from recbole_mm.registry import register_model
from recbole_mm.trainer.decorec import DeCoRecTrainer

PHASE_SCHEDULES = ("two_phase", "phase1_only", "joint")
RETRIEVALS = ("cross", "intra")
COOC_NORMS = {"rc_inverse": ("rc", 1e-7), "sym": ("sym", 0.0), "row": ("row", 0.0), "none": ("none", 0.0)}
COOC_GATES = ("fixed", "learned")
ID_COMBINES = {"mean_with_self": "mean", "last": "last", "sum": "sum"}
ALPHA_MODES = ("log_weight", "logit_scale")
SCORE_NORMS = ("none", "per_query_softmax")
_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "swish": F.silu, "silu": F.silu,
                "tanh": torch.tanh, "sigmoid": torch.sigmoid}


def _choice(config, key, allowed, default):
    value = config[key] if config[key] is not None else default
    if value not in allowed:
        raise ValueError(f"DeCoRec: {key} must be one of {tuple(allowed)}, got {value!r}.")
    return value


def _get(config, key, default):
    value = config[key]
    return default if value is None else value


@register_model
class DeCoRec(SequentialRecommender):
    r"""DeCoRec (see the module docstring). ``phase`` (1 or 2) selects the forward pass."""

    trainer_class = DeCoRecTrainer
    all_positions = False  # train_all_positions (recbole_mm.model.all_positions)
    all_positions_reason = ("its phase losses fuse several streams and regularisers at the last "
                            "position; a per-position form is not implemented")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.n_layers = _get(config, "n_layers", 1)
        self.n_heads = config["n_heads"]
        self.inner_size = config["inner_size"]
        self.hidden_dropout_prob = config["hidden_dropout_prob"]
        self.hidden_act = _choice(config, "hidden_act", _ACTIVATIONS, "gelu")
        self.layer_norm_eps = config["layer_norm_eps"]
        self.initializer_range = config["initializer_range"]
        self.temperature = float(_get(config, "temperature", 2.0))
        self.alpha = float(_get(config, "alpha", 1.0))
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"DeCoRec: alpha must lie in [0, 1] (paper Eq. 14), got {self.alpha}.")
        self.alpha_mode = _choice(config, "alpha_mode", ALPHA_MODES, "log_weight")
        self.score_norm = _choice(config, "score_norm", SCORE_NORMS, "none")
        self.phase_schedule = _choice(config, "phase_schedule", PHASE_SCHEDULES, "two_phase")
        self.freeze_adapter_phase2 = bool(_get(config, "freeze_adapter_phase2", True))
        self.retrieval = _choice(config, "retrieval", RETRIEVALS, "cross")
        self.compat_pad_in_softmax = bool(_get(config, "compat_pad_in_softmax", False))
        self.use_position_embedding = bool(_get(config, "use_position_embedding", False))

        self.streams = list(_get(config, "stream_modalities", ["text", "image"]))
        if not 1 <= len(self.streams) <= 2 or len(set(self.streams)) != len(self.streams):
            raise ValueError(
                f"DeCoRec: stream_modalities must name one or two distinct modalities, got {self.streams}."
            )
        self.inference_modalities = list(_get(config, "inference_modalities", self.streams))
        bad = [m for m in self.inference_modalities if m not in self.streams]
        if bad or not self.inference_modalities:
            raise ValueError(
                f"DeCoRec: inference_modalities {self.inference_modalities} must be a non-empty "
                f"subset of stream_modalities {self.streams}."
            )
        dims = register_feature_buffers(self, dataset, self.streams, prefix="feat_")

        # ---- sequence encoder (shared by the streams), LN_in and Drop_in
        d = self.hidden_size
        self.LayerNorm = nn.LayerNorm(d, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.hidden_dropout_prob)
        if self.use_position_embedding:
            self.position_embedding = nn.Embedding(self.max_seq_length, d)
        layer = nn.TransformerEncoderLayer(
            d, self.n_heads, dim_feedforward=self.inner_size, dropout=self.hidden_dropout_prob,
            activation=_ACTIVATIONS[self.hidden_act], layer_norm_eps=self.layer_norm_eps,
            batch_first=True, norm_first=False,
        )
        self.trm_encoder = nn.TransformerEncoder(
            layer, self.n_layers, norm=nn.LayerNorm(d, eps=self.layer_norm_eps),
            enable_nested_tensor=False,
        )

        # ---- collaborative part (phase 2): ID table, co-occurrence, interest clusters
        uses_phase2 = self.phase_schedule != "phase1_only"
        self.use_id_embedding = uses_phase2 and bool(_get(config, "use_id_embedding", True))
        self.use_cluster_embedding = uses_phase2 and bool(_get(config, "use_cluster_embedding", True))
        self.cooc_norm = _choice(config, "cooc_norm", COOC_NORMS, "rc_inverse")
        self.cooc_gate = _choice(config, "cooc_gate", COOC_GATES, "fixed")
        self.id_prop_layers = int(_get(config, "id_prop_layers", 2))
        self.id_prop_combine = _choice(config, "id_prop_combine", ID_COMBINES, "mean_with_self")
        if self.use_id_embedding:
            self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
            if self.cooc_gate == "learned" and self.id_prop_layers > 0:
                self.cooc_gate_layers = nn.ModuleList(nn.Linear(2 * d, 1) for _ in range(self.id_prop_layers))

        self.apply(self._init_weights)

        self.cluster_num = {}
        if uses_phase2 and (self.use_id_embedding or self.use_cluster_embedding):
            adj = self._normalised_cooccurrence(config, dataset)
            if self.use_id_embedding:
                self.register_buffer("cooc_adj", graphs.to_torch_sparse(adj), persistent=False)
            if self.use_cluster_embedding:
                self.interest_embedding = nn.ModuleDict()
                for m in self.streams:
                    assign, k = self._interest_clusters(config, dataset, m, adj)
                    self.register_buffer(f"cluster_{m}", torch.from_numpy(assign), persistent=True)
                    self.interest_embedding[m] = nn.Embedding(k, d)
                    self.cluster_num[m] = k
        self.reset_collaborative_parameters()

        # ---- modal adapters: PyTorch default Linear init (built after _init_weights, as the code)
        self.adapter = nn.ModuleDict({
            m: ModalityAdapter(dims[m], d, kind=_choice(config, "adapter_type", ("mlp", "linear"), "mlp"),
                               hidden=_get(config, "adapter_hidden", d))
            for m in self.streams
        })

        self.register_buffer("training_phase", torch.tensor(2 if self.phase_schedule == "joint" else 1),
                             persistent=True)
        self.set_phase(int(self.training_phase))

    # ------------------------------------------------------------------ construction helpers
    def _init_weights(self, module):
        init_weights(module, self.initializer_range)

    def _normalised_cooccurrence(self, config, dataset):
        """``A`` (Eq. 1, training split only) normalised as ``cooc_norm`` says (scipy CSR)."""
        offset = int(_get(config, "cooc_distance_offset", 1))
        adj = dataset.cooccurrence(weight="inverse_distance", distance_offset=offset)
        mode, eps = COOC_NORMS[self.cooc_norm]
        return graphs.normalize(adj, mode, eps=eps)

    def _interest_clusters(self, config, dataset, modality, adj):
        """Cluster id per item (padding -> 0) from k-means on ``X + w * sum_l A^l X``."""
        x = getattr(self, f"feat_{modality}").cpu().numpy().astype(np.float32)
        weight = float(_get(config, "cluster_prop_weight", 0.01))
        layers = int(_get(config, "cluster_prop_layers", 1))
        enriched = x.copy()
        cur = x
        if weight != 0.0:
            for _ in range(layers):
                cur = np.asarray(adj @ cur, dtype=np.float32)
                enriched += weight * cur
        present = getattr(self, f"feat_{modality}_present").cpu().numpy().astype(bool)
        fit_rows = np.flatnonzero(present[1:]) + 1  # real items only (row 0 is padding)
        if len(fit_rows) == 0:
            raise ValueError(f"DeCoRec: no item has modality '{modality}' to cluster.")
        n_clusters = config["n_clusters"]
        if n_clusters is None:
            ratio = float(_get(config, "n_clusters_ratio", 0.1))
            n_clusters = max(1, int(ratio * self.n_items))
        k = min(int(n_clusters), len(fit_rows))
        centroids, _ = dataset.kmeans(enriched[fit_rows], k, seed=config["seed"],
                                      niter=int(_get(config, "kmeans_niter", 300)))
        # nearest centroid (Euclidean) for every real item, in chunks: items x k, never items x items
        assign = np.zeros(self.n_items, dtype=np.int64)
        c_sq = (centroids.astype(np.float64) ** 2).sum(1)
        for s in range(1, self.n_items, 65536):
            block = enriched[s:s + 65536].astype(np.float64)
            dist = c_sq[None, :] - 2.0 * block @ centroids.T.astype(np.float64)
            assign[s:s + len(block)] = dist.argmin(1)
        return assign, k

    def reset_collaborative_parameters(self):
        """Fresh ``E_id`` (N(0, initializer_range), padding row 0), zero interest tables, fresh gate."""
        with torch.no_grad():
            if self.use_id_embedding:
                self.item_embedding.weight.normal_(0.0, self.initializer_range)
                self.item_embedding.weight[0].zero_()
                for gate in getattr(self, "cooc_gate_layers", []):
                    gate.weight.normal_(0.0, self.initializer_range)
                    gate.bias.zero_()
            if self.use_cluster_embedding:
                for table in self.interest_embedding.values():
                    table.weight.zero_()

    # ------------------------------------------------------------------ phases
    @property
    def phase(self) -> int:
        return int(self.training_phase)

    def collaborative_parameters(self):
        """Parameters used only in phase 2 (ID table, co-occurrence gate, interest tables)."""
        mods = [getattr(self, n) for n in ("item_embedding", "cooc_gate_layers", "interest_embedding")
                if hasattr(self, n)]
        return [p for mod in mods for p in mod.parameters()]

    def set_phase(self, phase: int) -> None:
        """Switch the forward pass and ``requires_grad``: phase 1 trains adapters + encoder (the
        collaborative tables are absent from the graph); phase 2 adds them and, in the two-phase
        schedule with ``freeze_adapter_phase2``, freezes both adapters."""
        if phase not in (1, 2):
            raise ValueError(f"DeCoRec: phase must be 1 or 2, got {phase}.")
        self.training_phase.fill_(phase)
        for p in self.collaborative_parameters():
            p.requires_grad_(phase == 2)
        frozen = phase == 2 and self.phase_schedule == "two_phase" and self.freeze_adapter_phase2
        for p in self.adapter.parameters():
            p.requires_grad_(not frozen)

    # ------------------------------------------------------------------ item tables
    def collaborative_id_table(self) -> torch.Tensor:
        """``E_bar`` [N, d]: the ID table smoothed over the normalised co-occurrence graph."""
        emb = self.item_embedding.weight
        if self.id_prop_layers <= 0:
            return emb
        if self.cooc_gate == "fixed":
            return sparse_propagate(self.cooc_adj, emb, self.id_prop_layers,
                                    ID_COMBINES[self.id_prop_combine])
        cur, acc = emb, 0.0
        for gate in self.cooc_gate_layers:  # Eq. 2 made realisable: per-item, per-layer gate
            nxt = torch.sparse.mm(self.cooc_adj, cur)
            mu = torch.sigmoid(gate(torch.cat([cur, nxt], dim=-1)))
            acc = acc + mu * nxt
            cur = nxt
        return emb + acc / len(self.cooc_gate_layers)

    def item_tables(self) -> dict:
        """Per stream, every item's vector [N, d]: ``Adapter_m(X_m)`` in phase 1 and
        ``Adapter_m(X_m) + E_bar + T_m[c_m]`` in phase 2 (Eqs. 8, 10; candidate rows of Sec. 4.5)."""
        tables = {m: self.adapter[m](getattr(self, f"feat_{m}")) for m in self.streams}
        if self.phase == 2:
            id_table = self.collaborative_id_table() if self.use_id_embedding else None
            for m in self.streams:
                if id_table is not None:
                    tables[m] = tables[m] + id_table
                if self.use_cluster_embedding:
                    tables[m] = tables[m] + self.interest_embedding[m](getattr(self, f"cluster_{m}"))
        return tables

    # ------------------------------------------------------------------ forward
    def encode(self, item_seq, table):
        """Causal Transformer over ``table[item_seq]`` -> hidden states [B, L, d]."""
        z = table[item_seq]
        if self.use_position_embedding:
            pos = torch.arange(item_seq.size(1), device=item_seq.device)
            z = z + self.position_embedding(pos).unsqueeze(0)
        u = self.dropout(self.LayerNorm(z))
        length = item_seq.size(1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=item_seq.device), 1)
        return self.trm_encoder(u, mask=causal, src_key_padding_mask=item_seq == 0)

    def forward(self, item_seq, item_seq_len, tables=None):
        """Sequence vectors ``h_m`` [B, d] per stream (Eqs. 9, 11) and the item tables used."""
        tables = self.item_tables() if tables is None else tables
        out = {}
        for m in self.streams:
            hidden = self.encode(item_seq, tables[m])
            out[m] = self.gather_indexes(hidden, item_seq_len - 1)
        return out, tables

    def logits(self, seq_out: dict, tables: dict) -> dict:
        """``l_m = h_m C^T / tau``: [B, S*N] over the stacked table (cross) or [B, N] (intra)."""
        if self.retrieval == "cross":
            cand = torch.cat([tables[m] for m in self.streams], dim=0)
            return {m: seq_out[m] @ cand.t() / self.temperature for m in self.streams}
        return {m: seq_out[m] @ tables[m].t() / self.temperature for m in self.streams}

    def _offset(self, m) -> int:
        return self.streams.index(m) * self.n_items if self.retrieval == "cross" else 0

    def _mask_padding(self, logit):
        """``-inf`` at the padding candidates (rows 0 and N of the table)."""
        pad = torch.zeros(logit.size(1), dtype=torch.bool, device=logit.device)
        pad[:: self.n_items] = True
        return logit.masked_fill(pad, float("-inf"))

    def _log_alpha(self):
        return math.log(self.alpha) if self.alpha > 0 else float("-inf")

    def calculate_loss(self, interaction):
        """Cross-modal retrieval loss (Eqs. 12-15), summed over the streams."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        pos = interaction[self.POS_ITEM_ID]
        seq_out, tables = self.forward(item_seq, item_seq_len)
        logits = self.logits(seq_out, tables)
        loss = 0.0
        for m in self.streams:
            logit = logits[m]
            if not self.compat_pad_in_softmax:
                logit = self._mask_padding(logit)
            own = logit.gather(1, (pos + self._offset(m)).unsqueeze(1)).squeeze(1)
            if self.retrieval == "cross" and len(self.streams) == 2:
                other_m = self.streams[1 - self.streams.index(m)]
                other = logit.gather(1, (pos + self._offset(other_m)).unsqueeze(1)).squeeze(1)
                if self.alpha_mode == "log_weight":
                    positive = torch.logaddexp(own, other + self._log_alpha())
                else:  # Eq. 14 literally: the other modality's positive logit times alpha
                    positive = torch.logaddexp(own, self.alpha * other)
            else:
                positive = own
            loss = loss + (torch.logsumexp(logit, dim=1) - positive).mean()
        return loss

    def score_from_logits(self, logits: dict) -> torch.Tensor:
        """Fused full-ranking score [B, N] (Eqs. 16-18) in log-sum-exp form.

        cross: ``logsumexp_m [l_m[j_m], l_m[j_other] + log alpha]`` over the inference modalities
        (the other-modality terms only when both streams are used at inference); intra: the sum
        of the per-modality logits. ``score_norm: per_query_softmax`` first turns each ``l_m`` row
        into log-probabilities (Eq. 16).
        """
        n = self.n_items
        terms = []
        for m in self.inference_modalities:
            logit = logits[m]
            if self.score_norm == "per_query_softmax":
                logit = logit - torch.logsumexp(self._mask_padding(logit), dim=1, keepdim=True)
            off = self._offset(m)
            terms.append(logit[:, off:off + n])
            if (self.retrieval == "cross" and len(self.streams) == 2
                    and len(self.inference_modalities) == 2 and self.alpha > 0):
                other_m = self.streams[1 - self.streams.index(m)]
                o = self._offset(other_m)
                terms.append(logit[:, o:o + n] + self._log_alpha())
        if self.retrieval == "intra":
            return torch.stack(terms, 0).sum(0)
        if len(terms) == 1:
            return terms[0]
        return torch.logsumexp(torch.stack(terms, 0), dim=0)

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        seq_out, tables = self.forward(item_seq, item_seq_len)
        return self.score_from_logits(self.logits(seq_out, tables))

    def predict(self, interaction):
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)
