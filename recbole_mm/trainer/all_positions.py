"""The trainer side of ``train_all_positions``: every training step uses
:func:`recbole_mm.model.all_positions.all_position_loss` (RecBole's ``loss_func`` argument)."""
from __future__ import annotations

from functools import partial

from recbole_mm.model.all_positions import all_position_loss


class AllPositionTraining:
    """Mixin for a RecBole ``Trainer`` class: the loss is taken at every position."""

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        loss_func = loss_func or partial(all_position_loss, self.model)
        return super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)


def with_all_positions(trainer_class):
    """``trainer_class`` with :class:`AllPositionTraining` mixed in (cached per class)."""
    if issubclass(trainer_class, AllPositionTraining):
        return trainer_class
    cached = _CACHE.get(trainer_class)
    if cached is None:
        cached = _CACHE[trainer_class] = type(f"AllPosition{trainer_class.__name__}",
                                              (AllPositionTraining, trainer_class), {})
    return cached


_CACHE: dict = {}
