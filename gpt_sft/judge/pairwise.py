"""Pairwise judging: two models' responses to the same entries, side by side.

Each entry is asked twice, once with model A's response shown first and once with B's first, so that
a judge's preference for a position cancels out: A wins an entry when it wins both orders, or one
order with a tie in the other; contradicting verdicts (each order prefers its first response) are a
tie. The result is the win/tie/loss rate of A against B and A's win rate (a tie counts one half) with
a 95% bootstrap confidence interval. The reply is ``{"winner": "A" | "B" | "tie"}``, constrained by the
backend's structured output like the score modes; finished questions go to the judge's resumable
cache.
"""

from __future__ import annotations

import concurrent.futures
import random
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from ..data.prompts import PromptStyle, format_prompt
from .cache import ScoreCache, cache_key
from .errors import JudgeRequestError
from .http import Judge
from .modes import parse_json_field
from .text import stored_reply

PAIRWISE_PROMPT_TEMPLATE = (
    "Given the input `{prompt}` and correct output `{output}`, which of two model responses is better?\n\n"
    "Response A: `{first}`\n\nResponse B: `{second}`\n\n"
    'Respond with a JSON object {{"winner": "A"}}, {{"winner": "B"}} or {{"winner": "tie"}}.'
)
WINNER_SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]}},
                 "required": ["winner"], "additionalProperties": False}


def parse_winner(reply: str) -> str | None:
    """``"A"``, ``"B"`` or ``"tie"`` from the reply's JSON object, else ``None``."""
    value = parse_json_field(reply, "winner")
    if isinstance(value, str) and value.strip().lower() in ("a", "b", "tie"):
        return {"a": "A", "b": "B", "tie": "tie"}[value.strip().lower()]
    return None


def combine(a_first: str | None, b_first: str | None) -> str | None:
    """The entry's outcome for A from the verdicts of both orders (``b_first`` names positions, so its
    "A" is model B): ``"win"``, ``"tie"``, ``"loss"``, or ``None`` if either verdict is missing."""
    if a_first is None or b_first is None:
        return None
    points = {"A": 1, "B": -1, "tie": 0}
    total = points[a_first] - points[b_first]
    return "win" if total > 0 else "loss" if total < 0 else "tie"


def win_rate_interval(outcomes: Sequence[str], *, resamples: int = 10_000, seed: int = 123) -> tuple[float, float, float]:
    """A's win rate (ties count one half) and its 95% percentile-bootstrap interval."""
    values = [{"win": 1.0, "tie": 0.5, "loss": 0.0}[o] for o in outcomes]
    if not values:
        return float("nan"), float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choice(values) for _ in range(n)) / n for _ in range(resamples))
    return sum(values) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


@dataclass
class PairwiseReport:
    """Per-entry verdicts in both orders and the outcome for A."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        outcomes = [e["outcome"] for e in self.entries if e["outcome"] is not None]
        counts = Counter(outcomes)
        rate, low, high = win_rate_interval(outcomes)
        first_wins = sum(v == "A" for e in self.entries for v in (e["a_first"], e["b_first"]))
        verdicts = sum(v is not None for e in self.entries for v in (e["a_first"], e["b_first"]))
        return {"n": len(self.entries), "judged": len(outcomes), "unjudged": len(self.entries) - len(outcomes),
                "win": counts["win"], "tie": counts["tie"], "loss": counts["loss"],
                "win_rate": rate, "win_rate_ci95": [low, high],
                "first_position_preferred": first_wins / verdicts if verdicts else None}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "entries": self.entries}


def judge_pairs(entries_a: Sequence[Mapping[str, Any]], entries_b: Sequence[Mapping[str, Any]], judge: Judge, *,
                response_key: str = "model_response", style: PromptStyle | str = "alpaca",
                cache_path: str | None = None, concurrency: int = 1, parse_retries: int = 2,
                progress: bool = True) -> PairwiseReport:
    """Judge A's against B's response for every entry, in both orders."""
    if len(entries_a) != len(entries_b):
        raise ValueError(f"the two response files have {len(entries_a)} and {len(entries_b)} entries: they must "
                         "answer the same entries")
    for i, (a, b) in enumerate(zip(entries_a, entries_b)):
        if (a.get("instruction"), a.get("input") or "", a.get("output")) != (
                b.get("instruction"), b.get("input") or "", b.get("output")):
            raise ValueError(f"entry {i}: the two response files answer different entries (instruction/input/output "
                             "differ); pair responses to the same test set")
    backend, model = getattr(judge, "backend", "judge"), str(getattr(judge, "model", ""))
    cache = ScoreCache(cache_path) if cache_path else None
    questions: dict[str, str] = {}  # identical questions (identical responses) are asked once
    entry_keys: list[tuple[str, str]] = []  # per entry: the questions with A first and with B first
    for a, b in zip(entries_a, entries_b):
        ra, rb = str(a.get(response_key) or ""), str(b.get(response_key) or "")
        both = []
        for first, second in ((ra, rb), (rb, ra)):
            prompt = PAIRWISE_PROMPT_TEMPLATE.format(prompt=format_prompt(a, style), output=a["output"],
                                                     first=first, second=second)
            key = cache_key(backend, model, prompt + "\x00pairwise")
            questions[key] = prompt
            both.append(key)
        entry_keys.append((both[0], both[1]))
    verdicts: dict[str, tuple[str | None, list[str], str | None]] = {}
    todo = []
    for key in questions:
        record = cache.get(key) if cache is not None else None
        if record is not None:
            verdicts[key] = (record.get("score"), list(record.get("replies") or []), record.get("reason"))
        else:
            todo.append(key)

    def ask(key: str) -> tuple[str, str | None, list[str], str | None]:
        replies: list[str] = []
        for _ in range(parse_retries + 1):
            try:
                reply = str(judge.ask(questions[key], schema=WINNER_SCHEMA) or "")
            except JudgeRequestError as err:
                return key, None, replies, f"request_failed: {err}"
            replies.append(stored_reply(reply))
            winner = parse_winner(reply)
            if winner is not None:
                return key, winner, replies, None
        return key, None, replies, "unparsable"

    bar = tqdm(total=len(todo), desc="Judging pairs", unit="question", file=sys.stderr) if progress and todo else None
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            for key, winner, replies, reason in pool.map(ask, todo):
                verdicts[key] = (winner, replies, reason)
                if cache is not None and not (reason or "").startswith("request_failed"):
                    cache.append({"key": key, "score": winner, "status": "pairwise", "reason": reason,
                                  "replies": replies, "attempts": len(replies), "backend": backend, "model": model})
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.close()
    report = PairwiseReport()
    for i, (key_a, key_b) in enumerate(entry_keys):
        (a_first, ra, why_a), (b_first, rb, why_b) = verdicts[key_a], verdicts[key_b]
        report.entries.append({"index": i, "a_first": a_first, "b_first": b_first, "outcome": combine(a_first, b_first),
                               "reasons": [r for r in (why_a, why_b) if r], "replies": [ra, rb]})
    return report


__all__ = ["PAIRWISE_PROMPT_TEMPLATE", "PairwiseReport", "WINNER_SCHEMA", "combine", "judge_pairs", "parse_winner",
           "win_rate_interval"]
