"""Content semantic alignment pipeline (spec §2.3) for a recbole_mm dataset::

    python -m recbole_mm.alignment --dataset=ninerec_food --out_dir=/tmp/aligned \
        --titles=<item csv> [--title_column=1] [--title_id_column=0] [--title_id_offset=1] \
        [--judge=lexical|pair_file|llm_http|llm_local] [--sft_target=last_train|last] \
        [--sft_mode=feature_head|encoder|none] [--sft_tasks=[t2t,i2i,t2i]] [--key=value ...]

Reads the dataset's splits, builds one (target, similar) pair per user with the judge, runs the
SFT mode and writes ``<out_dir>/<file>`` (+ ``.ids``) for each modality; then train with
``--feature_dir=<out_dir>``. Keys (defaults): judge_path (pair_file), llm_base_url, llm_model,
prompt_language (zh), llm_cache; sft_loss_style (official), sft_epochs (10), sft_batch_size
(128), sft_lr (1e-3 feature_head / 1e-5 encoder), temperature (0.05), sft_train_heads (false);
encoder mode: text_encoder (bert-base-cased), image_encoder
(microsoft/swin-base-patch4-window7-224), image_dir (<id>.jpg, id = raw token - image_id_offset),
text_max_length (256). Any other --key=value goes to the dataset config.
"""
from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np

from recbole_mm.alignment.export import REPORT_NAME, export_dataset_features
from recbole_mm.alignment.judge import make_judge
from recbole_mm.alignment.pairs import pairs_from_dataset

OWN = {"out_dir", "titles", "title_column", "title_id_column", "title_id_offset", "judge",
       "judge_path", "llm_base_url", "llm_model", "prompt_language", "llm_cache", "sft_target",
       "sft_mode", "sft_tasks", "sft_loss_style", "sft_epochs", "sft_batch_size", "sft_lr",
       "temperature", "sft_train_heads", "text_encoder", "image_encoder", "image_dir",
       "image_id_offset", "text_max_length", "dataset", "device"}


def _parse(argv):
    from recbole_mm.config import parse_overrides

    return parse_overrides(argv)


def read_titles(path, id_column=0, title_column=1, id_offset=0, fallback_column=None) -> dict:
    """``{raw item token: title}`` from a headerless csv (NineRec ``*_item_sort.csv``)."""
    import pandas as pd

    df = pd.read_csv(path, header=None, keep_default_na=False, dtype=str)
    out = {}
    for row in df.itertuples(index=False):
        title = row[title_column]
        if not str(title).strip() and fallback_column is not None:
            title = row[fallback_column]
        out[str(int(row[id_column]) + id_offset)] = str(title)
    return out


