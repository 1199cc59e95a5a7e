"""Which exact shortcuts compute the loss: a plain dataclass, in a module that imports no torch, so the training
options (:meth:`~gpt_sft.train.config.TrainConfig.loss_paths`) parse without it. :mod:`.loss` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LossPaths:
    """Which exact shortcuts compute the loss (each one needs the one before)."""

    targets_only: bool = True
    padding_free: bool = True
    share_prefix: bool = True

    @property
    def book(self) -> bool:
        return not self.targets_only


BOOK = LossPaths(targets_only=False, padding_free=False, share_prefix=False)

__all__ = ["BOOK", "LossPaths"]
