"""The preference stages' options: those every one shares (:class:`PreferenceConfig`: the training options, same
names, flags and YAML keys, with the book's DPO recipe as defaults) and each method's own (DPO, ORPO, SimPO), in a
module that imports no torch: ``gpt-sft dpo --help`` (orpo, simpo) and an option error answer without it.
:mod:`.preference_stage`, :mod:`.orpo` and :mod:`.simpo` re-export their stage's options, :mod:`.pair_loss`
:data:`REDUCTIONS`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.options import option
from ..data.constants import BOOK_PREFERENCE_DATA_URL
from .config import TrainConfig

# A response's log-probability: the mean (the book) or the sum (TRL's DPO default) of its token log-probs.
REDUCTIONS = ("mean", "sum")


@dataclass
class PreferenceConfig(TrainConfig):
    """The options every preference stage shares: the training options, with the book's DPO recipe as defaults."""

    data: str = option(BOOK_PREFERENCE_DATA_URL, "Preference data: URL, .json/.jsonl file or Hub data set name; "
                   "Alpaca pairs (instruction, input, output, chosen, rejected) or TRL's conversational pairs "
                   "(prompt: messages ending on a user turn; chosen, rejected: one assistant message each)")
    data_format: str = option("auto", "What --data holds: auto (what its first entry has), alpaca or messages (TRL's "
                              "conversational pairs)", choices=["auto", "alpaca", "messages"])
    train_on: str = option("last", "Conversational pairs: the loss covers the answer, the last turn (the prompt's "
                           "earlier answers are the same on both sides); --no-mask-prompt adds the whole conversation",
                           choices=["last"])
    prompt_style: str | None = option(None, "Prompt style; default: the one the --model checkpoint was trained with "
                                  "(its recipe), else alpaca")
    mask_prompt: bool = option(True, "Exclude the prompt tokens from the log-probabilities (the book does)")
    epochs: int = option(1, "Number of passes over the training split")
    learning_rate: float = option(5e-6, "AdamW learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")


def check_number(flag: str, value: float, positive: bool = False) -> None:
    """A method's number option is finite and >= 0 (> 0 if ``positive``), else a ValueError naming ``flag``."""
    if not math.isfinite(float(value)) or value < 0 or (positive and value == 0):
        raise ValueError(f"{flag} must be {'a positive number' if positive else 'a number >= 0'}, got {value}")


@dataclass
class DPOConfig(PreferenceConfig):
    """Preference tuning with DPO of a fine-tuned model (the book's chapter 7 DPO recipe by default)."""

    model: str = option("outputs/gpt2-medium-sft", "The SFT model to tune, which is also the reference: one of our "
                    "checkpoints (the main job's output by default) or any source --model takes in training")
    output_dir: str = option("outputs/gpt2-medium-dpo", "Where the checkpoint folder and everything else goes")
    beta: float = option(0.1, "DPO's beta: how far the policy may move from the reference (the book's 0.1)")
    logprob_reduction: str = option("mean", "A response's log-probability: the mean of its token log-probs (the "
                                "book) or their sum (TRL's default)", choices=list(REDUCTIONS))
    precompute_reference: bool = option(False, "Compute the reference model's log-probs of every pair once before "
                                    "training, then free the reference copy (less memory and time per step)")

    def __post_init__(self):
        super().__post_init__()
        check_number("--beta", self.beta, positive=True)
        if self.logprob_reduction not in REDUCTIONS:
            raise ValueError(f"--logprob-reduction must be one of {', '.join(REDUCTIONS)}, got {self.logprob_reduction!r}")


@dataclass
class ORPOConfig(PreferenceConfig):
    """Instruction and preference tuning in one stage with ORPO (no reference model), from a base or an SFT model."""

    model: str = option("gpt2-medium (355M)", "The model to tune: a base model (ORPO needs no SFT stage before it) or "
                    "one of our SFT checkpoints; any source --model takes in training")
    output_dir: str = option("outputs/gpt2-medium-orpo", "Where the checkpoint folder and everything else goes")
    orpo_lambda: float = option(0.1, "ORPO's lambda: the weight of the odds-ratio term beside the chosen response's "
                                "NLL (0.1, the paper's Mistral-ORPO setting)")

    def __post_init__(self):
        super().__post_init__()
        check_number("--orpo-lambda", self.orpo_lambda)


@dataclass
class SimPOConfig(PreferenceConfig):
    """Preference tuning with SimPO of a fine-tuned model (no reference model)."""

    model: str = option("outputs/gpt2-medium-sft", "The SFT model to tune: one of our checkpoints (the main job's "
                    "output by default) or any source --model takes in training")
    output_dir: str = option("outputs/gpt2-medium-simpo", "Where the checkpoint folder and everything else goes")
    beta: float = option(2.0, "SimPO's beta: a response's reward is beta x its mean token log-prob (2.0, the SimPO "
                         "authors' Llama-3-Base recipe)")
    gamma: float = option(1.0, "SimPO's gamma: the reward margin the chosen response must beat the rejected one by "
                          "(1.0 = 0.5 x beta, the authors' gamma/beta ratio)")

    def __post_init__(self):
        super().__post_init__()
        check_number("--beta", self.beta, positive=True)
        check_number("--gamma", self.gamma)


__all__ = ["DPOConfig", "ORPOConfig", "PreferenceConfig", "REDUCTIONS", "SimPOConfig", "check_number"]
