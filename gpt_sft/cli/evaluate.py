"""``gpt-sft evaluate``: score responses with an LLM judge (chapter 7.8), plus exact match and ROUGE-L;
``--update-checkpoint DIR`` also records the score in that training output's ``metrics.json`` and model
card. ``gpt-sft evaluate compare A B`` measures how two judges agree; ``gpt-sft evaluate pairwise``
judges two models' responses side by side.

The judge is asked as ``--prompt`` says (:mod:`gpt_sft.judge.modes`): by default the book's question
with a reply constrained to ``{"score": 0-100}``. The judge prompt shows each entry in the run's prompt
style: the recipe of ``--update-checkpoint``, or of the folder the responses file is in, or alpaca.
Conversations (``gpt-sft generate``'s output on conversation data) are scored against their last answer, and the
judge is shown their earlier turns, one a line, then the last question
(:func:`gpt_sft.judge.prompt.conversation_fields`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from typing import Any

from ..common import options as opts
from ..common.options import parse_config
from ..judge.modes import MODES
from .errors import report_errors
from .judge_options import JudgeOptions, identify_judge, judge_style

# The judges, the data and the model card (datasets, torch, transformers: seconds to import) are imported inside the
# functions that use them, after the options parse: `gpt-sft evaluate --help` and an option error answer without them.
# ``gpt-sft evaluate compare|pairwise``: the subcommands of judge_tools.JUDGE_SUBCOMMANDS, run by it.
SUBCOMMANDS = ("compare", "pairwise")


@dataclass
class EvaluateConfig(JudgeOptions):
    """Score model responses with an LLM judge (the book's question, structured output), plus exact match and
    ROUGE-L."""

    prompt: str = opts.option("structured", "How the judge is asked: structured (the book's question, the reply "
                              "constrained to {\"score\": 0-100} by the backend's structured output), book (the book's "
                              "prompt verbatim, for parity with its scores) or rubric (1-5, steadier with small judges)",
                              choices=list(MODES))
    retry_unscored: bool = opts.option(False, "Ask again entries cached as unparsable", switch=True)
    max_consecutive_failures: int = opts.option(3, "Stop after this many failed requests in a row (0: never)")
    limit: int | None = opts.option(None, "Score only the first N entries")
    metrics: bool = opts.option(True, "Compute exact match and ROUGE-L")
    update_checkpoint: str | None = opts.option(None, "Also record the score in DIR/metrics.json and DIR/README.md "
                                           "(only for DIR's own full test split, every entry scored, unless --force)")
    force: bool = opts.option(False, "With --update-checkpoint: record a partial figure (--limit, other data, unscored "
                              "entries), marked as partial in the card with the reasons", switch=True)


def coverage_problems(cfg: EvaluateConfig, entries: list[dict], judged: int, report: Any) -> list[str]:
    """Why the report's figure (a :class:`~gpt_sft.judge.scoring.JudgeReport`) is not ``--update-checkpoint``'s
    score on its full test split (empty if it is)."""
    from ..data.recipe import Recipe, entries_of_split

    folder = Path(cfg.update_checkpoint)
    problems = []
    recipe = Recipe.read(folder)
    if recipe is None:
        problems.append(f"{folder} records no recipe, so its test split is unknown")
    else:
        try:
            test = entries_of_split(recipe.splits(), "test")
        except (OSError, ValueError) as err:
            test = None
            problems.append(f"its test split cannot be rebuilt ({err})")
        if test is not None:
            def key(e: dict) -> tuple:
                return e.get("instruction"), e.get("input") or "", e.get("output"), e.get("messages")

            if [key(e) for e in entries] != [key(e) for e in test]:
                problems.append(f"{cfg.responses} is not its test split ({len(entries)} entries; the test split of "
                                f"{recipe.data} has {len(test)})")
    if judged < len(entries):
        problems.append(f"--limit {cfg.limit}: {judged} of {len(entries)} entries judged")
    unscored = report.summary()["unscored"]
    if unscored:
        problems.append(f"{unscored} of {report.n} judged entries unscored")
    return problems


def print_unscored(report: Any, stream, limit: int = 20) -> None:
    from ..judge.text import safe_excerpt

    unscored = report.unscored
    if not unscored:
        return
    reasons = ", ".join(f"{k}: {v}" for k, v in report.summary()["reasons"].items())
    print(f"Unscored: {len(unscored)} ({reasons})", file=stream)
    for r in unscored[:limit]:
        detail = f"reply={safe_excerpt(r.reply)}" if r.replies else f"error={safe_excerpt(r.error, 200)}"
        print(f"  entry {r.index}: {r.reason} after {r.attempts} attempt(s); {detail}", file=stream)
    if len(unscored) > limit:
        print(f"  … and {len(unscored) - limit} more (see the report)", file=stream)


def print_report(report: Any) -> None:
    for line in report.book_lines():
        print(line)
    s = report.summary()
    if s["scored"]:
        print(f"Std: {s['std']:.2f}  Median: {s['median']:.2f}  Min: {s['min']:.0f}  Max: {s['max']:.0f}  "
              f"(empty responses given the lowest score: {s['empty']}, from cache: {s['cached']})")
    for name, value in report.metrics.items():
        if isinstance(value, (int, float)):
            print(f"{name}: {value:.4f}")
    print_unscored(report, sys.stdout)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft evaluate`` (also ``scripts/evaluate.py``), ``... evaluate compare``, ``... evaluate pairwise``;
    returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        from .judge_tools import JUDGE_SUBCOMMANDS

        return JUDGE_SUBCOMMANDS[argv[0]](argv[1:])
    cfg = parse_config(EvaluateConfig, argv, prog="gpt-sft evaluate")
    from ..common.atomic_io import write_json_atomic
    from ..common.run_manifest import record_stage_outputs
    from ..export.card import record_judge_score
    from ..judge.backends import OpenAIJudge, make_judge
    from ..judge.cache import cache_lock_path
    from ..judge.errors import JudgeCacheBusyError, JudgeError
    from ..judge.scoring import compute_text_metrics, score_responses, validate_entries

    responses_path = Path(cfg.responses)
    try:
        entries = json.loads(responses_path.read_text(encoding="utf-8"))
        validate_entries(entries, cfg.response_key, conversations=True)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use {responses_path}: {exc}", file=sys.stderr)
        return 2
    all_entries = entries
    if cfg.limit is not None:
        entries = entries[: cfg.limit]
    mode = MODES[cfg.prompt]
    style = judge_style(cfg, responses_path)
    output = Path(cfg.output) if cfg.output else responses_path.with_name(responses_path.stem + "-judge-report.json")
    cache_path = None if cfg.no_cache else Path(cfg.cache or str(output) + ".cache.jsonl")
    try:
        config = cfg.judge_config()
        judge = make_judge(config)
    except (ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    served = identify_judge(cfg, config, judge)
    if isinstance(judge, OpenAIJudge) and not judge.has_api_key:
        print(f"note: ${config.api_key_env} is not set; sending no Authorization header", file=sys.stderr)
    if cache_path is not None and cache_path.exists():
        print(f"Resuming from cache {cache_path}", file=sys.stderr)
    # beside a training run's test-set responses, the report and its cache are the run's
    record_stage_outputs(output, cache_path, cache_path and cache_lock_path(cache_path))
    try:
        report = score_responses(
            entries, judge, response_key=cfg.response_key, cache_path=cache_path, concurrency=cfg.concurrency,
            parse_retries=cfg.parse_retries, retry_unscored=cfg.retry_unscored,
            max_consecutive_failures=cfg.max_consecutive_failures, progress=cfg.progress, style=style, mode=mode,
        )
    except KeyboardInterrupt:
        where = f"; finished entries are in {cache_path}, run again to resume" if cache_path else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    except JudgeCacheBusyError:
        raise
    except JudgeError as exc:
        where = f" Finished entries are in {cache_path}." if cache_path else ""
        print(f"error: {exc}{where}", file=sys.stderr)
        return 1
    conversations = any("messages" in e and "instruction" not in e for e in entries)
    report.judge = {**config.to_dict(), "prompt_mode": mode.name, "prompt_template": mode.template,
                    **({"conversation_prompt_template": mode.conversation_template} if conversations else {}),
                    "scale": [mode.low, mode.high], "schema": mode.schema,
                    "structured_output": getattr(judge, "structured_output", None) if mode.schema else None,
                    "served_models": served,
                    "reported_models": served or sorted(getattr(judge, "reported_models", ()) or
                                                        ([config.model] if cfg.backend == "hf" else [])),
                    "prompt_style": style.name}
    report.source = {"responses": str(responses_path), "response_key": cfg.response_key,
                     "n": len(entries), "cache": str(cache_path) if cache_path else None}
    if cfg.metrics:
        try:
            report.metrics = compute_text_metrics(entries, cfg.response_key)
        except Exception as exc:  # metrics are a bonus: never lose the judge's work over them
            print(f"warning: exact match / ROUGE-L not computed: {type(exc).__name__}: {exc}", file=sys.stderr)
    reported = ", ".join(report.judge["reported_models"]) or "not reported"
    print(f"Judge: {reported} (asked for {config.model!r}) via {cfg.backend}, prompt {mode.name} "
          f"({mode.low}-{mode.high}{', ' + report.judge['structured_output'] if report.judge['structured_output'] else ''})")
    print_report(report)
    write_json_atomic(output, report.to_dict())
    print(f"Report written to {output}")
    if cfg.update_checkpoint:
        problems = coverage_problems(cfg, all_entries, len(entries), report)
        if problems and not cfg.force:
            print(f"error: --update-checkpoint {cfg.update_checkpoint}: not recording a partial figure as the "
                  f"checkpoint's score: {'; '.join(problems)}; pass --force to record it marked as partial "
                  f"(the report is in {output})", file=sys.stderr)
            return 1
        entry = record_judge_score(cfg.update_checkpoint, output, partial=problems)
        marked = f", marked partial: {'; '.join(problems)}" if problems else ""
        print(f"Recorded judge score {entry['average_score']} in {cfg.update_checkpoint}/README.md{marked}")
    return 0
