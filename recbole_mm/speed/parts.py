"""Where a training epoch's time goes: forward time per top-level sub-module of the model, the
rest of the forward (losses, score products outside sub-modules), backward and optimizer step.

Forward pre/post hooks on each direct child of the model accumulate wall time (nested calls of the
same child are counted once, at the outermost level); one epoch of the trimmed path is run by hand
(``calculate_loss``, ``backward``, ``optimizer.step``) so the three phases are timed apart.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch


def epoch_parts(model, train_data, optimizer, max_batches: int | None = None) -> dict:
    """Seconds per part for one training epoch (or ``max_batches`` batches)."""
    spent = defaultdict(float)
    started: dict = {}
    depth = defaultdict(int)
    handles = []

    def pre(name):
        def hook(module, args):
            if depth[name] == 0:
                started[name] = time.perf_counter()
            depth[name] += 1
        return hook

    def post(name):
        def hook(module, args, output):
            depth[name] -= 1
            if depth[name] == 0:
                spent[name] += time.perf_counter() - started.pop(name)
        return hook

    for name, child in model.named_children():
        handles.append(child.register_forward_pre_hook(pre(name)))
        handles.append(child.register_forward_hook(post(name)))
    forward = backward = step = 0.0
    batches = 0
    model.train()
    try:
        for batch in train_data:
            t0 = time.perf_counter()
            losses = model.calculate_loss(batch)
            loss = sum(losses) if isinstance(losses, tuple) else losses
            t1 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            forward, backward, step = forward + t1 - t0, backward + t2 - t1, step + t3 - t2
            batches += 1
            if max_batches and batches >= max_batches:
                break
    finally:
        for h in handles:
            h.remove()
    children = {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1]) if v > 0}
    return {"batches": batches, "forward_s": round(forward, 3),
            "forward_by_module_s": children,
            "forward_outside_modules_s": round(forward - sum(spent.values()), 3),
            "backward_s": round(backward, 3), "optimizer_step_s": round(step, 3),
            "threads": torch.get_num_threads()}
