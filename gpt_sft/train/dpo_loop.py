"""Preference tuning with DPO as a training stage: its data, reference model, step and evaluation,
run by the shared loop (:func:`~gpt_sft.train.loop.fit`: resuming, checkpoints, interruptions).

The reference is the model before tuning, in one of three forms: a frozen copy; with LoRA, the
policy itself with its adapters switched off (no second copy in memory); or, with
``--precompute-reference``, its log-probs of every pair computed once before training (by the
policy, which is still the reference then), after which no reference model exists at all. The
book's evaluation: every ``eval_every`` steps, ``eval_batches`` train and validation batches, each
figure a per-batch mean averaged over the batches.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from ..data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from ..data.prompts import registered_prompt_style
from ..data.recipe import Recipe, resolve_style
from ..data.split import split_dataset
from ..model.loading import peek_context_length
from .data import TrainingData, data_summary
from .dpo_config import DPOConfig
from .dpo_loss import FIGURES, PreferenceLoss, sequence_logprobs
from .dpo_report import plot_preference_figures
from .loop import Run, Stage, build_model, cpu_threads, prepare_run, resolve_allowed_max_length
from .loss import base_model
from .state import EpochSampler, TrainerState, say


@dataclass
class DPOState(TrainerState):
    """SFT's progress counters, plus every DPO figure at each evaluation (``train_loss``,
    ``val_margin``, ...) and before training (``initial``)."""

    history: dict[str, list[float]] = field(default_factory=dict)
    initial: dict[str, float] = field(default_factory=dict)
    last_step: dict[str, float] = field(default_factory=dict)  # the latest optimizer step's figures


@dataclass
class DPORun(Run):
    """A run whose ``reference`` is a frozen copy of the model before tuning (``None`` with LoRA, whose
    reference is the policy without adapters, or when the reference log-probs come with the data)."""

    reference: torch.nn.Module | None = None


def reference_kind(cfg: DPOConfig) -> str:
    if cfg.precompute_reference:
        return "precomputed"
    return "LoRA adapters disabled" if cfg.lora_rank else "frozen copy"


# --------------------------------------------------------------------------------------------------
# setup


def resolve_prompt_style(cfg: DPOConfig) -> None:
    """The SFT checkpoint's own prompt style unless ``--prompt-style`` says otherwise (then with a
    warning if they differ); written back into ``cfg``."""
    recipe = Recipe.read(cfg.model) if Path(cfg.model).is_dir() else None
    style = resolve_style(recipe, cfg.prompt_style)  # the recipe's is rebuilt from its templates, never imported
    # a typed or registered style goes on by name; one only the recipe knows (or knows otherwise), as the style itself
    registered = registered_prompt_style(style.name)
    same = registered is not None and (registered is style or registered.spec() == style.spec() is not None)
    cfg.prompt_style = cfg.prompt_style or (style.name if same else style)


@torch.no_grad()
def precompute_reference(model, dataset, cfg: DPOConfig, device: torch.device, autocast) -> list[list[float]]:
    """``[chosen, rejected]`` log-probs of every pair of ``dataset`` by ``model`` (the reference)."""
    collate = PreferenceCollator(allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    values = []
    with autocast():
        for batch in loader:
            logps = sequence_logprobs(model, batch["input_ids"][:, :-1].to(device), batch["labels"][:, 1:].to(device),
                                      cfg.logprob_reduction, cfg.loss_paths())
            chosen, rejected = logps.float().cpu().chunk(2)
            values += [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist())]
    model.train(was_training)
    return values


def build_preference_data(cfg: DPOConfig, num_processes: int, model, accelerator: Accelerator,
                          loaded=None) -> TrainingData:
    """Split and tokenize the pairs (``loaded``: :func:`load_preference_data`'s result, else loaded now);
    the book's loaders (train shuffled, drop_last)."""
    if loaded is None:
        loaded = load_preference_data(cfg.data, skip_invalid=cfg.skip_invalid)
    dataset, load_stats = loaded
    splits = split_dataset(dataset, cfg.train_fraction, cfg.test_fraction, shuffle=cfg.shuffle_split, seed=cfg.seed)
    tokenized, stats = {}, {}
    for name in ("train", "validation"):
        tokenized[name], stats[name] = tokenize_preferences(splits[name], cfg.prompt_style, cfg.allowed_max_length,
                                                            drop_overlong=cfg.drop_overlong)
        if cfg.precompute_reference:
            say(accelerator, f"Computing the reference log-probs of the {len(tokenized[name])} {name} pairs")
            values = precompute_reference(model, tokenized[name], cfg, accelerator.device, accelerator.autocast)
            tokenized[name] = tokenized[name].add_column("ref_logps", values)
    if len(tokenized["train"]) < cfg.batch_size * num_processes:
        raise ValueError(f"{cfg.data}: {len(tokenized['train'])} training pairs are fewer than one batch "
                         f"({cfg.batch_size} x {num_processes} processes): lower --batch-size")
    collate = PreferenceCollator(allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt)
    sampler = EpochSampler(len(tokenized["train"]), shuffle=True, seed=cfg.seed)
    train = DataLoader(tokenized["train"], batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                       collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed))
    val = DataLoader(tokenized["validation"], batch_size=cfg.batch_size, shuffle=False, drop_last=False,
                     collate_fn=collate, generator=torch.Generator().manual_seed(cfg.seed))
    report = (f"preference data: {load_stats}; split {len(splits['train'])}/{len(splits['validation'])}/"
              f"{len(splits['test'])} train/val/test; train: {stats['train']}; val: {stats['validation']}")
    summary = data_summary(load_stats, splits, {name: stats[name].num_overlong for name in stats},
                           {name: stats[name].num_dropped for name in stats})
    return TrainingData(train, val, [dict(e) for e in splits["validation"]], [dict(e) for e in splits["test"]],
                        sampler, report, summary, load_stats)


