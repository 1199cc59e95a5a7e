"""The book's data loaders: :func:`book_loader`, the one builder of every loader (this module's, every training
stage's), and the book's three in one call (:func:`create_dataloaders`): load, split, tokenize and batch."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from datasets import Dataset
from torch.utils.data import DataLoader

from .collator import InstructionDataCollator
from .load import BOOK_DATA_URL, load_instruction_data
from .prompts import PromptStyle
from .split import split_dataset
from .tokenize import tokenize_dataset


def book_loader(dataset, batch_size: int, collate_fn, *, train: bool, seed: int = 123, sampler=None,
                num_workers: int = 0) -> DataLoader:
    """One of the book's loaders: a training loader shuffles (with ``sampler``, else seeded with ``seed``) and drops
    the last partial batch; an evaluation loader keeps the order and every example. Every loader has its own
    generator: creating an iterator would otherwise draw from the global torch RNG, so a resumed run (which creates
    its iterator at another moment) would see other dropout masks."""
    generator = torch.Generator().manual_seed(seed)
    if train:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=sampler is None,
                          drop_last=True, collate_fn=collate_fn, num_workers=num_workers, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=collate_fn,
                      num_workers=num_workers, generator=generator)


class DataLoaders(NamedTuple):
    """The three loaders of :func:`create_dataloaders` (unpack as ``train, val, test``)."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


def create_dataloaders(
    data: str | os.PathLike | Dataset | Mapping[str, Dataset] | Sequence[Mapping[str, Any]] = BOOK_DATA_URL,
    tokenizer: Any = None,
    *,
    style: PromptStyle | str = "alpaca",
    batch_size: int = 8,
    eval_batch_size: int | None = None,
    mask_prompt: bool = False,
    allowed_max_length: int | None = 1024,
    overlong: str = "truncate",
    pad_to_multiple_of: int | None = None,
    return_attention_mask: bool = False,
    seed: int = 123,
    num_workers: int = 0,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    val_fraction: float | None = None,
    shuffle_split: bool = False,
    skip_invalid: bool = False,
    collator: InstructionDataCollator | None = None,
) -> DataLoaders:
    """Train / validation / test ``DataLoader`` s from one call, with the book's defaults.

    Loads ``data`` (anything :func:`load_instruction_data` takes; or a ``DatasetDict``/mapping with
    ``train``, ``validation`` (or ``val``) and ``test``), splits it (:func:`split_dataset`), tokenizes
    each split (:func:`tokenize_dataset`; skipped for splits that already have ``input_ids``) and
    batches with :class:`~gpt_sft.data.collator.InstructionDataCollator`.

    The book's loaders: batch size 8; train ``shuffle=True, drop_last=True`` (here with a
    ``torch.Generator`` seeded with ``seed``, so the order is reproducible and independent of the
    global RNG); validation and test neither shuffled nor dropping the last batch;
    ``num_workers=0``. The batches are dicts of CPU tensors (``input_ids``, ``labels``, and
    ``attention_mask`` if asked for).
    """
    if isinstance(data, Mapping) and "train" in data:
        val_key = "validation" if "validation" in data else "val"
        splits = {"train": data["train"], "validation": data[val_key], "test": data["test"]}
    else:
        dataset = data if isinstance(data, Dataset) and "input_ids" in data.column_names else None
        if dataset is None:
            dataset = load_instruction_data(data, skip_invalid=skip_invalid)
        splits = dict(
            split_dataset(
                dataset, train_fraction, test_fraction, val_fraction, shuffle=shuffle_split, seed=seed
            )
        )
    for name, split in splits.items():
        if "input_ids" not in split.column_names:
            split = tokenize_dataset(
                split, tokenizer, style, allowed_max_length=allowed_max_length, overlong=overlong, keep_columns=False
            )
        wanted = [c for c in ("input_ids", "prompt_length") if c in split.column_names]
        splits[name] = split.select_columns(wanted)
    if collator is None:
        collator = InstructionDataCollator(
            allowed_max_length=allowed_max_length,
            mask_prompt=mask_prompt,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask,
        )
    eval_batch_size = eval_batch_size or batch_size
    train = book_loader(splits["train"], batch_size, collator, train=True, seed=seed, num_workers=num_workers)
    val, test = (book_loader(splits[name], eval_batch_size, collator, train=False, seed=seed, num_workers=num_workers)
                 for name in ("validation", "test"))
    return DataLoaders(train, val, test)

