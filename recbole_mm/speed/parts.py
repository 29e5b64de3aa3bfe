"""Where a training epoch's time goes: forward time per top-level sub-module of the model and per
named model method, the rest of the forward, backward and optimizer step.

Forward pre/post hooks on each direct child of the model accumulate wall time (nested calls of the
same child are counted once, at the outermost level). Models that run their layers functionally
(SGP4SR's packed encoders) are timed through their methods instead: :data:`METHODS` names, per
model, the methods wrapped for the measurement (on the instance, removed afterwards). One epoch is
run by hand (``calculate_loss``, ``backward``, ``optimizer.step``) so the phases are timed apart.
"""
from __future__ import annotations

import time
from collections import defaultdict

import torch

#: model class name -> methods whose forward time is reported (outermost calls)
METHODS = {"SGP4SR": ("item_tables", "encode", "_run_packed", "_head_logits")}


def epoch_parts(model, train_data, optimizer, max_batches: int | None = None) -> dict:
    """Seconds per part for one training epoch (or ``max_batches`` batches)."""
    spent = defaultdict(float)
    started: dict = {}
    depth = defaultdict(int)
    handles = []
    methods = {}

    def timed(name, fn):
        def call(*args, **kwargs):
            if depth[name] == 0:
                started[name] = time.perf_counter()
            depth[name] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[name] -= 1
                if depth[name] == 0:
                    spent[name] += time.perf_counter() - started.pop(name)
        return call

    for name in METHODS.get(type(model).__name__, ()):
        methods[f"{name}()"] = getattr(model, name)
        setattr(model, name, timed(f"{name}()", methods[f"{name}()"]))

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
        for name in methods:
            delattr(model, name[:-2])
    mods = {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
            if v > 0 and k not in methods}
    meths = {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
             if k in methods}
    return {"batches": batches, "forward_s": round(forward, 3),
            "forward_by_module_s": mods, "forward_by_method_s": meths,
            "forward_outside_modules_s": round(forward - sum(mods.values()), 3),
            "backward_s": round(backward, 3), "optimizer_step_s": round(step, 3),
            "threads": torch.get_num_threads()}
