"""One row of a verification table: what was compared, the figure measured, its bound, and the verdict.

A check is ``pass`` when its figure is within its bound (``<=`` for a difference, ``>=`` for a share that must be
high enough), ``fail`` when not (or when the figure is not a finite number), and ``skip`` when it could not run
here; a skipped check says why and is never counted as passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

AT_MOST, AT_LEAST = "<=", ">="


@dataclass
class Check:
    group: str  # what is checked: "checkpoint", "tokenizer", "chat template", "loss paths", "generation", "lora",
    #             "export hf-gpt2", "export gguf", "export ollama"
    name: str  # the comparison, e.g. "remote code logits vs installed code (max abs difference)"
    figure: float | None  # what was measured; None when skipped
    bound: float | None  # None when skipped
    comparison: str = AT_MOST  # AT_MOST: figure <= bound passes; AT_LEAST: figure >= bound passes
    detail: str = ""  # on a failure, where it went wrong (the first differing entry, token, module...)
    skipped: str = ""  # why it did not run (llama.cpp not installed, no Go compiler, no export of that format...)

    @property
    def status(self) -> str:
        if self.skipped:
            return "skip"
        if self.figure is None or self.bound is None or not math.isfinite(self.figure):
            return "fail"
        within = self.figure <= self.bound if self.comparison == AT_MOST else self.figure >= self.bound
        return "pass" if within else "fail"

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "check": self.name, "figure": self.figure, "bound": self.bound,
                "comparison": self.comparison, "status": self.status, "detail": self.detail,
                "skipped": self.skipped}


def skipped(group: str, name: str, reason: str) -> Check:
    """A check that could not run here, and why."""
    return Check(group, name, None, None, skipped=reason)
