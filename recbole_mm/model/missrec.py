"""MISSRec: multi-modal interest-aware sequence representation, pre-training and transfer.

Wang, Zeng et al., "MISSRec: Pre-training and Transferring Multi-modal Interest-aware Sequence
Representation for Recommendation", ACM MM 2023. Specification: ``shared/papers/MISSRec.md``
(section numbers below refer to it); the official code's layout is the default.

Items are represented only through frozen modality features (CLIP text f^t and image f^v), each
passed through its own **modality adapter** psi^m (one Linear, sec. 3.1), plus item-ID
embeddings in the transductive mode. **Multi-modal interest discovery** (sec. 3.2) clusters all
adapted text and image item tokens before every training epoch (FAISS k-means; DPC-KNN
optional); a sequence is also described by the de-duplicated set of interest clusters its items
fall into. A one-block Transformer **encoder-decoder** combines the two views (sec. 3.3: the
encoder reads the interest tokens and the decoder the item tokens, read out at the last item;
``missrec_arch: paper_v1`` swaps the roles as in the arXiv v1 text, sec. 3.4). Candidates are
scored with **dynamic fusion** (sec. 3.5): per-modality cosine scores mixed with softmax weights
``softmax_m(alpha * s_m)``, computed for all items with two matrix products.

Stages (``train_stage``): ``pretrain`` (in-batch sequence-item + sequence-sequence contrastive
losses over two augmented views + orthogonal regulariser, sec. 4.2), ``inductive_ft`` ("T+V",
no item IDs) and ``transductive_ft`` ("T+V+ID"). A pre-trained checkpoint
(``pretrained_path``) transfers only shape-independent weights; with ``peft: true`` only the
adapters, alpha, the input LayerNorm and the ID table then train (sec. 4.3).
"""
from __future__ import annotations

import math
from logging import getLogger

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType

from recbole_mm.data.pretrain import MultiDomainDataset
from recbole_mm.model.layers import ModalityAdapter, init_weights
from recbole_mm.registry import register_model
from recbole_mm.trainer.missrec import MISSRecTrainer

STAGES = ("pretrain", "inductive_ft", "transductive_ft")
ARCHS = ("code", "paper_v1", "context_encoder", "interest_encoder")
SEQ_FUSIONS = ("add", "contextual")
ITEM_FUSIONS = ("dynamic_shared", "dynamic_instance", "static")
MODAL_TYPES = {"both": ("text", "image"), "text": ("text",), "image": ("image",), "img": ("image",)}
# parameters a pre-trained checkpoint hands to a downstream model (sec. 4.3 [R]); everything
# else (ID table, interest buffers, features) is item-count shaped and stays downstream
TRANSFER_PREFIXES = ("adapters.", "position_embedding.", "encoder.", "decoder.", "LayerNorm.",
                     "fusion_factor")
# trainable in parameter-efficient fine-tuning (sec. 4.3 [C]; [P] names adapters + ID table)
PEFT_TRAINABLE = ("adapters", "fusion_factor", "LayerNorm", "item_embedding")


# ---------------------------------------------------------------------------------- helpers
def dedup_interest_ids(ids: torch.Tensor) -> torch.Tensor:
    """Per row: the distinct non-zero ids, compacted to the left, zero-padded ([B, T] -> [B, Q]).

    Q = the largest number of distinct ids in a row (at least 1). Vectorised: sort each row, zero
    repeats, move non-zeros to the front (order is irrelevant: interests carry no position).
    """
    s, _ = ids.sort(dim=1)
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    s = s.masked_fill(dup, 0)
    order = (s == 0).to(torch.int8).argsort(dim=1, stable=True)
    s = s.gather(1, order)
    q = int((s != 0).sum(1).max().clamp(min=1).item()) if s.numel() else 1
    return s[:, :q]


