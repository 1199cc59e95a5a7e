#!/usr/bin/env python
"""Score model responses with an LLM judge (the book's ch. 7.8 prompt); a thin wrapper over
:func:`gpt_sft.judge.main` (same as the ``gpt-sft-evaluate`` console script), plus
``--update-checkpoint DIR``: put the score into that training output's ``metrics.json`` and model card.

Example (the book's set-up, Llama 3 via Ollama)::

    python scripts/evaluate.py --responses outputs/gpt2-medium-sft/test-responses.json \\
        --backend ollama --url http://localhost:11434 --judge-model llama3 \\
        --update-checkpoint outputs/gpt2-medium-sft

Run ``python scripts/evaluate.py --help`` for all options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gpt_sft.judge import main as judge_main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--update-checkpoint", metavar="DIR")
    parser.add_argument("--responses")
    parser.add_argument("--output")
    known, _ = parser.parse_known_args(argv)
    rest = list(sys.argv[1:] if argv is None else argv)
    if known.update_checkpoint:
        i = rest.index("--update-checkpoint")
        del rest[i : i + 2]
    if "-h" in rest or "--help" in rest:
        print("  --update-checkpoint DIR  also record the score in DIR/metrics.json and DIR/README.md\n")
    status = judge_main(rest)
    if status == 0 and known.update_checkpoint:
        from gpt_sft.hub import record_judge_score

        responses = Path(known.responses)
        report = Path(known.output) if known.output else responses.with_name(responses.stem + "-judge-report.json")
        entry = record_judge_score(known.update_checkpoint, report)
        print(f"Recorded judge score {entry['average_score']} in {known.update_checkpoint}/README.md")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
