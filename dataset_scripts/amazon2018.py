"""Amazon Review Data 2018 -> UniSRec / MISSRec-style downstream datasets with CLIP features.

Domains (name used for files -> Amazon 2018 category):
  scientific -> Industrial_and_Scientific, pantry -> Prime_Pantry, instruments -> Musical_Instruments,
  arts -> Arts_Crafts_and_Sewing, office -> Office_Products.

Steps (UniSRec ``process_amazon.py`` conventions, as MISSRec inherits them):
 1. ratings-only CSV ``item,user,rating,timestamp``; keep interactions whose item has metadata;
 2. iterative 5-core on users and items;
 3. each user's items sorted by timestamp; users ordered by first appearance in the ratings file,
    user and item indices by first appearance (``<D>.user2index`` / ``<D>.item2index``);
 4. leave-one-out benchmark files ``<D>.{train,valid,test}.inter`` (histories <= 50) and the atomic
    ``<D>.inter``;
 5. item text = title, category path, brand, each cleaned (HTML unescape, quotes/newlines removed,
    one final period, fields >= 2000 characters blanked) and joined by spaces -> ``<D>.text``;
 6. CLIP ViT-B/32 text features of that text and image features of the item's first image
    (``imageURLHighRes``, else ``imageURL``) -> ``<D>.text.npy`` / ``<D>.image.npy`` with ``.ids``
    (row r = item token r); items without an image get a zero row and are listed in
    ``<D>.image.report.json``. ``--legacy_feat`` also writes ``<D>.feat1CLS`` / ``<D>.feat3CLS``.

Every raw input can be given as a local file; missing ones are downloaded when there is internet,
otherwise the script says which file to put where. See dataset_scripts/README_amazon2018.md.
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts import common  # noqa: E402
from recbole_mm.encoders.io import atomic_write_lines  # noqa: E402

DOMAINS = {
    "scientific": ("Industrial_and_Scientific", "Scientific"),
    "pantry": ("Prime_Pantry", "Pantry"),
    "instruments": ("Musical_Instruments", "Instruments"),
    "arts": ("Arts_Crafts_and_Sewing", "Arts"),
    "office": ("Office_Products", "Office"),
}
RATINGS_URL = "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/{cat}.csv"
META_URL = "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_{cat}.json.gz"
TEXT_FIELDS = ("title", "category", "brand")


def clean_text(raw) -> str:
    """UniSRec's field cleaning: join lists, unescape HTML, drop quotes/newlines, end with one '.'."""
    if isinstance(raw, list):
        text = " ".join(str(x) for x in raw)
    elif isinstance(raw, dict):
        text = str(raw)
    else:
        text = str(raw)
    text = html.unescape(text)
    text = re.sub(r'["\n\r]*', "", text)
    text = text.rstrip(".") + "."
    if len(text) >= 2000:
        text = ""
    return text


def item_text(meta: dict) -> str:
    out = ""
    for key in TEXT_FIELDS:
        if key in meta and meta[key] not in (None, "", []):
            out += clean_text(meta[key]) + " "
    return out


def image_url(meta: dict) -> str | None:
    for key in ("imageURLHighRes", "imageURL"):
        urls = meta.get(key) or []
        if isinstance(urls, str):
            urls = [urls]
        if urls:
            return urls[0]
    return None


def load_ratings(path: str) -> list:
    rows = []
    with common.open_text(path) as f:
        for line in f:
            parts = line.rstrip("\r\n").split(",")
            if len(parts) < 4:
                continue
            item, user, rating, ts = parts[0], parts[1], parts[2], parts[3]
            try:
                rows.append((user, item, float(ts), float(rating)))
            except ValueError:
                continue  # header
    return rows


def load_meta(path: str, items: set | None = None) -> dict:
    meta = {}
    with common.open_text(path) as f:
        for line in f:
            rec = common.parse_record(line)
            if not rec or "asin" not in rec:
                continue
            if items is None or rec["asin"] in items:
                meta.setdefault(rec["asin"], rec)
    return meta