def dynamic_fusion(scores, alpha, mode: str = "dynamic_shared") -> torch.Tensor:
    """Fuse per-modality scores ``s_m`` (same shape) into sum_m s_m * softmax_m(alpha * s)_m.

    ``alpha`` broadcasts against the scores (a scalar, or one value per item column). ``static``
    is the plain mean. Two modalities use the sigmoid form of a two-way softmax (spec sec. 3.5).
    No per-(user, item) vectors are formed: the cost is elementwise in the score shape.
    """
    if len(scores) == 1:
        return scores[0]
    if mode == "static":
        return sum(scores) / len(scores)
    if len(scores) == 2:
        s_t, s_v = scores
        d = alpha * (s_t - s_v)
        return s_t * torch.sigmoid(d) + s_v * torch.sigmoid(-d)
    s = torch.stack(scores, dim=-1)
    w = torch.softmax(torch.as_tensor(alpha).unsqueeze(-1) * s, dim=-1)
    return (s * w).sum(-1)


def item_drop(item_seq, item_seq_len, ratio: float, generator=None):
    """Drop each history position with prob ``ratio`` (position 0 always kept), shift the
    survivors left in order and recompute the lengths (UniSRec / MISSRec augmentation)."""
    B, L = item_seq.shape
    pos = torch.arange(L, device=item_seq.device).unsqueeze(0)
    valid = pos < item_seq_len.unsqueeze(1)
    rand = torch.rand(B, L, device=item_seq.device, generator=generator)
    keep = ((rand >= ratio) | (pos == 0)) & valid
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)
    new_len = keep.sum(1)
    new_seq = item_seq.gather(1, order).masked_fill(pos >= new_len.unsqueeze(1), 0)
    return new_seq, new_len


def masked_mean(x, keep):
    keep = keep.unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def dpc_knn(x: torch.Tensor, k_clusters: int, k_neighbors: int, chunk: int = 2048):
    """DPC-KNN clustering (paper sec. 3.3, code ``cluster_dpc_knn``): density
    rho_i = exp(-mean of the squared distances to the k nearest tokens (self included)),
    delta_i = distance to the nearest denser token (the largest distance overall if none);
    the ``k_clusters`` tokens with the largest rho*delta are prototypes, every token joins its
    nearest prototype. Distances are divided by sqrt(D); the distance matrix is chunked."""
    n, d = x.shape
    k_neighbors = max(1, min(int(k_neighbors), n))
    sq = (x * x).sum(1)

    def dist_rows(a, b, sq_b):
        d2 = (a * a).sum(1, keepdim=True) + sq_b.unsqueeze(0) - 2 * a @ b.T
        return d2.clamp(min=0).sqrt() / math.sqrt(d)

    rho = torch.empty(n, dtype=x.dtype)
    dmax = torch.zeros((), dtype=x.dtype)
    for s in range(0, n, chunk):
        dd = dist_rows(x[s:s + chunk], x, sq)
        rho[s:s + chunk] = torch.exp(-(dd.topk(k_neighbors, largest=False).values ** 2).mean(1))
        dmax = torch.maximum(dmax, dd.max())
    rho = rho + torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=x.dtype) * 1e-6
    delta = torch.empty(n, dtype=x.dtype)
    for s in range(0, n, chunk):
        dd = dist_rows(x[s:s + chunk], x, sq)
        denser = rho.unsqueeze(0) > rho[s:s + chunk].unsqueeze(1)
        dd = dd.masked_fill(~denser, float("inf"))
        m = dd.min(1).values
        delta[s:s + chunk] = torch.where(torch.isinf(m), dmax, m)
    protos = (rho * delta).topk(k_clusters).indices
    assign = torch.empty(n, dtype=torch.long)
    px, psq = x[protos], sq[protos]
    for s in range(0, n, chunk):
        assign[s:s + chunk] = dist_rows(x[s:s + chunk], px, psq).argmin(1)
    assign[protos] = torch.arange(k_clusters)
    return assign


