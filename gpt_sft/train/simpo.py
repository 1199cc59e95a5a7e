"""SimPO as a training stage: preference tuning with a reward that needs no reference model.

Meng, Xia and Chen (2024), "SimPO: Simple Preference Optimization with a Reference-Free Reward" (NeurIPS 2024,
arXiv:2405.14734). A response's reward is ``beta`` times its mean token log-prob (the length-normalised
likelihood the model generates by), and the loss of a pair asks the chosen reward to beat the rejected one by a
margin ``gamma``::

    loss = -log sigmoid(beta * mean_logp(chosen) - beta * mean_logp(rejected) - gamma)

Defaults: ``beta`` 2.0 and ``gamma`` 1.0, the authors' Llama-3-Base recipe (``training_configs/
llama-3-8b-base-simpo.yaml`` in princeton-nlp/SimPO: ``beta: 2.0``, ``gamma_beta_ratio: 0.5``); the paper reports
``beta`` between 2.0 and 2.5 for its base and instruct settings and tunes ``gamma`` per setting. Like DPO it tunes an
SFT model (the main job's output by default); unlike DPO it keeps no reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pair_loss import REWARD_FIGURES, PairLoss
from .preference_config import SimPOConfig
from .preference_stage import PreferenceStage, reward_figures


def simpo_terms(logps: torch.Tensor, beta: float, gamma: float) -> dict[str, torch.Tensor]:
    """Per-pair SimPO loss, rewards, margin and preference accuracy from ``(2B,)`` mean token log-probs (chosen
    rows, then rejected rows)."""
    chosen, rejected = logps.chunk(2)
    chosen_reward, rejected_reward = beta * chosen, beta * rejected
    margin = chosen_reward - rejected_reward
    return {"loss": -F.logsigmoid(margin - gamma), "chosen_reward": chosen_reward,
            "rejected_reward": rejected_reward, "margin": margin, "accuracy": (margin > 0).float()}


FIGURES = REWARD_FIGURES


class SimPOLoss(PairLoss):
    """The policy with the SimPO loss as its forward (mean token log-probs: the reward is defined by them)."""

    figures = FIGURES

    def __init__(self, model, paths, beta: float, gamma: float) -> None:
        super().__init__(model, paths, "mean")
        self.beta, self.gamma = beta, gamma

    def terms(self, logps: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return simpo_terms(logps, self.beta, self.gamma)


class SimPOStage(PreferenceStage):
    """SimPO: ``-log sigmoid(beta * (mean_logp_c - mean_logp_r) - gamma)``, no reference model."""

    command = "simpo"
    config_type = SimPOConfig
    title = "SimPO"
    figure_labels, panels = reward_figures("SimPO", "Rewards (beta x mean token log-prob)")

    def describe(self) -> str:
        return f"SimPO: beta {self.cfg.beta}, gamma {self.cfg.gamma}, mean token log-probs, no reference model"

    def loss_module(self, model):
        return SimPOLoss(model, self.cfg.loss_paths(), self.cfg.beta, self.cfg.gamma)

    def settings(self) -> dict:
        return {"beta": self.cfg.beta, "gamma": self.cfg.gamma, "reference": "none"}

    def card_intro(self, entry: dict) -> str:
        return (f"Simple preference optimisation (beta {entry['beta']}, gamma {entry['gamma']}, no reference model; "
                f"Meng et al. 2024) of the SFT model above, on {self.cfg.data}; each figure is a mean over pairs, "
                "before → after tuning (a reward is beta × the response's mean token log-probability; the loss is "
                "-log σ(margin - gamma); accuracy is the share of pairs whose chosen response gets the higher "
                "reward):")


__all__ = ["FIGURES", "SimPOConfig", "SimPOLoss", "SimPOStage", "simpo_terms"]
