"""``gpt-sft data rewrite --data FILE --field output --into output_2 --instruction "Rewrite it in the passive
voice." --output FILE``: a model, asked through the judge's backends, rewrites one field of every entry following an
instruction, and each entry is written with the rewrite in a new field: the general form of the book's passive-voice
notebook. The asking, the cache and the rules for untrusted replies are ``make-preferences``'
(:func:`gpt_sft.judge.preferences.ask_rewrites`); an entry whose reply was refused keeps no ``--into`` field and
the report says why. Alpaca data only (instruction/input/output and any other string field); the input is never
changed."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import options as opts
from ..common.atomic_io import write_json_atomic
from ..common.options import parse_config
from ..judge.preferences import (CACHED_REPLY_CHARS, REWRITE_PROMPT_TEMPLATE, REWRITE_SCHEMA,
                                 REWRITE_TEXT_TEMPLATE, ask_rewrites, rewrite_key, rewrite_prompt)
from ..judge.text import safe_excerpt
from .data_dedupe import same_file, clean_entry, write_entries
from .errors import report_errors
from .make_preferences import (RewriterOptions, exit_status, generator_record, load_entries, rewriter_name,
                               skipped_records, source_record, start_rewriter)

PROG = "gpt-sft data rewrite"
NO_TEXT = "no_text"  # the field is empty in this entry: nothing to rewrite, nothing asked


@dataclass
class DataRewriteConfig(RewriterOptions):
    """Rewrite one field of every entry with a model (the judge's backends), following an instruction, into a new
    field: the book's passive-voice notebook is --field output --into output_2 --instruction "Rewrite it in the
    passive voice."."""

    data: str | None = opts.option(None, "Instruction data in the Alpaca format: a JSON or JSONL file (or a URL / Hub "
                                   "data set name)")
    field: str | None = opts.option(None, "The field rewritten (output, instruction, input, or any string field)")
    into: str | None = opts.option(None, "The new field the rewrite is written into")
    instruction: str | None = opts.option(None, "What the rewrite should be, as an instruction sentence (the "
                                          "book's: \"Rewrite it in the passive voice.\")")
    overwrite_field: bool = opts.option(False, "Replace --into where entries already have it", switch=True)
    output: str | None = opts.option(None, "The entries with --into written here (JSON list, or JSON Lines for "
                                     ".jsonl); never --data")
    report: str | None = opts.option(None, "JSON report: counts, and every entry without --into with its reason "
                                     "(default <output stem>.rewrite-report.json)")

    def __post_init__(self) -> None:
        for name, what in (("data", "the instruction data"), ("field", "the field to rewrite"),
                           ("into", "the new field the rewrite goes into"),
                           ("output", "where the entries with the new field are written")):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required: {what}")
        if not (self.instruction or "").strip():
            raise ValueError("--instruction is required: what the rewrite should be, e.g. \"Rewrite it in the "
                             "passive voice.\"")
        if self.into == self.field:
            raise ValueError(f"--into {self.into} is --field: the rewrite goes into a new field, the original stays")
        super().__post_init__()
        if not 1 <= self.max_chars <= CACHED_REPLY_CHARS:
            raise ValueError(f"--max-chars must be between 1 and {CACHED_REPLY_CHARS}, got {self.max_chars}")
        if same_file(self.data, self.output):
            raise ValueError(f"--output {self.output} is --data: the input is never changed, write elsewhere")
        if self.report and same_file(self.report, self.output):
            raise ValueError("--report and --output are one file")

    def paths(self) -> tuple[Path, Path, Path | None]:
        """The output, the report and the cache (``None``: ``--no-cache``)."""
        output = Path(self.output)
        report = Path(self.report) if self.report else output.with_name(f"{output.stem}.rewrite-report.json")
        return output, report, None if self.no_cache else Path(self.cache or str(output) + ".cache.jsonl")


def check_fields(cfg: DataRewriteConfig, entries: list[dict[str, Any]], indices: list[int]) -> None:
    if entries and "messages" in entries[0] and "instruction" not in entries[0]:
        raise ValueError(f"{cfg.data} holds conversations: data rewrite rewrites a field of Alpaca entries "
                         "(instruction/input/output)")
    for index, entry in zip(indices, entries):
        if cfg.field not in entry or not isinstance(entry[cfg.field], (str, type(None))):
            raise ValueError(f"entry {index} has no string field {cfg.field!r} (--field); its fields: "
                             f"{', '.join(k for k, v in entry.items() if v is not None)}")
        if not cfg.overwrite_field and entry.get(cfg.into) is not None:
            raise ValueError(f"entry {index} already has the field {cfg.into!r} (--into): choose another or "
                             "pass --overwrite-field")


@report_errors
def main(argv: Sequence[str]) -> int:
    cfg = parse_config(DataRewriteConfig, argv, prog=PROG)
    output, report_path, cache_path = cfg.paths()
    entries, indices, skipped, stats = load_entries(cfg)
    check_fields(cfg, entries, indices)
    config, judge, served = start_rewriter(cfg, output, report_path, cache_path)
    schema = REWRITE_SCHEMA if cfg.structured else None
    key_of = rewrite_key(judge, schema)
    keys: list[str | None] = []
    prompts: dict[str, str] = {}
    originals: dict[str, str] = {}
    for entry in entries:
        text = entry.get(cfg.field) or ""
        if not text.strip():
            keys.append(None)
            continue
        prompt = rewrite_prompt(entry, cfg.field, cfg.instruction, cfg.structured)
        key = key_of(prompt)
        keys.append(key)
        prompts[key], originals[key] = prompt, text
    try:
        run = ask_rewrites(prompts, originals, judge, schema=schema, max_chars=cfg.max_chars, cache_path=cache_path,
                           desc=f"Rewriting {cfg.field}", **cfg.ask_options())
    except KeyboardInterrupt:
        where = f"; finished rewrites are in {cache_path}, run again to resume" if cache_path else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130

    leading = ("instruction", "input", "output")
    written, failed, rewritten = [], skipped_records(skipped, stats), 0
    for index, entry, key in zip(indices, entries, keys):
        entry = {k: v for k, v in clean_entry(entry, leading).items() if k != cfg.into}
        if key is None:
            failed.append({"index": index, "reason": NO_TEXT, "detail": f"the field {cfg.field!r} is empty"})
        else:
            outcome = run.outcome(key)
            if outcome.text is None:
                failed.append({"index": index, "reason": outcome.reason, "detail": outcome.detail,
                               "cached": outcome.cached, "replies": outcome.replies})
            else:
                entry[cfg.into] = outcome.text
                rewritten += 1
        written.append(entry)
    reasons = Counter(e["reason"].split(" (")[0] for e in failed)
    write_entries(output, written)
    write_json_atomic(report_path, {
        "generator": generator_record(cfg, config, judge, served, field=cfg.field, into=cfg.into,
                                      instruction=cfg.instruction.strip(),
                                      prompt_template=REWRITE_PROMPT_TEMPLATE if cfg.field == "output"
                                      else REWRITE_TEXT_TEMPLATE),
        "source": source_record(cfg, stats, output, cache_path),
        "summary": {"n": len(entries) + len(skipped), "rewritten": rewritten, "failed": len(failed),
                    "skipped_invalid": len(skipped), "questions": len(prompts), "cached": run.cached,
                    "asked": run.asked, "reasons": dict(sorted(reasons.items())), "stopped": run.stopped},
        "entries_failed": failed})
    print(f"Rewriter: {rewriter_name(config, judge, served)} via {cfg.backend}")
    print(f"Rewrote {cfg.field} into {cfg.into}: {rewritten} of {len(entries)} entries ({len(prompts)} questions: "
          f"{run.cached} from the cache, {run.asked} asked)")
    for e in failed[:20]:
        shown = f"; reply={safe_excerpt(e['replies'][-1])}" if e.get("replies") else ""
        print(f"  entry {e['index']}: {e['reason']}{shown}")
    if len(failed) > 20:
        print(f"  … and {len(failed) - 20} more (see the report)")
    print(f"wrote {len(written)} entries to {output}; why each entry has no {cfg.into}: {report_path}",
          file=sys.stderr)
    return exit_status(run.stopped, f"no entry was rewritten (see {report_path})" if prompts and not rewritten
                       else None)
