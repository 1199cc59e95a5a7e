"""A training stage: one class that says what a method is, for the shared loop to run.

A stage knows its options (:attr:`Stage.config_type`, a :class:`~gpt_sft.train.config.TrainConfig` subclass holding
only its own fields), its data (load, tokenize, collate), its loss step, its evaluation figures, its section of the
model card and its plot. Everything else is written once and shared by every stage: setup, the loop, resuming,
checkpoints, interruptions (:mod:`.loop`), the final save and the card (:mod:`gpt_sft.export.run_folder`), test-set
responses, exports and push (:mod:`gpt_sft.cli.train`). Supervised fine-tuning is :class:`~.sft.SFTStage`;
preference tuning builds on :class:`~.preference_stage.PreferenceStage`. A new method is a subclass in a file of its
own plus one entry in :data:`~.stages.STAGES`, which gives it its command, its card and its documentation.

The methods take the :class:`~.loop.Run` (the model, the prepared loss module, the optimizer, the data, the progress
counters) and the stage keeps what only it holds (a reference model, say) as its own attributes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from torch import nn

from ..data.split import split_dataset
from .config import TrainConfig
from .state import TrainerState


@dataclass
class CardSection:
    """What a stage puts into the model card (``model_cards/gpt-sft.md``)."""

    tuned: str = "instruction-fine-tuned"  # "<name> is <base> {tuned} with gpt-sft"
    loss_caption: str = "mean token cross-entropy"  # "Losses ({loss_caption} over N batches, as in the book)"
    base_description: str | None = None  # what the tuned model started from, when the card's default would mislead
    tags: list[str] = field(default_factory=list)
    body: str = ""  # markdown after the loss plot: the stage's own figures


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Stage:
    """One training method. Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError``; the others have the behaviour every stage shares unless it says otherwise."""

    command: ClassVar[str]  # the gpt-sft command, the registry's key, and metrics.json's entry for the stage's figures
    config_type: ClassVar[type[TrainConfig]] = TrainConfig
    state_type: ClassVar[type[TrainerState]] = TrainerState
    unit: ClassVar[str] = "examples"  # what one row of its data is, in messages
    data_label: ClassVar[str] = "data"  # the data report's first word(s)
    # Options that do not apply to this stage: {option: why}. Any value but the default is refused, so that no
    # option is accepted and ignored.
    refused: ClassVar[dict[str, str]] = {}

    def __init__(self, cfg: TrainConfig) -> None:
        if not isinstance(cfg, self.config_type):
            raise TypeError(f"{type(self).__name__} runs a {self.config_type.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg

    # ---------------------------------------------------------------- options

    def check(self) -> None:
        """Refuse, in one line naming the flag, an option this stage cannot honour; then the stage's own checks."""
        defaults = {f.name: f for f in dataclasses.fields(self.cfg)}
        for name, why in self.refused.items():
            spec = defaults[name]
            default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
            if getattr(self.cfg, name) != default:
                raise ValueError(f"{flag(name)} {getattr(self.cfg, name)}: not with gpt-sft {self.command} ({why})")

    def resolve(self) -> None:
        """Settle options that depend on the model source (before any data is read); nothing by default."""

    # ---------------------------------------------------------------- data

    def load(self):
        """The data set and what was read and skipped: ``(Dataset, LoadStats)``."""
        raise NotImplementedError

    def split(self, dataset):
        cfg = self.cfg
        return split_dataset(dataset, cfg.train_fraction, cfg.test_fraction, shuffle=cfg.shuffle_split, seed=cfg.seed)

    def tokenize(self, split):
        """One split as token ids: ``(Dataset, stats)``; ``stats`` has ``num_overlong``, ``num_dropped`` and a
        one-line ``str``."""
        raise NotImplementedError

    def collator(self):
        raise NotImplementedError

    def attach(self, model: nn.Module, accelerator, tokenized: dict) -> None:
        """Called once the model is built, before the loaders and Accelerate's preparation: what the stage derives
        from the model before training (a reference copy, log-probs added to ``tokenized``); nothing by default."""

    def describe(self) -> str | None:
        """One line of the stage's settings, printed after the data report (``None``: nothing to say)."""
        return None

    # ---------------------------------------------------------------- the loss

    def loss_module(self, model: nn.Module) -> nn.Module:
        """The module whose forward computes the loss (what Accelerate wraps for data parallelism)."""
        raise NotImplementedError

    def step(self, run, window: list[dict]) -> tuple[float, int]:
        """Forward and backward passes over one optimizer step's micro-batches, gradients accumulated:
        ``(loss, tokens)``, the loss as one large batch of the whole step on every process would have it."""
        raise NotImplementedError

    # ---------------------------------------------------------------- evaluation and report

    def initial(self, run) -> None:
        """The evaluation before the first step (skipped once recorded, as in a resumed run)."""
        raise NotImplementedError

    def evaluate(self, run, step: int, step_loss: float) -> None:
        """The periodic evaluation: recorded in ``run.state`` and logged."""
        raise NotImplementedError

    def figures(self, run, metrics: dict) -> None:
        """Add the stage's own figures to ``metrics.json`` (under :attr:`command`); nothing by default."""

    def plot(self, run, folder: Path) -> list[Path]:
        """The stage's own plots, written into ``folder`` beside the loss plot; none by default."""
        return []

    def card(self, metrics: dict) -> CardSection:
        """The stage's part of the model card, from ``metrics.json`` alone (a judge score recorded later renders the
        card again without the run)."""
        return CardSection()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.command})"


__all__ = ["CardSection", "Stage", "flag"]
