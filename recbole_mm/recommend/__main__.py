"""Command line: top-k recommendations from a trained checkpoint.

    python -m recbole_mm.recommend --checkpoint saved/X.pth --users u1,u2 --topk 10
    python -m recbole_mm.recommend --checkpoint saved/X.pth --users-file users.txt --out recs.csv
    python -m recbole_mm.recommend --checkpoint saved/X.pth --all-users --faiss Flat
    python -m recbole_mm.recommend --checkpoint saved/X.pth --history "i1 i2 i3"

Prints one JSON line per user, or writes a CSV with ``--out``. ``--key=value`` settings go on top
of the checkpoint's configuration (e.g. ``--data_path=...`` when the data moved). A bad input
(unknown user or item token, a checkpoint that is missing, truncated or of another dataset,
``--topk`` larger than the catalogue) stops with one line naming it and exit status 2.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recbole_mm.recommend",
                                description="Top-k recommendations from a recbole_mm checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by a recbole_mm run")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--users", help="comma-separated raw user tokens")
    who.add_argument("--users-file", help="a file with one raw user token per line")
    who.add_argument("--all-users", action="store_true", help="every user with a history")
    who.add_argument("--history", help="space-separated raw item tokens (oldest first) of a new history")
    p.add_argument("--topk", type=int, default=10, help="items per user (default 10)")
    p.add_argument("--include-seen", action="store_true",
                   help="keep items the user already interacted with (left out by default)")
    p.add_argument("--out", help="write CSV (user,rank,item,score) here instead of JSON lines")
    p.add_argument("--faiss", nargs="?", const="Flat", default=None, metavar="FACTORY",
                   help="rank with a FAISS index over the item table (exact 'Flat' by default, "
                        "or a factory string such as 'IVF256,Flat'); inner-product models only")
    p.add_argument("--nprobe", type=int, default=None, help="lists probed by an IVF index")
    return p


def _read_users(path: str) -> list[str]:
    from recbole_mm.recommend import RecommendError

    try:
        with open(path, encoding="utf-8") as f:
            users = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise RecommendError(f"--users-file {path}: {exc.strerror}.") from None
    if not users:
        raise RecommendError(f"--users-file {path} holds no user token.")
    return users


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = build_parser().parse_known_args(argv)
    from recbole_mm.config import parse_overrides, plain_argv
    from recbole_mm.data.dataset import DatasetFilesError
    from recbole_mm.data.features import FeatureFileError
    from recbole_mm.recommend import Recommender, RecommendError
    from recbole_mm.recommend.output import write_csv, write_json_lines

    overrides = parse_overrides(rest)
    overrides.setdefault("state", "WARNING")  # RecBole's INFO log of the data would bury the output
    with plain_argv():  # RecBole's Config must not read these options
        try:
            users = None
            if args.users is not None:
                users = [u.strip() for u in args.users.split(",") if u.strip()]
                if not users:
                    raise RecommendError("--users names no user token.")
            elif args.users_file is not None:
                users = _read_users(args.users_file)
            rec = Recommender(args.checkpoint, config_dict=overrides, faiss=args.faiss,
                              nprobe=args.nprobe)
            exclude = not args.include_seen
            if args.history is not None:
                recs = [rec.recommend_history(args.history.split(), topk=args.topk, exclude_seen=exclude)]
            else:
                recs = rec.recommend(users, topk=args.topk, exclude_seen=exclude)
        except (RecommendError, FeatureFileError, DatasetFilesError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.out:
        write_csv(recs, args.out)
        print(f"wrote {sum(len(r['items']) for r in recs)} recommendations for {len(recs)} "
              f"user(s) to {args.out}", file=sys.stderr)
    else:
        write_json_lines(recs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
