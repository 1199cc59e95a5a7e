"""GPT-2's end-of-text token, in a module that imports nothing heavy: the generation options read it without
importing transformers (:mod:`gpt_sft.model.tokenizer` re-exports both)."""

from __future__ import annotations

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256

__all__ = ["END_OF_TEXT", "END_OF_TEXT_ID"]
