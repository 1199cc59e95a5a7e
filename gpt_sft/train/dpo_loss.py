"""Direct preference optimisation (DPO): the loss on pairs.

The loss of a pair is ``-logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))`` and a response's reward
``beta * (pi - ref)``, with ``pi`` the policy's and ``ref`` the reference model's log-probability of the response
(:func:`~gpt_sft.train.pair_loss.sequence_logprobs`: the mean of its token log-probs, as the book has it, or their
sum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .loss import LossPaths
from .pair_loss import REDUCTIONS, REWARD_FIGURES, PairLoss, sequence_logprobs


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
FIGURES = REWARD_FIGURES


class PreferenceLoss(PairLoss):
    """The policy with the DPO loss as its forward. The reference log-probs are an input (``extra``): they come
    from a frozen copy, the policy with its LoRA adapters off, or a pass over the data before training."""

    figures = FIGURES

    def __init__(self, model: nn.Module, paths: LossPaths, beta: float, reduction: str) -> None:
        super().__init__(model, paths, reduction)
        self.beta = beta

    def terms(self, logps: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return dpo_terms(logps, extra, self.beta)


__all__ = ["FIGURES", "PreferenceLoss", "REDUCTIONS", "dpo_terms", "sequence_logprobs"]
