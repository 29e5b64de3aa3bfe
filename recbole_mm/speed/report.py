"""The speed report's rows and markdown table."""
from __future__ import annotations

from recbole_mm.speed.floor import epoch_flops


def summarise(model_name: str, paths: dict, rate: float) -> dict:
    if set(paths) != {"padded", "trimmed"}:  # one path only: its own figures
        (name, run), = paths.items()
        flops = epoch_flops(run["tokens"], run["rows"], run["n_items"], run["hidden_size"],
                            run["inner_size"], run["n_layers"])
        return {"model": model_name, "path": name, "epoch_s": run["train_epoch_s"],
                "eval_s": run["eval_s"], "tokens": run["tokens"], "positions": run["positions"],
                "floor_s": float(f"{flops / rate:.4g}"),
                "over_floor": round(run["train_epoch_s"] * rate / max(flops, 1e-9), 2)}
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
    if rows and "path" in rows[0]:
        lines = [f"Speed report, {dataset} ({rows[0]['path']} path only)", "",
                 "| model | epoch (s) | eval (s) | real tokens | positions | floor (s) | epoch / floor |",
                 "|" + "---|" * 7]
        lines += [f"| {r['model']} | {r['epoch_s']:.2f} | {r['eval_s']:.2f} | {r['tokens']:,} | "
                  f"{r['positions']:,} | {r['floor_s']:.2f} | {r['over_floor']:.1f}x |" for r in rows]
        return "\n".join(lines)
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['padded_epoch_s']:.2f} | {r['trimmed_epoch_s']:.2f} | "
            f"**{r['train_speedup']:.1f}x** | {r['padded_eval_s']:.2f} | {r['trimmed_eval_s']:.2f} | "
            f"{r['tokens']:,} | {r['padded_positions']:,} | {r['trimmed_positions']:,} | "
            f"{r['floor_s']:.2f} | {r['trimmed_over_floor']:.1f}x |")
    return "\n".join(lines)
