"""NineRec Bilibili downstream sets (Food, Dance, Movie, Cartoon) -> benchmark files + features.

Two inputs are accepted:
 * the NineRec downstream bundle (github.com/westlake-repl/NineRec, "Download"): a behaviour file
   ``--behaviors`` (``user<TAB>item item ...`` in time order), the title file ``--texts``
   (``video_id,title_zh,title_en`` without header) and the covers ``--covers`` (``<video_id>.jpg``);
   items are re-indexed 0..N-1 in the order of the title file (items that occur only), users in
   the order of the behaviour file, users shorter than ``--min_seq_len`` dropped;
 * the SICSRec processed folder ``--source`` (``sequential_data.txt`` with 0-based ids, and
   ``Bili_<X>_item_sort.csv`` = ``id,title_zh,title_en``), e.g. ../shared/data/ninerec_bili_food.
   Covers then are ``<0-based id>.jpg`` in ``--covers``.

Outputs in ``--out`` (SICSRec conventions): ``Bili_<X>.{train,valid,test}.inter`` (UniSRec format,
user and item tokens = 0-based id + 1, histories <= 50), ``Bili_<X>_item_sort.csv``,
``sequential_data.txt``, text features of the titles ``Bili_<X>.text.npy`` (+ ``.ids``, tokens)
and cover features ``Bili_<X>.image.npy`` (+ ``.ids``; items without a cover: zero row, listed
in ``Bili_<X>.image.report.json``). ``--features_only`` writes only the feature files.

NineRec forbids redistributing modified data: keep the outputs private.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts import common  # noqa: E402
from recbole_mm.encoders.io import atomic_write_lines, atomic_write_text  # noqa: E402

DOMAINS = {"food": "Bili_Food", "dance": "Bili_Dance", "movie": "Bili_Movie", "cartoon": "Bili_Cartoon"}
NINEREC_URL = "https://github.com/westlake-repl/NineRec (section 'Dataset' -> downstream datasets)"


def read_titles(path: str) -> list:
    """Rows ``(id, title_zh, title_en)`` of a header-less, quoted CSV."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for rec in csv.reader(f):
            if not rec:
                continue
            rec = (rec + ["", "", ""])[:3]
            rows.append((rec[0].strip(), rec[1], rec[2]))
    return rows


def read_sequences(path: str) -> dict:
    """``user item item ...`` (spaces) or ``user<TAB>item item ...`` per line -> ``{user: [items]}``."""
    seqs = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.replace("\t", " ").split()
            if len(parts) >= 2:
                seqs[parts[0]] = parts[1:]
    return seqs


