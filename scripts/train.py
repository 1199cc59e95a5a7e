#!/usr/bin/env python
"""Instruction fine-tuning: ``accelerate launch scripts/train.py [--config recipe.yaml] [--flags]``.

Without arguments it runs the book's chapter 7 recipe. ``--help`` lists every option.
"""

import sys

from gpt_sft.training import main

if __name__ == "__main__":
    sys.exit(main())
