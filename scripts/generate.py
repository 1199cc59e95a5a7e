#!/usr/bin/env python
"""Generate responses with an instruction-tuned GPT-2 (thin wrapper over ``gpt_sft.generation.main``).

Examples::

    # the book's instruction-data-with-response.json for the test split (110 entries)
    python scripts/generate.py --model out/checkpoint --data instruction-data.json --split test \\
        --output instruction-data-with-response.json

    python scripts/generate.py --model out/checkpoint --prompt "Rewrite the sentence in passive voice." \\
        --input "The chef cooks the meal."
    echo "Name three primary colors." | python scripts/generate.py --model out/checkpoint --interactive

``python scripts/generate.py --help`` lists every option (batch size, sampling, prompt style, device...).
Installed, the same command is ``gpt-sft-generate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from gpt_sft.generation import main
except ModuleNotFoundError:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gpt_sft.generation import main

if __name__ == "__main__":
    sys.exit(main())
