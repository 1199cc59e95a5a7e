"""``gpt-sft make-preferences``: turn instruction data into preference data (chosen/rejected pairs) by
asking a model, through the judge's backends, to rewrite each reference response (see
:mod:`gpt_sft.judge.preferences`). Writes the book's ``instruction-data-with-preference.json`` format
and a report that names every entry without a pair and why.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import options as opts
from ..common.atomic_io import write_json_atomic
from ..common.options import parse_config
from ..common.run_manifest import record_stage_outputs
from ..judge.cache import cache_lock_path
from ..judge.preferences import (DEFAULT_CHOSEN_INSTRUCTION, DEFAULT_REJECTED_INSTRUCTION, PAIRINGS,
                                 REWRITE_PROMPT_TEMPLATE, REWRITE_SCHEMA, PreferenceReport, PreferenceSpec,
                                 make_preference_pairs)
from ..judge.text import safe_excerpt
from .errors import report_errors
from .judge_options import JudgeBackendOptions, identify_judge

# The data loader and the judges (datasets, torch, transformers: seconds to import) are imported inside the functions
# that use them, after the options parse: `gpt-sft make-preferences --help` and an option error answer without them.


@dataclass
class WriterOptions(JudgeBackendOptions):
    """A model asked through the judge's backends to write texts, its replies read by make-preferences' rules: the
    options ``make-preferences``, ``gpt-sft data rewrite`` and ``gpt-sft data generate`` share."""

    max_chars: int = opts.option(4000, "Longest reply accepted, in characters (longer: recorded as too_long)")
    retry_failed: bool = opts.option(False, "Ask again questions whose cached reply was unusable", switch=True)
    max_consecutive_failures: int = opts.option(3, "Stop asking after this many failed requests in a row (0: never); "
                                                "the rest is recorded as not_asked")
    # a rewrite is longer than a score: the judges' 32-token default would cut most of them
    max_tokens: int | None = opts.option(256, "Reply length bound in tokens")
    # temperature 0 and a seed repeat the same reply, so asking again only helps when sampling
    parse_retries: int = opts.option(0, "Times an unusable reply is asked again (useful with --temperature > 0)")

    def ask_options(self) -> dict:
        """The keyword arguments of :func:`~gpt_sft.judge.preferences.ask_rewrites` these options set."""
        return {"concurrency": self.concurrency, "parse_retries": self.parse_retries, "retry_failed": self.retry_failed,
                "max_consecutive_failures": self.max_consecutive_failures, "progress": self.progress}


@dataclass
class RewriterOptions(WriterOptions):
    """A model asked through the judge's backends to rewrite texts of instruction data: the options
    ``make-preferences`` and ``gpt-sft data rewrite`` share."""

    structured: bool = opts.option(True, "Ask for the reply as {\"rewrite\": ...} through the backend's structured "
                                   "output (--no-structured: plain text)")
    limit: int | None = opts.option(None, "Only the first N entries")
    skip_invalid: bool = opts.option(False, "Skip invalid entries (each recorded in the report) instead of failing",
                                     switch=True)


@dataclass
class MakePreferencesConfig(RewriterOptions):
    """Make preference data: a model rewrites each entry's output into a chosen and a rejected version
    (politer and ruder by default, as in the book)."""

    data: str | None = opts.option(None, "Instruction data: a JSON or JSONL file of instruction/input/output entries "
                                   "(or a URL / Hub data set name)")
    output: str | None = opts.option(None, "Preference data written here, in the book's format (default "
                                     "<data>-with-preference.json beside a local --data)")
    report: str | None = opts.option(None, "JSON report: counts and every entry without a pair, with its reason "
                                     "(default <output stem>-report.json)")
    pairing: str = opts.option("both", "both: chosen and rejected are both rewrites (two requests an entry); book: "
                               "the book's scheme, one side rewritten (a seeded coin per entry) and the original "
                               "output as the other", choices=list(PAIRINGS))
    chosen_instruction: str = opts.option(DEFAULT_CHOSEN_INSTRUCTION, "What the chosen rewrite should be, as an "
                                          "instruction sentence")
    rejected_instruction: str = opts.option(DEFAULT_REJECTED_INSTRUCTION, "What the rejected rewrite should be, as "
                                            "an instruction sentence")

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data is required: a JSON or JSONL file of instruction/input/output entries")
        super().__post_init__()
        try:
            self.spec()
        except ValueError as err:  # the spec's messages name its fields: name the flags
            raise ValueError(str(err).replace("max_chars", "--max-chars").replace("the chosen instruction",
                             "--chosen-instruction").replace("the rejected instruction", "--rejected-instruction")
                             ) from None

    def spec(self) -> PreferenceSpec:
        return PreferenceSpec(pairing=self.pairing, chosen_instruction=self.chosen_instruction,
                              rejected_instruction=self.rejected_instruction, structured=self.structured,
                              max_chars=self.max_chars)

    def paths(self) -> tuple[Path, Path, Path | None]:
        """The output, the report and the cache (``None``: ``--no-cache``)."""
        if self.output:
            output = Path(self.output)
        elif Path(self.data).is_file():
            output = Path(self.data).with_name(Path(self.data).stem + "-with-preference.json")
        else:
            raise ValueError(f"--output is required when --data is not a local file ({self.data})")
        if Path(self.data).is_file() and output.resolve() == Path(self.data).resolve():
            raise ValueError(f"--output {output} is the --data file: choose another path")
        report = Path(self.report) if self.report else output.with_name(output.stem + "-report.json")
        cache = None if self.no_cache else Path(self.cache or str(output) + ".cache.jsonl")
        return output, report, cache


def print_summary(report: PreferenceReport, stream, limit: int = 20) -> None:
    s = report.summary()
    print(f"Preference pairs: {s['pairs']} of {s['n']} entries ({s['questions']} rewrites: {s['cached']} from the "
          f"cache, {s['asked']} asked)", file=stream)
    failed = report.failed
    if failed:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items())
        print(f"Without a pair: {len(failed)} ({reasons})", file=stream)
        for e in failed[:limit]:
            replies = [r for side in (e.get("sides") or {}).values() for r in side.get("replies") or []]
            shown = f"; reply={safe_excerpt(replies[-1])}" if replies else ""
            print(f"  entry {e['index']}: {e['reason']}{shown}", file=stream)
        if len(failed) > limit:
            print(f"  … and {len(failed) - limit} more (see the report)", file=stream)


def load_entries(cfg: RewriterOptions) -> tuple[list[dict], list[int], set[int], Any]:
    """``cfg.data``'s valid entries (the first ``--limit``), their indices in the file, the indices skipped by
    ``--skip-invalid`` among them, and the loader's stats."""
    from ..data.load import load_instruction_data
    dataset, stats = load_instruction_data(cfg.data, skip_invalid=cfg.skip_invalid, return_stats=True,
                                           progress=cfg.progress)
    skipped = set(stats.skipped_indices)
    indices = [i for i in range(stats.num_read) if i not in skipped]
    entries = dataset.to_list()
    if cfg.limit is not None and cfg.limit < len(entries):
        entries, indices = entries[: cfg.limit], indices[: cfg.limit]
        skipped = {i for i in skipped if i < indices[-1]}  # the invalid entries among the first N
    return entries, indices, skipped, stats


