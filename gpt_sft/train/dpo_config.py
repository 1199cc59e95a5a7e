"""The DPO command's options: the preference options (the training options, same names, flags and YAML keys, with
the book's DPO recipe as defaults), plus DPO's own."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.options import option
from .pair_loss import REDUCTIONS
from .preference_stage import PreferenceConfig


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
        if not math.isfinite(float(self.beta)) or self.beta <= 0:
            raise ValueError(f"--beta must be a positive number, got {self.beta}")
        if self.logprob_reduction not in REDUCTIONS:
            raise ValueError(f"--logprob-reduction must be one of {', '.join(REDUCTIONS)}, got {self.logprob_reduction!r}")


__all__ = ["DPOConfig"]
