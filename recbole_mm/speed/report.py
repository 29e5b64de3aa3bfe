"""The speed report's rows and markdown table."""
from __future__ import annotations

from recbole_mm.speed.floor import epoch_flops


def summarise(model_name: str, paths: dict, rate: float) -> dict:
    pad, new = paths["padded"], paths["trimmed"]
    flops = epoch_flops(new["tokens"], new["rows"], new["n_items"], new["hidden_size"],
                        new["inner_size"], new["n_layers"])
    floor_s = flops / rate
    return {
        "model": model_name,
        "padded_epoch_s": pad["train_epoch_s"], "trimmed_epoch_s": new["train_epoch_s"],
        "train_speedup": round(pad["train_epoch_s"] / max(new["train_epoch_s"], 1e-9), 2),
        "padded_eval_s": pad["eval_s"], "trimmed_eval_s": new["eval_s"],
        "eval_speedup": round(pad["eval_s"] / max(new["eval_s"], 1e-9), 2),
        "tokens": new["tokens"], "padded_positions": pad["positions"],
        "trimmed_positions": new["positions"],
        "floor_tflop": float(f"{flops / 1e12:.4g}"), "floor_s": float(f"{floor_s:.4g}"),
        "trimmed_over_floor": round(new["train_epoch_s"] / max(floor_s, 1e-9), 2),
    }


def markdown(rows: list, dataset: str) -> str:
    head = ("| model | epoch padded (s) | epoch trimmed (s) | speed-up | eval padded (s) | "
            "eval trimmed (s) | real tokens | positions padded | positions trimmed | "
            "floor (s) | trimmed / floor |")
    lines = [f"Speed report, {dataset}", "", head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['padded_epoch_s']:.2f} | {r['trimmed_epoch_s']:.2f} | "
            f"**{r['train_speedup']:.1f}x** | {r['padded_eval_s']:.2f} | {r['trimmed_eval_s']:.2f} | "
            f"{r['tokens']:,} | {r['padded_positions']:,} | {r['trimmed_positions']:,} | "
            f"{r['floor_s']:.2f} | {r['trimmed_over_floor']:.1f}x |")
    return "\n".join(lines)
