"""The training run's view of the data: its splits, tokenized, batched by the book's loaders."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..data.collator import InstructionDataCollator
from ..data.load import load_instruction_data
from ..data.split import split_dataset
from ..data.tokenize import tokenize_dataset
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


def load_splits(cfg: TrainConfig):
    """Load and validate the data, and split it: ``(DatasetDict, LoadStats)``."""
    dataset, load_stats = load_instruction_data(cfg.data, skip_invalid=cfg.skip_invalid, return_stats=True)
    splits = split_dataset(dataset, cfg.train_fraction, cfg.test_fraction, shuffle=cfg.shuffle_split, seed=cfg.seed)
    return splits, load_stats


def build_data(cfg: TrainConfig, num_processes: int = 1, loaded=None) -> TrainingData:
    """Tokenize the splits (``loaded``: :func:`load_splits`' result, else loaded now); the book's
    loaders (train shuffled, drop_last)."""
    splits, load_stats = loaded if loaded is not None else load_splits(cfg)
    tokenized, stats = {}, {}
    for name in ("train", "validation"):
        tokenized[name], stats[name] = tokenize_dataset(
            splits[name], style=cfg.prompt_style, allowed_max_length=cfg.allowed_max_length,
            overlong="drop" if cfg.drop_overlong else "truncate", keep_columns=False, return_stats=True,
        )
    collator = InstructionDataCollator(allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt)
    columns = ["input_ids", "prompt_length"]
    train_set = tokenized["train"].with_format(columns=columns)
    val_set = tokenized["validation"].with_format(columns=columns)
    if len(train_set) < cfg.batch_size * num_processes:
        raise ValueError(f"{cfg.data}: {len(train_set)} training examples are fewer than one batch "
                         f"({cfg.batch_size} x {num_processes} processes)")
    sampler = EpochSampler(len(train_set), shuffle=True, seed=cfg.seed)
    # Own generators: creating a loader iterator would otherwise draw from the global torch RNG, so a
    # resumed run (which creates its iterator at a different moment) would see other dropout masks.
    train = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collator,
                       generator=torch.Generator().manual_seed(cfg.seed))
    val = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, drop_last=False, collate_fn=collator,
                     generator=torch.Generator().manual_seed(cfg.seed))
    report = (f"data: {load_stats}; split {len(splits['train'])}/{len(splits['validation'])}/{len(splits['test'])} "
              f"train/val/test; train: {stats['train']}; val: {stats['validation']}")
    summary = data_summary(load_stats, splits, {name: stats[name].num_overlong for name in stats},
                           {name: stats[name].num_dropped for name in stats})
    return TrainingData(train, val, [dict(e) for e in splits["validation"]], [dict(e) for e in splits["test"]],
                        sampler, report, summary, load_stats)


def data_summary(load_stats: LoadStats, splits, overlong: dict[str, int], dropped: dict[str, int]) -> dict:
    """``metrics.json``'s ``data``: what was read, skipped and split, and the over-long and dropped
    examples of the train and validation splits (keyed ``train``/``validation``)."""
    return {
        "source": load_stats.source, "entries_read": load_stats.num_read, "entries_loaded": load_stats.num_loaded,
        "entries_skipped": load_stats.num_skipped, "skipped_by_reason": dict(load_stats.skipped),
        "split": {name: len(splits[name]) for name in ("train", "validation", "test")},
        **{f"{name}_overlong": overlong[name] for name in ("train", "validation")},
        **{f"{name}_dropped": dropped[name] for name in ("train", "validation")},
    }


def optimizer_steps_per_epoch(num_batches: int, cfg: TrainConfig) -> int:
    """Optimizer steps in an epoch of ``num_batches`` micro-batches (a partial last window still steps)."""
    return max(1, math.ceil(num_batches / cfg.gradient_accumulation_steps))
