"""Preference data for DPO: entries with a ``chosen`` and a ``rejected`` response, loaded, validated,
tokenized and batched like the instruction data.

An entry is an instruction entry (``instruction``, ``input``, ``output``: :mod:`.validate`'s rules)
with two more string fields, ``chosen`` and ``rejected``, both non-empty and without
``<|endoftext|>`` (the book's ``instruction-data-with-preference.json``). A bad entry is one
:class:`~gpt_sft.data.validate.InstructionDataError` naming the source, the entry (0-based, file
order) and the problem, or, with ``skip_invalid``, a skip counted by reason.

Pairs in TRL's conversational format (``prompt`` a list of messages ending on a user turn, ``chosen`` and
``rejected`` each one assistant message; :func:`gpt_sft.data.conversations.preference_problem`) are read too, found
from the first entry or with ``data_format="messages"``; they load as ``messages`` (the prompt and the chosen answer)
and ``rejected`` (the rejected answer's text).

Each pair becomes two token sequences with the same prompt -- the prompt style's text with
``output`` replaced by the chosen and by the rejected response; for a conversation, its multi-turn text
(:mod:`gpt_sft.data.conversation_format`) ending with the chosen or the rejected answer -- and
:class:`PreferenceCollator` pads them as the instruction collator does (one end-of-text appended and kept as a
target, the rest of the padding masked) with the prompt masked, chosen rows first, then rejected rows. The target is
then the answer's header, the answer and its end-of-text, for a conversation as for an Alpaca pair; the prompt's
earlier answers, the same on both sides, are not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset

from ..model.tokenizer import END_OF_TEXT_ID
from .collator import InstructionDataCollator
from .constants import BOOK_PREFERENCE_DATA_URL
from .load import load_instruction_data
from .prompts import PromptStyle
from .tokenize import tokenize_dataset
from .validate import InstructionDataError, LoadStats

RESPONSE_FIELDS = ("chosen", "rejected")
# Columns of a tokenized preference data set (what the collator reads); ``ref_logps`` is added when
# the reference model's log-probabilities are computed once before training.
TOKEN_COLUMNS = ("chosen_input_ids", "chosen_prompt_length", "rejected_input_ids", "rejected_prompt_length")


def load_preference_data(source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = BOOK_PREFERENCE_DATA_URL,
                         *, skip_invalid: bool = False, data_format: str = "auto") -> tuple[Dataset, LoadStats]:
    """Load and validate preference data (any source :func:`~gpt_sft.data.load.load_instruction_data`
    reads); returns the data set and what was read and skipped. ``data_format``: ``auto`` (what the first entry
    holds), ``alpaca`` or ``messages`` (TRL's conversational pairs)."""
    return load_instruction_data(source, skip_invalid=skip_invalid, return_stats=True, response_fields=RESPONSE_FIELDS,
                                 data_format=data_format)


@dataclass
class PreferenceTokenStats:
    """What :func:`tokenize_preferences` did with one split's pairs."""

    num_pairs: int = 0
    num_kept: int = 0
    num_overlong: int = 0  # pairs with a response cut at allowed_max_length (it loses its end-of-text target)
    num_dropped_overlong: int = 0  # of those, dropped (--drop-overlong)
    num_dropped_no_response: int = 0  # pairs whose prompt alone fills allowed_max_length: nothing to compare
    num_dropped_identical: int = 0  # pairs whose chosen and rejected are the same tokens: nothing to prefer
    num_shortened: int = 0  # over-long conversational pairs kept without their earliest exchanges
    longest: int = 0  # tokens of the longest sequence, with its end-of-text
    dropped_indices: list[int] = field(default_factory=list)  # rows of the split that were dropped

    def __str__(self) -> str:
        text = f"{self.num_kept} of {self.num_pairs} pairs (longest {self.longest} tokens as kept)"
        if self.num_shortened:
            text += f"; {self.num_overlong} over-long: {self.num_shortened} lost their earliest exchanges"
            text += f", {self.num_dropped_overlong} dropped" if self.num_dropped_overlong else ""
        elif self.num_overlong:
            text += f"; {self.num_overlong} over-long " + ("dropped" if self.num_dropped_overlong else "truncated")
        if self.num_dropped_no_response:
            text += f"; {self.num_dropped_no_response} dropped: the prompt alone fills --allowed-max-length"
        if self.num_dropped_identical:
            text += f"; {self.num_dropped_identical} dropped: chosen and rejected are the same"
        return text

    @property
    def num_dropped(self) -> int:
        return self.num_dropped_overlong + self.num_dropped_no_response + self.num_dropped_identical


def conversation_sides(conversations: Sequence[Sequence[Mapping[str, str]]],
                       rejected: Sequence[str]) -> dict[str, list[list[dict[str, str]]]]:
    """The two conversations of each pair: ending with the chosen answer (as loaded) and with the rejected one."""
    return {"chosen": [list(messages) for messages in conversations],
            "rejected": [[*messages[:-1], {"role": "assistant", "content": answer}]
                         for messages, answer in zip(conversations, rejected)]}


def last_answer_tokens(conversations: Sequence[Sequence[Mapping[str, str]]],
                       style: PromptStyle | str) -> list[tuple[list[int], int]]:
    """``(ids, prompt length)`` of each conversation, its whole text, the target its last answer (``--train-on
    last``): the tokens before that answer's header are the prompt."""
    if not conversations:
        return []
    tokens = tokenize_dataset(Dataset.from_dict({"messages": list(conversations)}), style=style,
                              allowed_max_length=None, keep_columns=False, train_on="last")
    return list(zip(tokens["input_ids"], tokens["prompt_length"]))


def without_earliest(messages: Sequence[Mapping[str, str]], count: int) -> list[Mapping[str, str]]:
    """The conversation without its ``count`` earliest exchanges (a user message and its answer); a system message
    stays."""
    system = list(messages[:1]) if messages[0]["role"] == "system" else []
    return [*system, *messages[len(system) + 2 * count:]]


def exchange_count(messages: Sequence[Mapping[str, str]]) -> int:
    return (len(messages) - (messages[0]["role"] == "system")) // 2


def shortened_pairs(sides: dict[str, list], rows: Sequence[int], style: PromptStyle | str,
                    limit: int) -> dict[int, dict[str, tuple[list[int], int]]]:
    """For each over-long conversational pair in ``rows``, its two sides without the fewest earliest exchanges that
    make both fit in ``limit`` tokens (the same prompt on both); a row whose last exchange alone is too long is
    missing from the result."""
    tries = [(row, count) for row in rows for count in range(1, exchange_count(sides["chosen"][row]))]
    tokens = {name: last_answer_tokens([without_earliest(side[row], count) for row, count in tries], style)
              for name, side in sides.items()}
    found: dict[int, dict[str, tuple[list[int], int]]] = {}
    for i, (row, _) in enumerate(tries):
        pair = {name: tokens[name][i] for name in RESPONSE_FIELDS}
        if row not in found and all(len(ids) <= limit for ids, _ in pair.values()):
            found[row] = pair
    return found


def tokenize_preferences(dataset: Dataset, style: PromptStyle | str, allowed_max_length: int, *,
                         drop_overlong: bool = False) -> tuple[Dataset, PreferenceTokenStats]:
    """The pairs of ``dataset`` as token ids: ``chosen_input_ids``/``rejected_input_ids`` (prompt +
    response, without end-of-text) and each one's prompt length. A pair whose prompt leaves no response
    token within ``allowed_max_length`` is dropped (counted), and so is one whose chosen and rejected sides are the
    same tokens; an over-long one is truncated as in SFT (or dropped with ``drop_overlong``). An over-long
    conversational pair loses whole earliest exchanges, the same on both sides, until both fit (the system message
    stays), as a conversation does in SFT; one whose last exchange alone is too long is dropped, never cut inside a
    turn (and every over-long one with ``drop_overlong``)."""
    conversational = "messages" in dataset.column_names
    if conversational:
        sides = conversation_sides(dataset["messages"], dataset["rejected"])
        tokens = {name: last_answer_tokens(side, style) for name, side in sides.items()}
        overlong = [row for row in range(len(dataset))
                    if any(len(tokens[name][row][0]) > allowed_max_length for name in RESPONSE_FIELDS)]
        shortened = {} if drop_overlong else shortened_pairs(sides, overlong, style, allowed_max_length)
    else:
        tokens = {}
        for name in RESPONSE_FIELDS:
            # Each side is the instruction entry with its response as the output: the same prompt, the
            # same tokenization and the same truncation as supervised fine-tuning.
            side = dataset.select_columns(["instruction", "input", name]).rename_column(name, "output")
            tokenized = tokenize_dataset(side, style=style, allowed_max_length=allowed_max_length,
                                         overlong="truncate", keep_columns=False)
            tokens[name] = list(zip(tokenized["input_ids"], tokenized["prompt_length"]))
    stats = PreferenceTokenStats(num_pairs=len(dataset))
    columns: dict[str, list] = {c: [] for c in TOKEN_COLUMNS}
    for row in range(len(dataset)):
        pair = {name: tokens[name][row] for name in RESPONSE_FIELDS}
        if conversational and any(len(ids) > allowed_max_length for ids, _ in pair.values()):
            stats.num_overlong += 1
            if row not in shortened:
                stats.num_dropped_overlong += 1
                stats.dropped_indices.append(row)
                continue
            pair = shortened[row]
            stats.num_shortened += 1
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
    is masked (``mask_prompt``), so the targets are the response and its end-of-text. A conversation's earlier
    answers end with an end-of-text inside its tokens, which the book's rule would take for padding: such a row gets
    its loss mask (the tokens from its prompt length on, or every token without ``mask_prompt``). ``ref_logps``
    (``(2B,)``, same order) comes along when the examples carry precomputed reference log-probs."""

    allowed_max_length: int | None = 1024
    mask_prompt: bool = True

    def __post_init__(self) -> None:
        self._collate = InstructionDataCollator(allowed_max_length=self.allowed_max_length,
                                                mask_prompt=self.mask_prompt)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        rows = []
        for side in RESPONSE_FIELDS:
            for e in examples:
                ids, prompt_length = e[f"{side}_input_ids"], e[f"{side}_prompt_length"]
                rows.append({"input_ids": ids, "prompt_length": prompt_length})
                if END_OF_TEXT_ID in ids:
                    start = prompt_length if self.mask_prompt else 0
                    rows[-1]["loss_mask"] = [0] * start + [1] * (len(ids) - start)
        batch = self._collate(rows)
        if "ref_logps" in examples[0]:
            ref = torch.tensor([[float(v) for v in e["ref_logps"]] for e in examples], dtype=torch.float32)  # (B, 2)
            batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])  # (2B,): chosen, then rejected
        return batch


__all__ = ["BOOK_PREFERENCE_DATA_URL", "PreferenceCollator", "PreferenceTokenStats", "RESPONSE_FIELDS",
           "TOKEN_COLUMNS", "load_preference_data", "tokenize_preferences"]