# ---------------------------------------------------------------------------------- model
@register_model
class MISSRec(SequentialRecommender):
    r"""MISSRec (ACM MM 2023): interest-aware encoder-decoder over frozen text/image features."""

    input_type = InputType.POINTWISE
    dataset_class = MultiDomainDataset
    all_positions = False  # train_all_positions (recbole_mm.model.all_positions)
    all_positions_reason = ("its interest tokens are pooled over the whole history and its "
                            "decoder reads them all: a position's output depends on later items")
    trainer_class = MISSRecTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.logger = getLogger()
        self.train_stage = config["train_stage"]
        if self.train_stage not in STAGES:
            raise ValueError(f"MISSRec: train_stage must be one of {STAGES}, got '{self.train_stage}'.")
        self.transductive = self.train_stage == "transductive_ft"
        self.arch = config["missrec_arch"] or "code"
        self.seq_mm_fusion = config["seq_mm_fusion"] or "add"
        self.item_mm_fusion = config["item_mm_fusion"] or "dynamic_shared"
        modal_type = str(config["modal_type"] or "both").lower()
        for key, val, allowed in (("missrec_arch", self.arch, ARCHS),
                                  ("seq_mm_fusion", self.seq_mm_fusion, SEQ_FUSIONS),
                                  ("item_mm_fusion", self.item_mm_fusion, ITEM_FUSIONS),
                                  ("modal_type", modal_type, tuple(MODAL_TYPES))):
            if val not in allowed:
                raise ValueError(f"MISSRec: {key} must be one of {allowed}, got '{val}'.")
        if self.item_mm_fusion == "dynamic_instance" and self.train_stage == "pretrain":
            raise ValueError("MISSRec: item_mm_fusion 'dynamic_instance' (one alpha per item) is "
                             "for fine-tuning only; pre-train with 'dynamic_shared'.")
        self.roles = MODAL_TYPES[modal_type]  # "text" = t, "image" = v in the paper
        names = {"text": config["text_modality"] or "text", "image": config["image_modality"] or "image"}
        dataset.require_modalities([names[r] for r in self.roles], "MISSRec")
        for r in self.roles:
            self.register_buffer(f"feat_{r}", dataset.modality_features[names[r]].float(),
                                 persistent=False)
            self.register_buffer(f"present_{r}", dataset.modality_present[names[r]].bool(),
                                 persistent=False)
        aug_name = config["text_aug_modality"] or "text_aug"
        self.has_text_aug = "text" in self.roles and aug_name in dataset.modality_features
        if self.has_text_aug:
            self.register_buffer("feat_text_aug", dataset.modality_features[aug_name].float(),
                                 persistent=False)
        feat_dims = {r: int(getattr(self, f"feat_{r}").shape[1]) for r in self.roles}

        # hyper-parameters
        self.use_adapter = config["use_adapter"] is not False
        if self.use_adapter:
            self.hidden_size = int(config["hidden_size"])
        else:  # Table 5 (2): raw features, the model width is the feature width
            if len(set(feat_dims.values())) != 1:
                raise ValueError(f"MISSRec: use_adapter=false needs equal feature dims, got {feat_dims}.")
            self.hidden_size = next(iter(feat_dims.values()))
            if int(config["hidden_size"]) != self.hidden_size:
                self.logger.warning(f"MISSRec: use_adapter=false, hidden size = feature dim {self.hidden_size}")
        D = self.hidden_size
        self.n_heads = int(config["n_heads"])
        self.inner_size = int(config["inner_size"])
        self.n_enc_layers = int(config["n_enc_layers"])
        self.n_dec_layers = int(config["n_dec_layers"])
        self.dropout_prob = float(config["hidden_dropout_prob"])
        self.hidden_act = config["hidden_act"] or "gelu"
        self.layer_norm_eps = float(config["layer_norm_eps"])
        self.initializer_range = float(config["initializer_range"])
        self.temperature = float(config["temperature"])
        self.lam = float(config["lambda"] if config["lambda"] is not None else 1e-3)
        self.gamma = float(config["gamma"] if config["gamma"] is not None else 1e-4)
        self.orth_reg_form = config["orth_reg_form"] or "code"
        self.ss_loss_form = config["ss_loss_form"] or "code"
        for key, val, allowed in (("orth_reg_form", self.orth_reg_form, ("code", "paper")),
                                  ("ss_loss_form", self.ss_loss_form, ("code", "paper"))):
            if val not in allowed:
                raise ValueError(f"MISSRec: {key} must be one of {allowed}, got '{val}'.")
        self.item_drop_ratio = float(config["item_drop_ratio"])
        self.item_drop_coefficient = float(config["item_drop_coefficient"])
        self.mask_same_target = bool(config["mask_same_target"])
        ratio = config["interest_ratio"]
        if ratio is None:
            ratio = 0.02 if self.train_stage == "pretrain" else 0.5
        self.interest_ratio = float(ratio)
        self.interest_cluster = config["interest_cluster"] or "kmeans"
        if self.interest_cluster not in ("kmeans", "dpc_knn"):
            raise ValueError(f"MISSRec: interest_cluster must be kmeans or dpc_knn, got '{self.interest_cluster}'.")
        self.kmeans_iters = int(config["interest_kmeans_iters"] or 5)
        self.knn_local_ratio = float(config["knn_local_ratio"] or 0.1)
        self.seed = int(config["seed"] or 0)

        # sequence model (sec. 3.3 / 3.4)
        self.position_embedding = nn.Embedding(self.max_seq_length, D)
        if self.transductive:
            self.item_embedding = nn.Embedding(self.n_items, D, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(D, eps=self.layer_norm_eps)
        self.dropout = nn.Dropout(self.dropout_prob)
        enc_layer = nn.TransformerEncoderLayer(D, self.n_heads, self.inner_size, self.dropout_prob,
                                               activation=self.hidden_act, layer_norm_eps=self.layer_norm_eps,
                                               batch_first=True, norm_first=False)
        if self.arch in ("code", "paper_v1"):
            dec_layer = nn.TransformerDecoderLayer(D, self.n_heads, self.inner_size, self.dropout_prob,
                                                   activation=self.hidden_act,
                                                   layer_norm_eps=self.layer_norm_eps,
                                                   batch_first=True, norm_first=False)
            self.encoder = nn.TransformerEncoder(enc_layer, self.n_enc_layers,
                                                 norm=nn.LayerNorm(D, eps=self.layer_norm_eps),
                                                 enable_nested_tensor=False)
            self.decoder = nn.TransformerDecoder(dec_layer, self.n_dec_layers,
                                                 norm=nn.LayerNorm(D, eps=self.layer_norm_eps))
        else:  # Table 5 (3)/(4): a 2-block (enc + dec layers) encoder over items / interests
            self.encoder = nn.TransformerEncoder(enc_layer, self.n_enc_layers + self.n_dec_layers,
                                                 norm=nn.LayerNorm(D, eps=self.layer_norm_eps),
                                                 enable_nested_tensor=False)
            self.decoder = None
        n_alpha = self.n_items if self.item_mm_fusion == "dynamic_instance" else None
        init_alpha = float(config["fusion_init"] or 0.0)
        self.fusion_factor = nn.Parameter(torch.full((n_alpha,) if n_alpha else (), init_alpha))

        self.apply(self._init_weights)
        if self.transductive:
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()
        # adapters after the init pass: PyTorch's default Linear init, as in the official code
        self.adapters = nn.ModuleDict({
            r: (ModalityAdapter(feat_dims[r], D, kind="linear") if self.use_adapter else nn.Identity())
            for r in self.roles
        })

        # interest buffers (sec. 3.2): persistent, restored with the best checkpoint
        n_tokens = len(self.roles) * (self.n_items - 1)
        self.n_interests = max(1, min(n_tokens, math.ceil(self.interest_ratio * n_tokens)))
        for r in self.roles:
            self.register_buffer(f"{r}_interest", torch.zeros(self.n_items, dtype=torch.long))
        self.register_buffer("interest_centroids", torch.zeros(self.n_interests + 1, D))
        self.register_buffer("interest_round", torch.tensor(-1, dtype=torch.long))

    def _init_weights(self, module):
        init_weights(module, self.initializer_range)

    # ------------------------------------------------------------------ items
    def _feat(self, role):
        return getattr(self, f"feat_{role}")

    def item_tables(self) -> dict:
        """Adapted item tokens psi^m(f^m) for all items (row 0 = padding), one per modality."""
        return {r: self.adapters[r](self._feat(r)) for r in self.roles}

    def _interest_table(self, role):
        return getattr(self, f"{role}_interest")

    @torch.no_grad()
    def discover_interests(self, seed: int | None = None) -> dict:
        """Multi-modal interest discovery (sec. 3.2): cluster all adapted text and image item
        tokens into K = ceil(interest_ratio * #tokens) interests; store each item's cluster id + 1
        per modality (0 = padding) and the member-mean centroids (row 0 = 0). No gradient."""
        from recbole_mm.data.cluster import kmeans

        was_training = self.training
        self.eval()
        n = self.n_items - 1
        x = torch.cat([self.item_tables()[r][1:] for r in self.roles]).float()
        K = self.n_interests
        rnd = int(self.interest_round.item()) + 1
        if seed is None:
            seed = self.seed + rnd
        if self.interest_cluster == "kmeans":
            _, assign = kmeans(x.cpu().numpy(), K, seed=seed, niter=self.kmeans_iters)
            assign = torch.from_numpy(assign).to(x.device)
        else:
            assign = dpc_knn(x.cpu(), K, self.knn_local_ratio * x.shape[0]).to(x.device)
        counts = torch.bincount(assign, minlength=K).to(x.dtype)
        centroids = torch.zeros(K, x.shape[1], device=x.device).index_add_(0, assign, x)
        centroids = centroids / counts.clamp(min=1).unsqueeze(1)
        self.interest_centroids.zero_()
        self.interest_centroids[1:] = centroids
        for i, r in enumerate(self.roles):
            table = self._interest_table(r)
            table.zero_()
            table[1:] = assign[i * n:(i + 1) * n] + 1
        self.interest_round.fill_(rnd)
        self.train(was_training)
        return {"round": rnd, "K": K, "used": int((counts > 0).sum().item()), "tokens": int(x.shape[0])}

    def _ensure_interests(self):
        if int(self.interest_round.item()) < 0:
            self.discover_interests()

    # ------------------------------------------------------------------ sequence
    def interest_ids(self, item_seq):
        """De-duplicated interest ids of each sequence ([B, Q], 0 = padding)."""
        return dedup_interest_ids(torch.cat([self._interest_table(r)[item_seq] for r in self.roles], 1))

    def encode(self, item_seq, item_seq_len, tables=None, text_swap=None):
        """Sequence vector u (L2-normalised) plus the interest-side outputs for the regulariser.

        ``tables``: precomputed :meth:`item_tables` (else the needed rows are adapted);
        ``text_swap`` [B, L] bool: positions whose text feature is the word-dropped one.
        Returns ``(u [B, D], side [B, Q, D] or None, interest padding mask [B, Q])``.
        """
        self._ensure_interests()
        B, L = item_seq.shape
        toks = {}
        for r in self.roles:
            if tables is not None:
                toks[r] = F.embedding(item_seq, tables[r])
            else:
                toks[r] = self.adapters[r](self._feat(r)[item_seq])
        if text_swap is not None and self.has_text_aug:
            aug = self.adapters["text"](self.feat_text_aug[item_seq])
            toks["text"] = torch.where(text_swap.unsqueeze(-1), aug, toks["text"])
        extra = self.position_embedding(torch.arange(L, device=item_seq.device)).unsqueeze(0)
        if self.transductive:
            extra = extra + self.item_embedding(item_seq)
        pad = item_seq == 0
        if self.seq_mm_fusion == "add" or len(self.roles) == 1:
            e = sum(toks.values()) + extra
            item_mask = pad
        else:  # contextual: modality-major concatenation [B, M*L, D]
            e = torch.cat([toks[r] + extra for r in self.roles], dim=1)
            item_mask = torch.cat([pad | ~getattr(self, f"present_{r}")[item_seq] for r in self.roles], 1)
            empty = item_mask.all(1)
            if empty.any():  # never a fully masked row: keep the first text token
                item_mask = item_mask.clone()
                item_mask[empty, 0] = False
        e = self.dropout(self.LayerNorm(e))
        ids = self.interest_ids(item_seq)
        c = F.embedding(ids, self.interest_centroids)
        imask = ids == 0
        last = (item_seq_len - 1).clamp(min=0)
        rows = torch.arange(B, device=item_seq.device)
        if self.arch == "code":
            h = self.encoder(c, src_key_padding_mask=imask)
            o = self.decoder(e, h, tgt_key_padding_mask=item_mask, memory_key_padding_mask=imask)
            u, side = o[rows, last], h
        elif self.arch == "paper_v1":
            y = self.encoder(e, src_key_padding_mask=item_mask)
            xi = self.decoder(c, y, tgt_key_padding_mask=imask, memory_key_padding_mask=item_mask)
            u, side = masked_mean(xi, ~imask), xi
        elif self.arch == "context_encoder":
            y = self.encoder(e, src_key_padding_mask=item_mask)
            u, side = masked_mean(y, ~item_mask), None
        else:  # interest_encoder
            h = self.encoder(c, src_key_padding_mask=imask)
            u, side = masked_mean(h, ~imask), h
        return F.normalize(u, dim=-1), side, imask

    def forward(self, item_seq, item_seq_len):
        tables = self.item_tables() if self.train_stage != "pretrain" else None
        return self.encode(item_seq, item_seq_len, tables)[0]

    # ------------------------------------------------------------------ scoring
    def _alpha(self, items=None):
        a = self.fusion_factor
        if a.dim() == 0 or items is None:
            return a
        return a[items]

    def score_all(self, u, tables) -> torch.Tensor:
        """Cosine-fused scores of every item for every user [B, N+1] (sec. 3.5): one GEMM per
        modality (+ one for IDs) and O(B*N) elementwise work."""
        if len(self.roles) == 1:
            x = tables[self.roles[0]]
            if self.transductive:
                x = x + self.item_embedding.weight
            return u @ F.normalize(x, dim=-1).T
        s = [u @ F.normalize(tables[r], dim=-1).T for r in self.roles]
        fused = dynamic_fusion(s, self._alpha(), self.item_mm_fusion)
        if self.transductive:
            s_id = u @ F.normalize(self.item_embedding.weight, dim=-1).T
            return (s_id + len(self.roles) * fused) / (len(self.roles) + 1)
        return fused

    def score_items(self, u, items, tables) -> torch.Tensor:
        """The same score for one given item per user ([B] items -> [B])."""
        if len(self.roles) == 1:
            x = tables[self.roles[0]][items]
            if self.transductive:
                x = x + self.item_embedding(items)
            return (u * F.normalize(x, dim=-1)).sum(-1)
        s = [(u * F.normalize(tables[r][items], dim=-1)).sum(-1) for r in self.roles]
        fused = dynamic_fusion(s, self._alpha(items), self.item_mm_fusion)
        if self.transductive:
            s_id = (u * F.normalize(self.item_embedding(items), dim=-1)).sum(-1)
            return (s_id + len(self.roles) * fused) / (len(self.roles) + 1)
        return fused

    # ------------------------------------------------------------------ losses
    def orth_reg(self, side, imask):
        """Orthogonal/diversity regulariser on the interest-side outputs (sec. 4.2).

        ``code``: sum_b ||(n_b/Q) sum_q h_bq||^2 / D (padded slots included);
        ``paper``: mean_b ||mean_m h_bm||^2 over the valid interests."""
        if side is None:
            return side  # no interest-side outputs (context_encoder ablation)
        if self.orth_reg_form == "code":
            n = (~imask).sum(1, keepdim=True).to(side.dtype)
            v = (n / side.shape[1]) * side.sum(1)
            return v.pow(2).sum() / side.shape[-1]
        return masked_mean(side, ~imask).pow(2).sum(-1).mean()

    def _reg_term(self, *pairs):
        regs = [self.orth_reg(s, m) for s, m in pairs]
        regs = [r for r in regs if r is not None]
        if not regs or self.gamma == 0:
            return None
        return self.gamma * sum(regs)

    def augment(self, item_seq, item_seq_len):
        """Second view for pre-training (sec. 4.1): one coin per batch; item drop with prob
        ``item_drop_coefficient`` (or always without word-dropped text features), else word drop
        (each position swaps its text feature for the word-dropped one with prob
        ``item_drop_ratio``). Item drop removes the item's text and image tokens and interests."""
        if not self.has_text_aug or torch.rand(()) < self.item_drop_coefficient:
            seq, length = item_drop(item_seq, item_seq_len, self.item_drop_ratio)
            return seq, length, None
        pos = torch.arange(item_seq.shape[1], device=item_seq.device).unsqueeze(0)
        swap = (torch.rand(item_seq.shape, device=item_seq.device) < self.item_drop_ratio)
        return item_seq, item_seq_len, swap & (pos < item_seq_len.unsqueeze(1))

    def pretrain_losses(self, interaction):
        """(l_SI, lambda * l_SS, gamma * (R + R')) for one batch (sec. 4.2)."""
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        u1, side1, m1 = self.encode(item_seq, item_seq_len)
        # sequence-item: fused similarity of every sequence with every in-batch target [B, B]
        s = [u1 @ F.normalize(self.adapters[r](self._feat(r)[target]), dim=-1).T for r in self.roles]
        logits = dynamic_fusion(s, self._alpha(), self.item_mm_fusion) / self.temperature
        if self.mask_same_target:
            same = (target.unsqueeze(0) == target.unsqueeze(1)) & ~torch.eye(
                len(target), dtype=torch.bool, device=target.device)
            logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(len(target), device=target.device)
        l_si = F.cross_entropy(logits, labels)
        losses = [l_si]
        side2, m2 = None, None
        if self.lam != 0 or self.gamma != 0:
            seq2, len2, swap = self.augment(item_seq, item_seq_len)
            u2, side2, m2 = self.encode(seq2, len2, text_swap=swap)
            if self.lam != 0:
                cross = u1 @ u2.T / self.temperature
                if self.ss_loss_form == "paper":  # Eq. 6: same-view negatives too (j = i kept)
                    cross = torch.cat([cross, u1 @ u1.T / self.temperature], dim=1)
                losses.append(self.lam * F.cross_entropy(cross, labels))
        reg = self._reg_term((side1, m1), (side2, m2))
        if reg is not None:
            losses.append(reg)
        return tuple(losses)

    def calculate_loss(self, interaction):
        if self.train_stage == "pretrain":
            return self.pretrain_losses(interaction)
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        tables = self.item_tables()
        u, side, imask = self.encode(item_seq, item_seq_len, tables)
        logits = self.score_all(u, tables) / self.temperature
        ce = F.cross_entropy(logits, interaction[self.POS_ITEM_ID])
        reg = self._reg_term((side, imask))
        return ce if reg is None else (ce, reg)

    def predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        tables = self.item_tables()
        u = self.encode(item_seq, item_seq_len, tables)[0]
        return self.score_items(u, interaction[self.ITEM_ID], tables) / self.temperature

    def full_sort_predict(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        tables = self.item_tables()
        u = self.encode(item_seq, item_seq_len, tables)[0]
        return self.score_all(u, tables) / self.temperature

    # ------------------------------------------------------------------ transfer
    def load_pretrained(self, source) -> list:
        """Copy the shape-independent weights of a pre-trained MISSRec (a checkpoint path or a
        state dict): adapters, position table, encoder/decoder, input LayerNorm, alpha. ID table,
        interest buffers and features stay downstream. Returns the loaded keys."""
        if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
            from recbole_mm.compat import load_checkpoint

            ckpt = load_checkpoint(source)
            state = ckpt.get("state_dict", ckpt)
        else:
            state = source
        own = self.state_dict()
        loaded = []
        with torch.no_grad():
            for key, value in state.items():
                if not key.startswith(TRANSFER_PREFIXES) or key not in own:
                    continue
                target = own[key]
                if key == "fusion_factor" and value.numel() == 1 and target.numel() != 1:
                    value = value.reshape(()).expand_as(target)  # shared alpha -> every item
                if target.shape != value.shape:
                    raise ValueError(
                        f"MISSRec.load_pretrained: '{key}' has shape {tuple(value.shape)} in the "
                        f"checkpoint but {tuple(target.shape)} here (hidden_size, feature dims, "
                        f"layers and max length must match the pre-trained model).")
                target.copy_(value)
                loaded.append(key)
        missing = [k for k in own if k.startswith(TRANSFER_PREFIXES) and k not in loaded]
        if not loaded:
            raise ValueError("MISSRec.load_pretrained: no transferable weights found in the checkpoint.")
        if missing:
            self.logger.warning(f"MISSRec: not in the pre-trained checkpoint, kept fresh: {missing}")
        self.logger.info(f"MISSRec: loaded {len(loaded)} pre-trained tensors")
        return loaded

    def freeze_for_peft(self) -> list:
        """Parameter-efficient fine-tuning: freeze the position table and the Transformer; train
        the adapters, alpha, the input LayerNorm and (transductive) the ID table."""
        trainable = []
        for name, p in self.named_parameters():
            keep = name.split(".")[0] in PEFT_TRAINABLE
            p.requires_grad_(keep)
            if keep:
                trainable.append(name)
        return trainable
