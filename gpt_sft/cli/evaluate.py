"""``gpt-sft evaluate``: score responses 0-100 with an LLM judge and the book's prompt (chapter 7.8),
plus exact match and ROUGE-L; ``--update-checkpoint DIR`` also records the score in that training
output's ``metrics.json`` and model card.

The judge prompt shows each entry in the run's prompt style: the recipe of ``--update-checkpoint``,
or of the folder the responses file is in, or the book's alpaca.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.atomic_io import write_json_atomic
from ..common import options as opts
from ..common.options import parse_config
from ..data.prompts import get_prompt_style
from ..data.recipe import Recipe, warn_recipe
from ..export.card import record_judge_score
from ..judge.backends import make_judge, OpenAIJudge
from ..judge.errors import JudgeCacheBusyError, JudgeError
from ..judge.http import BACKEND_NAMES, JudgeConfig
from ..judge.prompt import JUDGE_PROMPT_TEMPLATE
from ..judge.scoring import JudgeReport, compute_text_metrics, score_responses, validate_entries
from ..judge.text import safe_excerpt
from .errors import report_errors


@dataclass
class EvaluateConfig:
    """Score model responses 0-100 with an LLM judge and the book's prompt, plus exact match and ROUGE-L."""

    responses: str | None = opts.option(None, "JSON list of entries with instruction/input/output and a response field")
    response_key: str = opts.option("model_response", "Field holding the model response")
    # the judge's defaults are JudgeConfig's own
    backend: str = opts.option(JudgeConfig.backend, "Judge backend (ollama as in the book; openai: any OpenAI-"
                               "compatible server; hf: a Hugging Face model in-process)", choices=list(BACKEND_NAMES))
    url: str | None = opts.option(None, "Judge server base URL (default http://localhost:11434 for ollama, "
                             "http://localhost:8000 for openai)")
    judge_model: str | None = opts.option(None, "Judge model name, or a Hub id/folder for --backend hf (default llama3)")
    prompt_style: str | None = opts.option(None, "Prompt style the judge sees entries in; default: the run's recipe")
    output: str | None = opts.option(None, "JSON report path (default <responses>-judge-report.json)")
    cache: str | None = opts.option(None, "Resumable JSONL cache (default <output>.cache.jsonl)")
    no_cache: bool = opts.option(False, "Do not read or write a cache", switch=True)
    concurrency: int = opts.option(1, "Questions in flight at once")
    timeout: float = opts.option(JudgeConfig.timeout, "Total seconds per request")
    retries: int = opts.option(JudgeConfig.retries, "Transport retries per request on connection errors, timeouts, "
                               "5xx, 429")
    backoff: float = opts.option(JudgeConfig.backoff, "First backoff in seconds, doubled per retry")
    parse_retries: int = opts.option(2, "Times an unparsable reply is asked again")
    retry_unscored: bool = opts.option(False, "Ask again entries cached as unparsable", switch=True)
    max_consecutive_failures: int = opts.option(3, "Stop after this many failed requests in a row (0: never)")
    api_key_env: str = opts.option(JudgeConfig.api_key_env, "Environment variable holding the API key for --backend openai")
    seed: int = opts.option(JudgeConfig.seed, "Judge seed (the book's)")
    temperature: float = opts.option(JudgeConfig.temperature, "Judge temperature (the book's 0)")
    num_ctx: int = opts.option(JudgeConfig.num_ctx, "Ollama context size (the book's 2048)")
    max_tokens: int | None = opts.option(None, "Reply length bound (default 32 for openai/hf, unset for ollama)")
    option: list[str] = opts.option([], "Extra backend option KEY=VALUE (Ollama options / OpenAI body field); VALUE is "
                               "JSON if it parses; repeatable", repeat=True, metavar="KEY=VALUE")
    limit: int | None = opts.option(None, "Score only the first N entries")
    metrics: bool = opts.option(True, "Compute exact match and ROUGE-L")
    progress: bool = opts.option(True, "Show a progress bar")
    update_checkpoint: str | None = opts.option(None, "Also record the score in DIR/metrics.json and DIR/README.md")

    def __post_init__(self) -> None:
        if not self.responses:
            raise ValueError("--responses is required: a JSON list of entries with responses")
        for name, minimum in (("concurrency", 1), ("retries", 0), ("parse_retries", 0), ("max_consecutive_failures", 0),
                              ("num_ctx", 1), ("limit", 1), ("max_tokens", 1)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
        for name, minimum in (("timeout", 1e-3), ("backoff", 0.0), ("temperature", 0.0)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < minimum:
                raise ValueError(f"--{name} must be a finite number >= {minimum:g}, got {value}")
        for item in self.option:
            if "=" not in item:
                raise ValueError(f"--option needs KEY=VALUE, got {item!r}")

    def backend_options(self) -> dict[str, Any]:
        options = {}
        for item in self.option:
            key, raw = item.split("=", 1)
            try:
                options[key.strip()] = json.loads(raw)
            except ValueError:
                options[key.strip()] = raw
        return options


def judge_style(cfg: EvaluateConfig, responses_path: Path):
    """The prompt style of the run that wrote the responses (see the module docstring)."""
    recipe = None
    for folder in filter(None, (cfg.update_checkpoint, responses_path.parent)):
        recipe = Recipe.read(folder)
        if recipe is not None:
            break
    if cfg.prompt_style is not None:
        if recipe is not None and cfg.prompt_style != recipe.prompt_style:
            warn_recipe(f"--prompt-style {cfg.prompt_style!r} differs from the run's recipe ({recipe.prompt_style!r})")
        return get_prompt_style(cfg.prompt_style)
    return recipe.style() if recipe is not None else get_prompt_style("alpaca")


def print_unscored(report: JudgeReport, stream, limit: int = 20) -> None:
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


def print_report(report: JudgeReport) -> None:
    for line in report.book_lines():
        print(line)
    s = report.summary()
    if s["scored"]:
        print(f"Std: {s['std']:.2f}  Median: {s['median']:.2f}  Min: {s['min']:.0f}  Max: {s['max']:.0f}  "
              f"(empty responses scored 0: {s['empty']}, from cache: {s['cached']})")
    for name, value in report.metrics.items():
        if isinstance(value, (int, float)):
            print(f"{name}: {value:.4f}")
    print_unscored(report, sys.stdout)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft evaluate`` (also ``scripts/evaluate.py``); returns the exit status."""
    cfg = parse_config(EvaluateConfig, argv, prog="gpt-sft evaluate")
    responses_path = Path(cfg.responses)
    try:
        entries = json.loads(responses_path.read_text(encoding="utf-8"))
        validate_entries(entries, cfg.response_key)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use {responses_path}: {exc}", file=sys.stderr)
        return 2
    if cfg.limit is not None:
        entries = entries[: cfg.limit]
    style = judge_style(cfg, responses_path)
    output = Path(cfg.output) if cfg.output else responses_path.with_name(responses_path.stem + "-judge-report.json")
    cache_path = None if cfg.no_cache else Path(cfg.cache or str(output) + ".cache.jsonl")
    try:
        config = JudgeConfig(
            backend=cfg.backend, url=cfg.url, model=cfg.judge_model, seed=cfg.seed, temperature=cfg.temperature,
            num_ctx=cfg.num_ctx, max_tokens=cfg.max_tokens, timeout=cfg.timeout, retries=cfg.retries,
            backoff=cfg.backoff, api_key_env=cfg.api_key_env, options=cfg.backend_options(),
        )
        judge = make_judge(config)
    except (ValueError, OSError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if isinstance(judge, OpenAIJudge) and not judge.has_api_key:
        print(f"note: ${config.api_key_env} is not set; sending no Authorization header", file=sys.stderr)
    if cache_path is not None and cache_path.exists():
        print(f"Resuming from cache {cache_path}", file=sys.stderr)
    try:
        report = score_responses(
            entries, judge, response_key=cfg.response_key, cache_path=cache_path, concurrency=cfg.concurrency,
            parse_retries=cfg.parse_retries, retry_unscored=cfg.retry_unscored,
            max_consecutive_failures=cfg.max_consecutive_failures, progress=cfg.progress, style=style,
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
    report.judge = {**config.to_dict(), "prompt_template": JUDGE_PROMPT_TEMPLATE, "prompt_style": style.name}
    report.source = {"responses": str(responses_path), "response_key": cfg.response_key,
                     "n": len(entries), "cache": str(cache_path) if cache_path else None}
    if cfg.metrics:
        try:
            report.metrics = compute_text_metrics(entries, cfg.response_key)
        except Exception as exc:  # metrics are a bonus: never lose the judge's work over them
            print(f"warning: exact match / ROUGE-L not computed: {type(exc).__name__}: {exc}", file=sys.stderr)
    print_report(report)
    write_json_atomic(output, report.to_dict())
    print(f"Report written to {output}")
    if cfg.update_checkpoint:
        entry = record_judge_score(cfg.update_checkpoint, output)
        print(f"Recorded judge score {entry['average_score']} in {cfg.update_checkpoint}/README.md")
    return 0
