"""What every preference-tuning stage shares (DPO, ORPO, SimPO): pairs as data, a step that averages a pair loss
over all pairs of the optimizer step, figures evaluated per batch, the history of those figures, their plot and
their table in the model card.

A preference method is then a :class:`PreferenceStage` subclass that names its config, its loss module (a
:class:`~gpt_sft.train.pair_loss.PairLoss`), its figures and their labels, and, if it has one, what it needs
besides the policy's log-probs (DPO's reference log-probs: :meth:`PreferenceStage.extra`). The book's evaluation:
every ``eval_every`` steps, ``eval_batches`` train and validation batches, each figure a per-batch mean averaged
over the batches.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from ..data.prompts import registered_prompt_style
from ..data.recipe import checkpoint_style
from .pair_loss import REWARD_FIGURES
from .preference_config import PreferenceConfig
from .preference_plot import plot_preference_figures
from .stage import CardSection, Stage
from .state import TrainerState, say


@dataclass
class PreferenceState(TrainerState):
    """SFT's progress counters, plus every figure of the stage at each evaluation (``train_loss``,
    ``val_margin``, ...) and before training (``initial``)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)
    last_step: dict[str, float] = field(default_factory=dict)  # the latest optimizer step's figures


def resolve_prompt_style(cfg: PreferenceConfig) -> None:
    """The --model checkpoint's own prompt style unless ``--prompt-style`` says otherwise (then with a warning if
    they differ); written back into ``cfg``."""
    style, _ = checkpoint_style(cfg.model, cfg.prompt_style)  # the recipe's is rebuilt from its templates
    # a typed or registered style goes on by name; one only the recipe knows (or knows otherwise), as the style itself
    registered = registered_prompt_style(style.name)
    same = registered is not None and (registered is style or registered.spec() == style.spec() is not None)
    cfg.prompt_style = cfg.prompt_style or (style.name if same else style)


def reward_figures(title: str, rewards_panel: str) -> tuple[dict[str, str], tuple]:
    """``(figure_labels, panels)`` of a stage whose figures are :data:`~.pair_loss.REWARD_FIGURES` (DPO, SimPO):
    labels in the card and the log, and the plot's four panels, ``rewards_panel`` naming the rewards'."""
    labels = dict(zip(REWARD_FIGURES, (f"{title} loss", "chosen reward", "rejected reward", "reward margin",
                                       "preference accuracy")))
    panels = ((f"{title} loss", ("loss",)), (rewards_panel, ("chosen_reward", "rejected_reward")),
              ("Reward margin (chosen - rejected)", ("margin",)), ("Preference accuracy", ("accuracy",)))
    return labels, panels


