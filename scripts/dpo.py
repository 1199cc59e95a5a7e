#!/usr/bin/env python
"""Preference tuning with DPO: ``accelerate launch scripts/dpo.py --model SFT_DIR [--config recipe.yaml] [--flags]``.

Without arguments it runs the book's DPO recipe on the main job's model. ``--help`` lists every
option. The same command is ``gpt-sft dpo``.
"""

import sys
from pathlib import Path

# This folder is first on sys.path when a script runs; its evaluate.py would hide the `evaluate` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from gpt_sft.cli.dpo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