def skipped_records(skipped: set[int], stats) -> list[dict[str, Any]]:
    """The report's record of each entry ``--skip-invalid`` skipped."""
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(stats.skipped.items())) or "invalid"
    return [{"index": i, "reason": f"invalid entry (skipped by --skip-invalid; {reasons})"} for i in sorted(skipped)]


def start_rewriter(cfg: WriterOptions, output: Path, report_path: Path, cache_path: Path | None):
    """The rewriter's ``(JudgeConfig, judge, served model names)``; says when it resumes from the cache and records
    the outputs in a training run's folder."""
    from ..judge.backends import OpenAIJudge, make_judge
    config = cfg.judge_config()
    judge = make_judge(config)
    served = identify_judge(cfg, config, judge)
    if isinstance(judge, OpenAIJudge) and not judge.has_api_key:
        print(f"note: ${config.api_key_env} is not set; sending no Authorization header", file=sys.stderr)
    if cache_path is not None and cache_path.exists():
        print(f"Resuming from cache {cache_path}", file=sys.stderr)
    # in a training run's folder: the run's
    record_stage_outputs(output, report_path, cache_path, cache_path and cache_lock_path(cache_path))
    return config, judge, served


def rewriter_name(config, judge, served: list[str]) -> str:
    return ", ".join(served or sorted(getattr(judge, "reported_models", ()) or [])) or config.model


