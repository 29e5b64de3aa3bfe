"""Instruments a cell's RecBole trainer without changing training: epoch and evaluation timings,
the training curve, live progress lines, a progress file rewritten after every epoch (what a
timed-out or killed cell reached), and the per-user test values the significance tests pair.

Wrappers are set on the trainer instance (subclasses work too) by :meth:`Probe.attach`, which
``run_recbole_mm(trainer_hook=...)`` calls after the trainer is built (and, when the run resumes,
after its training state is restored) and before ``fit``.
"""
from __future__ import annotations

import datetime as _dt
import json
import time

from recbole_mm.benchmark.common import atomic_write_text, jsonable
from recbole_mm.config import PROTOCOL_KEYS

# Final configuration values a cell records and the report prints per row (with the cell's own
# keys and PROTOCOL_KEYS), when set (e.g. the per-stage epoch keys of multi-stage models).
EFFECTIVE_KEYS = ("epochs", "phase1_epochs", "phase2_epochs", "step1_epochs", "step2_epochs",
                  "train_batch_size", "learning_rate", "loss_type", "hidden_size", "n_layers",
                  "n_heads", "MAX_ITEM_LIST_LENGTH")
HARNESS_KEYS = {"show_progress", "state", "reproducibility", "checkpoint_dir", "data_path", "seed"}