def build(args) -> dict:
    cat, prefix = DOMAINS[args.domain]
    out = os.path.abspath(args.out or os.path.join("dataset", f"amazon2018_{args.domain}"))
    raw = os.path.abspath(args.raw_dir or os.path.join(out, "raw"))
    os.makedirs(out, exist_ok=True)

    if args.item_map:  # features only, for an existing split (e.g. ../shared/data)
        item2index = common.read_map(args.item_map)
        meta_path = common.fetch(META_URL.format(cat=cat), os.path.join(raw, f"meta_{cat}.json.gz"),
                                 args.meta, args.offline, "Amazon 2018 metadata")
        meta = load_meta(meta_path, set(item2index))
        stats = None
    else:
        ratings_path = common.fetch(RATINGS_URL.format(cat=cat), os.path.join(raw, f"{cat}.csv"),
                                    args.ratings, args.offline, "Amazon 2018 ratings-only CSV")
        meta_path = common.fetch(META_URL.format(cat=cat), os.path.join(raw, f"meta_{cat}.json.gz"),
                                 args.meta, args.offline, "Amazon 2018 metadata")
        ratings = load_ratings(ratings_path)
        meta = load_meta(meta_path, {r[1] for r in ratings})
        inters = [r for r in ratings if r[1] in meta]
        inters = common.k_core(inters, args.user_k, args.item_k)
        seqs_raw = common.user_sequences(inters)
        user2index = {u: i for i, u in enumerate(seqs_raw)}
        item2index = common.first_appearance_map(seqs_raw.values())
        seqs = {user2index[u]: [item2index[i] for i in s] for u, s in seqs_raw.items()}
        common.write_map(os.path.join(out, f"{prefix}.user2index"), user2index)
        common.write_map(os.path.join(out, f"{prefix}.item2index"), item2index)
        common.write_benchmark(out, prefix, seqs, max_len=args.max_len)
        # atomic file in the same time order (user index, item index, timestamp, rating)
        ordered = sorted(((user2index[u], item2index[i], ts, r) for u, i, ts, r in inters),
                         key=lambda x: (x[0], x[2]))
        common.write_atomic_inter(out, prefix, ordered, with_rating=True)
        stats = common.sequence_stats(seqs)
        common.print_stats(prefix, stats, out)

    tokens = [str(t) for t in sorted(item2index.values())]
    index2item = {str(v): k for k, v in item2index.items()}
    texts = {index2item[t]: item_text(meta.get(index2item[t], {})) for t in tokens}
    atomic_write_lines(os.path.join(out, f"{prefix}.text"),
                       ["item_id:token\ttext:token_seq"] + [f"{a}\t{texts[a]}" for a in sorted(texts)])
    kw = common.extract_kwargs(args)
    if not args.no_text:
        from recbole_mm.encoders import encode_item_texts

        enc = common.build_text_encoder(args)
        if enc is not None:
            res = encode_item_texts(tokens, {t: texts[index2item[t]] for t in tokens}, enc, out,
                                    prefix, args.text_feature, **kw)
            if args.legacy_feat:
                from recbole_mm.encoders import write_raw_float32

                write_raw_float32(os.path.join(out, f"{prefix}.feat1CLS"), res.matrix)
    if not args.no_image:
        from recbole_mm.encoders import encode_item_images, find_images

        images_dir = os.path.abspath(args.images_dir or os.path.join(raw, "images"))
        os.makedirs(images_dir, exist_ok=True)
        asins = [index2item[t] for t in tokens]
        if args.download_images and not common.offline_mode(args.offline):
            from tqdm import tqdm

            for a in tqdm(asins, desc="images", disable=args.no_progress):
                url = image_url(meta.get(a, {}))
                if url:
                    common.download_image(url, os.path.join(images_dir, f"{a}.jpg"))
        found = find_images(images_dir, asins)
        if not found:
            print(f"[images] no item image found in {images_dir} (files named <ASIN>.jpg). "
                  f"Use --download_images with internet, or put the images there; every item "
                  f"gets a zero image row until then.")
        enc = common.build_image_encoder(args)
        if enc is not None:
            paths = {t: found.get(index2item[t]) for t in tokens}
            res = encode_item_images(tokens, paths, enc, out, prefix, args.image_feature, **kw)
            if args.legacy_feat:
                from recbole_mm.encoders import write_raw_float32

                write_raw_float32(os.path.join(out, f"{prefix}.feat3CLS"), res.matrix)
    return {"folder": out, "prefix": prefix, "stats": stats}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--out", help="output folder (default ./dataset/amazon2018_<domain>)")
    p.add_argument("--raw_dir", help="where raw files are looked for / downloaded (default <out>/raw)")
    p.add_argument("--ratings", help="local ratings-only CSV (item,user,rating,timestamp)")
    p.add_argument("--meta", help="local meta_<Category>.json.gz")
    p.add_argument("--images_dir", help="item images named <ASIN>.jpg (default <raw_dir>/images)")
    p.add_argument("--download_images", action="store_true", help="fetch missing images (internet)")
    p.add_argument("--item_map", help="features only: reuse this <D>.item2index (no interactions built)")
    p.add_argument("--user_k", type=int, default=5)
    p.add_argument("--item_k", type=int, default=5)
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--no_text", action="store_true")
    p.add_argument("--no_image", action="store_true")
    p.add_argument("--text_feature", default="text")
    p.add_argument("--image_feature", default="image")
    p.add_argument("--legacy_feat", action="store_true", help="also write <D>.feat1CLS / .feat3CLS")
    common.add_io_args(p)
    common.add_encoder_args(p, text_kind="clip", text_model="openai/clip-vit-base-patch32")
    return p


def main(argv=None):
    return build(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(common.run_main(main))
