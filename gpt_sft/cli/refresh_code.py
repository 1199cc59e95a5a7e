"""``gpt-sft refresh-code DIR``: replace the model code a checkpoint carries with the installed one."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..common.options import CommandParser
from .errors import add_debug_flag, report_errors

# The model code and the tokenizer (torch, transformers, datasets: seconds to import) are imported inside the
# functions that use them, after the options parse: `gpt-sft refresh-code --help` and an option error answer without.
PROG = "gpt-sft refresh-code"  # checkpoint_code.REFRESH_COMMAND, which its outdated-code warning names


def add_missing_chat_template(folder: Path) -> str | None:
    """Give an older checkpoint's tokenizer the chat template of its recipe's prompt style."""
    from transformers import AutoTokenizer

    from ..data.chat_template import chat_template
    from ..data.recipe import Recipe, resolve_style

    recipe = Recipe.read(folder)
    if not (folder / "tokenizer_config.json").is_file() or recipe is None:
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template:
        return None
    try:
        tokenizer.chat_template = chat_template(resolve_style(recipe, None))
    except ValueError as err:
        print(f"{folder}: no chat template added: {err}", file=sys.stderr)
        return None
    # Saved beside the checkpoint, then each file renamed over the old one: never half-written.
    with tempfile.TemporaryDirectory(prefix=".tokenizer.tmp-", dir=folder) as tmp:
        tokenizer.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            os.replace(path, folder / path.name)
    return f"chat template ({recipe.prompt_style})"


@report_errors
def main(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog=PROG,
        description="Replace the model code (configuration_gpt.py, modeling_gpt.py) that gpt-sft checkpoint "
        "folders carry for trust_remote_code loading with the installed version, in place; each file is replaced "
        "atomically. Adds the chat template of the checkpoint's prompt style if its tokenizer has none.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("folders", nargs="+", metavar="DIR", help="gpt-sft checkpoint folder(s)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    from ..model.checkpoint_code import code_version, refresh_model_code
    from ..model.modeling_gpt import MODEL_CODE_VERSION

    status = 0
    for folder in args.folders:
        before = code_version(folder)
        try:  # an error is one line for this folder; the others are still refreshed
            changed = refresh_model_code(folder)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        try:
            added = add_missing_chat_template(Path(folder))
        except (OSError, ValueError) as err:  # the recipe: the model code is refreshed all the same
            print(f"error: {err}", file=sys.stderr)
            status, added = 1, None
        if changed or added:
            print(f"{folder}: model code version {before} -> {MODEL_CODE_VERSION}; updated "
                  + ", ".join(changed + ([added] if added else [])))
        else:
            print(f"{folder}: already current (model code version {MODEL_CODE_VERSION})")
    return status