class Probe:
    """Records one run. ``progress(line)`` receives a line per training epoch and per validation;
    ``progress_file`` (optional) is rewritten atomically after each of them with
    :meth:`reached`; ``prior_curve`` is the curve of the earlier attempt of a resumed run (its
    epochs before the one the run resumes at are kept)."""

    def __init__(self, progress=None, progress_file=None, prior_curve=None):
        self.attached = False
        self.epochs = []       # one record per _train_epoch call
        self.eval_calls = []   # (seconds, during_fit)
        self.info = {}
        self.model = None
        self.config = self.trainer = self.dataset = None
        self.resumed_from = None
        self.test_struct = None   # RecBole's collected test data (rec.topk), for per-user values
        self.test_users = []      # the user ids of the test rows, batch by batch
        self._in_fit = self._collect = False
        self._progress = progress or (lambda line: None)
        self._progress_file = progress_file
        self._prior = None if prior_curve is None else list(prior_curve)

    # ------------------------------------------------------------------ summary of the run so far
    def best(self):
        """``(best validation score, its epoch)`` so far (see :func:`best_epoch_from_curve`)."""
        bigger = self.info.get("valid_metric_bigger", True)
        epoch = best_epoch_from_curve(self.epochs, bigger)
        last = max((r.get("segment", 0) for r in self.epochs), default=0)
        score = next((r["valid_score"] for r in self.epochs if r.get("segment", 0) == last
                      and r["epoch"] == epoch and r.get("valid_score") is not None), None)
        return score, epoch

    def reached(self) -> dict:
        """What the run has reached: epochs, curve, best validation so far (with its epoch)."""
        score, epoch = self.best()
        return {"epochs_run": sum(1 for r in self.epochs if "train_s" in r),
                "best_valid_score": score, "best_epoch": epoch,
                "valid_metric": self.info.get("valid_metric"),
                "resumed_from_epoch": self.resumed_from, "curve": jsonable(self.epochs),
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    def _report(self, line: str) -> None:
        self._progress(line)
        if self._progress_file:
            atomic_write_text(self._progress_file, json.dumps(self.reached()))

    # ------------------------------------------------------------------ instrumentation
    def attach(self, config, dataset, model, trainer):
        import torch

        cuda = torch.cuda.is_available() and "cuda" in str(config["device"])

        def sync():
            if cuda:
                torch.cuda.synchronize()

        self.attached = True
        self.model, self.dataset = model, dataset
        self.config, self.trainer = config, trainer
        self.info = {
            "device": str(config["device"]),
            "params": int(sum(p.numel() for p in model.parameters())),
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "model_class": f"{type(model).__module__}.{type(model).__name__}",
            "trainer_class": f"{type(trainer).__module__}.{type(trainer).__name__}",
            "dataset_stats": {"users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1),
                              "interactions": int(dataset.inter_num)},
            "valid_metric": str(config["valid_metric"]).lower(),
            "valid_metric_bigger": bool(config["valid_metric_bigger"]),
            "eval_step": int(config["eval_step"]),
            # what the model says about its setting, e.g. SICSRec on features not SFT-aligned:
            # 'w/o SFT' (the report shows it beside the row's label)
            "setting_note": getattr(model, "setting_note", None),
        }
        if self._prior is not None:  # a resumed run: the earlier attempt's epochs before it
            stage, start, segment = trainer.resumed_at  # set by recbole_mm.resume.restore
            self.resumed_from = start
            self.epochs = resumed_curve(self._prior, start, segment)
            where = f" of {stage}" if stage else ""
            self._progress(f"resumed at epoch {start}{where} ({len(self.epochs)} earlier epoch(s) "
                           f"kept)")
        probe = self
        orig_train, orig_valid = trainer._train_epoch, trainer._valid_epoch
        orig_eval, orig_fit = trainer.evaluate, trainer.fit
        total = int(config["epochs"])

        def _train_epoch(train_data, epoch_idx, *a, **k):
            sync()
            t0 = time.perf_counter()
            loss = orig_train(train_data, epoch_idx, *a, **k)
            sync()
            dt = time.perf_counter() - t0
            segment = probe.epochs[-1].get("segment", 0) if probe.epochs else 0
            if probe.epochs and int(epoch_idx) <= probe.epochs[-1]["epoch"]:
                segment += 1  # a multi-stage trainer started another fit (phase / step)
            rec = {"epoch": int(epoch_idx), "step": len(probe.epochs), "segment": segment,
                   "train_s": dt, "train_loss": loss_value(loss)}
            probe.epochs.append(rec)
            stage = f" (stage {segment + 1})" if segment else ""
            loss_txt = "-" if rec["train_loss"] is None else f"{rec['train_loss']:.4f}"
            probe._report(f"epoch {epoch_idx}{stage} of {total}: train loss {loss_txt}, "
                          f"{dt:.1f} s")
            return loss

        def _valid_epoch(valid_data, *a, **k):
            sync()
            t0 = time.perf_counter()
            out = orig_valid(valid_data, *a, **k)
            sync()
            score, result = out
            rec = probe.epochs[-1] if probe.epochs else {"epoch": -1}
            if not probe.epochs:
                probe.epochs.append(rec)
            rec.update({"valid_s": time.perf_counter() - t0, "valid_score": jsonable(score),
                        "valid_result": jsonable(dict(result))})
            best, best_ep = probe.best()
            probe._report(f"epoch {rec['epoch']}: valid {probe.info['valid_metric']} "
                          f"{_num(rec['valid_score'])} (best {_num(best)} at epoch {best_ep}), "
                          f"{rec['valid_s']:.1f} s")
            return out

        def evaluate(*a, **k):
            sync()
            probe._collect = not probe._in_fit  # the test pass: keep its per-user values
            t0 = time.perf_counter()
            try:
                out = orig_eval(*a, **k)
            finally:
                probe._collect = False
            sync()
            probe.eval_calls.append((time.perf_counter() - t0, probe._in_fit))
            return out

        def fit(*a, **k):
            probe._in_fit = True
            try:
                return orig_fit(*a, **k)
            finally:
                probe._in_fit = False

        trainer._train_epoch, trainer._valid_epoch = _train_epoch, _valid_epoch
        trainer.evaluate, trainer.fit = evaluate, fit
        self._attach_collector(trainer, dataset)

    def _attach_collector(self, trainer, dataset):
        """Keep the user id of every test row and the test pass's collected data (``rec.topk``),
        in the order the evaluation loader gave them (it orders rows by history length)."""
        collector = getattr(trainer, "eval_collector", None)
        if collector is None or not hasattr(collector, "eval_batch_collect"):
            return
        probe, uid = self, dataset.uid_field
        orig_collect, orig_struct = collector.eval_batch_collect, collector.get_data_struct

        def eval_batch_collect(scores, interaction, *a, **k):
            if probe._collect:
                probe.test_users.append(interaction[uid].detach().cpu())
            return orig_collect(scores, interaction, *a, **k)

        def get_data_struct(*a, **k):
            struct = orig_struct(*a, **k)
            if probe._collect:
                probe.test_struct = struct
            return struct

        def evaluate(*a, **k):  # a fresh record per evaluation
            probe.test_users, probe.test_struct = [], None
            return probe_eval(*a, **k)

        probe_eval = trainer.evaluate
        collector.eval_batch_collect, collector.get_data_struct = eval_batch_collect, get_data_struct
        trainer.evaluate = evaluate

    def per_user(self):
        """``(user tokens, {metric@k: values})`` of the test pass: every top-k metric of the
        protocol at each cut-off, one value per test row; ``None`` when not available."""
        struct, users = self.test_struct, self.test_users
        if struct is None or not users or "rec.topk" not in struct:
            return None
        import numpy as np
        import torch
        from recbole.evaluator.base_metric import TopkMetric

        ids = torch.cat(users).numpy()
        topk = struct.get("rec.topk")
        if topk.shape[0] != len(ids):
            return None  # a collector that does not keep one row per test row
        tokens = [str(t) for t in self.dataset.id2token(self.dataset.uid_field, ids)]
        values = {}
        for name, metric in self.trainer.evaluator.metric_class.items():
            if not isinstance(metric, TopkMetric):
                continue
            pos_index, pos_len = metric.used_info(struct)
            args = (pos_index, pos_len) if metric.metric_info.__code__.co_argcount > 2 else (pos_index,)
            per_k = np.asarray(metric.metric_info(*args), dtype=np.float64)
            for k in metric.topk:
                values[f"{name.lower()}@{k}"] = per_k[:, k - 1].astype(np.float32)
        return tokens, values


def resumed_curve(prior, start: int, segment: int | None = None) -> list:
    """The earlier attempt's curve up to where a resumed run starts: epoch ``start`` of stage
    (segment) ``segment`` (default: the curve's last). Entries of that stage from ``start`` on,
    and of any later one, are dropped; a ``segment`` past the curve's last (a stage set up but
    with no epoch done) keeps the whole curve."""
    kept = [dict(r) for r in prior]
    if segment is None:
        segment = max((r.get("segment", 0) for r in kept), default=0)
    return [r for r in kept if r.get("segment", 0) < segment
            or (r.get("segment", 0) == segment and int(r["epoch"]) < start)]


def _num(v):
    return "-" if v is None else f"{v:.4f}"


def loss_value(loss):
    if isinstance(loss, (tuple, list)):
        return jsonable(sum(float(x) for x in loss))
    try:
        return jsonable(float(loss))
    except (TypeError, ValueError):
        return None


def best_epoch_from_curve(curve, bigger=True):
    """The epoch whose validation score RecBole keeps: the last epoch that scored at least the
    best so far (RecBole's ``early_stopping`` takes ``>=``, ``<=`` when smaller is better, so a
    tie replaces the kept checkpoint), in the last training segment (multi-stage trainers
    return the last stage's best)."""
    best, best_ep = None, None
    last = max((r.get("segment", 0) for r in curve), default=0)
    for rec in curve:
        if rec.get("segment", 0) != last:
            continue
        s = rec.get("valid_score")
        if s is None:
            continue
        if best is None or (s >= best if bigger else s <= best):
            best, best_ep = s, rec["epoch"]
    return best_ep


def effective_config(config, cell_config) -> dict:
    """The final values of the keys that shape a comparison: the cell's own keys (harness
    plumbing aside), :data:`EFFECTIVE_KEYS` the run has, and the protocol."""
    keys = [k for k in cell_config if k not in HARNESS_KEYS]
    keys += [k for k in EFFECTIVE_KEYS if k not in keys and config[k] is not None]
    keys += [k for k in ("protocol",) + tuple(PROTOCOL_KEYS) if k not in keys]
    return {k: jsonable(config[k]) for k in keys}


def stage_epochs(trainer, config, epochs_run: int) -> dict:
    """``{stage: {"budget": n, "run": m}}``: a multi-stage trainer's own record
    (``trainer.stage_epochs``), else one stage ``train`` bounded by ``epochs``."""
    stages = getattr(trainer, "stage_epochs", None)
    if stages:
        return {str(k): {"budget": int(v["budget"]), "run": int(v["run"])} for k, v in stages.items()}
    return {"train": {"budget": int(config["epochs"]), "run": int(epochs_run)}}
