"""Shared steps of the dataset scripts: raw-file fetching, k-core filtering, id maps, UniSRec-style
leave-one-out benchmark files, RecBole atomic files, statistics and the encoder command-line flags.

Everything is written atomically (temp name + rename) through :mod:`recbole_mm.encoders.io`.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import urllib.request
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # scripts run as `python dataset_scripts/x.py` from anywhere
    sys.path.insert(0, ROOT)

from recbole_mm.encoders.io import atomic_write_lines, atomic_write_json  # noqa: E402


class MissingRawFile(RuntimeError):
    """A raw input is neither given, nor on disk, nor downloadable; the message says what to do."""


# ---------------------------------------------------------------------------------- raw files
def offline_mode(flag: bool = False) -> bool:
    return bool(flag) or os.environ.get("RECBOLE_MM_OFFLINE") == "1"


def fetch(url: str, dest: str, local: str | None = None, offline: bool = False, what: str = "") -> str:
    """Path of a raw file: ``local`` when given, else ``dest`` when present, else download ``url``.

    Without internet (or with ``offline``) raises :class:`MissingRawFile` naming the URL and where
    to put the file.
    """
    if local:
        if not os.path.isfile(local):
            raise MissingRawFile(f"{what or 'raw file'} not found: {local}")
        return local
    if os.path.isfile(dest):
        return dest
    hint = (f"{what or 'raw file'} missing. Download {url}\n    and put it at {dest}\n"
            f"    (or pass its path on the command line).")
    if offline_mode(offline):
        raise MissingRawFile(hint + " Offline mode: no download attempted.")
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    tmp = dest + ".part"
    try:
        print(f"[download] {url} -> {dest}")
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
        os.replace(tmp, dest)
    except Exception as exc:  # no internet, 404, ...
        if os.path.exists(tmp):
            os.remove(tmp)
        raise MissingRawFile(hint + f" (download failed: {type(exc).__name__}: {exc})") from exc
    return dest


def download_image(url: str, dest: str, timeout: int = 20) -> bool:
    """Best-effort image download (atomic); False on any failure."""
    if os.path.isfile(dest):
        return True
    tmp = dest + ".part"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            f.write(r.read())
        os.replace(tmp, dest)
        return True
    except Exception:
        if os.path.exists(tmp):
            os.remove(tmp)
        return False


def open_text(path: str):
    """Open a text file, transparently gunzipping ``.gz``."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_record(line: str):
    """One metadata record: strict JSON, else a Python literal (the 2014 Amazon ``meta_*`` files)."""
    line = line.strip()
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        import ast

        return ast.literal_eval(line)


# ---------------------------------------------------------------------------------- filtering
def k_core(inters: list, user_k: int = 5, item_k: int = 5) -> list:
    """Iteratively drop users with < ``user_k`` and items with < ``item_k`` interactions.

    ``inters`` is a list of tuples whose first two entries are (user, item); order is kept.
    """
    from collections import Counter

    while True:
        uc = Counter(x[0] for x in inters)
        ic = Counter(x[1] for x in inters)
        bad_u = {u for u, c in uc.items() if c < user_k}
        bad_i = {i for i, c in ic.items() if c < item_k}
        if not bad_u and not bad_i:
            return inters
        inters = [x for x in inters if x[0] not in bad_u and x[1] not in bad_i]


def user_sequences(inters: list) -> "OrderedDict[str, list]":
    """``{user: [item, ...]}`` sorted by timestamp (stable: ties keep file order); users in order of
    first appearance. ``inters`` = (user, item, timestamp, ...) tuples."""
    groups: OrderedDict = OrderedDict()
    for pos, x in enumerate(inters):
        groups.setdefault(x[0], []).append((float(x[2]), pos, x[1]))
    return OrderedDict((u, [it for _, _, it in sorted(v)]) for u, v in groups.items())


def first_appearance_map(seqs) -> dict:
    """``{raw: index}`` by first appearance (UniSRec's remapping)."""
    out = {}
    for s in seqs:
        for x in s:
            if x not in out:
                out[x] = len(out)
    return out


