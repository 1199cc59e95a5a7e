"""Preference losses on pairs: the log-probability of a response, and the module every pair loss shares.

A response's log-probability is the mean (the book) or the sum (TRL's DPO default) of its token log-probs, over
the targets the preference collator leaves (the response and its end-of-text; the prompt and padding are -100).
The token log-probs come from :func:`~gpt_sft.train.loss.per_target_losses`, the same exact shortcuts as SFT's loss
(output layer only at targets, padding-free rows), so a pair costs what its tokens cost.

A method's loss is a :class:`PairLoss` whose :meth:`~PairLoss.terms` turn the ``(2B,)`` log-probs (chosen rows,
then rejected rows) into per-pair figures. An optimizer step's loss is the mean over all pairs of all its
micro-batches on all processes (``num_pairs``), so gradient accumulation and data parallelism give one large batch's
update.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.collator import IGNORE_INDEX
from .loss import LossPaths, per_target_losses
from .preference_config import REDUCTIONS

# the figures of a method that scores each response with a reward (DPO, SimPO): per pair, loss first
REWARD_FIGURES = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy")


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, reduction: str = "mean",
                      paths: LossPaths = LossPaths()) -> torch.Tensor:
    """The log-probability of each row's targets, ``(R,)``, for the book's shifted ``input_ids`` and
    ``targets`` (R, T): the mean or sum of the token log-probs (0 for a row without targets)."""
    targets = targets.to(input_ids.device)
    token_logps = -per_target_losses(model, input_ids, targets, paths).float()  # (M,), row-major
    rows = (targets != IGNORE_INDEX).nonzero()[:, 0]  # (M,): the row of each target
    total = torch.zeros(targets.shape[0], device=token_logps.device).index_add(0, rows, token_logps)
    if reduction == "sum":
        return total
    counts = (targets != IGNORE_INDEX).sum(1).clamp(min=1)
    return total / counts.to(total.device)


class PairLoss(nn.Module):
    """The policy with a pair loss as its forward (what Accelerate wraps for data parallelism).

    ``figures`` names what :meth:`terms` returns per pair, ``"loss"`` first; ``extra`` is what a method needs
    besides the policy's log-probs (DPO's reference log-probs), computed outside this module so that DDP never
    synchronises it."""

    figures: tuple[str, ...] = ("loss",)

    def __init__(self, model: nn.Module, paths: LossPaths, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--logprob-reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.model = model
        self.paths, self.reduction = paths, reduction

    def terms(self, logps: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-pair ``(B,)`` values of every name in :attr:`figures` from the ``(2B,)`` log-probs."""
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, extra: torch.Tensor | None = None,
                num_pairs: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, sums)``: the summed pair losses divided by ``num_pairs`` (default: this batch's pairs), and the
        sums over this batch's pairs of :attr:`figures` (detached)."""
        terms = self.terms(sequence_logprobs(self.model, input_ids, targets, self.reduction, self.paths), extra)
        count = terms["loss"].shape[0] if num_pairs is None else num_pairs
        sums = torch.stack([terms[name].detach().float().sum() for name in self.figures])
        return terms["loss"].sum() / count, sums


__all__ = ["REDUCTIONS", "REWARD_FIGURES", "PairLoss", "sequence_logprobs"]
