"""What ``gpt-sft verify`` checks: a checkpoint folder (or an unmerged LoRA adapter folder) loaded once, with the
run's own data, as training recorded it.

The model is loaded with the installed code on the CPU in float32: the reference every comparison starts from
(``gpt-sft doctor`` is the command about a device). An adapter folder's base is loaded *without* the SHA-256 check
of gpt-sft's loader, so that every other check still runs on it; the base's own check is a row of the table
(:mod:`.model_checks`). The entries are those of the split the recipe records (``recipe.json``): the held-out ones
(the test split, else the validation split) for the text and generation checks, the training ones for the loss.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft import PeftModel
from torch import nn
from transformers import AutoTokenizer

from ..data.conversation_format import ConversationLayout
from ..data.prompts import PromptStyle
from ..data.recipe import Recipe, checkpoint_layout, entries_of_split, resolve_style
from ..model.adapters import adapter_base, is_adapter_folder, merge_adapter
from ..model.loading import load_pretrained
from ..model.weights import ModelNotFoundError, WeightLoadingError, last_line

TRAINING_ARGS = "training_args.json"


@dataclass
class Subject:
    """A folder under verification: its model, tokenizer, format and data (see the module's text).

    Attributes:
        folder: The checkpoint or adapter folder.
        adapter: Whether it is an unmerged LoRA adapter (``base/`` beside it).
        model: The model with the installed code, an adapter merged into its base; ``None`` when it did not load.
        unmerged: An adapter folder's peft model, the adapter applied to its base but not merged.
        load_error: Why the model did not load (one line).
        tokenizer: The tokenizer saved with the folder (``None``: it has none, or it did not load).
        tokenizer_error: Why not.
        style, layout: The prompt style and, for a run on conversations, the layout of its messages.
        held_out, train: The run's entries (the test split, else the validation split; the training split).
        data_error: Why there are no entries (no recipe, its data not here...).
        mask_prompt, allowed_max_length, max_new_tokens: What the run trained and generated with.
        recipe: The run's recipe (``recipe.json``; its data replaced by ``--data``), ``None`` for a folder without.
    """

    folder: Path
    adapter: bool = False
    model: nn.Module | None = None
    unmerged: nn.Module | None = None
    load_error: str = ""
    tokenizer: Any = None
    tokenizer_error: str = ""
    style: PromptStyle | None = None
    layout: ConversationLayout | None = None
    held_out: list[dict] = field(default_factory=list)
    train: list[dict] = field(default_factory=list)
    data_error: str = ""
    mask_prompt: bool = True
    allowed_max_length: int | None = None
    max_new_tokens: int = 256
    recipe: Recipe | None = None

    @property
    def conversational(self) -> bool:
        return self.layout is not None


def training_args(folder: Path) -> dict[str, Any]:
    """The run's options (``training_args.json``), or none for a folder without them."""
    path = folder / TRAINING_ARGS
    try:
        values = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}): a run's {TRAINING_ARGS} is a JSON object") from None
    return values if isinstance(values, dict) else {}


def load_models(subject: Subject) -> None:
    """The model with the installed code (float32, CPU); for an adapter folder also its unmerged peft model."""
    folder = subject.folder
    try:
        if not subject.adapter:
            subject.model = load_pretrained(folder, dtype="float32", device="cpu").eval()
            return
        base = load_pretrained(adapter_base(folder), dtype="float32", device="cpu").eval()
        try:
            subject.unmerged = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
        except (ValueError, KeyError, RuntimeError) as err:
            raise WeightLoadingError(f"{folder}: the LoRA adapter does not fit its base model ({last_line(err)})") \
                from None
        # peft froze the base's weights; the loss paths' gradients are taken with respect to every weight
        subject.model = merge_adapter(base, folder).float().eval().requires_grad_(True)
    except (WeightLoadingError, ModelNotFoundError, OSError, ValueError) as err:
        subject.load_error = last_line(err)


def load_tokenizer_of(subject: Subject) -> None:
    """The tokenizer saved with the folder, as ``AutoTokenizer`` gives it to a user of the checkpoint."""
    folder = subject.folder
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        subject.tokenizer_error = f"{folder} holds no tokenizer (tokenizer.json)"
        return
    try:
        subject.tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as err:  # a damaged tokenizer.json: the check fails on it
        subject.tokenizer_error = f"{folder}: the tokenizer does not load ({last_line(err)})"


def load_data(subject: Subject, data: str | None, prompt_style: str | None = None) -> None:
    """The run's format and entries, from its recipe (``data``: another path to its data file; ``prompt_style``: the
    style it was trained with, where that is code of the user's own, which only the user may name)."""
    folder = subject.folder
    recipe = Recipe.read(folder)
    if data is not None:
        recipe = dataclasses.replace(recipe or Recipe(), data=data)
    subject.recipe = recipe
    try:
        subject.style = resolve_style(recipe, prompt_style)
        subject.layout = checkpoint_layout(recipe, subject.style)  # the layout it was trained with, as recorded
    except ValueError as err:
        subject.data_error = str(err)
        return
    if recipe is None:
        subject.data_error = f"{folder} has no recipe.json (not a gpt-sft training run): pass --data"
        return
    try:
        splits = recipe.splits()
    except (OSError, ValueError) as err:  # the data moved, or is no longer what the recipe says
        subject.data_error = f"the run's data cannot be read ({last_line(err)}): pass --data"
        return
    subject.held_out = entries_of_split(splits, "test") or entries_of_split(splits, "validation")
    subject.train = entries_of_split(splits, "train")
    if not subject.held_out:
        subject.data_error = f"{recipe.data}: the run's split holds no held-out entries (test or validation)"


def load_subject(folder: str | Path, data: str | None = None, prompt_style: str | None = None) -> Subject:
    """Everything the checks read, loaded once (see :class:`Subject`). A part that does not load is recorded with
    its reason; the checks that need it then fail or are skipped, and say why."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder; gpt-sft verify checks a checkpoint or run folder")
    adapter = is_adapter_folder(folder)
    if not adapter and not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not a checkpoint (no config.json) nor a LoRA adapter folder "
                         "(adapter_config.json): pass a gpt-sft run's output folder")
    args = training_args(folder)
    subject = Subject(folder, adapter=adapter, mask_prompt=bool(args.get("mask_prompt", True)),
                      allowed_max_length=args.get("allowed_max_length"),
                      max_new_tokens=int(args.get("max_new_tokens") or 256))
    load_models(subject)
    load_tokenizer_of(subject)
    load_data(subject, data, prompt_style)
    return subject


__all__ = ["Subject", "load_subject", "training_args"]
