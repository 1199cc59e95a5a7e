"""``gpt-sft <command>``: one entry point for every stage; ``gpt-sft <command> --help`` lists its options.

``accelerate launch scripts/train.py`` runs the same ``train`` command on several processes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from ..train.stages import STAGES

# command -> (what it does, the module of gpt_sft.cli whose main() runs it). A command's module is imported only
# when that command runs: the chat's web page, the exporters and the trainers cost seconds to import, and a
# process runs one command. Every training stage (the registry's entries) is the train module's, told which stage.
COMMANDS = {
    "data": ("prepare instruction data: gpt-sft data dedupe finds and drops near-duplicate entries", "data"),
    **{command: (help_, "train") for command, (_, _, help_) in STAGES.items()},
    "generate": ("generate responses with a fine-tuned checkpoint", "generate"),
    "chat": ("talk to a fine-tuned model, answers streamed: in the terminal, or --web in the browser", "chat"),
    "evaluate": ("score responses with an LLM judge", "evaluate"),
    "make-preferences": ("make chosen/rejected preference data by asking a model to rewrite each response",
                         "make_preferences"),
    "export": ("export a checkpoint to stock GPT-2 (no remote code), GGUF (llama.cpp) or Ollama", "export"),
    "serve": ("serve a checkpoint or GGUF file with an OpenAI-compatible API (llama.cpp's server)", "serve"),
    "doctor": ("check that a device (cpu, cuda, mps) trains as a float64 CPU reference does: exit 0 if trusted",
               "doctor"),
    "verify": ("check a trained checkpoint: remote code, tokenizer, chat template, loss shortcuts, generation, LoRA; "
               "exit 0 if every check passed", "verify"),
    "refresh-code": ("replace a checkpoint's copy of the model code with the installed one", "refresh_code"),
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
    command = importlib.import_module(f"{__package__}.{COMMANDS[argv[0]][1]}")
    if argv[0] in STAGES:
        return command.main(argv[1:], command=argv[0])
    return command.main(argv[1:])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
