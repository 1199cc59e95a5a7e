"""``gpt-sft <command>``: one entry point for every stage.

``gpt-sft train`` (also ``accelerate launch scripts/train.py``), ``gpt-sft generate``,
``gpt-sft evaluate`` and ``gpt-sft refresh-code DIR``; ``gpt-sft <command> --help`` lists its options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from transformers import AutoTokenizer

from . import generation, judge, training
from .config_cli import CommandParser
from .command_errors import add_debug_flag, report_errors
from .checkpoint_code import REFRESH_COMMAND, code_version, refresh_model_code
from .modeling_gpt import MODEL_CODE_VERSION
from .prompts import chat_template

COMMANDS = {
    "train": ("fine-tune a GPT-2 on instruction data (the book's chapter 7 recipe by default)", training.main),
    "generate": ("generate responses with a fine-tuned checkpoint", generation.main),
    "evaluate": ("score responses with an LLM judge", judge.main),
    "refresh-code": ("replace a checkpoint's copy of the model code with the installed one", None),
}


@report_errors
def refresh_code_main(argv: Sequence[str]) -> int:
    parser = CommandParser(
        prog=REFRESH_COMMAND,
        description="Replace the model code (configuration_gpt.py, modeling_gpt.py) that gpt-sft checkpoint "
        "folders carry for trust_remote_code loading with the installed version, in place; each file is replaced "
        "atomically. Adds the chat template of the checkpoint's prompt style if its tokenizer has none.",
    )
    parser.add_argument("folders", nargs="+", metavar="DIR", help="gpt-sft checkpoint folder(s)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    status = 0
    for folder in args.folders:
        before = code_version(folder)
        try:
            changed = refresh_model_code(folder)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            status = 1
            continue
        added = _add_missing_chat_template(Path(folder))
        if changed or added:
            what = ", ".join(changed + ([added] if added else []))
            print(f"{folder}: model code version {before} -> {MODEL_CODE_VERSION}; updated {what}")
        else:
            print(f"{folder}: already current (model code version {MODEL_CODE_VERSION})")
    return status


def _add_missing_chat_template(folder: Path) -> str | None:
    """Give an older checkpoint's tokenizer the chat template of its recipe's prompt style."""
    args_path = folder / "training_args.json"
    if not (folder / "tokenizer_config.json").is_file() or not args_path.is_file():
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.chat_template:
        return None
    style = json.loads(args_path.read_text(encoding="utf-8")).get("prompt_style", "alpaca")
    try:
        tokenizer.chat_template = chat_template(style)
    except ValueError as err:
        print(f"{folder}: no chat template added: {err}", file=sys.stderr)
        return None
    # Saved beside the checkpoint, then each file renamed over the old one: never half-written.
    with tempfile.TemporaryDirectory(prefix=".tokenizer.tmp-", dir=folder) as tmp:
        tokenizer.save_pretrained(tmp)
        for path in Path(tmp).iterdir():
            os.replace(path, folder / path.name)
    return f"chat template ({style})"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {help_}" for name, (help_, _) in COMMANDS.items()]
        print("usage: gpt-sft <command> [options]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "refresh-code":
        return refresh_code_main(rest)
    return COMMANDS[command][1](rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
