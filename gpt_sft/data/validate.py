"""What a valid instruction entry is, and the errors and counts that say what was wrong.

Every entry needs a string ``instruction`` and a non-empty string ``output``; ``input`` is optional
(missing or null means ``""``); other fields are kept. ``<|endoftext|>`` inside the text is
rejected: it is GPT-2's end-of-text and padding token (id 50256), so text containing it would either
make the tokenizer raise or, encoded as ordinary text, teach the model a fake end-of-text marker. A
bad entry raises one :class:`InstructionDataError` naming the file, the entry index (0-based, in
file order) and the problem; with ``skip_invalid=True`` it is skipped, counted by reason in
:class:`LoadStats`. Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

END_OF_TEXT = "<|endoftext|>"
REQUIRED_FIELDS = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")


class InstructionDataError(ValueError):
    """Invalid instruction data. The message names the source, the entry index and the problem.

    Attributes:
        source: The file, URL or data set name.
        index: 0-based index of the offending entry in file order (``None`` for file-level problems).
        problem: What is wrong.
    """

    def __init__(self, source: str, problem: str, index: int | None = None, *, line: int | None = None):
        self.source = str(source)
        self.index = index
        self.problem = problem
        where = self.source
        if index is not None:
            where += f": entry {index}" + (f" (line {line})" if line is not None else "")
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadStats:
    """What :func:`load_instruction_data` read and skipped.

    Attributes:
        source: The file, URL or data set name.
        num_read: Entries in the source.
        num_loaded: Entries in the returned data set.
        skipped: Number of skipped entries by reason (only with ``skip_invalid=True``).
        skipped_indices: 0-based indices of the skipped entries.
    """

    source: str
    num_read: int
    num_loaded: int
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_indices: list[int] = field(default_factory=list)
    sha256: str | None = None  # of the file read (a local file or a downloaded URL)
    fingerprint: str | None = None  # datasets' fingerprint of the loaded data set
    data_format: str = "alpaca"  # what the source held: alpaca, messages or sharegpt (loaded as messages)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_indices)

    def __str__(self) -> str:
        what = "entries" if self.data_format == "alpaca" else f"conversations ({self.data_format})"
        text = f"{self.source}: loaded {self.num_loaded} of {self.num_read} {what}"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
            text += f"; skipped {self.num_skipped} invalid ({reasons})"
        return text


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class UnparsableLine:
    """A JSON Lines line that is not JSON: an invalid entry (skipped with ``skip_invalid``)."""

    message: str


def with_article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _entry_problem(entry: Any, response_fields: Sequence[str] = ()) -> tuple[str, str] | None:
    """``(reason, message)`` if ``entry`` is invalid, else ``None``. ``response_fields`` are more
    required non-empty strings (a preference entry's ``chosen`` and ``rejected``)."""
    if isinstance(entry, UnparsableLine):
        return "not valid JSON", entry.message
    if not isinstance(entry, Mapping):
        return "not an object", f"expected an object with 'instruction' and 'output', got a {json_type_name(entry)}"
    for name in REQUIRED_FIELDS:
        value = entry.get(name)
        if value is None:
            what = "is null" if name in entry else "is missing"
            return f"missing '{name}'", f"required field '{name}' {what}"
        if not isinstance(value, str):
            return f"'{name}' not a string", f"field '{name}' must be a string, got a {json_type_name(value)}"
    value = entry.get("input")
    if value is not None and not isinstance(value, str):
        return "'input' not a string", f"field 'input' must be a string (or missing), got a {json_type_name(value)}"
    if not entry["output"].strip():
        return "empty 'output'", "field 'output' is empty"
    for name in response_fields:
        value = entry.get(name)
        if value is None:
            return f"missing '{name}'", f"required field '{name}' {'is null' if name in entry else 'is missing'}"
        if not isinstance(value, str):
            return f"'{name}' not a string", f"field '{name}' must be a string, got a {json_type_name(value)}"
        if not value.strip():
            return f"empty '{name}'", f"field '{name}' is empty"
    for name in (*TEXT_FIELDS, *response_fields):
        value = entry.get(name)
        if value and END_OF_TEXT in value:
            return (
                f"'{END_OF_TEXT}' in '{name}'",
                f"field '{name}' contains '{END_OF_TEXT}', GPT-2's end-of-text/padding token; "
                "remove it from the data (or pass skip_invalid=True to skip such entries)",
            )
    return None


def validate_entries(
    entries: Sequence[Any],
    source: str = "<data>",
    *,
    skip_invalid: bool = False,
    lines: Sequence[int] | None = None,
    response_fields: Sequence[str] = (),
    problem: Callable[[Any], tuple[str, str] | None] | None = None,
) -> tuple[list[int], LoadStats]:
    """Check instruction entries; return the indices of the valid ones and the stats.

    ``problem`` replaces the check of an instruction entry (conversations have their own:
    :func:`gpt_sft.data.conversations.conversation_problem`); it returns ``(reason, message)`` or ``None``.

    Raises :class:`InstructionDataError` on the first invalid entry (mentioning how many more there
    are) unless ``skip_invalid`` is true. ``lines`` gives each entry's line number (JSON Lines).
    """
    valid: list[int] = []
    reasons: Counter[str] = Counter()
    bad: list[int] = []
    first: tuple[int, str] | None = None
    for i, entry in enumerate(entries):
        found = _entry_problem(entry, response_fields) if problem is None else problem(entry)
        if found is None:
            valid.append(i)
            continue
        reasons[found[0]] += 1
        bad.append(i)
        if first is None:
            first = (i, found[1])
    if bad and not skip_invalid:
        i, message = first
        if len(bad) > 1:
            message += f" ({len(bad) - 1} more invalid entries; pass skip_invalid=True to skip them)"
        raise InstructionDataError(source, message, i, line=None if lines is None else lines[i])
    return valid, LoadStats(source, len(entries), len(valid), dict(reasons), bad)