def generator_record(cfg: RewriterOptions, config, judge, served: list[str], **asked: Any) -> dict[str, Any]:
    """The report's ``generator``: the backend's settings, what was asked (``asked``), the reply rules."""
    schema = REWRITE_SCHEMA if cfg.structured else None
    return {**config.to_dict(), **asked, "schema": schema, "max_chars": cfg.max_chars,
            "structured_output": getattr(judge, "structured_output", None) if schema else None,
            "served_models": served, "reported_models": served or sorted(getattr(judge, "reported_models", ()) or [])}


def source_record(cfg: RewriterOptions, stats, output: Path, cache_path: Path | None) -> dict[str, Any]:
    return {"data": cfg.data, "sha256": stats.sha256, "entries_read": stats.num_read,
            "entries_valid": stats.num_loaded, "limit": cfg.limit, "output": str(output),
            "cache": str(cache_path) if cache_path else None}


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft make-preferences``; returns the exit status."""
    cfg = parse_config(MakePreferencesConfig, list(sys.argv[1:] if argv is None else argv),
                       prog="gpt-sft make-preferences")
    output, report_path, cache_path = cfg.paths()
    entries, indices, skipped, stats = load_entries(cfg)
    config, judge, served = start_rewriter(cfg, output, report_path, cache_path)
    spec = cfg.spec()
    try:
        report = make_preference_pairs(entries, judge, spec=spec, indices=indices, cache_path=cache_path,
                                       **cfg.ask_options())
    except KeyboardInterrupt:
        where = f"; finished rewrites are in {cache_path}, run again to resume" if cache_path else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    report.skipped = skipped_records(skipped, stats)
    write_json_atomic(output, report.pairs)
    write_json_atomic(report_path, {
        "generator": generator_record(cfg, config, judge, served, pairing=spec.pairing,
                                      chosen_instruction=spec.instruction("chosen"),
                                      rejected_instruction=spec.instruction("rejected"),
                                      prompt_template=REWRITE_PROMPT_TEMPLATE),
        "source": source_record(cfg, stats, output, cache_path),
        **report.to_dict()})
    print(f"Rewriter: {rewriter_name(config, judge, served)} via {cfg.backend}, pairing {spec.pairing}")
    print_summary(report, sys.stdout)
    print(f"Preference data written to {output}; report in {report_path}")
    return exit_status(report.stopped, None if report.pairs else f"no pair was made (see {report_path})")


def exit_status(stopped: str | None, nothing_made: str | None) -> int:
    """The exit status of a run of a writing model: 1, with the error, when it ``stopped`` early or when
    ``nothing_made`` says that it made nothing; else 0."""
    if stopped:
        print(f"error: stopped early, the entries not asked are recorded as not_asked: {stopped}", file=sys.stderr)
        return 1
    if nothing_made:
        print(f"error: {nothing_made}", file=sys.stderr)
        return 1
    return 0
