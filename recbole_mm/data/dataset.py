"""Multi-modal sequential dataset: RecBole's ``SequentialDataset`` plus aligned item features.

What it adds to RecBole (everything else is RecBole's own code path):

* files are found through ``data_path`` (resolved by :class:`recbole_mm.config.MMConfig`) and an
  optional ``file_prefix`` (e.g. ``Scientific`` inside ``amazon2018_scientific_mm/``);
* three interaction layouts: raw atomic ``<prefix>.inter`` (split leave-one-out by RecBole),
  UniSRec-style benchmark files ``<prefix>.{train,valid,test}.inter`` (``benchmark_filename``;
  ``benchmark_rebuild_train: true`` rebuilds a missing train file from the valid rows), and a
  plain sequence file (``sequence_file``: ``user item item ...`` per line, in time order);
* MMRec folders read as they are: MMRec's ``<prefix>.inter`` (``userID itemID rating timestamp
  x_label``, tab-separated) is split by its label column (0 train, 1 valid, 2 test) into the
  benchmark layout, and MMRec feature files (``mmrec_file:`` of a modality, e.g.
  ``text_feat.npy``) are read with ``i_id_mapping.csv`` as their row -> item map, checked against
  the split's items;
* any number of named modality matrices (``modalities`` in the yaml), aligned to internal item
  ids (:mod:`recbole_mm.data.features`) and exposed as ``modality_features`` / ``modality_present``;
  modalities named in ``selected_features`` are also added to ``item_feat`` as numerical
  float-sequence fields so RecBole's ``SASRecF`` / ``FDSA`` read the same features;
* derived structures from the *training split only*: :meth:`training_sequences`,
  :meth:`cooccurrence`, :meth:`knn`, :meth:`kmeans`, cached beside the data.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import torch
from recbole.data.dataset import SequentialDataset
from recbole.data.interaction import Interaction
from recbole.utils import FeatureSource, FeatureType

from recbole_mm.data.cache import DerivedCache
from recbole_mm.data.features import (MMREC_ITEM_MAP, FeatureFileError, align_feature,
                                      check_item_map, read_item_map)

# MMRec's interaction columns (its dataset yamls: USER_ID_FIELD, ITEM_ID_FIELD, TIME_FIELD) and
# split label (inter_splitting_label); the feature files of an MMRec folder.
MMREC_COLUMNS = {"user": "userID", "item": "itemID", "time": "timestamp"}
MMREC_LABEL = "x_label"
MMREC_FEATURES = {"text": "text_feat.npy", "image": "image_feat.npy"}


class DatasetFilesError(ValueError):
    """The dataset's interaction files are missing or malformed."""


