"""The GGUF weight types the exporters write, in a module that imports nothing heavy: ``gpt-sft export --help``
lists them without importing torch or gguf (:mod:`.gguf_file` re-exports them)."""

from __future__ import annotations

GGUF_TYPES = ("f32", "f16", "q8_0")

__all__ = ["GGUF_TYPES"]
