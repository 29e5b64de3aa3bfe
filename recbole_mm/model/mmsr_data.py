"""MMSR's dataset class and item-file contract (spec MMSR.md 7.2-7.3).

:class:`MMSRDataset` is :class:`~recbole_mm.data.dataset.MMSequentialDataset` plus

* ``dense_train`` (paper): the training split keeps one sample per user, its latest one (history
  = the items before the last training item, target = the last training item); MMSR then
  predicts the next item at *every* position of that history (dense next-item loss);
* per-item arrays for the ``tokens`` and ``end2end`` feature modes, read from ``.npy`` files
  beside the atomic files (or in ``feature_dir``):

  =====================  ===========================  =========================================
  name (``mmsr_files``)  default file                 content
  =====================  ===========================  =========================================
  ``text_ids``           ``<prefix>.text_ids.npy``    int32/int64 ``[n, Lt]`` tokenizer ids
  ``text_mask``          ``<prefix>.text_mask.npy``   uint8/bool/int ``[n, Lt]`` attention mask
  ``image_pixels``       ``<prefix>.image_pixels.npy`` uint8 ``[n, H, W, 3]`` RGB, resized
  ``text_tokens``        ``<prefix>.text_tokens.npy`` float16/32 ``[n, Lt, d_text]`` (tokens mode)
  ``image_tokens``       ``<prefix>.image_tokens.npy`` float16/32 ``[n, Lv, d_img]`` (tokens mode)
  =====================  ===========================  =========================================

  Row order: ``<file stem>.ids`` beside the file (one raw item token per line), else row ``r`` is
  raw item token ``r`` (the plugin's feature-file convention). Items without a row get zeros
  (an all-zero mask / black image).

:func:`write_end2end_files` writes ``text_ids``/``text_mask``/``image_pixels`` (+ ``.ids``) from
raw texts and image files (pillow) with a ``transformers`` tokenizer; :func:`write_token_files`
runs frozen encoders over them to write the ``tokens``-mode files.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from recbole_mm.data.dataset import MMSequentialDataset
from recbole_mm.data.features import FeatureFileError, read_ids

ITEM_FILES = {
    "text_ids": ("int", 2),
    "text_mask": ("mask", 2),
    "image_pixels": ("uint8", 4),
    "text_tokens": ("float", 3),
    "image_tokens": ("float", 3),
}
MODE_FILES = {"tokens": {"text": ["text_tokens", "text_mask"], "image": ["image_tokens"]},
              "end2end": {"text": ["text_ids", "text_mask"], "image": ["image_pixels"]}}


class ItemArray:
    """A per-item array aligned to internal item ids, read lazily (memory-mapped ``.npy``).

    ``take(item_ids)`` returns a tensor ``[len(ids), *shape]``; padding id 0 and items without
    a row give zeros.
    """

    def __init__(self, name: str, path: str, token2id: dict, item_num: int):
        if not os.path.isfile(path):
            raise FeatureFileError(
                f"MMSR needs the item file '{name}': {path} not found. Write it with "
                f"recbole_mm.model.mmsr_data.write_end2end_files (end2end) or write_token_files "
                f"(tokens), or set mmsr_files: {{{name}: <file>}}; see docs/models/MMSR.md.")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FeatureFileError(f"MMSR item file {path} is not a valid .npy array: {exc}") from exc
        kind, ndim = ITEM_FILES[name]
        ok = {"int": arr.dtype.kind in "iu", "mask": arr.dtype.kind in "iub",
              "uint8": arr.dtype == np.uint8, "float": arr.dtype in (np.float16, np.float32)}[kind]
        if not ok or arr.ndim != ndim:
            expect = {"int": "an integer", "mask": "an integer/bool", "uint8": "a uint8",
                      "float": "a float16/float32"}[kind]
            raise FeatureFileError(
                f"MMSR item file {path} ('{name}') has dtype {arr.dtype} and shape {arr.shape}; "
                f"expected {expect} array with {ndim} dimensions (see docs/models/MMSR.md).")
        if name == "image_pixels" and arr.shape[-1] != 3:
            raise FeatureFileError(f"MMSR item file {path}: image_pixels must be [n, H, W, 3] RGB, "
                                   f"got shape {arr.shape}.")
        stem = path[:-4] if path.endswith(".npy") else path
        tokens = read_ids(stem + ".ids", arr.shape[0]) if os.path.isfile(stem + ".ids") \
            else [str(r) for r in range(arr.shape[0])]
        self.rows = np.full(item_num, -1, dtype=np.int64)
        for r, tok in enumerate(tokens):
            iid = token2id.get(tok)
            if iid is not None and iid != 0:
                self.rows[iid] = r
        self.name, self.path, self.array = name, path, arr
        self.present = self.rows >= 0
        n_real = item_num - 1
        self.coverage = float(self.present[1:].sum()) / max(n_real, 1)

    @property
    def item_shape(self):
        return tuple(self.array.shape[1:])

    def take(self, item_ids: torch.Tensor) -> torch.Tensor:
        ids = item_ids.detach().cpu().numpy()
        rows = self.rows[ids]
        out = np.zeros((len(ids),) + self.item_shape, dtype=self.array.dtype)
        ok = rows >= 0
        if ok.any():
            order = np.argsort(rows[ok])  # sorted reads from the memory map
            sel = np.flatnonzero(ok)[order]
            out[sel] = self.array[rows[ok][order]]
        t = torch.from_numpy(out)
        return t.bool().to(torch.uint8) if t.dtype == torch.bool else t


class MMSRDataset(MMSequentialDataset):
    """:class:`MMSequentialDataset` with MMSR's dense training split and item files."""

    def __init__(self, config):
        self.item_arrays: dict[str, ItemArray] = {}
        super().__init__(config)

    def _load_modalities(self):
        super()._load_modalities()
        mode = self.config["feature_mode"] or "pooled"
        tower = self.config["item_tower"] or "modal"
        if mode not in MODE_FILES or tower == "id":
            return
        names = []
        if tower in ("modal", "text"):
            names += MODE_FILES[mode]["text"]
        if tower in ("modal", "image"):
            names += MODE_FILES[mode]["image"]
        files = dict(self.config["mmsr_files"] or {})
        folder = self.config["feature_dir"] or self.dataset_path
        token2id = self.field2token_id[self.iid_field]
        min_cov = float(self.config["min_feature_coverage"] or 0.0)
        for name in names:
            path = os.path.join(folder, files.get(name) or f"{self.file_prefix}.{name}.npy")
            arr = ItemArray(name, path, token2id, self.item_num)
            if arr.coverage < min_cov:
                raise FeatureFileError(
                    f"MMSR item file {path} covers {arr.coverage:.1%} of the dataset's items; "
                    f"min_feature_coverage is {min_cov:.0%}.")
            self.item_arrays[name] = arr
            self.logger.info(f"MMSR item file [{name}]: {arr.item_shape} from {path}, "
                             f"coverage {arr.coverage:.1%}")
        if "text_ids" in self.item_arrays and \
                self.item_arrays["text_ids"].item_shape != self.item_arrays["text_mask"].item_shape:
            raise FeatureFileError(
                f"text_ids {self.item_arrays['text_ids'].item_shape} and text_mask "
                f"{self.item_arrays['text_mask'].item_shape} must have the same per-item shape.")

    def build(self):
        datasets = super().build()
        if self.config["dense_train"]:
            from recbole_mm.evaluation import training_item_counts

            train, valid = datasets[0], datasets[1]
            # the cold-start split counts occurrences in the *full* training data, like every model
            train.train_item_counts = training_item_counts(train)
            keep = latest_training_rows(train, valid)
            before = len(train.inter_feat)
            train.inter_feat = train.inter_feat[torch.as_tensor(keep, dtype=torch.long)]
            self.logger.info(f"dense_train: kept {len(keep)} of {before} training rows "
                             f"(one per user, the latest)")
        return datasets


