"""The data options' constants, in a module that imports nothing heavy: the command-line parser reads them
(``gpt-sft train --help`` answers without importing ``datasets``). :mod:`.load`, :mod:`.tokenize` and
:mod:`.preference` re-export them."""

from __future__ import annotations

# The book's chapter 7 instruction data (1,100 Alpaca entries): the training command's default --data.
BOOK_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
# The book's chapter 7 preference data (the DPO notebook's pairs): every preference stage's default --data.
BOOK_PREFERENCE_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
    "instruction-data-with-preference.json"
)
# What the loss of a conversation covers: every answer, the last one, or every token (see tokenize_dataset).
TRAIN_ON = ("assistant", "last", "all")

__all__ = ["BOOK_DATA_URL", "BOOK_PREFERENCE_DATA_URL", "TRAIN_ON"]
