"""The arithmetic floor of a training epoch: FLOPs of the real tokens plus the full softmax."""
from __future__ import annotations

import time

import torch


def epoch_flops(tokens: int, rows: int, n_items: int, hidden: int, inner: int, layers: int) -> float:
    """Forward + backward FLOPs (3x forward) of one epoch of a SASRec-shaped model that computes
    only real positions: per token and layer the Q/K/V/O projections (4 d^2 multiply-adds) and the
    feed-forward block (2 d * inner), plus, per training row, scores against every item
    (``d * n_items``). Attention scores themselves are left out (histories are short). A lower
    bound for models with several encoders."""
    per_token = layers * (4 * hidden * hidden + 2 * hidden * inner) * 2
    softmax = rows * n_items * hidden * 2
    return 3.0 * (tokens * per_token + softmax)


def matmul_rate(hidden: int, n_items: int, rows: int = 512, repeats: int = 5) -> dict:
    """Measured float32 matrix-product FLOP/s on this machine (same threads as the run) for the
    two shapes an epoch is made of: token projections ``[4096, d] @ [d, d]`` and the softmax
    ``[rows, d] @ [d, n_items]``; the faster is the floor's rate."""
    out = {}
    for name, (m, k, n) in {"projection": (4096, hidden, hidden),
                            "softmax": (rows, hidden, n_items)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[name] = 2.0 * m * k * n / best
    out["rate"] = max(out["projection"], out["softmax"])
    return out