def latest_training_rows(train, valid) -> np.ndarray:
    """Index of each user's latest training row, whatever the file's row order.

    The latest row is the one whose target is the last item of the user's validation history and
    whose history ends with the items before it (longest overlap; histories cut to
    ``MAX_ITEM_LIST_LENGTH`` compare on their common suffix). Users without a
    validation row fall back to their longest training row (last one on ties).
    """
    uid_f, iid_f = train.uid_field, train.iid_field
    list_f, len_f = train.item_id_list_field, train.item_list_length_field
    t_uid = train.inter_feat[uid_f].numpy()
    t_tgt = train.inter_feat[iid_f].numpy()
    t_hist = train.inter_feat[list_f].numpy()
    t_len = train.inter_feat[len_f].numpy()
    v_hist_all = valid.inter_feat[list_f].numpy()
    v_len = valid.inter_feat[len_f].numpy()
    expected = {}
    for u, h, n in zip(valid.inter_feat[uid_f].numpy(), v_hist_all, v_len):
        if n >= 1:
            expected[int(u)] = h[:n]
    best: dict[int, tuple[int, int]] = {}
    fallback: dict[int, tuple[int, int]] = {}
    for i in range(len(t_uid)):
        u, n = int(t_uid[i]), int(t_len[i])
        if n >= fallback.get(u, (-1, -1))[0]:
            fallback[u] = (n, i)
        exp = expected.get(u)
        if exp is None or t_tgt[i] != exp[-1]:
            continue
        # both histories may be cut to their latest MAX_ITEM_LIST_LENGTH items: compare the overlap
        m = min(n, len(exp) - 1)
        if np.array_equal(t_hist[i, n - m:n], exp[len(exp) - 1 - m: len(exp) - 1]) and m > best.get(u, (-1, -1))[0]:
            best[u] = (m, i)
    rows = [best[u][1] if u in best else fallback[u][1] for u in fallback]
    return np.sort(np.asarray(rows, dtype=np.int64))


