#!/usr/bin/env python
"""Generate responses with an instruction-tuned GPT-2; the same command is ``gpt-sft generate``.

Examples::

    # the run's own test split (data, split and prompt style from the checkpoint's recipe)
    python scripts/generate.py --model outputs/gpt2-medium-sft --split test --output responses.json

    python scripts/generate.py --model outputs/gpt2-medium-sft --prompt "Rewrite the sentence in passive voice." \\
        --input "The chef cooks the meal."
    echo "Name three primary colors." | python scripts/generate.py --model outputs/gpt2-medium-sft --interactive

``python scripts/generate.py --help`` lists every option (batch size, sampling, prompt style, device...).
"""

import sys
from pathlib import Path

# This folder is first on sys.path when a script runs; its evaluate.py would hide the `evaluate` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gpt_sft.cli.generate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
