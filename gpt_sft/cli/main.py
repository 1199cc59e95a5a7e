"""``gpt-sft <command>``: one entry point for every stage; ``gpt-sft <command> --help`` lists its options.

``accelerate launch scripts/train.py`` runs the same ``train`` command on several processes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import chat, dpo, evaluate, export, generate, make_preferences, refresh_code, serve, train

COMMANDS = {
    "train": ("fine-tune a GPT-2 on instruction data (the book's chapter 7 recipe by default)", train.main),
    "dpo": ("preference-tune a fine-tuned model with DPO (the book's chapter 7 DPO recipe by default)", dpo.main),
    "generate": ("generate responses with a fine-tuned checkpoint", generate.main),
    "chat": ("talk to a fine-tuned model, answers streamed: in the terminal, or --web in the browser", chat.main),
    "evaluate": ("score responses with an LLM judge", evaluate.main),
    "make-preferences": ("make chosen/rejected preference data by asking a model to rewrite each response",
                         make_preferences.main),
    "export": ("export a checkpoint to stock GPT-2 (no remote code), GGUF (llama.cpp) or Ollama", export.main),
    "serve": ("serve a checkpoint or GGUF file with an OpenAI-compatible API (llama.cpp's server)", serve.main),
    "refresh-code": ("replace a checkpoint's copy of the model code with the installed one", refresh_code.main),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {help_}" for name, (help_, _) in COMMANDS.items()]
        print("usage: gpt-sft <command> [options]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    return COMMANDS[argv[0]][1](argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