class PreferenceStage(Stage):
    """A preference-tuning method on chosen/rejected pairs (chosen rows first, then rejected rows, in each batch)."""

    config_type = PreferenceConfig
    state_type = PreferenceState
    unit = "pairs"
    data_label = "preference data"
    # a pair's loss covers its answer: the prompt's earlier answers are the same on both sides
    refused = {"train_on": "a preference pair's loss covers its answer, the last turn"}
    title: ClassVar[str]  # the method's name in the card and the plot ("DPO")
    tuned: ClassVar[str | None] = None  # the card's "... {tuned} with gpt-sft"; default "preference-tuned with TITLE"
    from_sft: ClassVar[bool] = True  # tunes an SFT model (the card calls --model that); ORPO also starts from a base
    # figure -> its label in the card's table, in the loss module's order, "loss" first
    figure_labels: ClassVar[dict[str, str]]
    # printed at each evaluation, train and validation: figure -> its name in the line (the book's DPO line)
    summary: ClassVar[dict[str, str]] = {"loss": "loss", "margin": "reward margins", "accuracy": "accuracy"}
    panels: ClassVar[tuple[tuple[str, tuple[str, ...]], ...]]  # the plot: (title, figures drawn in it)

    # ---------------------------------------------------------------- options and data

    def resolve(self) -> None:
        cfg = self.cfg
        default_model = type(cfg).__dataclass_fields__["model"].default
        if cfg.model == default_model and default_model.startswith("outputs/") and not Path(cfg.model).exists():
            raise ValueError(f"--model {cfg.model}: no such folder; the default is the main job's output: train the "
                             "SFT model first (accelerate launch -q scripts/train.py) or pass --model SFT_DIR")
        resolve_prompt_style(cfg)

    def load(self):
        return load_preference_data(self.cfg.data, skip_invalid=self.cfg.skip_invalid, data_format=self.cfg.data_format)

    def tokenize(self, split):
        cfg = self.cfg
        return tokenize_preferences(split, cfg.prompt_style, cfg.allowed_max_length, drop_overlong=cfg.drop_overlong)

    def collator(self):
        return PreferenceCollator(allowed_max_length=self.cfg.allowed_max_length, mask_prompt=self.cfg.mask_prompt)

    # ---------------------------------------------------------------- step and evaluation

    def extra(self, run, batch: dict) -> torch.Tensor | None:
        """What the loss needs besides the policy's log-probs of ``batch``; nothing by default."""
        return None

    def step(self, run, window: list[dict]) -> tuple[float, int]:
        """The mean pair loss over all the step's pairs on all processes, as one large batch would have it."""
        accelerator, world = run.accelerator, run.accelerator.num_processes
        counts = torch.tensor([[b["input_ids"].shape[0] // 2, b["input_ids"][:, :-1].numel()] for b in window],
                              device=accelerator.device).sum(0)
        counts = accelerator.reduce(counts, "sum") if world > 1 else counts
        num_pairs, tokens = counts[0], int(counts[1])
        sums = torch.zeros(len(self.figure_labels), device=accelerator.device)
        for i, batch in enumerate(window):
            extra = self.extra(run, batch)
            with contextlib.nullcontext() if i == len(window) - 1 else accelerator.no_sync(run.loss):
                loss, batch_sums = run.loss(batch["input_ids"][:, :-1], batch["labels"][:, 1:], extra,
                                            num_pairs=num_pairs)
                accelerator.backward(loss * world)  # DDP averages over processes; keep the global pair mean
            sums += batch_sums.float()
        sums = accelerator.reduce(sums, "sum") if world > 1 else sums
        means = (sums / num_pairs.clamp(min=1)).tolist()
        run.state.last_step = dict(zip(self.figure_labels, means))
        return means[0], tokens

    @torch.no_grad()
    def evaluate_figures(self, run, loader, num_batches: int) -> dict[str, float]:
        """Each figure as a mean over pairs per batch, averaged over the first ``num_batches`` batches (the book's
        ``evaluate_dpo_loss_loader``)."""
        run.model.eval()
        per_batch = []
        with run.accelerator.autocast():
            for batch in itertools.islice(loader, num_batches):
                _, sums = run.loss(batch["input_ids"][:, :-1], batch["labels"][:, 1:], self.extra(run, batch))
                per_batch.append(sums.float() / (batch["input_ids"].shape[0] // 2))
        run.model.train()
        if not per_batch:
            return {name: float("nan") for name in self.figure_labels}
        mean = torch.stack(per_batch).mean(0)
        if run.accelerator.num_processes > 1:
            mean = run.accelerator.reduce(mean, "mean")
        return dict(zip(self.figure_labels, mean.tolist()))

    def evaluation(self, run) -> dict[str, float]:
        """``train_*`` and ``val_*`` figures on ``eval_batches`` batches of each split."""
        figures = {}
        for split, loader in (("train", run.data.train), ("val", run.data.val)):
            for name, value in self.evaluate_figures(run, loader, run.cfg.eval_batches).items():
                figures[f"{split}_{name}"] = value
        return figures

    def describe_figures(self, figures: dict[str, float]) -> str:
        return ", ".join(f"{split.title()} {label} {figures[f'{split}_{name}']:.{2 if name == 'accuracy' else 3}f}"
                         for name, label in self.summary.items() for split in ("train", "val"))

    def initial(self, run) -> None:
        state = run.state
        if state.initial:
            return
        state.initial = self.evaluation(run)
        state.initial_train_loss, state.initial_val_loss = state.initial["train_loss"], state.initial["val_loss"]
        say(run.accelerator, f"Before tuning: {self.describe_figures(state.initial)}")

    def evaluate(self, run, step: int, step_loss: float) -> None:
        state = run.state
        figures = self.evaluation(run)
        for name, value in figures.items():
            state.history.setdefault(name, []).append(value)
        state.train_losses.append(figures["train_loss"])
        state.val_losses.append(figures["val_loss"])
        state.track_tokens_seen.append(state.tokens_seen)
        state.eval_steps.append(step)
        say(run.accelerator, f"Ep {state.epoch + 1} (Step {step:06d}): {self.describe_figures(figures)}")
        run.accelerator.log({**{f"{k.split('_', 1)[0]}/{k.split('_', 1)[1]}": v for k, v in figures.items()},
                             **{f"train/step_{k}": v for k, v in state.last_step.items()},
                             "tokens_seen": state.tokens_seen, "lr": run.scheduler.get_last_lr()[0]}, step=step)

    # ---------------------------------------------------------------- report

    def settings(self) -> dict:
        """The stage's settings in its ``metrics.json`` entry, beside the model it started from."""
        return {}

    def figures(self, run, metrics: dict) -> None:
        """``metrics.json``'s entry of the stage: the model it started from (``sft_*``: what that model's own run
        recorded, if it is a gpt-sft run), its settings, and its figures before and after tuning (``final``: the
        last evaluation)."""
        cfg, state = self.cfg, run.state
        start_args = Path(cfg.model) / "training_args.json"
        start = json.loads(start_args.read_text(encoding="utf-8")) if start_args.is_file() else {}
        metrics[self.command] = {
            "sft_model": cfg.model, "sft_base_model": start.get("model"), "sft_data": start.get("data"),
            **self.settings(), "initial": state.initial,
            "final": {name: values[-1] for name, values in state.history.items()},
            "history": {"step": state.eval_steps, **state.history},
        }

    def plot(self, run, folder: Path) -> list[Path]:
        return plot_preference_figures(run.state, folder / f"{self.command}-plot", self.panels)

    def card_intro(self, entry: dict) -> str:
        """The paragraph above the card's table of figures."""
        raise NotImplementedError

    def card(self, metrics: dict) -> CardSection:
        entry = metrics.get(self.command) or {"initial": {}, "final": {}}
        recorded = entry.get("sft_base_model")
        start = {"scratch": "a randomly initialised GPT"}.get(recorded, recorded)
        base = None
        if self.from_sft or start:
            base = f"the SFT model {self.cfg.model}" + (f" (itself {start} fine-tuned on {entry['sft_data']})"
                                                        if start else "")

        def cell(name: str, split: str) -> str:
            before, after = entry["initial"].get(f"{split}_{name}"), entry["final"].get(f"{split}_{name}")
            return " → ".join("–" if v is None else f"{v:.3f}" for v in (before, after))

        rows = "".join(f"| {label} | {cell(name, 'train')} | {cell(name, 'val')} |\n"
                       for name, label in self.figure_labels.items())
        body = (f"\n## Preference tuning ({self.title})\n\n{self.card_intro(entry)}\n\n| | train | validation |\n"
                f"|---|---|---|\n{rows}\n![{self.title} plot]({self.command}-plot.png)\n")
        return CardSection(tuned=self.tuned or f"preference-tuned with {self.title}",
                           loss_caption=f"the {self.title} loss, mean over pairs,", base_description=base,
                           tags=[self.command], body=body)


__all__ = ["PreferenceConfig", "PreferenceStage", "PreferenceState", "resolve_prompt_style", "reward_figures"]
