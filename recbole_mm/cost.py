"""Cost of a model relative to RecBole's SASRec: one training epoch and one full-ranking pass.

    python -m recbole_mm.cost --model=SGP4SR --dataset=scientific_mm --hidden_size=300 [--key=value ...]

Builds the data once per model (same split), then times ``Trainer._train_epoch`` on the training
loader and ``Trainer.evaluate`` (full ranking) on the test loader, for the model and for the
reference (``--reference``, default SASRec) at the same overrides, and prints the ratios. Both
are timed in the same process, back to back; the evaluation is timed ``--eval_repeats`` times
(default 3) and the fastest pass is reported. Also reports peak memory (CUDA when used, else the
process's max RSS) and the provenance (command, commit, date, device, load average) that a
checked-in result file needs. This is benchmark tooling, never a unit test of speed.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import torch


def measure(model_name: str, dataset: str, overrides: dict, epochs: int = 1,
            eval_repeats: int = 3, inspect=None) -> dict:
    """Train ``epochs`` epoch(s), then run the full-ranking test evaluation ``eval_repeats`` times;
    return timings (s): the fastest epoch and the fastest evaluation (the least disturbed ones).
    ``inspect(config, model, train_data, test_data)`` may return more fields for the result."""
    from recbole.utils import init_logger, init_seed

    from recbole_mm import registry
    from recbole_mm.config import MMConfig, plain_argv
    from recbole_mm.data.batching import data_preparation
    from recbole_mm.fast import prepare_training
    from recbole_mm.quick_start import create_dataset

    cfg = {"state": "WARNING", "show_progress": False, **overrides}
    with plain_argv():
        config = MMConfig(model=model_name, dataset=dataset, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t0 = time.perf_counter()
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    load_s = time.perf_counter() - t0
    model_class = registry.get_model(config["model"])
    t0 = time.perf_counter()
    model = model_class(config, train_data._dataset).to(config["device"])
    build_s = time.perf_counter() - t0
    prepare_training(config, model)
    trainer = registry.get_trainer(model_class, config)(config, model)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        train_times.append(time.perf_counter() - t0)
    eval_times = []
    for _ in range(max(1, eval_repeats)):
        t0 = time.perf_counter()
        result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        eval_times.append(time.perf_counter() - t0)
    extra = inspect(config, model, train_data, test_data) if inspect is not None else {}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "model": model_name, "dataset": dataset, "device": str(config["device"]),
        "load_s": round(load_s, 3), "build_s": round(build_s, 3), "train_epoch_s": round(min(train_times), 3),
        "eval_s": round(min(eval_times), 3), "train_epoch_all_s": [round(t, 3) for t in train_times],
        "eval_all_s": [round(t, 3) for t in eval_times], "peak_mem_mb": round(peak, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "test_result": {k: float(v) for k, v in result.items()}, **extra,
    }


def compare(model_name: str, dataset: str, overrides: dict, reference: str = "SASRec",
            epochs: int = 1, eval_repeats: int = 3) -> dict:
    ref = measure(reference, dataset, overrides, epochs, eval_repeats)
    cur = measure(model_name, dataset, overrides, epochs, eval_repeats)
    return {
        "model": cur, "reference": ref,
        "train_ratio": round(cur["train_epoch_s"] / max(ref["train_epoch_s"], 1e-9), 3),
        "eval_ratio": round(cur["eval_s"] / max(ref["eval_s"], 1e-9), 3),
    }


def provenance(tool: str, argv=None) -> dict:
    """What a checked-in result file must say about itself: command, commit, date, device, load."""
    from datetime import datetime, timezone

    from recbole_mm.benchmark import device_description, git_commit

    return {
        "command": f"python -m {tool} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": git_commit(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device_description(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="model cost relative to SASRec")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", default="scientific_mm")
    parser.add_argument("--reference", default="SASRec")
    parser.add_argument("--epochs_timed", type=int, default=1)
    parser.add_argument("--eval_repeats", type=int, default=3,
                        help="full-ranking passes timed per model (the fastest is reported)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args, rest = parser.parse_known_args(argv)
    from recbole_mm.config import parse_overrides
    from recbole_mm.encoders.io import atomic_write_json

    overrides = parse_overrides(rest)
    out = compare(args.model, args.dataset, overrides, args.reference, args.epochs_timed,
                  args.eval_repeats)
    out["provenance"] = provenance("recbole_mm.cost", argv)
    print(json.dumps(out, indent=2))
    print(f"{args.model} vs {args.reference} on {args.dataset}: train epoch x{out['train_ratio']}, "
          f"full-ranking eval x{out['eval_ratio']}")
    if args.json:
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
