"""The search: an Optuna study (TPE sampling, median pruning) stored in a database.

By default the study lives in ``<out>/study.db`` (SQLite; every write is a transaction, so the
file is never half-written). Running the same command again continues the same study until it
holds ``trials`` finished (complete or pruned) trials; several processes, or machines sharing a
database URL (``storage``), can work on one study at once. A study remembers what it searches
(model, dataset, space, fixed keys, validation metric) and refuses to be continued with others.
"""
from __future__ import annotations

import json
import logging
import os
import time
import warnings

import optuna

from recbole_mm import registry
from recbole_mm.tune.objective import Objective, plain_argv
from recbole_mm.tune.report import write_reports
from recbole_mm.tune.space import SpaceError, check_keys, default_space_file, load_space

TrialState = optuna.trial.TrialState
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
META_KEY = "recbole_mm"
COMPARED = ("model", "dataset", "space", "fixed", "config_files", "valid_metric", "direction")
logger = logging.getLogger(__name__)


class StudyMismatchError(ValueError):
    """An existing study was created for another search."""


def _plain(obj):
    """JSON-normal form (what the study's storage gives back)."""
    return json.loads(json.dumps(obj, default=str))


def default_storage(out: str) -> str:
    return "sqlite:///" + os.path.join(os.path.abspath(out), "study.db")


def open_storage(url: str):
    """An RDB storage with heartbeats: a trial whose process died is failed after the grace
    period and run again (once) by the next process working on the study."""
    import sqlalchemy.exc

    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=60, grace_period=600,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=1))
        except sqlalchemy.exc.OperationalError as exc:
            # two processes creating the same new database race on its tables: the loser retries
            if "already exists" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))

def prepare(model: str, dataset: str, space_file: str | None = None, fixed: dict | None = None,
            config_files: list | None = None):
    """Check the search before any trial: returns ``(model_name, space_file, space, meta)``.

    The space's keys must be keys of the layered configuration (``MMConfig`` with the fixed
    keys and config files, as a trial would build it); keys fixed on the command line are
    dropped from the space.
    """
    from recbole_mm.config import MMConfig

    model_name = registry.get_model(model).__name__
    space_file = space_file or default_space_file(model_name)
    space = load_space(space_file)
    fixed = dict(fixed or {})
    with plain_argv():
        base = MMConfig(model=model_name, dataset=dataset, config_file_list=config_files,
                        config_dict=fixed)
    check_keys(space, base.final_config_dict, space_file, f"{model_name} on {dataset}")
    dropped = [k for k in space if k in fixed]
    for key in dropped:
        del space[key]
    if dropped:
        logger.info("fixed on the command line, not searched: %s", ", ".join(dropped))
    if not space:
        raise SpaceError(f"{space_file}: every key is fixed on the command line; nothing to search")
    meta = _plain({
        "model": model_name, "dataset": dataset, "space_file": space_file,
        "space": {k: p.spec() for k, p in space.items()}, "fixed": fixed,
        "config_files": list(config_files or []), "valid_metric": base["valid_metric"],
        "direction": "maximize" if base["valid_metric_bigger"] else "minimize",
        "seed": base["seed"],
    })
    return model_name, space_file, space, meta


def open_study(storage, study_name: str, meta: dict, sampler, pruner) -> optuna.Study:
    """Create the study, or load it and check it was made for the same search."""
    study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                pruner=pruner, direction=meta["direction"], load_if_exists=True)
    stored = study.user_attrs.get(META_KEY)
    if stored is None:
        study.set_user_attr(META_KEY, meta)
        return study
    for key in COMPARED:
        if _plain(stored.get(key)) != _plain(meta[key]):
            raise StudyMismatchError(
                f"study '{study_name}' was created with {key} = {json.dumps(stored.get(key))}, "
                f"not {json.dumps(meta[key])}: continue it with the same settings, or choose "
                f"another --study_name or --out")
    return study


class _StopAfterFailures:
    """Stop this process's search after ``limit`` failed trials in a row (a broken set-up)."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.last_error = limit, 0, None

    def __call__(self, study, trial):
        if trial.state == TrialState.FAIL:
            self.in_a_row += 1
            self.last_error = trial.user_attrs.get("error", "see the log")
            if self.in_a_row >= self.limit:
                logger.error("stopping: %d trials in a row failed; last error: %s",
                             self.in_a_row, self.last_error)
                study.stop()
        else:
            self.in_a_row = 0


def tune(model: str, dataset: str, trials: int, out: str, space_file: str | None = None,
         fixed: dict | None = None, config_files: list | None = None, storage: str | None = None,
         study_name: str | None = None, sampler_seed: int | None = None, pruner: str = "median",
         prune_startup: int = 5, prune_warmup: int = 3, keep_checkpoints: bool = False,
         max_failures: int = 3) -> dict:
    """Run (or continue) the search until the study holds ``trials`` finished trials.

    Returns ``{"study": optuna.Study, "files": {kind: path}, "failures": _StopAfterFailures}``.
    """
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    model_name, space_file, space, meta = prepare(model, dataset, space_file, fixed, config_files)
    meta["out"] = out
    os.makedirs(out, exist_ok=True)
    study_name = study_name or f"{model_name}_{dataset}"
    url = storage or default_storage(out)
    if pruner == "median":
        the_pruner = optuna.pruners.MedianPruner(n_startup_trials=prune_startup,
                                                 n_warmup_steps=prune_warmup)
    elif pruner == "none":
        the_pruner = optuna.pruners.NopPruner()
    else:
        raise ValueError(f"pruner must be 'median' or 'none', got {pruner!r}")
    study = open_study(open_storage(url), study_name, _compared(meta), None, the_pruner)
    study.sampler = optuna.samplers.TPESampler(
        seed=sampler_seed_for(meta["seed"] if sampler_seed is None else sampler_seed,
                              len(study.get_trials(deepcopy=False))),
        constant_liar=True)
    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    files = {}

    def report(study_, trial):
        files.update(write_reports(study_, out, meta, space))

    failures = _StopAfterFailures(max_failures)
    if done < trials:
        logger.info("study '%s' in %s: %d of %d trials finished", study_name, url, done, trials)
        objective = Objective(model_name, dataset, space, meta["fixed"], config_files,
                              checkpoint_dir=os.path.join(out, "checkpoints"),
                              keep_checkpoints=keep_checkpoints)
        try:
            study.optimize(objective, n_trials=trials - done, catch=(Exception,),
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED),
                                      report, failures])
        except KeyboardInterrupt:  # the running trial is recorded as failed; the rest is kept
            write_reports(study, out, meta, space)
            raise
    files.update(write_reports(study, out, meta, space))
    return {"study": study, "files": files, "failures": failures, "storage": url}


def sampler_seed_for(seed: int, trials_before: int) -> int:
    """TPE's seed from the configured seed and the number of trials already in the study: a fresh
    search is reproducible, and a continued one does not replay the first one's random start-up
    proposals (distinct pairs give distinct seeds)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(trials_before)]).generate_state(1)[0])


def _compared(meta: dict) -> dict:
    """What a study stores about its search (``out`` and the file's path may differ on resume)."""
    return {k: v for k, v in meta.items() if k in COMPARED or k in ("space_file", "seed")}