# ---------------------------------------------------------------------------------- file writers
def _save(path, arr):
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def write_end2end_files(folder: str, prefix: str, texts: dict, images: dict, tokenizer,
                        max_tokens: int = 50, image_size: int = 224, lowercase: bool = True) -> dict:
    """Write ``<prefix>.text_ids.npy``/``.text_mask.npy``/``.image_pixels.npy`` (+ ``.ids``).

    ``texts``: raw item token -> text; ``images``: raw item token -> image path (or a PIL image);
    items missing from ``images`` get a black image. Text is lower-cased (as the paper's code)
    and tokenised to exactly ``max_tokens`` (padded/truncated, special tokens included); images
    are converted to RGB and resized straight to ``image_size`` x ``image_size`` (no crop).
    """
    from PIL import Image

    tokens = sorted(set(texts) | set(images), key=str)
    enc = tokenizer([(texts.get(t, "") or "").lower() if lowercase else (texts.get(t, "") or "")
                     for t in tokens], max_length=max_tokens, padding="max_length",
                    truncation=True, return_tensors="np")
    pixels = np.zeros((len(tokens), image_size, image_size, 3), dtype=np.uint8)
    for r, t in enumerate(tokens):
        src = images.get(t)
        if src is None:
            continue
        img = src if isinstance(src, Image.Image) else Image.open(src)
        pixels[r] = np.asarray(img.convert("RGB").resize((image_size, image_size), Image.BICUBIC))
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name, arr in (("text_ids", enc["input_ids"].astype(np.int32)),
                      ("text_mask", enc["attention_mask"].astype(np.uint8)),
                      ("image_pixels", pixels)):
        path = os.path.join(folder, f"{prefix}.{name}.npy")
        _save(path, arr)
        with open(os.path.join(folder, f"{prefix}.{name}.ids"), "w", encoding="utf-8") as f:
            f.write("\n".join(str(t) for t in tokens) + "\n")
        out[name] = path
    return out


@torch.no_grad()
def write_token_files(model, dataset, folder: str, prefix: str, batch_size: int = 64,
                      dtype=np.float16) -> dict:
    """Run an end2end MMSR model's (frozen) encoders in eval mode over every item and write the
    ``tokens``-mode files ``<prefix>.text_tokens.npy``, ``.text_mask.npy``, ``.image_tokens.npy``
    (rows in internal item-id order of ``dataset``, raw tokens listed in the ``.ids`` files).
    ResNet image tokens are the layer-4 grid ``[h*w, C]``."""
    tower = model.item_tower
    if tower.mode != "end2end":
        raise ValueError("write_token_files needs an MMSR model with feature_mode: end2end.")
    was_training = model.training
    model.eval()
    n = model.n_items
    ids = torch.arange(1, n)
    device = next(model.parameters()).device
    outs = {"text_tokens": [], "text_mask": [], "image_tokens": []}
    for s in range(0, len(ids), batch_size):
        chunk = ids[s: s + batch_size]
        if tower.uses_text:
            h, m = tower.encode_text_raw(chunk.to(device))
            outs["text_tokens"].append(h.float().cpu().numpy().astype(dtype))
            outs["text_mask"].append(m.cpu().numpy().astype(np.uint8))
        if tower.uses_image:
            outs["image_tokens"].append(tower.encode_image_raw(chunk.to(device)).float().cpu().numpy().astype(dtype))
    model.train(was_training)
    tokens = [str(t) for t in dataset.field2id_token[dataset.iid_field][1:]]
    written = {}
    for name, parts in outs.items():
        if not parts:
            continue
        path = os.path.join(folder, f"{prefix}.{name}.npy")
        _save(path, np.concatenate(parts))
        with open(os.path.join(folder, f"{prefix}.{name}.ids"), "w", encoding="utf-8") as f:
            f.write("\n".join(tokens) + "\n")
        written[name] = path
    return written
