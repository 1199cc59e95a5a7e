"""``gpt-sft data <subcommand>``: prepare instruction data before training; ``gpt-sft data --help`` lists them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (what it does, the module of gpt_sft.cli whose main() runs it), imported only when it runs
SUBCOMMANDS = {
    "dedupe": ("find exact and near-duplicate entries (TF-IDF cosine, as the book does); --output writes the data "
               "without them", "data_dedupe"),
    "rewrite": ("a model rewrites one field of every entry following an instruction, into a new field (the book's "
                "passive-voice notebook: --field output --into output_2)", "data_rewrite"),
    "generate": ("a model writes instruction data itself, Magpie-style: its chat template's user header as a raw "
                 "completion gives an instruction, chat the response (--reflect: it critiques and rewrites them)",
                 "data_generate"),
}


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<9} {help_}" for name, (help_, _) in SUBCOMMANDS.items()]
        print("usage: gpt-sft data <subcommand> [options]\n\nPrepare instruction data; gpt-sft data <subcommand> "
              "--help lists a subcommand's options.\n\nsubcommands:\n" + "\n".join(lines), file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown subcommand {argv[0]!r} of gpt-sft data", file=sys.stderr)
            return 2
        return 0 if argv else 2
    command = importlib.import_module(f"{__package__}.{SUBCOMMANDS[argv[0]][1]}")
    return command.main(argv[1:])
