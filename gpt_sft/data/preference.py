"""Preference data for DPO: entries with a ``chosen`` and a ``rejected`` response, loaded, validated,
tokenized and batched like the instruction data.

An entry is an instruction entry (``instruction``, ``input``, ``output``: :mod:`.validate`'s rules)
with two more string fields, ``chosen`` and ``rejected``, both non-empty and without
``<|endoftext|>`` (the book's ``instruction-data-with-preference.json``). A bad entry is one
:class:`~gpt_sft.data.validate.InstructionDataError` naming the source, the entry (0-based, file
order) and the problem, or, with ``skip_invalid``, a skip counted by reason.

Each pair becomes two token sequences with the same prompt -- the prompt style's text with
``output`` replaced by the chosen and by the rejected response -- and :class:`PreferenceCollator`
pads them as the instruction collator does (one end-of-text appended and kept as a target, the rest
of the padding masked) with the prompt masked, chosen rows first, then rejected rows.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset

from .collator import InstructionDataCollator
from .load import load_instruction_data
from .prompts import PromptStyle
from .tokenize import tokenize_dataset
from .validate import InstructionDataError, LoadStats

BOOK_PREFERENCE_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
    "instruction-data-with-preference.json"
)
RESPONSE_FIELDS = ("chosen", "rejected")
# Columns of a tokenized preference data set (what the collator reads); ``ref_logps`` is added when
# the reference model's log-probabilities are computed once before training.
TOKEN_COLUMNS = ("chosen_input_ids", "chosen_prompt_length", "rejected_input_ids", "rejected_prompt_length")


def load_preference_data(source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = BOOK_PREFERENCE_DATA_URL,
                         *, skip_invalid: bool = False) -> tuple[Dataset, LoadStats]:
    """Load and validate preference data (any source :func:`~gpt_sft.data.load.load_instruction_data`
    reads); returns the data set and what was read and skipped."""
    return load_instruction_data(source, skip_invalid=skip_invalid, return_stats=True, response_fields=RESPONSE_FIELDS)


@dataclass
class PreferenceTokenStats:
    """What :func:`tokenize_preferences` did with one split's pairs."""

    num_pairs: int = 0
    num_kept: int = 0
    num_overlong: int = 0  # pairs with a response cut at allowed_max_length (it loses its end-of-text target)
    num_dropped_overlong: int = 0  # of those, dropped (--drop-overlong)
    num_dropped_no_response: int = 0  # pairs whose prompt alone fills allowed_max_length: nothing to compare
    num_dropped_identical: int = 0  # pairs whose chosen and rejected are the same tokens: nothing to prefer
    longest: int = 0  # tokens of the longest sequence, with its end-of-text
    dropped_indices: list[int] = field(default_factory=list)  # rows of the split that were dropped

    def __str__(self) -> str:
        text = f"{self.num_kept} of {self.num_pairs} pairs (longest {self.longest} tokens as kept)"
        if self.num_overlong:
            text += f"; {self.num_overlong} over-long " + ("dropped" if self.num_dropped_overlong else "truncated")
        if self.num_dropped_no_response:
            text += f"; {self.num_dropped_no_response} dropped: the prompt alone fills --allowed-max-length"
        if self.num_dropped_identical:
            text += f"; {self.num_dropped_identical} dropped: chosen and rejected are the same"
        return text

    @property
    def num_dropped(self) -> int:
        return self.num_dropped_overlong + self.num_dropped_no_response + self.num_dropped_identical


def tokenize_preferences(dataset: Dataset, style: PromptStyle | str, allowed_max_length: int, *,
                         drop_overlong: bool = False) -> tuple[Dataset, PreferenceTokenStats]:
    """The pairs of ``dataset`` as token ids: ``chosen_input_ids``/``rejected_input_ids`` (prompt +
    response, without end-of-text) and each one's prompt length. A pair whose prompt leaves no response
    token within ``allowed_max_length`` is dropped (counted), and so is one whose chosen and rejected sides are the
    same tokens; an over-long one is truncated as in SFT (or dropped with ``drop_overlong``)."""
    sides = {}
    for name in RESPONSE_FIELDS:
        # Each side is the instruction entry with its response as the output: the same prompt, the
        # same tokenization and the same truncation as supervised fine-tuning.
        side = dataset.select_columns(["instruction", "input", name]).rename_column(name, "output")
        tokens = tokenize_dataset(side, style=style, allowed_max_length=allowed_max_length, overlong="truncate",
                                  keep_columns=False)
        sides[name] = list(zip(tokens["input_ids"], tokens["prompt_length"]))
    stats = PreferenceTokenStats(num_pairs=len(dataset))
    columns: dict[str, list] = {c: [] for c in TOKEN_COLUMNS}
    for row in range(len(dataset)):
        pair = {name: sides[name][row] for name in RESPONSE_FIELDS}
        stats.longest = max([stats.longest] + [len(ids) + 1 for ids, _ in pair.values()])
        if any(prompt_length > allowed_max_length for _, prompt_length in pair.values()):
            stats.num_dropped_no_response += 1
            stats.dropped_indices.append(row)
            continue
        if pair["chosen"][0][:allowed_max_length] == pair["rejected"][0][:allowed_max_length]:
            # the same tokens where the loss looks (up to the length limit): a no-op pair that dilutes the loss
            stats.num_dropped_identical += 1
            stats.dropped_indices.append(row)
            continue
        if any(len(ids) > allowed_max_length for ids, _ in pair.values()):
            stats.num_overlong += 1
            if drop_overlong:
                stats.num_dropped_overlong += 1
                stats.dropped_indices.append(row)
                continue
        for name, (ids, prompt_length) in pair.items():
            columns[f"{name}_input_ids"].append(ids)
            columns[f"{name}_prompt_length"].append(prompt_length)
    stats.num_kept = len(columns["chosen_input_ids"])
    if not stats.num_kept:
        raise InstructionDataError("preference data", f"no pair is left after tokenizing ({stats}): raise "
                                   "--allowed-max-length")
    return Dataset.from_dict(columns), stats


@dataclass
class PreferenceCollator:
    """A batch of pairs as one ``(2B, T)`` batch: the B chosen sequences, then the B rejected ones.

    Both are built by :class:`~gpt_sft.data.collator.InstructionDataCollator` together (one width):
    the end-of-text appended to every sequence stays a target, later padding is -100, and the prompt
    is masked (``mask_prompt``), so the targets are the response and its end-of-text. ``ref_logps``
    (``(2B,)``, same order) comes along when the examples carry precomputed reference log-probs."""

    allowed_max_length: int | None = 1024
    mask_prompt: bool = True

    def __post_init__(self) -> None:
        self._collate = InstructionDataCollator(allowed_max_length=self.allowed_max_length,
                                                mask_prompt=self.mask_prompt)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        rows = [{"input_ids": e[f"{side}_input_ids"], "prompt_length": e[f"{side}_prompt_length"]}
                for side in RESPONSE_FIELDS for e in examples]
        batch = self._collate(rows)
        if "ref_logps" in examples[0]:
            ref = torch.tensor([[float(v) for v in e["ref_logps"]] for e in examples], dtype=torch.float32)  # (B, 2)
            batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])  # (2B,): chosen, then rejected
        return batch


__all__ = ["BOOK_PREFERENCE_DATA_URL", "PreferenceCollator", "PreferenceTokenStats", "RESPONSE_FIELDS",
           "TOKEN_COLUMNS", "load_preference_data", "tokenize_preferences"]
