"""Direct preference optimisation (DPO): log-probabilities of responses and the loss on pairs.

A response's log-probability is the mean (the book) or the sum (TRL's default) of its token
log-probs, over the targets the preference collator leaves (the response and its end-of-text; the
prompt and padding are -100). The loss of a pair is ``-logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))``
and a response's reward ``beta * (pi - ref)``, with ``pi`` the policy's and ``ref`` the reference
model's log-probability.

The token log-probs come from :func:`~gpt_sft.train.loss.per_target_losses`, the same exact
shortcuts as SFT's loss (output layer only at targets, padding-free rows), so a pair costs what its
tokens cost. An optimizer step's loss is the mean over all pairs of all its micro-batches on all
processes (``num_pairs``), so gradient accumulation and data parallelism give one large batch's update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collator import IGNORE_INDEX
from .loss import LossPaths, per_target_losses

REDUCTIONS = ("mean", "sum")


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


def dpo_terms(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair loss, rewards, margin and preference accuracy from ``(2B,)`` log-probs (chosen rows,
    then rejected rows)."""
    policy_chosen, policy_rejected = policy_logps.chunk(2)
    ref_chosen, ref_rejected = ref_logps.to(policy_logps).chunk(2)
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return {"loss": -F.logsigmoid(beta * logits), "chosen_reward": chosen_rewards, "rejected_reward": rejected_rewards,
            "margin": chosen_rewards - rejected_rewards, "accuracy": (chosen_rewards > rejected_rewards).float()}


# The figures a step or an evaluation reports, in this order (each a mean over pairs).
FIGURES = ("loss", "chosen_reward", "rejected_reward", "margin", "accuracy")


class PreferenceLoss(nn.Module):
    """The policy with the DPO loss as its forward (what Accelerate wraps for data parallelism). The
    reference log-probs are an input: they come from a frozen copy, the policy with its LoRA adapters
    off, or a pass over the data before training, never from a module that DDP would synchronise."""

    def __init__(self, model: nn.Module, paths: LossPaths, beta: float, reduction: str) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--logprob-reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.model = model
        self.paths, self.beta, self.reduction = paths, beta, reduction

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, ref_logps: torch.Tensor,
                num_pairs: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, sums)``: the summed pair losses divided by ``num_pairs`` (default: this batch's
        pairs), and the sums over this batch's pairs of :data:`FIGURES` (detached, ``(5,)``)."""
        terms = dpo_terms(sequence_logprobs(self.model, input_ids, targets, self.reduction, self.paths),
                          ref_logps, self.beta)
        count = terms["loss"].shape[0] if num_pairs is None else num_pairs
        sums = torch.stack([terms[name].detach().sum() for name in FIGURES])
        return terms["loss"].sum() / count, sums


__all__ = ["FIGURES", "PreferenceLoss", "REDUCTIONS", "dpo_terms", "sequence_logprobs"]
