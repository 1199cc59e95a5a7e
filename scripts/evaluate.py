#!/usr/bin/env python
"""Score model responses with an LLM judge (the book's ch. 7.8 prompt); thin wrapper over
:func:`gpt_sft.judge.main` (same as the ``gpt-sft-evaluate`` console script).

Example (the book's set-up, Llama 3 via Ollama)::

    python scripts/evaluate.py --responses instruction-data-with-response.json \\
        --backend ollama --url http://localhost:11434 --judge-model llama3

Run ``python scripts/evaluate.py --help`` for all options.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from gpt_sft.judge import main
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gpt_sft.judge import main

if __name__ == "__main__":
    raise SystemExit(main())