def setup_dpo(cfg: DPOConfig, accelerator: Accelerator) -> DPORun:
    """Policy, reference, data, optimizer and the resumed state if ``cfg`` resumes."""
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg))
    set_seed(cfg.seed)
    default_model = DPOConfig.__dataclass_fields__["model"].default
    if cfg.model == default_model and not Path(cfg.model).exists():
        raise ValueError(f"--model {cfg.model}: no such folder; the default is the main job's output: train the SFT "
                         "model first (accelerate launch -q scripts/train.py) or pass --model SFT_DIR")
    resolve_prompt_style(cfg)
    loaded = load_preference_data(cfg.data, skip_invalid=cfg.skip_invalid)  # its errors before a long model load
    context = cfg.context_length if cfg.model == "scratch" else peek_context_length(cfg.model)
    model = build_model(cfg)
    resolve_allowed_max_length(cfg, context or model.config.n_positions)
    model.to(accelerator.device)
    reference = None
    if not cfg.lora_rank and not cfg.precompute_reference:
        reference = copy.deepcopy(base_model(model)).eval().requires_grad_(False)
    # Reference log-probs come from the model before any update: before a resumed state is loaded.
    data = build_preference_data(cfg, accelerator.num_processes, model, accelerator, loaded)
    say(accelerator, data.report)
    say(accelerator, f"DPO: beta {cfg.beta}, {cfg.logprob_reduction} log-probs, reference: {reference_kind(cfg)}")
    loss = PreferenceLoss(model, cfg.loss_paths(), cfg.beta, cfg.logprob_reduction)
    return prepare_run(cfg, accelerator, model, data, loss, state_type=DPOState, run_type=DPORun, stage=DPO,
                       reference=reference)


# --------------------------------------------------------------------------------------------------
# step and evaluation


@torch.no_grad()
def reference_logprobs(run: DPORun, batch: dict) -> torch.Tensor:
    """``(2B,)`` reference log-probs of a batch: precomputed, the frozen copy's, or the policy's with
    its LoRA adapters off (in eval mode, as the reference was when precomputed)."""
    if "ref_logps" in batch:
        return batch["ref_logps"]
    cfg = run.cfg
    inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
    if run.reference is not None:
        with run.accelerator.autocast():  # the precision the policy runs in
            return sequence_logprobs(run.reference, inputs, targets, cfg.logprob_reduction, cfg.loss_paths())
    was_training = run.model.training
    run.model.eval()
    try:
        with run.model.disable_adapter(), run.accelerator.autocast():
            return sequence_logprobs(run.model, inputs, targets, cfg.logprob_reduction, cfg.loss_paths())
    finally:
        run.model.train(was_training)


