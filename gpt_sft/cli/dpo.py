"""``gpt-sft dpo`` (``accelerate launch scripts/dpo.py``): preference tuning of a fine-tuned model with DPO.

Without arguments it runs the book's DPO recipe: the main job's SFT model (``outputs/gpt2-medium-sft``)
as policy and reference, the book's preference data split 85/10/5 in file order, beta 0.1, mean
token log-probs, AdamW lr 5e-6 / weight decay 0.01, batch 8, 1 epoch, evaluation of 5 train and 5
validation batches every 5 steps. Every option is a field of
:class:`~gpt_sft.train.preference_config.DPOConfig`: the training options, with the same flags and YAML
keys, plus ``--beta``, ``--logprob-reduction`` and ``--precompute-reference``. The run folder is a
training run's (checkpoint, card, metrics, plots, test-set responses, resumable checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence

from .train import main as train_main


def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft dpo`` / ``accelerate launch scripts/dpo.py``: errors are one line, Ctrl-C exits 130."""
    return train_main(argv, command="dpo")