def read_map(path: str) -> dict:
    """``raw<TAB>index`` (UniSRec ``*2index``) or MMRec ``*_id_mapping.csv`` (tab, with header)."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2:
                continue
            if n == 0 and not parts[1].strip().lstrip("-").isdigit():
                continue  # header
            out[parts[0]] = int(parts[1])
    return out


def write_map(path: str, mapping: dict, header: str | None = None) -> None:
    lines = [header] if header else []
    lines += [f"{k}\t{v}" for k, v in sorted(mapping.items(), key=lambda kv: kv[1])]
    atomic_write_lines(path, lines)


# ---------------------------------------------------------------------------------- outputs
def write_benchmark(folder: str, prefix: str, seqs: dict, max_len: int = 50) -> dict:
    """UniSRec benchmark files ``<prefix>.{train,valid,test}.inter`` from full sequences.

    Leave-one-out: the last item is the test target, the one before it the validation target;
    train holds every training prefix (targets from the 2nd item on), longest prefix first, as the
    published UniSRec / SICSRec / SGP4SR files order them. Histories keep the last ``max_len``
    items (``max_len <= 0``: whole histories, as SGP4SR's MMRec splits). Users with fewer than 3
    items are skipped (they cannot be split).
    """
    header = "user_id:token\titem_id_list:token_seq\titem_id:token"
    train, valid, test = [header], [header], [header]
    skipped = 0
    max_len = max_len if max_len and max_len > 0 else None
    for u, s in seqs.items():
        s = [str(x) for x in s]
        if len(s) < 3:
            skipped += 1
            continue
        n = len(s)
        for t in range(n - 3, 0, -1):
            start = max(0, t - max_len) if max_len else 0
            train.append(f"{u}\t{' '.join(s[start:t])}\t{s[t]}")
        hv, ht = s[:n - 2], s[:n - 1]
        if max_len:
            hv, ht = hv[-max_len:], ht[-max_len:]
        valid.append(f"{u}\t{' '.join(hv)}\t{s[n - 2]}")
        test.append(f"{u}\t{' '.join(ht)}\t{s[n - 1]}")
    os.makedirs(folder, exist_ok=True)
    for split, lines in (("train", train), ("valid", valid), ("test", test)):
        atomic_write_lines(os.path.join(folder, f"{prefix}.{split}.inter"), lines)
    return {"skipped_short_users": skipped}


def write_atomic_inter(folder: str, prefix: str, rows: list, with_rating: bool = False) -> str:
    """RecBole atomic ``<prefix>.inter``: rows of (user, item, timestamp[, rating])."""
    head = "user_id:token\titem_id:token\ttimestamp:float" + ("\trating:float" if with_rating else "")
    lines = [head]
    for r in rows:
        vals = [str(r[0]), str(r[1]), repr(float(r[2]))]
        if with_rating:
            vals.append(repr(float(r[3])))
        lines.append("\t".join(vals))
    path = os.path.join(folder, f"{prefix}.inter")
    atomic_write_lines(path, lines)
    return path


def sequence_stats(seqs: dict) -> dict:
    """users / items / interactions / average length / sparsity of full sequences."""
    n_users = len(seqs)
    items = set()
    n_inters = 0
    for s in seqs.values():
        items.update(s)
        n_inters += len(s)
    n_items = len(items)
    sparsity = 1.0 - n_inters / (n_users * n_items) if n_users and n_items else 1.0
    return {"users": n_users, "items": n_items, "interactions": n_inters,
            "avg_length": round(n_inters / max(n_users, 1), 4), "sparsity": sparsity}


def print_stats(name: str, stats: dict, folder: str | None = None) -> None:
    print(f"[stats] {name}: users={stats['users']} items={stats['items']} "
          f"interactions={stats['interactions']} avg_length={stats['avg_length']:.2f} "
          f"sparsity={stats['sparsity']:.4%}")
    if folder:
        atomic_write_json(os.path.join(folder, f"{name}.stats.json"), stats)


# ---------------------------------------------------------------------------------- encoders
def add_io_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true",
                   help="never download; print which file to put where (also RECBOLE_MM_OFFLINE=1)")


def add_encoder_args(p: argparse.ArgumentParser, text_kind="st", text_model="all-MiniLM-L6-v2",
                     image_kind="clip", image_model="openai/clip-vit-base-patch32") -> None:
    g = p.add_argument_group("encoders")
    g.add_argument("--text_kind", default=text_kind, help="st | hf (bert, roberta) | clip | none")
    g.add_argument("--text_model", default=text_model, help="hub id or local folder")
    g.add_argument("--text_pooling", default="cls", help="hf text encoders: cls | mean | pooler")
    g.add_argument("--text_max_length", type=int, default=512)
    g.add_argument("--image_kind", default=image_kind, help="clip | hf (vit, swin) | none")
    g.add_argument("--image_model", default=image_model, help="hub id or local folder")
    g.add_argument("--image_pooling", default="pooler", help="hf image encoders: pooler | cls | mean | logits")
    g.add_argument("--device", default="auto", help="auto (GPU when available) | cpu | cuda[:n]")
    g.add_argument("--batch_size", type=int, default=64)
    g.add_argument("--shard_size", type=int, default=4096, help="rows per resumable shard")
    g.add_argument("--fp16", action="store_true", help="compute in float16 (GPU only)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="stored dtype")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no_progress", action="store_true")


def build_text_encoder(args):
    from recbole_mm.encoders import build_text_encoder as build

    if args.text_kind in (None, "", "none"):
        return None
    kw = dict(device=args.device, fp16=args.fp16, seed=args.seed)
    if args.text_kind in ("hf", "bert", "roberta"):
        kw.update(pooling=args.text_pooling, max_length=args.text_max_length)
    return build(args.text_kind, args.text_model, **kw)


def build_image_encoder(args):
    from recbole_mm.encoders import build_image_encoder as build

    if args.image_kind in (None, "", "none"):
        return None
    kw = dict(device=args.device, fp16=args.fp16, seed=args.seed)
    if args.image_kind in ("hf", "vit", "swin"):
        kw.update(pooling=args.image_pooling)
    return build(args.image_kind, args.image_model, **kw)


def extract_kwargs(args) -> dict:
    return dict(batch_size=args.batch_size, shard_size=args.shard_size, dtype=args.dtype,
                progress=not args.no_progress)


def run_main(main, argv=None) -> int:
    """Run a script's ``main``; a missing raw file is one clear message and exit code 2."""
    from recbole_mm.encoders.models import EncoderUnavailable

    try:
        main(argv)
    except (MissingRawFile, EncoderUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
