#!/usr/bin/env python
"""Score model responses with an LLM judge (the book's chapter 7.8 prompt), plus exact match and
ROUGE-L; the same command is ``gpt-sft evaluate``.

Example (the book's set-up, Llama 3 via Ollama)::

    python scripts/evaluate.py --responses outputs/gpt2-medium-sft/test-responses.json \\
        --backend ollama --url http://localhost:11434 --judge-model llama3 \\
        --update-checkpoint outputs/gpt2-medium-sft

Run ``python scripts/evaluate.py --help`` for all options.
"""

import sys
from pathlib import Path

# This folder is first on sys.path when a script runs, and this file is called evaluate.py: without
# this line `import evaluate` (Hugging Face's metrics library) would import this script instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gpt_sft.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