class MMSequentialDataset(SequentialDataset):
    """RecBole ``SequentialDataset`` with aligned multi-modal item features."""

    def __init__(self, config):
        self.split_name = None
        self.mmrec_split_file = None  # MMRec <prefix>.inter the split was read from, if any
        self.modality_features: dict[str, torch.Tensor] = {}
        self.modality_present: dict[str, torch.Tensor] = {}
        self.missing_modalities: dict[str, tuple] = {}  # optional modalities whose file is absent
        self.modality_files: dict[str, str] = {}  # the file each loaded modality was read from
        super().__init__(config)

    # ------------------------------------------------------------------ file loading
    @property
    def file_prefix(self) -> str:
        return self.config["file_prefix"] or self.dataset_name

    def _load_data(self, token, dataset_path):
        if not os.path.isdir(dataset_path):
            raise DatasetFilesError(
                f"Dataset folder for '{self.dataset_name}' not found: {dataset_path}. "
                f"{self._expected_files_hint()}"
            )
        self._load_inter_feat(self.file_prefix, dataset_path)
        self.user_feat = self._load_user_or_item_feat(
            self.file_prefix, dataset_path, FeatureSource.USER, "uid_field"
        )
        self.item_feat = self._load_user_or_item_feat(
            self.file_prefix, dataset_path, FeatureSource.ITEM, "iid_field"
        )
        self._load_additional_feat(self.file_prefix, dataset_path)

    def _expected_files_hint(self) -> str:
        p = self.file_prefix
        if self.config["sequence_file"]:
            files = [self.config["sequence_file"]]
        elif self.benchmark_filename_list:
            files = [f"{p}.{b}.inter" for b in self.benchmark_filename_list]
        else:
            files = [f"{p}.inter"]
        mods = self.config["modalities"] or {}
        files += [m.get("file", "?") for m in mods.values() if isinstance(m, dict)]
        return (
            f"Expected files: {', '.join(files)}. Set data_path (a folder holding '{self.config['dataset_dir'] or self.dataset_name}/'), "
            f"or the environment variable RECBOLE_MM_DATA; see properties/dataset/{self.dataset_name}.yaml."
        )

    def _load_inter_feat(self, token, dataset_path):
        seq_file = self.config["sequence_file"]
        if seq_file:
            self.inter_feat = self._load_sequence_file(os.path.join(dataset_path, seq_file))
            return
        mmrec = self._mmrec_split_path(token, dataset_path)
        if mmrec:
            self._load_mmrec_split(mmrec, self.config["inter_splitting_label"] or MMREC_LABEL)
            return
        if self.benchmark_filename_list is None:
            path = os.path.join(dataset_path, f"{token}.inter")
            if not os.path.isfile(path):
                raise DatasetFilesError(f"Interaction file not found: {path}. {self._expected_files_hint()}")
            return super()._load_inter_feat(token, dataset_path)
        paths = {b: os.path.join(dataset_path, f"{token}.{b}.inter") for b in self.benchmark_filename_list}
        missing = [b for b, p in paths.items() if not os.path.isfile(p)]
        first = self.benchmark_filename_list[0]
        if missing == [first] and self.config["benchmark_rebuild_train"]:
            self._load_benchmark_rebuilding_train(paths)
            return self._truncate_histories()
        if missing:
            hint = ""
            if missing == [first]:
                hint = " Set benchmark_rebuild_train: true to rebuild it from the next split's histories."
            raise DatasetFilesError(
                f"Benchmark file(s) not found: {', '.join(paths[b] for b in missing)}.{hint} "
                f"{self._expected_files_hint()}"
            )
        super()._load_inter_feat(token, dataset_path)
        self._truncate_histories()

    def _mmrec_split_path(self, token, dataset_path):
        """MMRec's ``<prefix>.inter`` when it is the split to read: always when
        ``inter_splitting_label`` is set, else when its header is MMRec's (untyped columns with an
        ``x_label``) and the benchmark files are not there."""
        path = os.path.join(dataset_path, f"{token}.inter")
        if self.config["inter_splitting_label"]:
            if not os.path.isfile(path):
                raise DatasetFilesError(
                    f"inter_splitting_label is set but {path} does not exist. "
                    f"{self._expected_files_hint()}"
                )
            return path
        if not os.path.isfile(path):
            return None
        if self.benchmark_filename_list and all(
                os.path.isfile(os.path.join(dataset_path, f"{token}.{b}.inter"))
                for b in self.benchmark_filename_list):
            return None
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        if MMREC_LABEL in header and not any(":" in h for h in header):
            return path
        return None

    def _load_mmrec_split(self, path, label):
        """MMRec ``<prefix>.inter`` -> benchmark rows: each interaction labelled 0/1/2 is a
        train/valid/test target whose history is every earlier item of the user. A user's items are
        ordered by (label, timestamp), so no train history holds a valid or test item; a first
        item (empty history) is no target."""
        cols = dict(MMREC_COLUMNS, label=label)
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n").split("\t")
        missing = [c for c in cols.values() if c not in header]
        if missing:
            raise DatasetFilesError(
                f"{path}: MMRec interaction file without column(s) {missing}; expected a "
                f"tab-separated header with {list(cols.values())} (found {header})."
            )
        df = pd.read_csv(path, sep="\t", usecols=list(cols.values()),
                         dtype={cols["user"]: str, cols["item"]: str}, keep_default_na=False)
        labels = pd.to_numeric(df[label], errors="coerce").to_numpy()
        bad = np.flatnonzero(~np.isin(labels, (0, 1, 2)))
        if len(bad):
            raise DatasetFilesError(
                f"{path}, row {bad[0] + 2}: column '{label}' must be 0 (train), 1 (valid) or 2 "
                f"(test), got {df[label].iloc[bad[0]]!r} ({len(bad)} such row(s))."
            )
        times = pd.to_numeric(df[cols["time"]], errors="coerce").to_numpy(dtype=np.float64)
        if np.isnan(times).any():
            r = int(np.flatnonzero(np.isnan(times))[0])
            raise DatasetFilesError(
                f"{path}, row {r + 2}: column '{cols['time']}' must be a number, "
                f"got {df[cols['time']].iloc[r]!r}."
            )
        users = df[cols["user"]].to_numpy()
        items = df[cols["item"]].to_numpy()
        labels = labels.astype(np.int64)
        order = np.lexsort((times, labels, users))
        users, items, times, labels = users[order], items[order], times[order], labels[order]
        n = len(users)
        first = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, dtype=bool)
        user_start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else first
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        list_field = self.iid_field + self.config["LIST_SUFFIX"]
        parts, sizes = [], []
        for split in (0, 1, 2):
            rows = np.flatnonzero(~first & (labels == split))
            starts = np.maximum(user_start[rows], rows - max_len)
            parts.append(pd.DataFrame({
                self.uid_field: users[rows], self.iid_field: items[rows],
                self.time_field: times[rows],
                list_field: [items[s:e] for s, e in zip(starts, rows)],
            }))
            sizes.append(len(rows))
        dropped = {s: int((labels == s).sum()) - sizes[s] for s in (0, 1, 2)}
        self.logger.info(
            f"MMRec split from {path} ('{label}'): {sizes[0]} train, {sizes[1]} valid, {sizes[2]} "
            f"test targets; {sum(dropped.values())} first interaction(s) of a user have no history "
            f"and are no target (train {dropped[0]}, valid {dropped[1]}, test {dropped[2]})."
        )
        self._register_interaction_fields()
        self.field2source[list_field] = FeatureSource.INTERACTION
        self.field2type[list_field] = FeatureType.TOKEN_SEQ
        self.field2seqlen[list_field] = max_len
        # the benchmark layout, whatever the yaml says: three parts, lists share the item tokens
        if not self.benchmark_filename_list:
            self.benchmark_filename_list = ["train", "valid", "test"]
            self.config["benchmark_filename"] = self.benchmark_filename_list
        aliases = list(self.config["alias_of_item_id"] or [])
        if list_field not in aliases:
            self.config["alias_of_item_id"] = aliases + [list_field]
        self.inter_feat = pd.concat(parts, ignore_index=True)
        self.file_size_list = sizes
        self.mmrec_split_file = path

    def _register_interaction_fields(self):
        """Declare user id, item id (tokens) and time (float) as interaction fields, for
        interactions built here rather than read from a RecBole ``.inter`` header."""
        for field, ftype in ((self.uid_field, FeatureType.TOKEN), (self.iid_field, FeatureType.TOKEN),
                             (self.time_field, FeatureType.FLOAT)):
            self.field2source[field] = FeatureSource.INTERACTION
            self.field2type[field] = ftype
            self.field2seqlen[field] = 1
        self.field2bucketnum[self.time_field] = 2

    def _truncate_histories(self):
        """Benchmark files may hold longer histories than ``MAX_ITEM_LIST_LENGTH``: keep the
        latest items (RecBole would otherwise keep the first ones, or overflow the position
        embeddings)."""
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        suffix = self.config["LIST_SUFFIX"]
        for field in list(self.inter_feat.columns):
            if not field.endswith(suffix) or self.field2type.get(field) != FeatureType.TOKEN_SEQ:
                continue
            if self.field2seqlen.get(field, 0) > max_len:
                self.inter_feat[field] = [seq[-max_len:] for seq in self.inter_feat[field].values]
                self.field2seqlen[field] = max_len

    def _load_benchmark_rebuilding_train(self, paths):
        """Rebuild the sliding-window train rows from the rows of the next split (valid)."""
        names = self.benchmark_filename_list
        frames = {b: self._load_feat(paths[b], FeatureSource.INTERACTION) for b in names[1:]}
        src = frames[names[1]]
        list_field = self.iid_field + self.config["LIST_SUFFIX"]
        if list_field not in src:
            raise DatasetFilesError(f"{paths[names[1]]} has no '{list_field}' column to rebuild train from.")
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        users, hists, targets = [], [], []
        for uid, hist in zip(src[self.uid_field].values, src[list_field].values):
            for t in range(1, len(hist)):
                users.append(uid)
                hists.append(hist[max(0, t - max_len):t])
                targets.append(hist[t])
        train = pd.DataFrame({self.uid_field: users, list_field: hists, self.iid_field: targets})
        self.logger.info(f"Rebuilt {len(train)} train rows from {paths[names[1]]}.")
        parts = [train] + [frames[b] for b in names[1:]]
        self.inter_feat = pd.concat(parts, ignore_index=True)
        self.file_size_list = [len(p) for p in parts]
        self.field2seqlen[list_field] = max(self.field2seqlen.get(list_field, 1), max_len)

    def _load_sequence_file(self, path):
        """``user item item ...`` per line (time order) -> atomic user/item/timestamp rows."""
        if not os.path.isfile(path):
            raise DatasetFilesError(f"Sequence file not found: {path}. {self._expected_files_hint()}")
        users, items, times = [], [], []
        with open(path, encoding=self.config["encoding"] or "utf-8") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) < 2:
                    raise DatasetFilesError(
                        f"{path}, line {line_no}: expected 'user item [item ...]', got {line.strip()!r}."
                    )
                users.extend([parts[0]] * (len(parts) - 1))
                items.extend(parts[1:])
                times.extend(range(len(parts) - 1))
        self._register_interaction_fields()
        return pd.DataFrame({self.uid_field: users, self.iid_field: items,
                             self.time_field: np.asarray(times, dtype=np.float64)})

    # ------------------------------------------------------------------ modalities
    def _data_processing(self):
        super()._data_processing()
        self._load_modalities()  # ids are remapped now: align rows to internal ids

    def _change_feat_format(self):
        super()._change_feat_format()
        self._expose_item_features()  # item_feat is an Interaction now

    def data_augmentation(self):
        """RecBole's sliding-window augmentation (atomic ``.inter`` layout), vectorised: the same
        rows, lists and order as ``SequentialDataset.data_augmentation``, whose Python loop over
        every interaction dominates loading a large log. Each target's history is the user's
        previous items, at most ``MAX_ITEM_LIST_LENGTH`` of them."""
        self.logger.debug("data_augmentation (vectorised)")
        self._aug_presets()
        self._check_field("uid_field", "time_field")
        max_len = self.config["MAX_ITEM_LIST_LENGTH"]
        self.sort(by=[self.uid_field, self.time_field], ascending=True)
        uid = self.inter_feat[self.uid_field].numpy()
        n = len(uid)
        first = np.r_[True, uid[1:] != uid[:-1]] if n else np.zeros(0, dtype=bool)
        user_start = np.maximum.accumulate(np.where(first, np.arange(n), 0)) if n else np.zeros(0, np.int64)
        target_index = np.flatnonzero(~first)
        seq_start = np.maximum(user_start[target_index], target_index - max_len)
        length = target_index - seq_start
        new_length = len(target_index)
        new_data = self.inter_feat[target_index]
        new_dict = {self.item_list_length_field: torch.from_numpy(length.astype(np.int64))}
        chunk = max(1, (1 << 22) // max(max_len, 1))  # rows per gather: ~4M list cells
        for field in self.inter_feat:
            if field == self.uid_field:
                continue
            list_field = getattr(self, f"{field}_list_field")
            list_len = self.field2seqlen[list_field]
            shape = (new_length, list_len) if isinstance(list_len, int) else (new_length,) + tuple(list_len)
            if (self.field2type[field] in (FeatureType.FLOAT, FeatureType.FLOAT_SEQ)
                    and field in self.config["numerical_features"]):
                shape += (2,)
            value = self.inter_feat[field]
            out = torch.zeros(shape, dtype=value.dtype)
            cols = np.arange(max_len)
            for a in range(0, new_length, chunk):
                s, ln = seq_start[a:a + chunk], length[a:a + chunk]
                r, c = np.nonzero(cols[None, :] < ln[:, None])
                out[torch.from_numpy(a + r), torch.from_numpy(c)] = value[torch.from_numpy(s[r] + c)]
            new_dict[list_field] = out
        new_data.update(Interaction(new_dict))
        self.inter_feat = new_data

    def _load_modalities(self):
        mods = self.config["modalities"] or {}
        if not isinstance(mods, dict):
            raise FeatureFileError(
                f"`modalities` must map a name to {{file: ..., dim: ...}}, got {type(mods).__name__}."
            )
        if not mods and self.mmrec_split_file:  # an MMRec folder without a yaml: its own files
            mods = {m: {"file": f"{self.file_prefix}.{m}.npy", "mmrec_file": f, "optional": True}
                    for m, f in MMREC_FEATURES.items()}
        checked_maps = set()
        wanted = self.config["load_modalities"]
        token2id = self.field2token_id[self.iid_field]
        min_cov = float(self.config["min_feature_coverage"] or 0.0)
        for name, spec in mods.items():
            if wanted is not None and name not in wanted:
                continue
            if isinstance(spec, str):
                spec = {"file": spec}
            if not isinstance(spec, dict) or "file" not in spec:
                raise FeatureFileError(f"Modality '{name}' needs a `file:` entry in the dataset yaml, got {spec!r}.")
            folder = self.config["feature_dir"] or self.dataset_path
            path, item_map = self._feature_file(spec, folder)
            if spec.get("optional") and not os.path.isfile(path):
                self.missing_modalities[name] = (path, spec.get("build"))
                self.logger.warning(
                    f"modality [{name}] not loaded: {path} does not exist (optional). "
                    + (f"Build it with: {spec['build']}" if spec.get("build") else "")
                )
                continue
            ids = spec.get("ids")
            if item_map and item_map not in checked_maps:
                check_item_map(item_map, read_item_map(item_map), self.field2id_token[self.iid_field][1:],
                               self._split_description())
                checked_maps.add(item_map)
            feat = align_feature(
                name, path, token2id, self.item_num, dim=spec.get("dim"),
                ids_path=os.path.join(folder, ids) if ids and not item_map else None,
                min_coverage=float(spec.get("min_coverage", min_cov)), item_map=item_map,
            )
            self.modality_features[name] = torch.from_numpy(feat.matrix)
            self.modality_present[name] = torch.from_numpy(feat.present)
            self.modality_files[name] = os.path.abspath(path)
            self.logger.info(
                f"modality [{name}]: {feat.dim}-d from {path}, coverage {feat.coverage:.1%}"
            )
        self._apply_feature_noise()

    def _feature_file(self, spec, folder):
        """(path, MMRec item map or None) of a modality: ``file`` in ``folder``; when it is not
        there, the modality's MMRec name (``mmrec_file``) in ``folder`` or in the MMRec folder
        (``mmrec_path``), read with that folder's ``i_id_mapping.csv``."""
        path = os.path.join(folder, spec["file"])
        mmrec_name = spec.get("mmrec_file")
        if os.path.isfile(path) or not mmrec_name:
            return path, None
        for place in dict.fromkeys([folder, self.config["mmrec_path"]]):
            if place and os.path.isfile(os.path.join(place, mmrec_name)):
                return os.path.join(place, mmrec_name), os.path.join(place, MMREC_ITEM_MAP)
        return path, None

    def _split_description(self) -> str:
        if self.mmrec_split_file:
            return self.mmrec_split_file
        if self.config["sequence_file"]:
            return os.path.join(self.dataset_path, self.config["sequence_file"])
        p = os.path.join(self.dataset_path, self.file_prefix)
        if self.benchmark_filename_list:
            return f"{p}.{{{','.join(self.benchmark_filename_list)}}}.inter"
        return f"{p}.inter"

    def _apply_feature_noise(self):
        """``feature_noise`` (e.g. ``image:0.5``): swap features between items (recbole_mm.data.noise)."""
        spec = self.config["feature_noise"]
        if not spec:
            return
        from recbole_mm.data.noise import apply_feature_noise

        seed = self.config["feature_noise_seed"]
        apply_feature_noise(self.modality_features, self.modality_present, spec,
                            self.config["seed"] if seed is None else seed, self.logger)

    def _expose_item_features(self):
        """Numerical float-seq ``item_feat`` fields for RecBole's feature-aware models."""
        selected = self.config["selected_features"] or []
        names = [n for n in selected if n in self.modality_features]
        if not names:
            return
        numerical = list(self.config["numerical_features"] or [])
        if self.item_feat is None:
            self.item_feat = Interaction({self.iid_field: torch.arange(self.item_num)})
        for name in names:
            mat = self.modality_features[name]
            dim = mat.shape[1]
            index = torch.arange(1, dim + 1, dtype=torch.float32).expand(mat.shape[0], dim)
            self.item_feat.update(Interaction({name: torch.stack([mat, index], dim=-1)}))
            self.field2type[name] = FeatureType.FLOAT_SEQ
            self.field2source[name] = FeatureSource.ITEM
            self.field2seqlen[name] = dim
            self.field2bucketnum[name] = dim + 1
            if name not in numerical:
                numerical.append(name)
        self.config["numerical_features"] = numerical

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_features)

    def require_modalities(self, names, model: str) -> None:
        """Raise a clear error when a model needs modalities the dataset does not declare."""
        missing = [n for n in names if n not in self.modality_features]
        if not missing:
            return
        declared = list((self.config["modalities"] or {}).keys())
        parts = []
        for n in missing:
            if n in self.missing_modalities:
                path, build = self.missing_modalities[n]
                parts.append(f"'{n}' needs {path}" + (f" (build it: {build})" if build else ""))
            else:
                parts.append(f"'{n}' is not declared under `modalities:`")
        raise FeatureFileError(
            f"{model} needs modalities {list(names)} on dataset '{self.dataset_name}' "
            f"(declared: {declared or 'none'}): " + "; ".join(parts) + ". "
            f"Feature files are described in properties/dataset/{self.dataset_name}.yaml and README 'Datasets'."
        )

    # ------------------------------------------------------------------ splits
    def build(self):
        datasets = super().build()
        for ds, name in zip(datasets, ("train", "valid", "test")):
            ds.split_name = name
        return datasets

    def _check_train_split(self, what: str):
        if self.split_name not in (None, "train"):
            raise RuntimeError(f"{what} must be computed on the training split, not '{self.split_name}'.")

    def training_sequences(self) -> list[np.ndarray]:
        """Each user's training sequence (internal item ids, time order), training rows only.

        Rebuilt from the sliding-window rows: the earliest row's history, then every row's target
        in time order (RecBole writes a user's rows oldest first, UniSRec files newest first:
        a user's rows are read in the direction of growing history). Called on the training
        split (what RecBole hands a model), so validation and test targets never enter.
        """
        self._check_train_split("training_sequences")
        feat = self.inter_feat
        uid = feat[self.uid_field].numpy()
        target = feat[self.iid_field].numpy()
        hist = feat[self.item_id_list_field].numpy()
        length = feat[self.item_list_length_field].numpy()
        order = np.argsort(uid, kind="stable")
        uid, target, hist, length = uid[order], target[order], hist[order], length[order]
        starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]])
        ends = np.r_[starts[1:], len(uid)]
        seqs = []
        for s, e in zip(starts, ends):
            rows = np.arange(s, e)
            if length[s] > length[e - 1]:
                rows = rows[::-1]
            first = rows[0]
            seqs.append(np.concatenate([hist[first, : length[first]], target[rows]]).astype(np.int64))
        return seqs

    def fingerprint(self) -> str:
        """Hash of the training sequences: the key of every derived structure."""
        h = hashlib.sha256()
        h.update(str(self.item_num).encode())
        for s in self.training_sequences():
            h.update(s.tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ derived structures
    @property
    def cache(self) -> DerivedCache:
        return DerivedCache.for_dataset(self.config, self.dataset_path, self.dataset_name)

    def cooccurrence(self, **params):
        """Item-item co-occurrence (scipy CSR, training split only); see graphs.cooccurrence_matrix."""
        from recbole_mm.data import graphs

        key = {"kind": "cooc", "data": self.fingerprint(), **params}
        return self.cache.get_or_compute(
            key, lambda: graphs.cooccurrence_matrix(self.training_sequences(), self.item_num, **params)
        )

    def knn(self, modality: str, k: int, **params):
        """Cosine top-k neighbours of every item in ``modality`` (scipy CSR, see graphs.knn_graph)."""
        from recbole_mm.data import graphs

        self.require_modalities([modality], "knn")
        x = self.modality_features[modality].numpy()
        present = self.modality_present[modality].numpy()
        key = {"kind": "knn", "m": modality, "k": k, "x": _array_hash(x), **params}
        return self.cache.get_or_compute(key, lambda: graphs.knn_graph(x, k, present=present, **params))

    def kmeans(self, x: np.ndarray, k: int, seed: int | None = None, **params):
        """Seeded k-means over the rows of ``x`` (see cluster.kmeans), cached by content."""
        from recbole_mm.data.cluster import kmeans

        seed = self.config["seed"] if seed is None else seed
        key = {"kind": "kmeans", "k": k, "seed": seed, "x": _array_hash(x), **params}
        return self.cache.get_or_compute(key, lambda: kmeans(x, k, seed=seed, **params))


def _array_hash(x: np.ndarray) -> str:
    x = np.ascontiguousarray(x)
    return hashlib.sha256(x.tobytes() + str(x.shape).encode()).hexdigest()[:16]
