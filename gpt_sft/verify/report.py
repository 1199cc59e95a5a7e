"""What ``gpt-sft verify`` writes: the table on the terminal, ``verification.json`` and the model card's
"Verified" section, each with the versions the checks ran on.

``verification.json`` holds every row (:meth:`~.check.Check.to_dict`), the verdict, whether the checks were the
quick set, the date and the versions; it is recorded in the run's manifest, so that ``--overwrite`` removes it with
the run. The card's section is replaced when verify runs again, never added twice.
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..common.atomic_io import write_json_atomic, write_text_atomic
from ..common.run_manifest import record_stage_outputs
from ..export.card import VERIFIED_HEADING, with_section
from .check import Check

VERIFICATION_FILE = "verification.json"
CARD = "README.md"


def package_version(name: str) -> str:
    """An installed distribution's version, or ``not installed`` (read from its metadata: nothing is imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """What the checks ran on. llama.cpp is named by the llama-cpp-python release that builds it (the exports'
    checks run it); not imported here, so verify never loads its library for a checkpoint's checks."""
    return {"gpt-sft": package_version("gpt-sft"), "python": platform.python_version(),
            "torch": package_version("torch"), "transformers": package_version("transformers"),
            "peft": package_version("peft"), "tiktoken": package_version("tiktoken"),
            "llama.cpp": (f"llama-cpp-python {release}" if (release := package_version("llama_cpp_python"))
                          != "not installed" else release)}


@dataclass
class Verification:
    """The rows of one ``gpt-sft verify`` run on ``folder`` and what they ran on."""

    folder: Path
    quick: bool
    checks: list[Check] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    seconds: float = 0.0

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == "fail"]

    @property
    def passed(self) -> bool:
        """No check failed (a skipped one is not a pass, and is counted apart; it fails nothing)."""
        return not self.failures

    def counts(self) -> dict[str, int]:
        return {status: sum(c.status == status for c in self.checks) for status in ("pass", "fail", "skip")}

    def summary(self) -> str:
        counts = self.counts()
        kind = "quick checks" if self.quick else "checks"
        verdict = "all passed" if self.passed else f"{counts['fail']} FAILED"
        skips = f", {counts['skip']} skipped" if counts["skip"] else ""
        return f"{counts['pass'] + counts['fail']} {kind} run: {verdict}{skips}"

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "quick": self.quick, "passed": self.passed, "summary": self.summary(),
                "failed": [f"{c.group}: {c.name}" for c in self.failures], "checks": [c.to_dict() for c in self.checks],
                "date": self.date, "seconds": round(self.seconds, 2), "versions": self.versions}


def figure_text(value: float | None) -> str:
    """A figure or bound as the table shows it: a count as an integer, a difference in 3 significant digits."""
    if value is None:
        return "-"
    if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"


def rows(checks: Sequence[Check]) -> list[tuple[str, ...]]:
    """``(group, check, figure, bound, result, detail)`` per check; a skip's detail is its reason."""
    return [(c.group, c.name, figure_text(c.figure), f"{c.comparison} {figure_text(c.bound)}" if not c.skipped else "-",
             {"pass": "pass", "fail": "FAIL", "skip": "skip"}[c.status], c.skipped or c.detail)
            for c in checks]


HEADER = ("group", "check", "figure", "bound", "result", "detail")


def format_table(checks: Sequence[Check]) -> str:
    """The checks as aligned columns, for the terminal."""
    lines = [HEADER, *rows(checks)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER) - 1)]
    text = ["  ".join([cell.ljust(w) for cell, w in zip(line, widths)] + [line[-1]]).rstrip() for line in lines]
    return "\n".join(text[:1] + ["  ".join("-" * w for w in widths) + "  ------"] + text[1:])


def markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def card_section(verification: Verification) -> str:
    """The body of the model card's "Verified" section: the verdict, the date, the versions and the table."""
    how = ("the quick checks that end every training run (`gpt-sft verify --quick`)" if verification.quick
           else "`gpt-sft verify`")
    ran_on = ", ".join(f"{name} {version}" for name, version in verification.versions.items())
    lines = [f"Checked by {how} on {verification.date}: **{verification.summary()}**. Ran on {ran_on}.",
             "Each figure is a difference between two ways to compute the same thing (or a count of entries that "
             "differ), held to its bound; `verification.json` has the same table.", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in rows(verification.checks)]
    return "\n".join(lines)


def write_verification(verification: Verification) -> list[Path]:
    """``verification.json`` into the folder (recorded in the run's manifest first), and the "Verified" section into
    its model card when it has one. Returns the files written."""
    folder = verification.folder
    record_stage_outputs(folder / VERIFICATION_FILE)
    written = [write_json_atomic(folder / VERIFICATION_FILE, verification.to_dict())]
    card = folder / CARD
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        written.append(write_text_atomic(card, with_section(text, VERIFIED_HEADING, card_section(verification))))
    return written


__all__ = ["VERIFICATION_FILE", "Verification", "card_section", "figure_text", "format_table", "versions",
           "write_verification"]
