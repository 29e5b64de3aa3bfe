"""Write the generated demo dataset ``mm_sample`` (see recbole_mm/data/sample.py).

    python dataset_scripts/make_sample.py --out dataset/mm_sample [--n_users 1000 --n_items 500 ...]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_mm.data.sample import DEFAULTS, write_sample  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("dataset", "mm_sample"))
    p.add_argument("--name", default="mm_sample")
    for key, val in DEFAULTS.items():
        p.add_argument(f"--{key}", type=type(val), default=val)
    args = p.parse_args(argv)
    params = {k: getattr(args, k) for k in DEFAULTS}
    folder = write_sample(args.out, args.name, **params)
    print(f"wrote {args.name} to {os.path.abspath(folder)}")
    return folder


if __name__ == "__main__":
    main()
