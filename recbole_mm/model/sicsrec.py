"""SICSRec: self-supervised ID-content modality alignment for sequential recommendation.

Paper: "Self-Supervised Representation Learning with ID-Content Modality Alignment for Sequential
Recommendation" (SICSRec). Specification: ``shared/papers/SICSRec.md`` (section numbers below).

The recommender part (§3-§4) lives here; the content semantic alignment that produces the
(fine-tuned) text / image feature files runs before training (:mod:`recbole_mm.alignment`).

* Embedding layer (§3.1): ``E_id`` (``item_embedding``), shared positions ``P``
  (``position_embedding``), trainable content tables ``E_text`` / ``E_ima``
  (``text_embedding`` / ``image_embedding``, initialised from the dataset's feature files) and
  MLP adapters ``A_t`` / ``A_g`` (in -> in/2 -> ReLU -> d).
* ID-modality sequence encoder IMSE (§3.2): RecBole's SASRec encoder (same module names, so a
  SASRec checkpoint loads into it), with LoRA in step 2 (§4.3).
* Content-modality sequence encoder CMSE (§3.3): ``c = L2norm(A_t(E_text[S]) + A_g(E_ima[S]))``,
  ``X_c = Dropout(LN_c(c + P))``, a second causal Transformer.
* Mix-modality sequence decoder MMSD (§3.4): cross-attention, queries from ``LN_q(H_e)``,
  keys/values from ``LN_v(H_c)``, causal + padding mask, then FFN.
* Preference aggregation (§3.5): ``h_a = W_a [h_e; h_c; h_m]``, ``ĥ = h_a / ||h_a||``.
* Scores (§3.6): step-2 training ``ĥ · L2norm(Dropout(E_id))ᵀ / τ``; full ranking ``ĥ · E_idᵀ``
  (``predict_item_norm: true`` ranks by cosine); step 1 (plain SASRec) ``h_e · E_idᵀ``.
* Losses (§4.2): ``L_CE + α L_ConCL + λ (||E_id||_F + ||E_text||_F + ||E_ima||_F)``.

``sft_aligned`` / ``setting_note``: whether the content feature files came out of the SFT
alignment step (:func:`recbole_mm.alignment.export.feature_alignment`); raw features are the
paper's "w/o SFT" setting, which the benchmark records and shows beside the row's label.

Two-step training (§4): :class:`recbole_mm.trainer.sicsrec.SICSRecTrainer` runs step 1
(``pretrain_branch``: the ID branch = SASRec with CE, or the content branch, Table 9) and then
step 2 (``freeze`` groups frozen, LoRA on a frozen ID encoder, everything else trained). The
current step is the persistent buffer ``train_step``, so every checkpoint knows its step.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.layers import FeedForward

from recbole_mm.model.layers import LoRALinear, ModalityAdapter, TransformerEncoder, init_weights
from recbole_mm.registry import register_model
from recbole_mm.trainer.sicsrec import SICSRecTrainer

FREEZE_GROUPS = ("id_embedding", "id_encoder", "content_tables", "content_adapters",
                 "content_encoder")
#: Table 9 training strategies -> (pretrain_branch, freeze groups of step 2).
STRATEGIES = {
    "fixed_id_enc": ("id", ["id_encoder"]),
    "fixed_id_emb": ("id", ["id_embedding"]),
    "fixed_id_emb_enc": ("id", ["id_embedding", "id_encoder"]),
    "fixed_con_enc": ("content", ["content_encoder"]),
    "fixed_con_emb": ("content", ["content_tables", "content_adapters"]),
    "fixed_con_emb_enc": ("content", ["content_tables", "content_adapters", "content_encoder"]),
    "end2end": ("none", []),
}
CONTENT = ("text", "image")


def as_list(value) -> list:
    """A config list that may arrive as a string from the command line (``[id,text]``, ``id,text``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip().strip("'\"") for v in value.strip("[]() ").split(",") if v.strip()]
    return list(value)


