"""What every export is compared with: the checkpoint's own model on the run's held-out prompts.

The prompts are the test split the checkpoint's recipe records (made again as training made it), each written as
the model is given it (:func:`~gpt_sft.data.conversation_format.entry_prompt`: an Alpaca entry's prompt, or a
held-out conversation up to its last answer); where the recipe's data cannot be read here (a run copied to another
machine), seeded synthetic instructions stand in, and every check says so in its detail. The reference answers are
``gpt-sft generate``'s greedy tokens (the same decoding code), in float32, of the checkpoint as ``gpt-sft export``
loads it (LoRA merged).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch

from ..data.conversation_format import ConversationLayout, entry_prompt, split_reference
from ..data.prompts import PromptStyle
from ..data.recipe import Recipe, checkpoint_layout, checkpoint_style
from ..data.synthetic import make_synthetic_instructions
from ..export.checkpoint import plain_model
from ..generate.decode import generate_token_ids
from ..generate.settings import GenerationSettings
from ..model.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer
from .check import Check
from .subject import Subject
from .text_checks import first_difference

# Held-out prompts and greedy tokens per prompt: the full checks (about a minute for every export of the offline
# demo, most of it transformers' start in a fresh process) and --quick.
PROMPTS, NEW_TOKENS = 20, 32
QUICK_PROMPTS, QUICK_NEW_TOKENS = 5, 16
_OUTPUT_MARK = "\x00output\x00"  # where the answer goes in the training text: what precedes it is the prompt


@dataclass
class Divergence:
    """Where an engine's greedy tokens first leave ours on one prompt, and by how much ours preferred its token."""

    prompt: int  # index among the held-out prompts
    position: int  # new-token index
    ours: int
    theirs: int
    margin: float  # our logit of our token minus our logit of theirs (>= 0: ours is the argmax)


class HeldOut:
    """The checkpoint, its prompt format and its held-out prompts; the model and its greedy tokens are computed
    once, when a check first needs them (a skipped check never loads the model)."""

    def __init__(self, checkpoint: str | Path, *, quick: bool, subject: Subject | None = None) -> None:
        """``subject``: the folder as ``gpt-sft verify`` loaded it for the checkpoint's checks; its style, layout,
        held-out entries (the recipe's split, ``--data`` honoured) and model are used, not read again. Without it
        (``gpt-sft export --verify``) they are read here from ``checkpoint``."""
        self.checkpoint = Path(checkpoint)
        self.quick = quick
        count = QUICK_PROMPTS if quick else PROMPTS
        self.new_tokens = QUICK_NEW_TOKENS if quick else NEW_TOKENS
        self.style: PromptStyle
        self.layout: ConversationLayout | None  # as trained
        self._model = None
        if subject is not None and subject.style is not None:
            self.style, self.layout, self._model = subject.style, subject.layout, subject.model
            if subject.held_out:
                self.entries = subject.held_out[:count]
                self.source = f"{len(self.entries)} held-out prompts of the run's split"
            else:
                self.entries, self.source = _synthetic_entries(count, self.layout is not None, subject.data_error)
        else:
            self.style, recipe = checkpoint_style(self.checkpoint, None)
            self.layout = checkpoint_layout(recipe, self.style)
            self.entries, self.source = _held_out_entries(recipe, count, self.layout is not None)
        self.prompts = [entry_prompt(e, self.style, self.layout) for e in self.entries]
        tokenizer = get_tokenizer()
        self.ids = [tokenizer.encode(p, allowed_special={END_OF_TEXT}) for p in self.prompts]

    @functools.cached_property
    def model(self):
        """The checkpoint in float32 as ``gpt-sft export`` loads it (LoRA merged): the subject's, where given."""
        if self._model is not None:
            return self._model
        return plain_model(str(self.checkpoint)).float()

    @functools.cached_property
    def budgets(self) -> list[int]:
        """New tokens per prompt: ``new_tokens``, less where the prompt leaves fewer positions of the context."""
        context = self.model.config.n_positions
        too_long = [i for i, ids in enumerate(self.ids) if len(ids) >= context]
        if too_long:
            raise ValueError(f"held-out prompt {too_long[0]} of {self.checkpoint} has {len(self.ids[too_long[0]])} "
                             f"tokens, the model's context {context}: it cannot be answered")
        return [min(self.new_tokens, context - len(ids)) for ids in self.ids]

    @functools.cached_property
    def greedy(self) -> list[list[int]]:
        """Our greedy tokens per prompt, ending with end-of-text where the model stopped there."""
        settings = GenerationSettings(max_new_tokens=self.new_tokens, eos_token_id=END_OF_TEXT_ID, progress=False,
                                      overflow="error")
        with torch.no_grad():
            out = generate_token_ids(self.model, self.ids, settings, max_new_tokens=self.budgets)
        return [list(seq) + ([END_OF_TEXT_ID] if stopped else [])
                for seq, stopped in zip(out.sequences, out.stopped_at_eos)]

    @functools.cached_property
    def chat_texts(self) -> list[str]:
        """The training text of each entry up to its answer: what a chat template must render for it."""
        if self.layout is not None:
            return list(self.prompts)  # a conversation's entry_prompt is render_conversation, training's own text
        return [self.style.format_text({**e, "output": _OUTPUT_MARK})[1].split(_OUTPUT_MARK)[0]
                for e in self.entries]

    @functools.cached_property
    def chats(self) -> list[list[dict[str, str]]]:
        """Each entry as chat messages (an OpenAI client's: an Alpaca entry's input as the system message)."""
        if self.layout is not None:
            return [[dict(m) for m in split_reference(e["messages"])[0]] for e in self.entries]
        return [([{"role": "system", "content": e["input"]}] if e.get("input") else [])
                + [{"role": "user", "content": e["instruction"]}] for e in self.entries]

    def divergences(self, theirs: list[list[int]]) -> list[Divergence]:
        """Where ``theirs`` (greedy tokens per prompt, end-of-text included) first differs from ours, per prompt
        that differs, with our logit margin there."""
        found = []
        for index, (ours, other) in enumerate(zip(self.greedy, theirs)):
            if ours == other:
                continue
            position = next((i for i, (a, b) in enumerate(zip(ours, other)) if a != b), min(len(ours), len(other)))
            if position == len(other) or position == len(ours):  # one is longer: it ignored the budget or end-of-text
                found.append(Divergence(index, position, ours[position] if position < len(ours) else -1,
                                        other[position] if position < len(other) else -1, float("inf")))
                continue
            with torch.no_grad():
                logits = self.model(torch.tensor([self.ids[index] + ours[:position]])).logits[0, -1]
            margin = (logits[ours[position]] - logits[other[position]]).item()
            found.append(Divergence(index, position, ours[position], other[position], margin))
        return found

    def describe(self, index: int) -> str:
        """A held-out prompt, for a detail: its number and its first words."""
        text = self.prompts[index].split("\n")
        words = " ".join(line for line in text if line.strip())[-60:]
        return f"prompt {index} (...{words!r})"


