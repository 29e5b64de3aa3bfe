"""Multi-domain pre-training corpus: several datasets merged into one item and user space.

MISSRec (and UniSRec before it) pre-trains on several source domains at once (Food, Home, CDs,
Kindle, Movies -> ``FHCKM``). :class:`MultiDomainDataset` builds such a corpus from datasets the
plugin already knows how to read:

* ``pretrain_datasets`` names the sources, either a list ``[a, b]`` (each read with its own
  ``properties/dataset/<name>.yaml``) or a mapping ``{a: {key: value, ...}, b: {...}}`` whose
  values override configuration keys for that source only (``modalities``, ``load_col``,
  ``file_prefix`` ...). Without ``pretrain_datasets`` the class is exactly
  :class:`~recbole_mm.data.dataset.MMSequentialDataset`.
* Every source is loaded and split as usual; only its **training** part enters pre-training:
  each user's training sequence, followed by the user's validation and test targets so that
  the merged corpus' own leave-one-out split holds those two items out again (the official
  code pre-trains on the sources' ``train.inter`` files only).
* Tokens are prefixed with the source's position in the list, ``"<d>-<token>"`` for users and
  items, as the official ``FHCKM`` files do, so item spaces never collide.
* Modality matrices of the sources are stacked into one table per modality name (union of the
  sources' names; a source without a modality gets zero rows with a false present flag). The
  dimensions of a modality must agree across sources.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from recbole_mm.data.dataset import DatasetFilesError, MMSequentialDataset

# configuration keys that describe one dataset's files; never inherited by a source from the
# command line / config dict of the merged run (each source reads its own yaml for them)
_PER_DATASET_KEYS = ("pretrain_datasets", "dataset", "model", "dataset_dir", "file_prefix",
                     "benchmark_filename", "alias_of_item_id", "load_col", "modalities",
                     "sequence_file", "selected_features")


def parse_domains(value) -> dict:
    """``pretrain_datasets`` -> ordered ``{name: overrides}`` (accepts list, dict or 'a,b')."""
    if value is None or value == "" or value == []:
        return {}
    if isinstance(value, str):
        value = [v.strip().strip("'\"") for v in value.strip("[]").split(",") if v.strip()]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is not None and not isinstance(v, dict):
                raise ValueError(f"pretrain_datasets: overrides of '{k}' must be a mapping, got {v!r}.")
            out[str(k)] = dict(v or {})
        return out
    if isinstance(value, (list, tuple)):
        names = [str(v) for v in value]
        if len(set(names)) != len(names):
            raise ValueError(f"pretrain_datasets lists a dataset twice: {names}.")
        return {n: {} for n in names}
    raise ValueError(f"pretrain_datasets must be a list of dataset names or a mapping, got {value!r}.")


class MultiDomainDataset(MMSequentialDataset):
    """:class:`MMSequentialDataset`, or the merge of ``pretrain_datasets`` when that is set."""

    def __init__(self, config):
        self.domains = parse_domains(config["pretrain_datasets"])
        self._domain_parts = []
        if self.domains:
            # the merged corpus is an atomic (user, item, time) table built in memory
            for key in ("benchmark_filename", "alias_of_item_id", "sequence_file"):
                config[key] = None
            config["selected_features"] = []
        super().__init__(config)

    @property
    def is_multi_domain(self) -> bool:
        return bool(self.domains)

    # ------------------------------------------------------------------ sources
    def _source_config(self, name: str, overrides: dict):
        from recbole_mm.config import MMConfig

        inherited = {}
        for part in ("variable_config_dict", "cmd_config_dict"):
            inherited.update(getattr(self.config, part, {}) or {})
        for key in _PER_DATASET_KEYS:
            inherited.pop(key, None)
        inherited.update(overrides)
        inherited["pretrain_datasets"] = None
        return MMConfig(model=self.config["model"], dataset=name, config_dict=inherited)

    def _load_source(self, index: int, name: str, overrides: dict):
        cfg = self._source_config(name, overrides)
        ds = MMSequentialDataset(cfg)
        train, valid, test = ds.build()
        uid_tok = ds.field2id_token[ds.uid_field]
        iid_tok = ds.field2id_token[ds.iid_field]
        seqs = {}
        tr = train.inter_feat[train.uid_field].numpy()
        order = np.unique(tr)
        for uid, seq in zip(order, train.training_sequences()):
            seqs[int(uid)] = list(seq)
        for split in (valid, test):
            uids = split.inter_feat[split.uid_field].numpy()
            tgts = split.inter_feat[split.iid_field].numpy()
            hist = split.inter_feat[split.item_id_list_field].numpy()
            lens = split.inter_feat[split.item_list_length_field].numpy()
            for u, t, h, n in zip(uids, tgts, hist, lens):
                u = int(u)
                if u not in seqs:  # a user with no training row: start from the history
                    seqs[u] = list(h[:n])
                seqs[u].append(int(t))
        users, items, times = [], [], []
        for u, seq in seqs.items():
            tok = f"{index}-{uid_tok[u]}"
            users.extend([tok] * len(seq))
            items.extend(f"{index}-{iid_tok[i]}" for i in seq)
            times.extend(range(len(seq)))
        part = {
            "name": name,
            "item_tokens": np.array([f"{index}-{t}" for t in iid_tok[1:]], dtype=object),
            "features": {k: v[1:] for k, v in ds.modality_features.items()},
            "present": {k: v[1:] for k, v in ds.modality_present.items()},
        }
        frame = pd.DataFrame({self.uid_field: users, self.iid_field: items,
                              self.time_field: np.asarray(times, dtype=np.float64)})
        self.logger.info(f"pre-training source {index} '{name}': {len(seqs)} users, "
                         f"{len(iid_tok) - 1} items, {len(frame)} interactions")
        return frame, part

    # ------------------------------------------------------------------ loading hooks
    def _load_data(self, token, dataset_path):
        if not self.domains:
            return super()._load_data(token, dataset_path)
        frames = []
        for index, (name, overrides) in enumerate(self.domains.items()):
            frame, part = self._load_source(index, name, overrides)
            frames.append(frame)
            self._domain_parts.append(part)
        if not frames:
            raise DatasetFilesError("pretrain_datasets is empty.")
        self._register_interaction_fields()
        self.inter_feat = pd.concat(frames, ignore_index=True)
        self.user_feat = None
        self.item_feat = None

    def _load_modalities(self):
        if not self.domains:
            return super()._load_modalities()
        token2id = self.field2token_id[self.iid_field]
        names = []
        for part in self._domain_parts:
            names += [n for n in part["features"] if n not in names]
        wanted = self.config["load_modalities"]
        for name in names:
            if wanted is not None and name not in wanted:
                continue
            dims = {p["name"]: int(p["features"][name].shape[1]) for p in self._domain_parts
                    if name in p["features"]}
            if len(set(dims.values())) != 1:
                raise ValueError(f"modality '{name}' has different dimensions across the "
                                 f"pre-training sources: {dims}.")
            dim = next(iter(dims.values()))
            mat = torch.zeros(self.item_num, dim, dtype=torch.float32)
            present = torch.zeros(self.item_num, dtype=torch.bool)
            for part in self._domain_parts:
                if name not in part["features"]:
                    continue
                ids = np.array([token2id.get(t, -1) for t in part["item_tokens"]], dtype=np.int64)
                keep = ids >= 0
                idx = torch.from_numpy(ids[keep])
                rows = torch.from_numpy(np.flatnonzero(keep))
                mat[idx] = part["features"][name][rows].float()
                present[idx] = part["present"][name][rows]
            self.modality_features[name] = mat
            self.modality_present[name] = present
            self.logger.info(f"modality [{name}]: {dim}-d merged from {len(dims)} source(s), "
                             f"coverage {present[1:].float().mean().item():.1%}")
        self._domain_parts = [{"name": p["name"]} for p in self._domain_parts]  # free the copies

    def _expose_item_features(self):
        if self.domains:
            return
        return super()._expose_item_features()
