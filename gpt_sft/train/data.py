"""The training run's view of the data: its splits, tokenized by the stage, batched by the book's loaders (one
builder, :func:`~gpt_sft.data.loaders.book_loader`, for every stage)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch.utils.data import DataLoader

from ..data.loaders import book_loader
from ..data.validate import LoadStats
from .config import TrainConfig
from .state import EpochSampler


@dataclass
class TrainingData:
    train: DataLoader
    val: DataLoader
    val_entries: list[dict]
    test_entries: list[dict]
    sampler: EpochSampler
    report: str
    stats: dict = field(default_factory=dict)  # what was read, skipped, split and truncated (metrics.json)
    load_stats: LoadStats | None = None


def load_splits(stage):
    """Load and validate the stage's data, and split it: ``(DatasetDict, LoadStats)``."""
    dataset, load_stats = stage.load()
    return stage.split(dataset), load_stats


def tokenize_splits(stage, loaded, num_processes: int = 1) -> tuple[dict, dict]:
    """The train and validation splits tokenized by the stage, and what tokenizing did to each; too few examples
    for one batch on every process is an error now, before the model is loaded."""
    cfg, (splits, _) = stage.cfg, loaded
    tokenized, stats = {}, {}
    for name in ("train", "validation"):
        tokenized[name], stats[name] = stage.tokenize(splits[name])
    if len(tokenized["train"]) < cfg.batch_size * num_processes:
        raise ValueError(f"{cfg.data}: {len(tokenized['train'])} training {stage.unit} are fewer than one batch "
                         f"({cfg.batch_size} x {num_processes} processes): lower --batch-size")
    return tokenized, stats


def make_training_data(stage, loaded, tokenized: dict, stats: dict) -> TrainingData:
    """The book's loaders (train shuffled by an :class:`EpochSampler`, drop_last; validation in order) over the
    tokenized splits, batched by the stage's collator, and the report of what the data held."""
    cfg, (splits, load_stats) = stage.cfg, loaded
    collate = stage.collator()
    sampler = EpochSampler(len(tokenized["train"]), shuffle=True, seed=cfg.seed)
    train = book_loader(tokenized["train"], cfg.batch_size, collate, train=True, seed=cfg.seed, sampler=sampler)
    val = book_loader(tokenized["validation"], cfg.batch_size, collate, train=False, seed=cfg.seed)
    report = (f"{stage.data_label}: {load_stats}; split {len(splits['train'])}/{len(splits['validation'])}/"
              f"{len(splits['test'])} train/val/test; train: {stats['train']}; val: {stats['validation']}")
    summary = data_summary(load_stats, splits, {name: stats[name].num_overlong for name in stats},
                           {name: stats[name].num_dropped for name in stats})
    return TrainingData(train, val, [dict(e) for e in splits["validation"]], [dict(e) for e in splits["test"]],
                        sampler, report, summary, load_stats)


def data_summary(load_stats: LoadStats, splits, overlong: dict[str, int], dropped: dict[str, int]) -> dict:
    """``metrics.json``'s ``data``: what was read (its format: ``alpaca``, or conversations in ``messages`` or
    ``sharegpt``), skipped and split, and the over-long and dropped examples of the train and validation splits
    (keyed ``train``/``validation``; an over-long conversation that is not dropped lost its earliest exchanges)."""
    return {
        "source": load_stats.source, "data_format": load_stats.data_format,
        "entries_read": load_stats.num_read, "entries_loaded": load_stats.num_loaded,
        "entries_skipped": load_stats.num_skipped, "skipped_by_reason": dict(load_stats.skipped),
        "split": {name: len(splits[name]) for name in ("train", "validation", "test")},
        **{f"{name}_overlong": overlong[name] for name in ("train", "validation")},
        **{f"{name}_dropped": dropped[name] for name in ("train", "validation")},
    }


def optimizer_steps_per_epoch(num_batches: int, cfg: TrainConfig) -> int:
    """Optimizer steps in an epoch of ``num_batches`` micro-batches (a partial last window still steps)."""
    return max(1, math.ceil(num_batches / cfg.gradient_accumulation_steps))
