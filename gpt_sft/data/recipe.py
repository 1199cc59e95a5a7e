"""What a checkpoint records about its data, so that later stages use exactly what training used.

``recipe.json`` in a checkpoint folder: the data source and its SHA-256, the prompt style (a
registered name, an import path ``package.module:NAME``, and the templates of a format-string style
registered at run time), the split fractions, shuffle and seed. ``gpt-sft generate --split test`` on
a checkpoint then returns the run's own held-out entries, formatted the run's way; a flag that
contradicts the recipe is obeyed with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from ..common.atomic_io import write_json_atomic
from .conversation_format import ConversationLayout, conversation_layout
from .load import load_instruction_data
from .prompts import PromptStyle, get_prompt_style, registered_prompt_style
from .split import split_dataset
from .validate import LoadStats

RECIPE_FILE = "recipe.json"
SPLIT_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class RecipeWarning(UserWarning):
    """A later stage does something other than the checkpoint's recipe says (on request, or forced)."""


def warn_recipe(message: str) -> None:
    """One line on stderr (a file name without source lines), whoever calls it."""
    warnings.warn_explicit(message, RecipeWarning, filename="gpt-sft", lineno=0)


@dataclass
class Recipe:
    """How a run's data was made: source, style and split."""

    data: str | None = None
    prompt_style: str = "alpaca"
    prompt_style_spec: dict[str, Any] | None = None
    train_fraction: float = 0.85
    test_fraction: float = 0.10
    shuffle_split: bool = False
    seed: int = 123
    skip_invalid: bool = False
    data_sha256: str | None = None
    data_fingerprint: str | None = None
    # Conversations: the format read (messages or sharegpt), what the loss covered, and the exact text around each
    # message (conversation_format.ConversationLayout), so that every later stage formats them as training did.
    data_format: str = "alpaca"
    train_on: str | None = None
    conversation_layout: dict[str, Any] | None = None

    @classmethod
    def of_training(cls, cfg: Any, style: PromptStyle, stats: LoadStats) -> "Recipe":
        """The recipe of a training config (any object with the training options' names)."""
        return cls(data=str(cfg.data), prompt_style=str(cfg.prompt_style) if not isinstance(cfg.prompt_style, PromptStyle)
                   else cfg.prompt_style.name, prompt_style_spec=style.spec(), train_fraction=cfg.train_fraction,
                   test_fraction=cfg.test_fraction, shuffle_split=cfg.shuffle_split, seed=cfg.seed,
                   skip_invalid=cfg.skip_invalid, data_sha256=stats.sha256, data_fingerprint=stats.fingerprint,
                   **cls.conversation_fields(cfg, style, stats.data_format))

    @staticmethod
    def conversation_fields(cfg: Any, style: PromptStyle, data_format: str) -> dict[str, Any]:
        """What a recipe records about conversations (nothing but the format for Alpaca data)."""
        if data_format == "alpaca":
            return {"data_format": data_format}
        return {"data_format": data_format, "train_on": getattr(cfg, "train_on", "assistant"),
                "conversation_layout": conversation_layout(style).spec()}

    @property
    def conversational(self) -> bool:
        """Whether the run was trained on conversations (its checkpoints get the multi-turn chat template)."""
        return self.data_format != "alpaca"

    def layout(self) -> ConversationLayout:
        """The text around each message of the run's conversations, as recorded (else the style's)."""
        if self.conversation_layout:
            return ConversationLayout.from_spec(self.conversation_layout)
        return conversation_layout(self.style())

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "Recipe | None":
        """The recipe saved in a checkpoint folder; for folders from before ``recipe.json``, what their
        ``training_args.json`` says; ``None`` for a folder with neither (not a gpt-sft training run)."""
        folder = Path(folder)
        for name in (RECIPE_FILE, "training_args.json"):
            path = folder / name
            if path.is_file():
                try:
                    values = json.loads(path.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as err:
                    raise ValueError(f"{path}: not valid JSON ({err}): a checkpoint's {name} is a JSON object; "
                                     f"delete it, or pass --data and --prompt-style") from None
                if not isinstance(values, dict):
                    raise ValueError(f"{path}: a JSON {type(values).__name__}, not an object; delete it, or pass "
                                     "--data and --prompt-style")
                known = {f.name for f in dataclasses.fields(cls)}
                recipe = cls(**{k: v for k, v in values.items() if k in known})
                if not isinstance(recipe.prompt_style, str) or not (recipe.prompt_style_spec is None
                                                                     or isinstance(recipe.prompt_style_spec, dict)):
                    raise ValueError(f"{path}: prompt_style must be a name and prompt_style_spec an object")
                return recipe
        return None

    def write(self, folder: str | os.PathLike) -> Path:
        return write_json_atomic(Path(folder) / RECIPE_FILE, dataclasses.asdict(self))

    def style(self) -> PromptStyle:
        """The run's prompt style, rebuilt from the templates the recipe recorded, or a style registered under its
        name. Never imported: a recipe is read from a file, and nothing read from a file picks code to run (a style
        with code is named by the user, ``--prompt-style package.module:NAME``). The recorded templates win over a
        registered style of the same name (editing a registered style must not re-prompt old checkpoints); a
        warning says when the two differ."""
        registered = registered_prompt_style(self.prompt_style)
        if self.prompt_style_spec:
            recorded = PromptStyle.from_spec(self.prompt_style_spec)
            if registered is not None and registered.spec() != recorded.spec():
                warn_recipe(f"prompt style {self.prompt_style!r} registered here differs from the templates the "
                            "checkpoint's recipe recorded: using the recorded ones")
            return recorded
        if registered is not None:
            return registered
        if ":" in self.prompt_style:
            raise ValueError(
                f"the run was trained with prompt style {self.prompt_style!r}, code of your own that a checkpoint "
                "cannot carry, and gpt-sft imports code only when you name it: pass --prompt-style "
                f"{self.prompt_style} (or register the style in Python)")
        raise ValueError(
            f"the run was trained with prompt style {self.prompt_style!r}, which is not registered here and whose "
            "templates the recipe did not record: register it (gpt_sft.register_prompt_style), or pass --prompt-style")

    def splits(self) -> DatasetDict:
        """The run's train / validation / test splits, made again exactly as training made them (validated as
        training data, so that the same entries are kept: a held-out conversation ends on its reference answer)."""
        if not self.data:
            raise ValueError("the checkpoint's recipe names no data: pass --data")
        dataset, stats = load_instruction_data(self.data, skip_invalid=self.skip_invalid, return_stats=True,
                                               data_format=self.data_format)
        if self.data_sha256 and stats.sha256 and stats.sha256 != self.data_sha256:
            warn_recipe(f"{self.data} changed since the run was trained (SHA-256 {stats.sha256[:12]}..., recorded "
                        f"{self.data_sha256[:12]}...): its splits are not the run's")
        return split_dataset(dataset, self.train_fraction, self.test_fraction, shuffle=self.shuffle_split, seed=self.seed)


def follow_recipe(recipe: Recipe | None, given: str | None, what: str, recorded: str | None,
                  whose: str = "the checkpoint's recipe") -> str | None:
    """``given`` if set (with a warning when it contradicts the recipe), else the recipe's value."""
    if given is None:
        return recorded
    if recipe is not None and recorded is not None and given != recorded:
        warn_recipe(f"{what} {given!r} differs from {whose} ({recorded!r}): using {given!r}")
    return given


def resolve_style(recipe: Recipe | None, given: str | PromptStyle | None,
                  whose: str = "the checkpoint's recipe") -> PromptStyle:
    """The prompt style a later stage uses -- the one resolver of every command and training stage: ``given`` (what
    the user typed: a registered name or an import path, honoured, with a warning when it contradicts the recipe),
    else the recipe's (:meth:`Recipe.style`, never imported), else alpaca."""
    if given is not None:
        follow_recipe(recipe, given if isinstance(given, str) else given.name, "--prompt-style",
                      recipe.prompt_style if recipe else None, whose)
        return get_prompt_style(given)
    return recipe.style() if recipe is not None else get_prompt_style("alpaca")


def checkpoint_style(folder: str | os.PathLike, given: str | PromptStyle | None) -> tuple[PromptStyle, Recipe | None]:
    """:func:`resolve_style` for a model source (a checkpoint folder has a recipe; a preset or a Hub id none), and
    the recipe read."""
    recipe = Recipe.read(folder) if Path(folder).is_dir() else None
    return resolve_style(recipe, given), recipe


def checkpoint_layout(recipe: Recipe | None, style: PromptStyle, given: str | PromptStyle | None = None
                      ) -> ConversationLayout | None:
    """How a later stage writes conversations for a checkpoint: the layout its recipe records when it was trained
    on conversations (``None`` for any other checkpoint, whose chat template stays single-turn); with a
    ``--prompt-style`` given (``given``), that style's layout instead, as :func:`resolve_style` obeys it."""
    if recipe is None or not recipe.conversational:
        return None
    return conversation_layout(style) if given is not None else recipe.layout()


def entries_of_split(splits: DatasetDict, split: str) -> list[dict]:
    """The entries of ``split`` (``train``, ``val``/``validation``, ``test``)."""
    return [dict(row) for row in splits[SPLIT_NAMES[split]]]


__all__ = ["RECIPE_FILE", "Recipe", "RecipeWarning", "SPLIT_NAMES", "checkpoint_layout", "checkpoint_style",
           "entries_of_split", "follow_recipe", "resolve_style", "warn_recipe"]