class ActivationLoRA(nn.Module):
    """The official code's adapter: ``x + B(A(x))`` on a block's output (A N(0, 0.02), B = 0)."""

    def __init__(self, hidden: int, rank: int, init_std: float = 0.02):
        super().__init__()
        self.lora_A = nn.Linear(hidden, rank, bias=False)
        self.lora_B = nn.Linear(rank, hidden, bias=False)
        nn.init.normal_(self.lora_A.weight, std=init_std)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return x + self.lora_B(self.lora_A(x))


class MixModalityDecoderLayer(nn.Module):
    """One MMSD block (Eq. 13-14): multi-head cross-attention (queries from the ID stream, keys
    and values from the content stream) with residual + post-LN, then RecBole's FFN block."""

    def __init__(self, n_heads, hidden, inner, hidden_dropout, attn_dropout, act, eps):
        super().__init__()
        if hidden % n_heads:
            raise ValueError(f"hidden_size {hidden} is not a multiple of n_heads {n_heads}.")
        self.n_heads, self.head = n_heads, hidden // n_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(attn_dropout)
        self.out_dropout = nn.Dropout(hidden_dropout)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.feed_forward = FeedForward(hidden, inner, hidden_dropout, act, eps)

    def _split(self, x):
        b, l, _ = x.shape
        return x.view(b, l, self.n_heads, self.head).transpose(1, 2)  # [B, h, L, dh]

    def forward(self, q, kv, mask):
        query, key, value = self._split(self.query(q)), self._split(self.key(kv)), self._split(self.value(kv))
        scores = query @ key.transpose(-1, -2) / math.sqrt(self.head) + mask
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        ctx = (probs @ value).transpose(1, 2).reshape(q.shape)
        out = self.LayerNorm(self.out_dropout(self.dense(ctx)) + q)
        return self.feed_forward(out)


def content_contrastive_loss(user: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor,
                             temperature: float, false_negative: str = "exclude") -> torch.Tensor:
    """L_ConCL (Eq. 18): in-batch InfoNCE between user vectors and the content vectors of their
    next items, ``mean_b[-s_bb + log sum_j exp(s_bj)]`` with ``s = user · keysᵀ / τ``.

    Rows ``j != b`` with the same target item are false negatives: ``exclude`` removes them from
    the denominator, ``zero_logit`` sets their logit to 0 (the official code).
    """
    logits = user @ keys.transpose(0, 1) / temperature
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    dup = (targets.unsqueeze(0) == targets.unsqueeze(1)) & ~eye
    if false_negative == "exclude":
        logits = logits.masked_fill(dup, float("-inf"))
    elif false_negative == "zero_logit":
        logits = logits.masked_fill(dup, 0.0)
    elif false_negative != "keep":
        raise ValueError(f"concl_false_negative must be exclude, zero_logit or keep, got '{false_negative}'.")
    return F.cross_entropy(logits, torch.arange(n, device=logits.device))


