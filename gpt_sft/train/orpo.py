"""ORPO as a training stage: instruction tuning and preference tuning in one stage, with no reference model.

Hong, Lee and Thorne (2024), "ORPO: Monolithic Preference Optimization without Reference Model" (EMNLP 2024,
arXiv:2403.07691). Per pair, with ``p(y) = exp(mean token log-prob of y)`` (the response's geometric-mean token
probability, as the paper defines it)::

    loss     = NLL(chosen) + lambda * odds_ratio
    odds_ratio = -log sigmoid(log_odds(chosen) - log_odds(rejected)),   log_odds(y) = log p(y) - log(1 - p(y))

``NLL(chosen)`` is the SFT loss on the chosen response, here its mean token NLL per pair (so that accumulation and
processes average over pairs, as every preference stage does). No reference model: a step costs the policy's
forward and backward passes on both responses. ``--orpo-lambda`` defaults to 0.1, the value of the paper's Mistral-ORPO
runs (the authors' ``scripts/run_mistral_orpo_beta.sh``: ``--alpha 0.1``; TRL's ``ORPOConfig.beta`` defaults to the
same 0.1). It starts from a base model (no SFT stage) or from an SFT checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .pair_loss import PairLoss
from .preference_config import ORPOConfig
from .preference_stage import PreferenceStage


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """``log(p / (1 - p))`` from ``log p`` (< 0): ``log(1 - p)`` as ``log(-expm1(log p))``, exact near p = 1. A
    response the model is certain of to float precision (``log p == 0``) is taken as ``p = 1 - 1e-7``."""
    logp = logp.clamp(max=-1e-7)
    return logp - torch.log(-torch.expm1(logp))


def orpo_terms(logps: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """Per-pair ORPO loss and its parts from ``(2B,)`` mean token log-probs (chosen rows, then rejected rows)."""
    chosen, rejected = logps.chunk(2)
    margin = log_odds(chosen) - log_odds(rejected)
    odds_ratio = -F.logsigmoid(margin)
    nll = -chosen
    return {"loss": nll + lam * odds_ratio, "nll": nll, "odds_ratio": odds_ratio, "margin": margin,
            "accuracy": (margin > 0).float()}


FIGURES = ("loss", "nll", "odds_ratio", "margin", "accuracy")


class OddsRatioLoss(PairLoss):
    """The policy with the ORPO loss as its forward (mean token log-probs: ``p`` is defined by them)."""

    figures = FIGURES

    def __init__(self, model, paths, lam: float) -> None:
        super().__init__(model, paths, "mean")
        self.lam = lam

    def terms(self, logps: torch.Tensor, extra: torch.Tensor | None) -> dict[str, torch.Tensor]:
        return orpo_terms(logps, self.lam)


class ORPOStage(PreferenceStage):
    """ORPO: the chosen response's NLL plus lambda times the odds-ratio term, on preference pairs."""

    command = "orpo"
    config_type = ORPOConfig
    title = "ORPO"
    tuned = "instruction- and preference-tuned with ORPO"
    from_sft = False
    figure_labels = dict(zip(FIGURES, ("ORPO loss", "chosen NLL", "odds-ratio term", "log-odds margin",
                                       "preference accuracy")))
    summary = {"loss": "loss", "nll": "NLL", "odds_ratio": "odds-ratio term", "margin": "log-odds margin",
               "accuracy": "accuracy"}
    panels = (("ORPO loss", ("loss",)), ("NLL of the chosen response", ("nll",)),
              ("Odds-ratio term -log sigmoid(margin)", ("odds_ratio",)),
              ("Log-odds margin (chosen - rejected)", ("margin",)), ("Preference accuracy", ("accuracy",)))

    def describe(self) -> str:
        return f"ORPO: lambda {self.cfg.orpo_lambda}, mean token log-probs, no reference model"

    def loss_module(self, model):
        return OddsRatioLoss(model, self.cfg.loss_paths(), self.cfg.orpo_lambda)

    def settings(self) -> dict:
        return {"orpo_lambda": self.cfg.orpo_lambda, "reference": "none"}

    def card_intro(self, entry: dict) -> str:
        return (f"Odds ratio preference optimisation (lambda {entry['orpo_lambda']}, no reference model; Hong et al. "
                f"2024) of the model above, on {self.cfg.data}; each figure is a mean over pairs, before → after "
                "tuning (the loss is the chosen response's NLL + lambda × the odds-ratio term -log σ(margin); the "
                "margin is log-odds(chosen) - log-odds(rejected), with log-odds = log p - log(1 - p) and p the "
                "response's mean token probability; accuracy is the share of pairs with a positive margin):")


__all__ = ["FIGURES", "ORPOConfig", "ORPOStage", "OddsRatioLoss", "log_odds", "orpo_terms"]
