#!/usr/bin/env python
"""Preference tuning with ORPO: ``accelerate launch scripts/orpo.py --model MODEL [--config recipe.yaml] [--flags]``.

``--help`` lists every option. The same command is ``gpt-sft orpo``.
"""

import sys
from pathlib import Path

# This folder is first on sys.path when a script runs; its evaluate.py would hide the `evaluate` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gpt_sft.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(command="orpo"))
