"""One model, two paths: RecBole's padded loaders and the plugin's trimmed ones, timed alike."""
from __future__ import annotations

import torch

from recbole_mm.cost import measure

#: the two paths compared; ``trim_padding: false`` restores RecBole's loaders and modules exactly
PATHS = {"padded": {"trim_padding": False}, "trimmed": {}}


def count_positions(config, model, train_data, test_data) -> dict:
    """Real history tokens of the training rows against the positions one epoch's batches hold
    (rows x width, summed over batches; for a model encoding each batch in length groups,
    :func:`recbole_mm.fast.use_length_groups`, rows x width summed over the groups), and the shape
    figures the floor needs."""
    from recbole_mm.data.batching import length_groups

    ds = train_data._dataset
    lengths = ds.inter_feat[ds.item_list_length_field]
    grouped = getattr(model, "length_grouped_loss", False)
    positions = 0
    for batch in train_data:
        seq = batch[ds.item_id_list_field]
        if grouped:
            positions += sum(len(rows) * width for rows, width in length_groups((seq > 0).sum(1)))
        else:
            positions += seq.numel()
    return {"rows": int(len(lengths)), "tokens": int(lengths.sum()), "positions": int(positions),
            "n_items": int(ds.item_num), "hidden_size": int(config["hidden_size"] or 64),
            "inner_size": int(config["inner_size"] or 4 * int(config["hidden_size"] or 64)),
            "n_layers": int(config["n_layers"] or 2)}


def count_positions_and_parts(config, model, train_data, test_data) -> dict:
    """:func:`count_positions` plus :func:`recbole_mm.speed.parts.epoch_parts` (one more epoch)."""
    from recbole_mm.speed.parts import epoch_parts

    out = count_positions(config, model, train_data, test_data)
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config["learning_rate"] or 1e-3))
    out["parts"] = epoch_parts(model, train_data, optimizer)
    return out


def measure_paths(model_name: str, dataset: str, overrides: dict, epochs: int = 2,
                  eval_repeats: int = 2, parts: bool = False, paths=tuple(PATHS)) -> dict:
    """``{'padded': result, 'trimmed': result}`` (see :func:`recbole_mm.cost.measure`), or only
    the ``paths`` named; with ``parts`` the trimmed path also reports where an epoch's time goes."""
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ValueError(f"--paths: unknown path(s) {unknown}; expected some of {list(PATHS)}.")
    return {path: measure(model_name, dataset, {**overrides, **PATHS[path]}, epochs, eval_repeats,
                          inspect=count_positions_and_parts if parts and path == "trimmed"
                          else count_positions)
            for path in paths}