def dpo_step(run: DPORun, window: list[dict]) -> tuple[float, int]:
    """Forward and backward passes over one optimizer step's micro-batches: ``(mean pair loss, tokens)``.
    The loss is the mean over all the step's pairs on all processes, as one large batch would have it."""
    accelerator, world = run.accelerator, run.accelerator.num_processes
    counts = torch.tensor([[b["input_ids"].shape[0] // 2, b["input_ids"][:, :-1].numel()] for b in window],
                          device=accelerator.device).sum(0)
    counts = accelerator.reduce(counts, "sum") if world > 1 else counts
    num_pairs, tokens = counts[0], int(counts[1])
    sums = torch.zeros(len(FIGURES), device=accelerator.device)
    for i, batch in enumerate(window):
        ref = reference_logprobs(run, batch)
        with contextlib.nullcontext() if i == len(window) - 1 else accelerator.no_sync(run.loss):
            loss, batch_sums = run.loss(batch["input_ids"][:, :-1], batch["labels"][:, 1:], ref, num_pairs=num_pairs)
            accelerator.backward(loss * world)  # DDP averages over processes; keep the global pair mean
        sums += batch_sums.float()
    sums = accelerator.reduce(sums, "sum") if world > 1 else sums
    means = (sums / num_pairs.clamp(min=1)).tolist()
    run.state.last_step = dict(zip(FIGURES, means))
    return means[0], tokens


@torch.no_grad()
def evaluate_figures(run: DPORun, loader, num_batches: int) -> dict[str, float]:
    """Each of :data:`FIGURES` as a mean over pairs per batch, averaged over the first ``num_batches``
    batches (the book's ``evaluate_dpo_loss_loader``)."""
    run.model.eval()
    per_batch = []
    with run.accelerator.autocast():
        for batch in itertools.islice(loader, num_batches):
            _, sums = run.loss(batch["input_ids"][:, :-1], batch["labels"][:, 1:], reference_logprobs(run, batch))
            per_batch.append(sums.float() / (batch["input_ids"].shape[0] // 2))
    run.model.train()
    if not per_batch:
        return {name: float("nan") for name in FIGURES}
    mean = torch.stack(per_batch).mean(0)
    if run.accelerator.num_processes > 1:
        mean = run.accelerator.reduce(mean, "mean")
    return dict(zip(FIGURES, mean.tolist()))


def evaluation(run: DPORun) -> dict[str, float]:
    """``train_*`` and ``val_*`` figures on ``eval_batches`` batches of each split."""
    figures = {}
    for split, loader in (("train", run.data.train), ("val", run.data.val)):
        for name, value in evaluate_figures(run, loader, run.cfg.eval_batches).items():
            figures[f"{split}_{name}"] = value
    return figures


def describe(figures: dict[str, float]) -> str:
    """The book's line (loss and reward margins, train and validation), plus preference accuracy."""
    return (f"Train loss {figures['train_loss']:.3f}, Val loss {figures['val_loss']:.3f}, "
            f"Train reward margins {figures['train_margin']:.3f}, Val reward margins {figures['val_margin']:.3f}, "
            f"Train accuracy {figures['train_accuracy']:.2f}, Val accuracy {figures['val_accuracy']:.2f}")


def evaluate_dpo(run: DPORun, step: int, step_loss: float) -> None:
    state = run.state
    figures = evaluation(run)
    for name, value in figures.items():
        state.history.setdefault(name, []).append(value)
    state.train_losses.append(figures["train_loss"])
    state.val_losses.append(figures["val_loss"])
    state.track_tokens_seen.append(state.tokens_seen)
    state.eval_steps.append(step)
    say(run.accelerator, f"Ep {state.epoch + 1} (Step {step:06d}): {describe(figures)}")
    run.accelerator.log({**{f"{k.split('_', 1)[0]}/{k.split('_', 1)[1]}": v for k, v in figures.items()},
                         **{f"train/step_{k}": v for k, v in state.last_step.items()},
                         "tokens_seen": state.tokens_seen, "lr": run.scheduler.get_last_lr()[0]}, step=step)


def initial_dpo(run: DPORun) -> None:
    """The figures before tuning: the policy is the reference, so the loss is ln 2 and every reward 0."""
    state = run.state
    if state.initial:
        return
    state.initial = evaluation(run)
    state.initial_train_loss, state.initial_val_loss = state.initial["train_loss"], state.initial["val_loss"]
    say(run.accelerator, f"Before tuning: {describe(state.initial)}")


def dpo_figures(run: DPORun, metrics: dict) -> None:
    """``metrics.json``'s ``dpo`` entry: the stage's settings, its SFT base, and its figures before
    and after tuning (``final``: the last evaluation)."""
    cfg, state = run.cfg, run.state
    sft_args = Path(cfg.model) / "training_args.json"
    base = json.loads(sft_args.read_text(encoding="utf-8")) if sft_args.is_file() else {}
    metrics["dpo"] = {
        "sft_model": cfg.model, "sft_base_model": base.get("model"), "sft_data": base.get("data"),
        "beta": cfg.beta, "logprob_reduction": cfg.logprob_reduction, "reference": reference_kind(cfg),
        "initial": state.initial, "final": {name: values[-1] for name, values in state.history.items()},
        "history": {"step": state.eval_steps, **state.history},
    }


def dpo_plot(run: DPORun, folder: Path) -> list[Path]:
    return plot_preference_figures(run.state, folder / "dpo-plot")


DPO = Stage(step=dpo_step, evaluate=evaluate_dpo, initial=initial_dpo, figures=dpo_figures, plot=dpo_plot)

__all__ = ["DPO", "DPORun", "DPOState", "dpo_step", "evaluate_figures", "reference_logprobs", "setup_dpo"]
