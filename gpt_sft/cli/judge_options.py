"""The options every judging command takes (``gpt-sft evaluate``, ``... pairwise``): the responses and
the judge, typed once (the judge's part also serves ``gpt-sft make-preferences``); and the prompt style the judge
shows entries in."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import options as opts
from ..judge.http import BACKEND_NAMES, JudgeConfig


@dataclass
class JudgeBackendOptions:
    """The judge, or any model asked through the judge's backends: what every command that asks one takes
    (``gpt-sft evaluate``, ``... pairwise``, ``make-preferences``, ``data rewrite``)."""

    # the judge's defaults are JudgeConfig's own
    backend: str = opts.option(JudgeConfig.backend, "Judge backend (ollama as in the book; openai: any OpenAI-"
                               "compatible server; hf: a Hugging Face model in-process)", choices=list(BACKEND_NAMES))
    url: str | None = opts.option(None, "Judge server base URL (default http://localhost:11434 for ollama, "
                             "http://localhost:8000 for openai)")
    judge_model: str | None = opts.option(None, "Judge model name, or a Hub id/folder for --backend hf (default llama3)")
    cache: str | None = opts.option(None, "Resumable JSONL cache (default <output>.cache.jsonl)")
    no_cache: bool = opts.option(False, "Do not read or write a cache", switch=True)
    concurrency: int = opts.option(1, "Questions in flight at once")
    timeout: float = opts.option(JudgeConfig.timeout, "Total seconds per request")
    retries: int = opts.option(JudgeConfig.retries, "Transport retries per request on connection errors, timeouts, "
                               "5xx, 429")
    backoff: float = opts.option(JudgeConfig.backoff, "First backoff in seconds, doubled per retry")
    parse_retries: int = opts.option(2, "Times an unparsable reply is asked again")
    api_key_env: str = opts.option(JudgeConfig.api_key_env, "Environment variable holding the API key for --backend openai")
    seed: int = opts.option(JudgeConfig.seed, "Judge seed (the book's)")
    temperature: float = opts.option(JudgeConfig.temperature, "Judge temperature (the book's 0)")
    num_ctx: int = opts.option(JudgeConfig.num_ctx, "Ollama context size (the book's 2048)")
    max_tokens: int | None = opts.option(None, "Reply length bound (default 32 for openai/hf, unset for ollama)")
    option: list[str] = opts.option([], "Extra backend option KEY=VALUE (Ollama options / OpenAI body field); VALUE is "
                               "JSON if it parses; repeatable", repeat=True, metavar="KEY=VALUE")
    progress: bool = opts.option(True, "Show a progress bar")

    def __post_init__(self) -> None:
        for name, minimum in (("concurrency", 1), ("retries", 0), ("parse_retries", 0), ("max_consecutive_failures", 0),
                              ("num_ctx", 1), ("limit", 1), ("max_tokens", 1)):
            value = getattr(self, name, None)  # limit and max_consecutive_failures: only some commands
            if value is not None and value < minimum:
                raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
        for name, minimum in (("timeout", 1e-3), ("backoff", 0.0), ("temperature", 0.0)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < minimum:
                raise ValueError(f"--{name} must be a finite number >= {minimum:g}, got {value}")
        for item in self.option:
            if "=" not in item:
                raise ValueError(f"--option needs KEY=VALUE, got {item!r}")

    def judge_config(self) -> JudgeConfig:
        return JudgeConfig(
            backend=self.backend, url=self.url, model=self.judge_model, seed=self.seed, temperature=self.temperature,
            num_ctx=self.num_ctx, max_tokens=self.max_tokens, timeout=self.timeout, retries=self.retries,
            backoff=self.backoff, api_key_env=self.api_key_env, options=self.backend_options(),
        )

    def backend_options(self) -> dict[str, Any]:
        options = {}
        for item in self.option:
            key, raw = item.split("=", 1)
            try:
                options[key.strip()] = json.loads(raw)
            except ValueError:
                options[key.strip()] = raw
        return options


@dataclass
class JudgeOptions(JudgeBackendOptions):
    """The responses and the judge: what every judging command takes."""

    responses: str | None = opts.option(None, "JSON list of entries with instruction/input/output and a response field")
    response_key: str = opts.option("model_response", "Field holding the model response")
    prompt_style: str | None = opts.option(None, "Prompt style the judge sees entries in; default: the run's recipe")
    output: str | None = opts.option(None, "JSON report path (default <responses>-judge-report.json)")

    def __post_init__(self) -> None:
        if not self.responses:
            raise ValueError("--responses is required: a JSON list of entries with responses")
        super().__post_init__()


def judge_style(cfg: JudgeOptions, responses_path: Path):
    """The prompt style of the run that wrote the responses (see the module docstring)."""
    from ..data.recipe import Recipe, resolve_style  # datasets: only when a style is resolved

    recipe = None
    for folder in filter(None, (getattr(cfg, "update_checkpoint", None), responses_path.parent)):
        recipe = Recipe.read(folder)
        if recipe is not None:
            break
    return resolve_style(recipe, cfg.prompt_style, whose="the run's recipe")


def identify_judge(cfg: JudgeBackendOptions, config: JudgeConfig, judge) -> list[str]:
    """The models the judge server says it serves. Without ``--judge-model``, a server serving exactly one
    model is asked for that one by name (so reports and the cache name the real judge); a named model the
    server does not list gets a warning."""
    served = judge.served_models() if hasattr(judge, "served_models") else []
    if served and config.model not in served:
        if cfg.judge_model is None and len(served) == 1:
            config.model = judge.model = served[0]
        else:
            print(f"warning: the judge server serves {', '.join(served)}, not {config.model!r} (--judge-model); "
                  "it may answer with its own model", file=sys.stderr)
    return served