@register_model
class SICSRec(SequentialRecommender):
    r"""SICSRec (see module docstring; flags in ``properties/model/SICSRec.yaml``)."""

    trainer_class = SICSRecTrainer
    all_positions = False  # train_all_positions (recbole_mm.model.all_positions)
    all_positions_reason = ("its step-2 loss adds ConCL contrastive terms over in-batch users at "
                            "the last position; a per-position form is not implemented")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        c = config
        self.hidden_size = d = c["hidden_size"]
        self.n_layers, self.n_heads, self.inner_size = c["n_layers"], c["n_heads"], c["inner_size"]
        self.hidden_dropout_prob, self.attn_dropout_prob = c["hidden_dropout_prob"], c["attn_dropout_prob"]
        self.hidden_act, self.layer_norm_eps = c["hidden_act"], c["layer_norm_eps"]
        self.initializer_range = c["initializer_range"]
        self.temperature = float(c["temperature"])
        self.alpha = float(c["alpha"])
        self.lambda_reg = float(c["lambda_reg"])
        self.item_dropout_prob = float(c["item_dropout"])
        self.predict_item_norm = bool(c["predict_item_norm"])
        self.false_negative = c["concl_false_negative"] or "exclude"
        self.use_imse = c["use_imse"] is not False
        self.use_cmse = c["use_cmse"] is not False
        self.use_mmsd = c["use_mmsd"] is not False
        self.content_fusion = c["content_fusion"] or "l2_sum"
        if self.content_fusion not in ("l2_sum", "separate"):
            raise ValueError(f"content_fusion must be l2_sum or separate, got '{self.content_fusion}'.")

        inputs = as_list(c["input_modalities"]) or ["id", "text", "image"]
        bad = [m for m in inputs if m not in ("id",) + CONTENT]
        if bad:
            raise ValueError(f"input_modalities may hold id, text, image; got {bad}.")
        self.use_id = "id" in inputs
        self.content_modalities = [m for m in CONTENT if m in inputs]
        if not self.use_id and not self.content_modalities:
            raise ValueError("SICSRec needs at least one input modality (id, text or image).")
        if not self.use_id and self.content_fusion == "separate" and len(self.content_modalities) < 2:
            self.content_fusion = "l2_sum"

        # ---- training strategy (Table 9)
        strategy = c["training_strategy"]
        if strategy:
            if strategy not in STRATEGIES:
                raise ValueError(f"training_strategy must be one of {list(STRATEGIES)}, got '{strategy}'.")
            self.pretrain_branch, freeze = STRATEGIES[strategy]
        else:
            self.pretrain_branch = c["pretrain_branch"] or "none"
            freeze = as_list(c["freeze"])
        bad = [g for g in freeze if g not in FREEZE_GROUPS]
        if bad:
            raise ValueError(f"freeze may list {list(FREEZE_GROUPS)}; got {bad}.")
        if self.pretrain_branch not in ("id", "content", "none"):
            raise ValueError(f"pretrain_branch must be id, content or none, got '{self.pretrain_branch}'.")
        if self.pretrain_branch == "id" and not (self.use_id and self.use_imse):
            # w/o IMSE / content-only: there is no ID encoder to pre-train (spec §9)
            self.pretrain_branch = "none"
            freeze = [g for g in freeze if not g.startswith("id_")]
        if self.pretrain_branch == "content" and not self.content_modalities:
            raise ValueError("pretrain_branch: content needs a content input modality.")
        self.freeze_groups = freeze

        # ---- embedding layer
        self.position_embedding = nn.Embedding(self.max_seq_length, d)
        if self.use_id:
            self.item_embedding = nn.Embedding(self.n_items, d, padding_idx=0)
            self.LayerNorm = nn.LayerNorm(d, eps=self.layer_norm_eps)
            self.dropout = nn.Dropout(self.hidden_dropout_prob)
            if self.use_imse:
                self.trm_encoder = self._encoder()
            self.item_dropout = nn.Dropout(self.item_dropout_prob)
        names = {"text": c["text_feature"] or "text", "image": c["image_feature"] or "image"}
        if self.content_modalities:
            dataset.require_modalities([names[m] for m in self.content_modalities], "SICSRec")
        for m in self.content_modalities:
            feat = dataset.modality_features[names[m]].float().clone()
            feat[0] = 0.0
            table = nn.Embedding(feat.shape[0], feat.shape[1], padding_idx=0)
            table.weight.data.copy_(feat)
            setattr(self, f"{m}_embedding", table)
            in_dim = feat.shape[1]
            setattr(self, f"{m}_adapter", ModalityAdapter(in_dim, d, "mlp", hidden=max(in_dim // 2, 1)))
        self._check_sft_alignment(dataset, [names[m] for m in self.content_modalities])
        # ---- content encoder(s)
        self.content_streams = (["content"] if self.content_fusion == "l2_sum"
                                else list(self.content_modalities))
        if self.content_modalities:
            for s in self.content_streams:
                setattr(self, f"{s}_LayerNorm", nn.LayerNorm(d, eps=self.layer_norm_eps))
                if self.use_cmse:
                    setattr(self, f"{s}_encoder", self._encoder())
            self.content_dropout = nn.Dropout(self.hidden_dropout_prob)
        # ---- mix-modality decoder
        self.has_mmsd = self.use_mmsd and self.use_id and bool(self.content_modalities)
        if self.has_mmsd:
            self.q_LayerNorm = nn.LayerNorm(d, eps=self.layer_norm_eps)
            self.kv_LayerNorm = nn.LayerNorm(d, eps=self.layer_norm_eps)
            self.mmsd_dropout = nn.Dropout(self.hidden_dropout_prob)
            self.decoder = nn.ModuleList(
                MixModalityDecoderLayer(self.n_heads, d, self.inner_size, self.hidden_dropout_prob,
                                        self.attn_dropout_prob, self.hidden_act, self.layer_norm_eps)
                for _ in range(int(c["decoder_layers"] or 1)))
        # ---- preference aggregation
        n_parts = int(self.use_id) + (len(self.content_streams) if self.content_modalities else 0) \
            + int(self.has_mmsd)
        if n_parts > 1:
            self.aggregation = nn.Linear(n_parts * d, d)

        # step-1 modules get SASRec's init; the rest keep PyTorch defaults (official, §8 #15)
        for name in ("item_embedding", "position_embedding", "LayerNorm", "trm_encoder"):
            if hasattr(self, name):
                getattr(self, name).apply(self._init_weights)

        # ---- LoRA on the frozen ID encoder (§4.3)
        self.lora_mode = c["lora_mode"] or "none"
        if self.lora_mode not in ("weight", "activation", "none"):
            raise ValueError(f"lora_mode must be weight, activation or none, got '{self.lora_mode}'.")
        self.lora_targets = as_list(c["lora_targets"]) or ["attn", "ffn"]
        self.has_lora = (self.lora_mode != "none" and self.use_id and self.use_imse
                         and "id_encoder" in self.freeze_groups)
        if self.has_lora:
            self._add_lora(int(c["lora_rank"]), c["lora_alpha"])

        self.register_buffer("train_step", torch.tensor(2, dtype=torch.long))
        self.current_step = 2
        self.set_step(2)

    # ------------------------------------------------------------------ construction helpers
    def _check_sft_alignment(self, dataset, modalities):
        """``sft_aligned`` (None without content input) and ``setting_note`` (``'w/o SFT'`` when
        no content feature file came out of :mod:`recbole_mm.alignment`, ``'w/o SFT on <m>'``
        when only some did, else None), with one INFO line naming the files."""
        self.sft_aligned, self.setting_note = None, None
        if not modalities:
            return
        from recbole_mm.alignment.export import feature_alignment

        found = {m: feature_alignment(dataset, m) for m in modalities}
        missing = [m for m, f in found.items() if not f.aligned]
        self.sft_aligned = not missing
        files = "; ".join(f"{m} features {f.file or '(no file)'} "
                          f"{'are' if f.aligned else 'are not'} SFT-aligned ({f.reason})"
                          for m, f in found.items())
        if not missing:
            self.logger.info(f"SICSRec: {files}")
            return
        self.setting_note = ("w/o SFT" if len(missing) == len(found)
                             else f"w/o SFT on {', '.join(missing)}")
        self.logger.info(f"SICSRec: {files}: this is the paper's '{self.setting_note}' setting "
                         "(align them with python -m recbole_mm.alignment and train with "
                         "--feature_dir=<its out_dir>)")

    def _encoder(self):
        return TransformerEncoder(
            n_layers=self.n_layers, n_heads=self.n_heads, hidden_size=self.hidden_size,
            inner_size=self.inner_size, hidden_dropout_prob=self.hidden_dropout_prob,
            attn_dropout_prob=self.attn_dropout_prob, hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps)

    def _init_weights(self, module):
        init_weights(module, self.initializer_range)

    def _add_lora(self, rank, alpha):
        bad = [t for t in self.lora_targets if t not in ("attn", "ffn")]
        if bad:
            raise ValueError(f"lora_targets may hold attn, ffn; got {bad}.")
        if self.lora_mode == "weight":
            # paper form: W0 + BA on W^Q, W^K, W^V (attn) and the FFN's W1, W2 (ffn)
            for layer in self.trm_encoder.layer:
                mha, ffn = layer.multi_head_attention, layer.feed_forward
                if "attn" in self.lora_targets:
                    for n in ("query", "key", "value"):
                        setattr(mha, n, LoRALinear.from_linear(getattr(mha, n), rank, alpha))
                if "ffn" in self.lora_targets:
                    for n in ("dense_1", "dense_2"):
                        setattr(ffn, n, LoRALinear.from_linear(getattr(ffn, n), rank, alpha))
        else:
            # official code: residual adapters after the attention and/or FFN block outputs
            n = len(self.trm_encoder.layer)
            if "attn" in self.lora_targets:
                self.lora_attn = nn.ModuleList(ActivationLoRA(self.hidden_size, rank) for _ in range(n))
            if "ffn" in self.lora_targets:
                self.lora_ffn = nn.ModuleList(ActivationLoRA(self.hidden_size, rank) for _ in range(n))

    # ------------------------------------------------------------------ steps and freezing
    def group_of(self, name: str) -> str:
        """The parameter group of a parameter name (freeze groups, ``lora``, ``shared``, ``fusion``)."""
        if "lora_" in name:
            return "lora"
        if name.startswith("item_embedding"):
            return "id_embedding"
        if name.startswith("trm_encoder"):
            return "id_encoder"
        if name.startswith(("position_embedding", "LayerNorm")):
            return "shared"
        if name.startswith(("text_embedding", "image_embedding")):
            return "content_tables"
        if name.startswith(("text_adapter", "image_adapter")):
            return "content_adapters"
        if name.startswith(tuple(f"{s}_" for s in ("content",) + CONTENT)):
            return "content_encoder"
        return "fusion"  # decoder, its LayerNorms, aggregation

    def set_step(self, step: int) -> None:
        """Switch to training step 1 (pre-train ``pretrain_branch`` alone) or step 2 (full model,
        ``freeze`` groups frozen, LoRA trainable) and set ``requires_grad`` accordingly."""
        if step not in (1, 2):
            raise ValueError(f"step must be 1 or 2, got {step}.")
        if step == 1 and self.pretrain_branch == "none":
            raise ValueError("pretrain_branch is 'none': SICSRec has no step 1 to run.")
        self.current_step = step
        self.train_step.fill_(step)
        if step == 1:
            train = ({"id_embedding", "id_encoder", "shared"} if self.pretrain_branch == "id"
                     else {"content_tables", "content_adapters", "content_encoder", "shared"})
        else:
            train = {"id_embedding", "id_encoder", "shared", "content_tables", "content_adapters",
                     "content_encoder", "fusion", "lora"} - set(self.freeze_groups)
        for name, p in self.named_parameters():
            p.requires_grad_(self.group_of(name) in train)
        for m in self.modules():
            if isinstance(m, LoRALinear):
                m.enabled = step == 2

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "train_step"
        if key in state_dict:
            step = int(state_dict[key])
            self.current_step = step
            for m in self.modules():
                if isinstance(m, LoRALinear):
                    m.enabled = step == 2

    # ------------------------------------------------------------------ encoders
    def _positions(self, item_seq):
        ids = torch.arange(item_seq.size(1), dtype=torch.long, device=item_seq.device)
        return self.position_embedding(ids).unsqueeze(0)

    @staticmethod
    def _mask_rows(mask, last):
        """The rows of the [B, 1, L, L] mask at each sequence's last position: [B, 1, 1, L]."""
        return mask.gather(2, last.view(-1, 1, 1, 1).expand(-1, 1, 1, mask.shape[-1]))

    @staticmethod
    def _attention_last(mha, h, h_last, mask_row):
        """RecBole ``MultiHeadAttention`` for one query per row (the last position); keys and
        values from every position of ``h``. Same operations, in the same order."""
        B, L, _ = h.shape
        nh, dh = mha.num_attention_heads, mha.attention_head_size
        q = mha.query(h_last).view(B, 1, nh, dh).transpose(1, 2)
        k = mha.key(h).view(B, L, nh, dh).transpose(1, 2)
        v = mha.value(h).view(B, L, nh, dh).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / mha.sqrt_attention_head_size + mask_row
        probs = mha.attn_dropout(mha.softmax(scores))
        ctx = (probs @ v).transpose(1, 2).reshape(B, 1, nh * dh)
        return mha.LayerNorm(mha.out_dropout(mha.dense(ctx)) + h_last)

    def _transformer(self, layers, h, mask, last, last_only: bool, lora: bool = False):
        """Run RecBole ``TransformerLayer``s; with ``last_only`` the final layer is computed for
        the last position only (``[B, 1, d]``): every loss and score reads only that position, and
        causal attention makes it exact. ``lora``: the activation adapters of step 2."""
        n = len(layers)
        for k, layer in enumerate(layers):
            if last_only and k == n - 1:
                h_last = self.gather_indexes(h, last).unsqueeze(1)
                a = self._attention_last(layer.multi_head_attention, h, h_last, self._mask_rows(mask, last))
            else:
                a = layer.multi_head_attention(h, mask)
            if lora and hasattr(self, "lora_attn"):
                a = self.lora_attn[k](a)
            h = layer.feed_forward(a)
            if lora and hasattr(self, "lora_ffn"):
                h = self.lora_ffn[k](h)
        return h

    def encode_id(self, item_seq, mask, pos, last=None, last_only: bool = False):
        """IMSE: ``H_e`` [B, L, d] (``X_e`` itself with ``use_imse: false``); [B, 1, d] at the last
        position with ``last_only``."""
        h = self.dropout(self.LayerNorm(self.item_embedding(item_seq) + pos))
        if not self.use_imse:
            return self.gather_indexes(h, last).unsqueeze(1) if last_only else h
        lora_on = self.current_step == 2 and self.has_lora and self.lora_mode == "activation"
        return self._transformer(self.trm_encoder.layer, h, mask, last, last_only, lora_on)

    def content_vectors(self, ids: torch.Tensor) -> dict:
        """Adapted content vectors of items ``ids`` (computed once per distinct item):
        ``{'content': L2norm(sum of adapters)}`` and, with ``separate`` fusion, per modality."""
        flat = ids.reshape(-1)
        uniq, inv = torch.unique(flat, return_inverse=True)
        parts = {m: getattr(self, f"{m}_adapter")(getattr(self, f"{m}_embedding")(uniq))
                 for m in self.content_modalities}
        out = {"content": F.normalize(sum(parts.values()), dim=-1)}
        if self.content_fusion == "separate":
            out.update(parts)
        return {k: v[inv].view(*ids.shape, -1) for k, v in out.items()}

    def encode_content(self, item_seq, mask, pos, last=None, last_only: bool = False) -> dict:
        """CMSE per content stream: ``{stream: H}`` [B, L, d] ([B, 1, d] with ``last_only``)."""
        vecs = self.content_vectors(item_seq)
        out = {}
        for s in self.content_streams:
            x = self.content_dropout(getattr(self, f"{s}_LayerNorm")(vecs[s] + pos))
            if self.use_cmse:
                x = self._transformer(getattr(self, f"{s}_encoder").layer, x, mask, last, last_only)
            elif last_only:
                x = self.gather_indexes(x, last).unsqueeze(1)
            out[s] = x
        return out

    def encode(self, item_seq, item_seq_len, full: bool = False) -> dict:
        """Sequence representations of the current step: the gathered ``h_e, h_<stream>, h_m``
        and the user vector ``h`` (ĥ in step 2, ``h_e`` in ID step 1); with ``full`` also the
        whole sequences ``H_e, H_<stream>, H_m`` (otherwise only the last position is computed
        where nothing else needs the others - same ``h``)."""
        mask = self.get_attention_mask(item_seq)
        pos = self._positions(item_seq)
        last = item_seq_len - 1
        out = {}
        step1 = self.current_step == 1

        def keep(name, H, last_only):
            if last_only:
                out[f"h_{name}"] = H[:, 0]
            else:
                out[f"H_{name}"] = H
                out[f"h_{name}"] = self.gather_indexes(H, last)

        if self.use_id and not (step1 and self.pretrain_branch == "content"):
            keep("e", self.encode_id(item_seq, mask, pos, last, not full), not full)
            if step1:
                out["h"] = out["h_e"]
                return out
        parts = [out["h_e"]] if "h_e" in out else []
        if self.content_modalities:
            mmsd = self.has_mmsd and not step1
            c_last = not full and not mmsd  # the decoder reads every content position
            H = self.encode_content(item_seq, mask, pos, last, c_last)
            for s, Hs in H.items():
                keep(s, Hs, c_last)
                parts.append(out[f"h_{s}"])
            if step1:  # content pre-training: the content branch alone
                out["h"] = F.normalize(sum(out[f"h_{s}"] for s in H), dim=-1)
                return out
            if mmsd:
                q_in = out["H_e"] if full else out["h_e"].unsqueeze(1)
                dec_mask = mask if full else self._mask_rows(mask, last)
                h = self.mmsd_dropout(self.q_LayerNorm(q_in))
                kv = self.mmsd_dropout(self.kv_LayerNorm(sum(H.values())))
                for layer in self.decoder:
                    h = layer(h, kv, dec_mask)
                keep("m", h, not full)
                parts.append(out["h_m"])
        h_a = self.aggregation(torch.cat(parts, dim=-1)) if len(parts) > 1 else parts[0]
        out["h_a"] = h_a
        out["h"] = F.normalize(h_a, dim=-1)
        return out

    def forward(self, item_seq, item_seq_len):
        return self.encode(item_seq, item_seq_len)["h"]

    # ------------------------------------------------------------------ item tables
    def _id_scoring(self) -> bool:
        return self.use_id and not (self.current_step == 1 and self.pretrain_branch == "content")

    def content_item_table(self) -> torch.Tensor:
        """L2-normalised fused content vector of every item [N, d] (content-only scoring)."""
        return self.content_vectors(torch.arange(self.n_items, device=self.position_embedding.weight.device))["content"]

    # ------------------------------------------------------------------ losses
    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        target = interaction[self.POS_ITEM_ID]
        h = self.forward(item_seq, item_seq_len)
        if self.current_step == 1 and self.pretrain_branch == "id":  # plain SASRec (Eq. 16-17)
            return F.cross_entropy(h @ self.item_embedding.weight.t(), target)
        if self._id_scoring():
            table = F.normalize(self.item_dropout(self.item_embedding.weight), dim=-1)
        else:
            table = self.content_item_table()
        loss = F.cross_entropy(h @ table.t() / self.temperature, target)
        if self.current_step == 1:
            return loss
        losses = [loss]
        if self.alpha > 0 and self.content_modalities:
            keys = self.content_vectors(target)["content"]
            losses.append(self.alpha * content_contrastive_loss(
                h, keys, target, self.temperature, self.false_negative))
        if self.lambda_reg > 0:
            tables = [getattr(self, n).weight for n in
                      ("item_embedding", "text_embedding", "image_embedding") if hasattr(self, n)]
            losses.append(self.lambda_reg * sum(torch.linalg.norm(t) for t in tables))
        return tuple(losses) if len(losses) > 1 else loss

    # ------------------------------------------------------------------ scoring
    def _score_table(self):
        if self.current_step == 1 and self.pretrain_branch == "id":
            return self.item_embedding.weight
        if self._id_scoring():
            w = self.item_embedding.weight
            return F.normalize(w, dim=-1) if self.predict_item_norm else w
        return self.content_item_table()

    def predict(self, interaction):
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return (h * self._score_table()[interaction[self.ITEM_ID]]).sum(-1)

    def full_sort_predict(self, interaction):
        h, table = self.full_sort_parts(interaction)
        return h @ table.t()  # [B, n_items]

    def full_sort_parts(self, interaction):
        """``full_sort_predict`` as ``(users, item table)`` (recbole_mm.trainer.chunked_eval)."""
        h = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return h, self._score_table()