def align(args: dict) -> dict:
    from recbole_mm.config import MMConfig
    from recbole_mm.quick_start import create_dataset

    ds_cfg = {k: v for k, v in args.items() if k not in OWN}
    ds_cfg.setdefault("state", "WARNING")
    config = MMConfig(model="SICSRec", dataset=args["dataset"], config_dict=ds_cfg)
    dataset = create_dataset(config)
    train_ds, _valid_ds, test_ds = dataset.build()
    iid = dataset.iid_field
    titles = {}
    if args.get("titles"):
        by_token = read_titles(args["titles"], int(args.get("title_id_column", 0)),
                               int(args.get("title_column", 1)), int(args.get("title_id_offset", 0)))
        for i in range(1, dataset.item_num):
            titles[i] = by_token.get(str(dataset.id2token(iid, i)), "")
    kind = args.get("judge", "lexical")
    judge = make_judge(kind, titles, path=args.get("judge_path"), base_url=args.get("llm_base_url"),
                       model=args.get("llm_model"), language=args.get("prompt_language", "zh"),
                       cache_path=args.get("llm_cache"), dataset=args["dataset"])
    if kind == "pair_file":  # the file holds raw item ids: translate to internal ids
        tok2id = dataset.field2token_id[iid]
        off = int(args.get("title_id_offset", 0))
        judge.pairs = {tok2id[str(t + off)]: tok2id[str(s + off)] for t, s in judge.pairs.items()
                       if str(t + off) in tok2id and str(s + off) in tok2id}
    sft_target = args.get("sft_target", "last_train")
    pairs = pairs_from_dataset(train_ds, test_ds, titles, judge, sft_target)
    pair_ids = [(p.target, p.similar) for p in pairs]
    logging.getLogger(__name__).info(f"{len(pairs)} SFT pairs ({sft_target}, judge {kind})")
    mode = args.get("sft_mode", "feature_head")
    tasks = args.get("sft_tasks") or ["t2t", "i2i", "t2i"]
    style = args.get("sft_loss_style", "official")
    tau = float(args.get("temperature", 0.05))
    epochs, bs = int(args.get("sft_epochs", 10)), int(args.get("sft_batch_size", 128))
    mods = [m for m in ("text", "image") if m in dataset.modality_features]
    history = []
    if mode in ("none", "feature_head"):
        feats = {m: dataset.modality_features[m].numpy() for m in mods}
        if mode == "feature_head":
            from recbole_mm.alignment.sft import run_feature_head_sft

            feats, history = run_feature_head_sft(feats, pair_ids, epochs, bs, float(args.get("sft_lr", 1e-3)),
                                                  tau, tasks, style, seed=int(config["seed"]))
    elif mode == "encoder":
        feats, history = _encoder_mode(args, dataset, titles, pair_ids, tasks, style, tau, epochs, bs)
    else:
        raise SystemExit(f"sft_mode must be feature_head, encoder or none, got '{mode}'")
    spec = config["modalities"] or {}
    names = {m: (spec.get(m, {}).get("file") if isinstance(spec.get(m), dict) else None)
             or f"{dataset.file_prefix}.{m}.npy" for m in feats}
    names = {m: n if n.endswith(".npy") else n + ".npy" for m, n in names.items()}
    paths = export_dataset_features(dataset, feats, args["out_dir"], names)
    report = {"pairs": len(pairs), "sft_target": sft_target, "judge": kind, "sft_mode": mode,
              "loss_history": history, "files": paths,
              "file_names": {m: os.path.basename(p) for m, p in paths.items()}}
    with open(os.path.join(args["out_dir"], REPORT_NAME), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _encoder_mode(args, dataset, titles, pair_ids, tasks, style, tau, epochs, bs):
    from recbole_mm.alignment.sft import (EncoderSFT, extract_image_features, extract_text_features,
                                          image_loader, load_pretrained_encoders, run_encoder_sft)

    text_model, tok, image_model, proc = load_pretrained_encoders(
        args.get("text_encoder", "bert-base-cased"),
        args.get("image_encoder", "microsoft/swin-base-patch4-window7-224") if args.get("image_dir") else None)
    maxlen = int(args.get("text_max_length", 256))
    ids = list(range(1, dataset.item_num))

    def tokenize(item_ids):
        return tok([titles.get(i, "") for i in item_ids], padding=True, truncation=True,
                   max_length=maxlen, return_tensors="pt")

    pixels = None
    if image_model is not None:
        off = int(args.get("image_id_offset", 0))
        load = image_loader(args["image_dir"], proc)
        pixels = lambda item_ids: load([int(dataset.id2token(dataset.iid_field, i)) - off for i in item_ids])  # noqa: E731
    sft = EncoderSFT(text_model, image_model)
    device = args.get("device", "cpu")
    history = run_encoder_sft(sft, pair_ids, tokenize, pixels, epochs, bs, float(args.get("sft_lr", 1e-5)),
                              tau, tasks, style, bool(args.get("sft_train_heads", False)), device=device)
    feats = {"text": np.vstack([np.zeros((1, text_model.config.hidden_size), np.float32),
                                extract_text_features(text_model, tok, [titles.get(i, "") for i in ids],
                                                      maxlen, device=device)])}
    if image_model is not None:
        img = extract_image_features(image_model, pixels, ids, device=device)
        feats["image"] = np.vstack([np.zeros((1, img.shape[1]), np.float32), img])
    return feats, history


def main(argv=None):
    args = _parse(sys.argv[1:] if argv is None else argv)
    for k in ("dataset", "out_dir"):
        if k not in args:
            raise SystemExit(f"--{k}=... is required")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = align(args)
    print(json.dumps({k: v for k, v in report.items() if k != "loss_history"}, indent=1))
    print(f"L_SFT per epoch: {[round(x, 4) for x in report['loss_history']]}")


if __name__ == "__main__":
    main()
