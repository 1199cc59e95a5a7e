"""``gpt-sft data dedupe --data FILE``: find exact and near-duplicate entries (:mod:`gpt_sft.data.dedupe`), print the
pairs (or their count with ``--quiet``), and with ``--output`` write the data without the later member of each group,
with a report of what was dropped and why. The input is never changed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.atomic_io import write_json_atomic, write_text_atomic
from ..common.options import option, parse_config
from ..data.conversations import DATA_FORMATS
from ..data.dedupe import (ALPACA_FIELDS, ANALYZERS, DEFAULT_THRESHOLD, DuplicateReport, entry_texts, fields_of,
                           find_duplicates)
from ..judge.text import safe_excerpt
from .errors import report_errors

PROG = "gpt-sft data dedupe"
BY = ("entry", "field")


@dataclass
class DedupeConfig:
    """Find exact and near-duplicate entries: TF-IDF cosine similarity of the lowercased text without punctuation,
    as the book's find-near-duplicates does, over the whole entry or each field separately."""

    data: str | None = option(None, "Instruction data or conversations: a JSON/JSONL file, URL or Hub data set (every "
                              "format --data reads: Alpaca, messages, ShareGPT)")
    data_format: str = option("auto", "What --data holds: auto (what its first entry has), alpaca, messages or "
                              "sharegpt", choices=list(DATA_FORMATS))
    by: str | None = option(None, "Compare the whole entry, or each of --fields separately (default: field when "
                            "--fields is given, else entry)", choices=list(BY))
    fields: list[str] | None = option(None, "Fields compared one by one (implies --by field): instruction,input,output "
                                      "for Alpaca data; system,user,assistant (each role's messages) for "
                                      "conversations (None: all of them)")
    threshold: float = option(DEFAULT_THRESHOLD, "Cosine similarity at or above which two texts are "
                              "near-duplicates")
    analyzer: str = option("word", "TF-IDF terms: word, or char (the 1- to 3-grams of the book's bonus script; about "
                           "ten times slower on large data)", choices=list(ANALYZERS))
    quiet: bool = option(False, "Print only the count of pairs, not each pair", switch=True)
    output: str | None = option(None, "Write the data without the later member of each duplicate group here "
                                "(JSON list, or JSON Lines for .jsonl), and a report of what was dropped beside it")
    report: str | None = option(None, "The report's path (default <output stem>.dedupe-report.json)")

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required: the instruction data to search for duplicates")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"--threshold must be above 0 and at most 1, got {self.threshold}")
        if self.by == "entry" and self.fields:
            raise ValueError("--fields compares fields one by one: leave out --by entry, or --fields")
        if self.by is None:
            self.by = "field" if self.fields else "entry"
        if self.report and not self.output:
            raise ValueError("--report needs --output (the report says what --output left out)")
        if self.output and Path(self.data).exists() and same_file(self.data, self.output):
            raise ValueError(f"--output {self.output} is --data: the input is never changed, write elsewhere")
        if self.report and self.output and same_file(self.report, self.output):
            raise ValueError("--report and --output are one file")

    def report_path(self) -> Path:
        if self.report:
            return Path(self.report)
        output = Path(self.output or "")
        return output.with_name(f"{output.stem}.dedupe-report.json")


def same_file(a: str, b: str) -> bool:
    if Path(a).exists() and Path(b).exists():
        return os.path.samefile(a, b)
    return Path(a).resolve() == Path(b).resolve()


def clean_entry(entry: dict[str, Any], leading: Sequence[str]) -> dict[str, Any]:
    """An entry as loaded, less the ``None`` of fields only other entries have (the loader's column union)."""
    return {key: value for key, value in entry.items() if value is not None or key in leading}


def write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    if path.suffix.lower() == ".jsonl":
        write_text_atomic(path, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
    else:
        write_json_atomic(path, entries, indent=1)


def print_pairs(report: DuplicateReport, entries: list[dict[str, Any]]) -> None:
    texts: dict[str, list[str]] = {}
    for pair in report.pairs:
        if pair.field not in texts:
            texts[pair.field] = entry_texts(entries, None if pair.field == "entry" else pair.field)
        shown = texts[pair.field]
        kind = "exact" if pair.exact else f"{pair.similarity:.4f}"
        print(f"{kind}  {pair.field}  #{pair.first} ~ #{pair.second}: {safe_excerpt(shown[pair.first], 60)} | "
              f"{safe_excerpt(shown[pair.second], 60)}")


@report_errors
def main(argv: Sequence[str]) -> int:
    cfg = parse_config(DedupeConfig, argv, prog=PROG)
    from ..data.load import load_instruction_data  # datasets: imported once the options parsed

    dataset = load_instruction_data(cfg.data, data_format=cfg.data_format, progress=False)
    leading = ("messages",) if "messages" in dataset.column_names and "instruction" not in dataset.column_names \
        else ALPACA_FIELDS
    entries = [clean_entry(entry, leading) for entry in dataset.to_list()]
    fields = (cfg.fields or list(fields_of(entries[0]))) if cfg.by == "field" else None
    report = find_duplicates(entries, fields, cfg.threshold, cfg.analyzer)
    if not cfg.quiet:
        print_pairs(report, entries)
    print(report.summary())
    if cfg.output:
        output, report_path = Path(cfg.output), cfg.report_path()
        kept = [entries[i] for i in report.kept()]
        write_entries(output, kept)
        write_json_atomic(report_path, {
            "data": cfg.data, "output": str(output), "by": cfg.by, "fields": fields, "threshold": cfg.threshold,
            "analyzer": cfg.analyzer, "entries": len(entries), "kept": len(kept), "dropped": report.to_json(),
        })
        print(f"wrote {len(kept)} of {len(entries)} entries to {output} ({len(report.dropped)} dropped); "
              f"why each was dropped: {report_path}", file=sys.stderr)
    return 0
