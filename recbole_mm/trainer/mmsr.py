"""``MMSRTrainer``: RecBole's Trainer with MMSR's optimiser and LR schedule (spec MMSR.md 3.5, 7.3).

* AdamW with three parameter groups: the text encoder (``text_lr``, weight decay 0), the vision
  encoder (``image_lr``, weight decay 0) and everything else - text_pooler, cv_proj, fusion,
  sequence encoder (``learning_rate``, ``weight_decay``). Frozen parameters are left out.
* Step schedule: every group's LR is multiplied by ``0.1 ** (epoch // lr_step_epochs)``
  (x0.1 from epoch ``lr_step_epochs`` on; ``lr_step_epochs: 0`` disables it).
"""
from __future__ import annotations

import torch
from recbole.trainer import Trainer


def mmsr_param_groups(model, config) -> list[dict]:
    """The three AdamW groups (empty groups dropped), each tagged with ``name``."""
    groups = {"text_encoder": [], "image_encoder": [], "rest": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("item_tower.text_encoder."):
            groups["text_encoder"].append(p)
        elif name.startswith("item_tower.image_encoder."):
            groups["image_encoder"].append(p)
        else:
            groups["rest"].append(p)
    lr = float(config["learning_rate"])
    settings = {
        "text_encoder": (float(config["text_lr"] or lr), 0.0),
        "image_encoder": (float(config["image_lr"] or lr), 0.0),
        "rest": (lr, float(config["weight_decay"] or 0.0)),
    }
    return [{"params": ps, "lr": settings[k][0], "weight_decay": settings[k][1], "name": k}
            for k, ps in groups.items() if ps]


def lr_factor(epoch: int, step_epochs) -> float:
    step_epochs = int(step_epochs or 0)
    return 0.1 ** (epoch // step_epochs) if step_epochs > 0 else 1.0


class MMSRTrainer(Trainer):
    def _build_optimizer(self, **kwargs):
        learner = (self.config["learner"] or "adamw").lower()
        groups = mmsr_param_groups(self.model, self.config)
        if learner == "adamw":
            opt = torch.optim.AdamW(groups)
        elif learner == "adam":
            opt = torch.optim.Adam(groups)
        else:
            raise ValueError(f"MMSRTrainer supports learner adamw or adam, got '{learner}'.")
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        return opt

    def set_epoch_lr(self, epoch_idx: int) -> None:
        factor = lr_factor(epoch_idx, self.config["lr_step_epochs"])
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        self.set_epoch_lr(epoch_idx)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)
