"""``prepare``: read -> check -> clean -> (validate items, load encoders) -> write.

Nothing is written before every input has been read and checked and the encoders are loaded, so
bad input leaves no files behind; then the ``.inter``, the feature files, the report and, last,
the dataset yaml are written, each atomically.
"""
from __future__ import annotations

import os
import re
import time

from recbole_mm.prepare import PrepareError
from recbole_mm.prepare import features as F
from recbole_mm.prepare import filter as flt
from recbole_mm.prepare import read as rd
from recbole_mm.prepare import write as wr

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def default_min_coverage() -> float:
    """``min_feature_coverage`` of properties/overall.yaml (what the dataset will demand)."""
    import yaml

    from recbole_mm import registry

    with open(os.path.join(registry.properties_dir(), "overall.yaml"), encoding="utf-8") as f:
        return float(yaml.safe_load(f).get("min_feature_coverage") or 0.0)


def prepare(interactions: str, name: str, items: str | None = None, out: str | None = None, *,
            user_col=None, item_col=None, time_col=None, no_time=False, time_format=None,
            duplicates="first", user_k=0, item_k=0,
            items_item_col=None, text_cols=None, image_col=None, image_root=None,
            min_item_coverage=0.9, missing_images="zero",
            text_kind="st", text_model="all-MiniLM-L6-v2", image_kind="clip",
            image_model="openai/clip-vit-base-patch32", image_pooling=None, device="auto",
            batch_size=64, progress=True, log=print) -> dict:
    """Build the dataset folder (see the package doc); returns the report (counts, paths, command)."""
    from recbole_mm import registry

    t0 = time.perf_counter()
    if not NAME_RE.match(name or ""):
        raise PrepareError(f"--name {name!r}: use letters, digits, '_', '-' or '.' (it names the files).")
    if name in registry.known_datasets():
        raise PrepareError(f"--name {name!r} is a built-in dataset (properties/dataset/{name}.yaml); "
                           f"choose another name.")
    out = os.path.abspath(out or os.path.join("dataset", name))
    report: dict = {"name": name, "folder": out, "inputs": {"interactions": os.path.abspath(interactions)}}

    # ---- read and check the log
    df = rd.read_table(interactions, "interactions")
    ucol = rd.pick_column(df, interactions, user_col, rd.USER_NAMES, "user id", "--user_col")
    icol = rd.pick_column(df, interactions, item_col, rd.ITEM_NAMES, "item id", "--item_col")
    if no_time:
        if time_col:
            raise PrepareError("--no_time and --time_col exclude each other.")
        tcol, times = None, None
    else:
        tcol = rd.pick_column(df, interactions, time_col, rd.TIME_NAMES, "time", "--time_col",
                              required=False)
        if tcol is None:
            raise PrepareError(
                f"{interactions}: no time column (looked for {', '.join(rd.TIME_NAMES)}); columns "
                f"are {list(df.columns)}. Name it with --time_col, or pass --no_time if the rows "
                f"are already in time order."
            )
        times = rd.parse_times(df[tcol], interactions, tcol, time_format)
    import numpy as np

    if times is None:
        times = np.arange(len(df), dtype=np.float64)  # --no_time: file order is time order
    log(f"[read] {interactions}: {len(df):,} rows; user={ucol!r} item={icol!r} "
        + (f"time={tcol!r}" if tcol else "time = file order (--no_time)"))
    steps = {"rows": len(df)}
    lg, n_missing = flt.make_log(df, interactions, ucol, icol, times)
    del df
    steps["dropped_missing_id"] = n_missing
    if n_missing:
        log(f"[clean] dropped {n_missing:,} row(s) without a user or item id")
    lg, n_dup = flt.drop_duplicates(lg, duplicates)
    steps["dropped_duplicates"] = n_dup
    log(f"[duplicates] policy '{duplicates}': "
        + (f"dropped {n_dup:,} repeated (user, item) row(s)" if duplicates != "keep"
           else f"kept every repeated (user, item) row ({int(lg.duplicated(['user', 'item']).sum()):,})"))
    if user_k > 1 or item_k > 1:
        lg, kc = flt.k_core(lg, user_k, item_k, log_fn=log)
        steps["k_core"] = dict(kc, user_k=user_k, item_k=item_k)
        log(f"[k-core] users >= {user_k}, items >= {item_k}: {kc['rounds']} round(s), dropped "
            f"{kc['interactions']:,} interactions, {kc['users']:,} users, {kc['items']:,} items")
    if not len(lg):
        raise PrepareError(f"{interactions}: no interaction left after cleaning and filtering "
                           f"({steps}); lower --user_k / --item_k.")
    lg = flt.sort_by_time(lg)
    stats = flt.counts(lg)
    report.update(steps=steps, stats=stats)
    log(f"[log] {stats['interactions']:,} interactions, {stats['users']:,} users, {stats['items']:,} "
        f"items, {stats['avg_length']:.2f} per user; {stats['users_under_3']:,} user(s) with fewer "
        f"than 3 (too short for a leave-one-out valid and test item: they only train)")

    # ---- item table and encoders, before anything is written
    tokens = sorted(lg["item"].unique())
    table, text_enc, image_enc = None, None, None
    if items:
        report["inputs"]["items"] = os.path.abspath(items)
        idf = rd.read_table(items, "items")
        table = F.read_item_table(idf, items, tokens, item_col=items_item_col, text_cols=text_cols,
                                  image_col=image_col, image_root=image_root,
                                  min_coverage=min_item_coverage, missing_images=missing_images)
        log(f"[items] {items}: {len(idf):,} rows; {table.covered:,}/{table.n_log_items:,} log items "
            f"have a row ({table.coverage:.1%}); text from {table.text_cols or 'no column'}: "
            f"{len(table.texts):,} items; images from {table.image_col or 'no column'}: "
            f"{len(table.images):,} files found, {len(table.missing_images):,} missing")
        report["items"] = {"rows": len(idf), "covered": table.covered, "coverage": table.coverage,
                           "text_cols": table.text_cols, "with_text": len(table.texts),
                           "image_col": table.image_col, "images_found": len(table.images),
                           "images_missing": sorted(table.missing_images)}
        if table.texts:
            text_enc = F.build_text_encoder(text_kind, text_model, device)
        if table.images:
            image_enc = F.build_image_encoder(image_kind, image_model, device, image_pooling, log_fn=log)

    # ---- write
    os.makedirs(out, exist_ok=True)
    inter_path = wr.write_inter(lg, out, name)
    log(f"[write] {inter_path}: {len(lg):,} interactions sorted by time")
    mods = {}
    encoded = {}
    if text_enc is not None:
        encoded["text"] = F.encode_texts(tokens, table, text_enc, out, name, batch_size, progress, log)
    if image_enc is not None:
        encoded["image"] = F.encode_images(tokens, table, image_enc, out, name, batch_size, progress, log)
    for m, res in encoded.items():
        mods[m] = {"file": f"{name}.{m}.npy"}
        cov = 1.0 - (len(res.missing) + len(res.corrupt)) / max(len(tokens), 1)
        report.setdefault("feature_coverage", {})[m] = cov
        if cov < default_min_coverage():  # the dataset would refuse the file: say so in the yaml
            mods[m]["min_coverage"] = int(cov * 100) / 100
            log(f"[{m}] coverage {cov:.1%} is below the dataset's default min_feature_coverage "
                f"({default_min_coverage():.0%}): the yaml sets min_coverage {mods[m]['min_coverage']} "
                f"for it")
    src = os.path.basename(interactions) + (f" and {os.path.basename(items)}" if items else "")
    report["modalities"] = mods
    report["seconds"] = round(time.perf_counter() - t0, 3)
    yaml_path = os.path.join(out, f"{name}.yaml")
    report["command"] = wr.run_command(name, out, yaml_path)
    report["report"] = wr.write_report(out, name, report)
    wr.dataset_yaml(name, out, mods, src)
    log(f"[yaml] {yaml_path}")
    log("Run it (append --model=X, e.g. --model=SASRec, or SGP4SR with text and image):")
    log(f"  {report['command']}")
    return report
