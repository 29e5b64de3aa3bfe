"""Writing recommendations: one JSON line per user (default, to stdout) or a CSV file.

JSON line: ``{"user": "<raw token>", "items": ["<raw token>", ...], "scores": [...]}`` (a new
history has ``"user": null``). CSV: header ``user,rank,item,score``, one row per recommended item,
rank from 1; written to a temporary name beside the target and renamed into place
(:func:`recbole_mm.encoders.io.atomic_write_text`), so the file is never half-written.
"""
from __future__ import annotations

import csv
import io
import json

from recbole_mm.encoders.io import atomic_write_text

CSV_HEADER = ("user", "rank", "item", "score")


def json_line(rec: dict) -> str:
    return json.dumps({"user": rec["user"], "items": list(rec["items"]),
                       "scores": [float(s) for s in rec["scores"]]}, ensure_ascii=False)


def write_json_lines(recs, stream) -> None:
    for rec in recs:
        stream.write(json_line(rec) + "\n")
    stream.flush()


def csv_text(recs) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for rec in recs:
        user = "" if rec["user"] is None else rec["user"]
        for rank, (item, score) in enumerate(zip(rec["items"], rec["scores"]), 1):
            writer.writerow((user, rank, item, repr(float(score))))
    return buf.getvalue()


def write_csv(recs, path: str) -> None:
    atomic_write_text(path, csv_text(recs))
