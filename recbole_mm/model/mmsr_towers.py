"""MMSR's item tower: text encoder + vision encoder + fusion, no item-ID table (spec MMSR.md 2.1-2.6, 7.2).

Three feature modes (``feature_mode``):

* ``pooled``  (fast path, non-paper): frozen pooled features from the dataset's modality files
  (``text_feature`` / ``image_feature``, e.g. ``text`` / ``image``); ``text_pooler`` / ``cv_proj``
  project them; coarse fusions only (projection is affine, so projecting the mean equals the mean
  of projected tokens: exact for coarse fusion with frozen encoders).
* ``tokens``  (non-paper): frozen token features ``text_tokens``/``text_mask``/``image_tokens``
  (see :mod:`recbole_mm.model.mmsr_data`); every fusion, attention ones included.
* ``end2end`` (paper): ``transformers`` encoders run on ``text_ids``/``text_mask`` and
  ``image_pixels``; only the top ``trainable_top_blocks_*`` blocks train.

``item_tower``: ``modal`` (MMSR), ``text`` (MMSR-T: masked mean of projected text tokens),
``image`` (MMSR-V: mean of projected image tokens; ResNet: pooled vector), ``id`` (IDSR baseline).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_mm.model.mmsr_fusion import ATTENTION_FUSIONS, build_fusion, masked_mean

TOWERS = ("modal", "text", "image", "id")
MODES = ("pooled", "tokens", "end2end")
ENCODER_ALIASES = {
    "roberta": "roberta-base", "bert": "bert-base-uncased",
    "electra": "google/electra-base-discriminator",
    "swin": "microsoft/swin-base-patch4-window7-224", "mae": "facebook/vit-mae-base",
    "resnet50": "microsoft/resnet-50", "resnet": "microsoft/resnet-50",
}
IMAGE_NORMS = {"half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
               "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _xavier_linear(i, o):
    lin = nn.Linear(i, o)
    nn.init.xavier_normal_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


# ------------------------------------------------------------------------------ HF encoders
def load_hf_encoder(name: str | None, config_dict: dict | None = None, mae_mask_ratio=None):
    """A ``transformers`` backbone: ``from_pretrained(name)`` (the real path), or, with
    ``config_dict`` (``{model_type: ..., **sizes}``), a randomly initialised model of that config
    (tests, or training from scratch). Text models drop their unused pooler."""
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("MMSR feature_mode end2end needs `transformers` (pip install "
                          "'recbole-mm[encoders]').") from exc
    if config_dict:
        cfg = dict(config_dict)
        if "model_type" not in cfg:
            raise ValueError(f"an encoder config dict needs a model_type, got {sorted(cfg)}")
        conf = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    else:
        name = ENCODER_ALIASES.get(name, name)
        conf = transformers.AutoConfig.from_pretrained(name)
    if conf.model_type == "vit_mae" and mae_mask_ratio is not None:
        conf.mask_ratio = float(mae_mask_ratio)
    if config_dict:
        model = transformers.AutoModel.from_config(conf)
    else:
        model = transformers.AutoModel.from_pretrained(name, config=conf)
    if conf.model_type not in ("swin", "resnet") and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model


def encoder_output_dim(model) -> int:
    conf = model.config
    if conf.model_type == "resnet":
        return int(conf.hidden_sizes[-1])
    return int(conf.hidden_size)


def encoder_blocks(model):
    """``(units, top_extras)``: the encoder's blocks bottom -> top (each a list of modules) and the
    modules that sit above the last block (final LayerNorm). Swin: every block of every stage, a
    stage's patch merging joined to that stage's last block (so top-2 of Swin-B = the last stage's
    two blocks + final norm); ResNet: every bottleneck."""
    mtype = model.config.model_type
    units = []
    if mtype == "resnet":
        for stage in model.encoder.stages:
            units += [[layer] for layer in stage.layers]
    elif mtype in ("swin", "swinv2", "donut-swin"):
        for stage in model.encoder.layers:
            blocks = list(stage.blocks)
            for j, block in enumerate(blocks):
                last = j == len(blocks) - 1 and stage.downsample is not None
                units.append([block] + ([stage.downsample] if last else []))
    else:
        blocks = None
        for path in ("encoder.layer", "encoder.layers", "layers", "layer"):
            obj = model
            for part in path.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if isinstance(obj, nn.ModuleList):
                blocks = obj
                break
        if blocks is None:
            raise ValueError(f"cannot find the transformer blocks of a '{mtype}' encoder")
        units = [[b] for b in blocks]
    extras = []
    for attr in ("layernorm", "final_layernorm", "ln_f"):
        mod = getattr(model, attr, None)
        if isinstance(mod, nn.Module) and any(True for _ in mod.parameters()):
            extras.append(mod)
    return units, extras


def set_trainable_top_blocks(model, k: int) -> None:
    """Freeze an encoder except its top ``k`` blocks (+ the final norm when k > 0).

    ``k = 0``: everything frozen; ``k = -1``: everything trains (full fine-tuning, Table 11)."""
    k = int(k)
    if k < 0:
        for p in model.parameters():
            p.requires_grad_(True)
        return
    for p in model.parameters():
        p.requires_grad_(False)
    if k == 0:
        return
    units, extras = encoder_blocks(model)
    if k > len(units):
        raise ValueError(f"trainable_top_blocks={k} but the encoder has only {len(units)} blocks; "
                         f"use -1 to train all.")
    for unit in units[-k:]:
        for mod in unit:
            for p in mod.parameters():
                p.requires_grad_(True)
    for mod in extras:
        for p in mod.parameters():
            p.requires_grad_(True)


# ------------------------------------------------------------------------------ the tower
class ItemTower(nn.Module):
    """Item ids ``[K]`` -> item vectors ``[K, d]`` from content only (or an ID table for IDSR)."""

    def __init__(self, config, dataset, d: int):
        super().__init__()
        self.tower = config["item_tower"] or "modal"
        self.mode = config["feature_mode"] or "pooled"
        self.fusion_name = config["fusion"] or "merge_attn"
        if self.tower not in TOWERS:
            raise ValueError(f"item_tower must be one of {TOWERS}, got '{self.tower}'.")
        if self.mode not in MODES:
            raise ValueError(f"feature_mode must be one of {MODES}, got '{self.mode}'.")
        self.uses_text = self.tower in ("modal", "text")
        self.uses_image = self.tower in ("modal", "image")
        self.attention = self.tower == "modal" and self.fusion_name in ATTENTION_FUSIONS
        dropout = float(config["dropout_prob"])
        self.n_items = dataset.item_num
        if self.tower == "id":
            self.item_embedding = nn.Embedding(dataset.item_num, d, padding_idx=0)
            nn.init.xavier_normal_(self.item_embedding.weight)
            with torch.no_grad():
                self.item_embedding.weight[0].zero_()
            return
        if self.mode == "pooled" and self.attention:
            raise ValueError(
                f"fusion '{self.fusion_name}' attends over token sequences, but feature_mode "
                f"'pooled' has one vector per modality: use feature_mode tokens or end2end, or a "
                f"coarse fusion (sum, concat, film, gated, *_dnn).")
        self.text_max_tokens = int(config["text_max_tokens"] or 0) or None
        self.image_is_resnet = False
        self.arrays = getattr(dataset, "item_arrays", {})
        if self.mode == "pooled":
            names = ([config["text_feature"]] if self.uses_text else []) + \
                    ([config["image_feature"]] if self.uses_image else [])
            dataset.require_modalities(names, "MMSR")
            if self.uses_text:
                self.register_buffer("feat_text", dataset.modality_features[config["text_feature"]].float(),
                                     persistent=False)
                d_text = self.feat_text.shape[1]
            if self.uses_image:
                self.register_buffer("feat_image", dataset.modality_features[config["image_feature"]].float(),
                                     persistent=False)
                d_img = self.feat_image.shape[1]
        else:
            needed = []
            if self.uses_text:
                needed += ["text_tokens", "text_mask"] if self.mode == "tokens" else ["text_ids", "text_mask"]
            if self.uses_image:
                needed += ["image_tokens"] if self.mode == "tokens" else ["image_pixels"]
            missing = [n for n in needed if n not in self.arrays]
            if missing:
                raise ValueError(f"MMSR feature_mode '{self.mode}' needs the item files {missing}; "
                                 f"use dataset class MMSRDataset (see docs/models/MMSR.md).")
            if self.mode == "end2end":
                if self.uses_text:
                    self.text_encoder = load_hf_encoder(config["text_encoder"], config["text_encoder_config"])
                    set_trainable_top_blocks(self.text_encoder, config["trainable_top_blocks_text"])
                    d_text = encoder_output_dim(self.text_encoder)
                if self.uses_image:
                    self.image_encoder = load_hf_encoder(config["image_encoder"], config["image_encoder_config"],
                                                         config["mae_mask_ratio"])
                    set_trainable_top_blocks(self.image_encoder, config["trainable_top_blocks_image"])
                    d_img = encoder_output_dim(self.image_encoder)
                    self.image_is_resnet = self.image_encoder.config.model_type == "resnet"
                    mean, std = IMAGE_NORMS[config["image_norm"] or "half"]
                    self.register_buffer("pix_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
                    self.register_buffer("pix_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
                    self.image_size = int(config["image_size"] or 224)
            else:
                if self.uses_text:
                    d_text = self.arrays["text_tokens"].item_shape[-1]
                if self.uses_image:
                    d_img = self.arrays["image_tokens"].item_shape[-1]
                    enc = (config["image_encoder"] or "").lower()
                    self.image_is_resnet = "resnet" in enc
        if self.uses_text:
            self.text_pooler = _xavier_linear(d_text, d)
        if self.uses_image:
            if self.image_is_resnet and self.attention:
                # the paper's 49 grid vectors: layer-4 map -> Conv3x3 (no bias) + ReLU
                self.cv_grid = nn.Conv2d(d_img, d, 3, padding=1, bias=False)
            else:
                self.cv_proj = _xavier_linear(d_img, d)
        if self.tower == "modal":
            self.fusion = build_fusion(self.fusion_name, d, dropout, int(config["fusion_layers"] or 1),
                                       int(config["fusion_n_heads"] or 12), config["fusion_inner_size"])

    # ---- raw encoder outputs (before projection)
    def _take(self, name, ids):
        return self.arrays[name].take(ids).to(ids.device)

    def encode_text_raw(self, ids):
        """``(tokens [K, Lt, d_text], mask [K, Lt])`` before ``text_pooler``."""
        if self.mode == "pooled":
            return self.feat_text[ids].unsqueeze(1), torch.ones(len(ids), 1, device=ids.device)
        mask = self._take("text_mask", ids).float()
        if self.mode == "tokens":
            tok = self._take("text_tokens", ids).float()
        else:
            input_ids = self._take("text_ids", ids).long()
            if self.text_max_tokens:
                input_ids, mask = input_ids[:, : self.text_max_tokens], mask[:, : self.text_max_tokens]
            tok = self.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
        if self.text_max_tokens:
            tok, mask = tok[:, : self.text_max_tokens], mask[:, : self.text_max_tokens]
        return tok, mask

    def encode_image_raw(self, ids):
        """Image tokens ``[K, Lv, d_img]`` before ``cv_proj`` (ResNet: the layer-4 grid)."""
        if self.mode == "pooled":
            return self.feat_image[ids].unsqueeze(1)
        if self.mode == "tokens":
            return self._take("image_tokens", ids).float()
        pix = self._take("image_pixels", ids).float().div_(255.0).permute(0, 3, 1, 2)
        if pix.shape[-1] != self.image_size or pix.shape[-2] != self.image_size:
            pix = F.interpolate(pix, size=(self.image_size, self.image_size), mode="bilinear",
                                align_corners=False)
        pix = (pix - self.pix_mean) / self.pix_std
        out = self.image_encoder(pixel_values=pix).last_hidden_state
        if self.image_is_resnet:  # [K, C, h, w] -> [K, h*w, C]
            out = out.flatten(2).transpose(1, 2)
        return out

    # ---- projected tokens and the item vector
    def project_image(self, raw):
        if self.image_is_resnet and self.attention:
            side = int(math.isqrt(raw.shape[1]))
            grid = raw.transpose(1, 2).reshape(raw.shape[0], raw.shape[2], side, side)
            return F.relu(self.cv_grid(grid)).flatten(2).transpose(1, 2)
        if self.image_is_resnet:  # coarse / image-only: the pooled vector
            raw = raw.mean(1, keepdim=True)
        return self.cv_proj(raw)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Vectors of the (non-padding) items ``ids [K]`` -> ``[K, d]``."""
        if self.tower == "id":
            return self.item_embedding(ids)
        T = m = V = None
        if self.uses_text:
            raw, m = self.encode_text_raw(ids)
            T = self.text_pooler(raw)
        if self.uses_image:
            V = self.project_image(self.encode_image_raw(ids))
        if self.tower == "text":
            return masked_mean(T, m)
        if self.tower == "image":
            return V.mean(1)
        return self.fusion(T, m, V)

    def forward(self, ids: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """Item vectors for any id tensor (padding id 0 -> zeros); each distinct item is encoded
        once (``chunk`` items at a time when given)."""
        flat = ids.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        real = uniq > 0
        real_ids = uniq[real]
        if chunk and len(real_ids) > chunk:
            vecs = torch.cat([self.encode(real_ids[s: s + chunk]) for s in range(0, len(real_ids), chunk)])
        else:
            vecs = self.encode(real_ids) if len(real_ids) else None
        d = vecs.shape[-1] if vecs is not None else None
        if d is None:
            raise ValueError("no real item ids to encode")
        table = vecs.new_zeros(len(uniq), d)
        table[real] = vecs
        return table[inverse].view(*ids.shape, d)