def text_check(group: str, name: str, rendered: Sequence[str], held: HeldOut, what: str) -> Check:
    """Prompts whose ``rendered`` text differs from the training text; the detail shows the first difference."""
    wrong = [i for i, (a, b) in enumerate(zip(rendered, held.chat_texts)) if a != b]
    detail = held.source
    if wrong:
        difference = first_difference(rendered[wrong[0]], held.chat_texts[wrong[0]])
        detail = f"{held.describe(wrong[0])}: {what} vs the training text, {difference}; {held.source}"
    return Check(group, name, float(len(wrong)), 0.0, detail=detail)


def _held_out_entries(recipe: Recipe | None, count: int, conversational: bool) -> tuple[list[dict[str, Any]], str]:
    """The first ``count`` entries of the recipe's test split, and where they come from; seeded synthetic
    instructions where the split cannot be made here (said in the second value)."""
    reason = "the checkpoint has no recipe.json"
    if recipe is not None and recipe.data:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a changed data file: its entries are still fair prompts
                test = recipe.splits()["test"]
        except (OSError, ValueError) as err:
            reason = f"the recipe's data cannot be read here ({str(err).splitlines()[0][:120]})"
        else:
            if len(test):
                rows = [dict(row) for row in test.select(range(min(count, len(test))))]
                return rows, f"{len(rows)} held-out prompts of the recipe's test split"
            reason = "the recipe's test split is empty"
    elif recipe is not None:
        reason = "the checkpoint's recipe names no data"
    return _synthetic_entries(count, conversational, reason)


def _synthetic_entries(count: int, conversational: bool, reason: str) -> tuple[list[dict[str, Any]], str]:
    """``count`` seeded synthetic instructions (as one-exchange conversations for a run on conversations), and a
    source that says they stand in for the held-out prompts, and why."""
    entries = make_synthetic_instructions(count, seed=0)
    if conversational:
        entries = [{"messages": [{"role": "user", "content": e["instruction"] + (f"\n{e['input']}" if e["input"]
                                                                                 else "")},
                                 {"role": "assistant", "content": e["output"]}]} for e in entries]
    return entries, f"{count} synthetic prompts, not held-out ones: {reason}"


__all__ = ["Divergence", "HeldOut", "NEW_TOKENS", "PROMPTS", "QUICK_NEW_TOKENS", "QUICK_PROMPTS", "text_check"]