def build(args) -> dict:
    prefix = DOMAINS[args.domain]
    out = os.path.abspath(args.out or os.path.join("dataset", f"ninerec_{prefix.lower()}"))
    os.makedirs(out, exist_ok=True)
    if args.source:  # SICSRec processed folder: ids already 0-based
        seq_path = os.path.join(args.source, "sequential_data.txt")
        title_path = os.path.join(args.source, f"{prefix}_item_sort.csv")
        for p in (seq_path, title_path):
            if not os.path.isfile(p):
                raise common.MissingRawFile(f"{p} not found (expected the SICSRec layout in {args.source}).")
        titles = read_titles(title_path)
        seqs = {int(u): [int(i) for i in s] for u, s in read_sequences(seq_path).items()}
        raw_of = {int(r[0]): r[0] for r in titles}  # cover file names are the 0-based ids
    else:
        if not (args.behaviors and args.texts):
            raise common.MissingRawFile(
                f"NineRec input missing. Download the {prefix} downstream bundle from {NINEREC_URL} "
                f"and pass --behaviors <its user-sequence file> --texts <its title csv> "
                f"[--covers <its image folder>], or pass --source <a SICSRec-style folder>.")
        for p in (args.behaviors, args.texts):
            if not os.path.isfile(p):
                raise common.MissingRawFile(f"{p} not found.")
        raw_titles = read_titles(args.texts)
        raw_seqs = {u: s for u, s in read_sequences(args.behaviors).items() if len(s) >= args.min_seq_len}
        used = {i for s in raw_seqs.values() for i in s}
        known = {r[0] for r in raw_titles}
        unknown = used - known
        if unknown:
            print(f"[ninerec] {len(unknown)} item(s) in the behaviours have no title; they are kept "
                  f"without text (e.g. {sorted(unknown)[:3]})")
        order = [r[0] for r in raw_titles if r[0] in used] + sorted(unknown)
        index = {raw: i for i, raw in enumerate(order)}
        by_raw = {r[0]: r for r in raw_titles}
        titles = [(str(index[raw]), by_raw.get(raw, (raw, "", ""))[1], by_raw.get(raw, (raw, "", ""))[2])
                  for raw in order]
        seqs = {n: [index[i] for i in s] for n, (u, s) in enumerate(raw_seqs.items())}
        raw_of = {index[raw]: raw for raw in order}

    if not args.features_only:
        def q(x):
            return '"' + x.replace('"', '""') + '"' if any(c in x for c in ',"\n') else x
        atomic_write_text(os.path.join(out, f"{prefix}_item_sort.csv"),
                          "".join(f"{r[0]},{q(r[1])},{q(r[2])}\n" for r in titles))
        atomic_write_lines(os.path.join(out, "sequential_data.txt"),
                           [" ".join(map(str, [u] + s)) + " " for u, s in seqs.items()])
        plus1 = {u + 1: [i + 1 for i in s] for u, s in seqs.items()}
        common.write_benchmark(out, prefix, plus1, max_len=args.max_len)
        stats = common.sequence_stats(seqs)
        common.print_stats(prefix, stats, out)
    else:
        stats = None

    ids0 = sorted({int(r[0]) for r in titles} | {i for s in seqs.values() for i in s})
    tokens = [str(i + 1) for i in ids0]
    col = 2 if args.lang == "en" else 1
    title_of = {int(r[0]): r[col] for r in titles}
    kw = common.extract_kwargs(args)
    if args.text_kind not in (None, "", "none"):
        from recbole_mm.encoders import encode_item_texts

        enc = common.build_text_encoder(args)
        encode_item_texts(tokens, {str(i + 1): title_of.get(i, "") for i in ids0}, enc, out, prefix,
                          args.text_feature, **kw)
    if args.covers and args.image_kind not in (None, "", "none"):
        from recbole_mm.encoders import encode_item_images, find_images

        found = find_images(args.covers, [raw_of.get(i, str(i)) for i in ids0])
        paths = {str(i + 1): found.get(raw_of.get(i, str(i))) for i in ids0}
        enc = common.build_image_encoder(args)
        encode_item_images(tokens, paths, enc, out, prefix, args.image_feature, **kw)
    elif not args.covers:
        print("[ninerec] no --covers folder given: no image features written (NineRec hosts the "
              f"covers with the bundle, see {NINEREC_URL}).")
    return {"folder": out, "prefix": prefix, "stats": stats}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--out", help="output folder (default ./dataset/ninerec_bili_<domain>)")
    p.add_argument("--source", help="SICSRec-style folder (sequential_data.txt + Bili_<X>_item_sort.csv)")
    p.add_argument("--behaviors", help="NineRec behaviour file: user<TAB>item item ...")
    p.add_argument("--texts", help="NineRec title csv: video_id,title_zh,title_en (no header)")
    p.add_argument("--covers", help="folder of cover images <id>.jpg")
    p.add_argument("--min_seq_len", type=int, default=5)
    p.add_argument("--max_len", type=int, default=50)
    p.add_argument("--lang", choices=["en", "zh"], default="en", help="which title to encode")
    p.add_argument("--features_only", action="store_true")
    p.add_argument("--text_feature", default="text")
    p.add_argument("--image_feature", default="image")
    common.add_io_args(p)
    common.add_encoder_args(p)
    return p


def main(argv=None):
    return build(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(common.run_main(main))
