"""Scoring responses with a judge: every entry gets a score or a reason, nothing is lost.

The book's ``ollama_evaluate.py`` asks a judge model (Llama 3 via Ollama) to score each model
response from 0 to 100 with a fixed prompt, gives empty responses 0 without asking, skips any reply
that ``int()`` cannot parse, and prints ``Number of scores: X of N`` / ``Average score: Y``. This
module keeps that prompt, those defaults and that output, and adds what a long evaluation against a
real server needs:
Its input is the book's ``instruction-data-with-response.json`` format (a JSON list of
``instruction``/``input``/``output`` entries plus a response field, ``model_response`` by default), or
conversations as ``gpt-sft generate`` writes them (``messages`` ending on the reference answer, plus the response).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import evaluate

from ..data.conversations import conversation_problem
from ..data.prompts import PromptStyle
from .cache import ScoreCache, cache_key
from .errors import JudgeRejectedError, JudgeRequestError
from .http import Judge
from .metrics import metric_path
from .modes import JudgeMode, get_mode
from .prompt import reference_output
from .runner import ask_all
from .text import stored_reply



STATUS_SCORED = "scored"  # the judge gave a parsable score
STATUS_EMPTY = "empty_response"  # empty model response: score 0, judge not asked (the book's rule)
STATUS_UNSCORED = "unscored"
REASON_UNPARSABLE = "unparsable"  # every reply (1 + parse_retries) was unparsable
REASON_REQUEST_FAILED = "request_failed"  # transport failure after all retries (not cached)
REASON_REJECTED = "request_rejected"  # HTTP 400/413/422 for this entry, e.g. too long (not cached)


_FAILURE_REASONS = frozenset({REASON_REQUEST_FAILED, REASON_REJECTED})


@dataclass
class EntryResult:
    """The outcome for one entry: a score, or ``None`` with the reason and the judge's raw replies."""

    index: int
    score: int | None
    status: str
    reason: str | None = None
    replies: list[str] = field(default_factory=list)
    attempts: int = 0
    cached: bool = False
    error: str | None = None
    key: str | None = None
    entry_id: str | None = None  # the entry and its response, hashed: pairs reports of the same responses

    @property
    def reply(self) -> str | None:
        """The judge's last raw reply (``None`` if it was never asked)."""
        return self.replies[-1] if self.replies else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return dataclasses.asdict(self)


def summarize_scores(scores: Sequence[int | float | None]) -> dict[str, Any]:
    """Mean, population std (ddof 0), median, min, max and counts of the non-``None`` scores."""
    valid = [float(s) for s in scores if s is not None]
    if not valid:
        return {"count": 0, "total": len(scores), "mean": None, "std": None, "median": None,
                "min": None, "max": None}
    return {
        "count": len(valid),
        "total": len(scores),
        "mean": statistics.fmean(valid),
        "std": statistics.pstdev(valid) if len(valid) > 1 else 0.0,
        "median": statistics.median(valid),
        "min": min(valid),
        "max": max(valid),
    }


@dataclass
class JudgeReport:
    """All entries' results plus summary statistics; ``to_dict`` is the JSON report."""

    results: list[EntryResult]
    judge: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def scores(self) -> list[int | None]:
        """Per-entry scores in input order (``None``: unscored)."""
        return [r.score for r in self.results]

    @property
    def n(self) -> int:
        return len(self.results)

    @property
    def scored(self) -> list[EntryResult]:
        """Entries with a score (judge-scored or empty-response zeros)."""
        return [r for r in self.results if r.score is not None]

    @property
    def unscored(self) -> list[EntryResult]:
        """Entries without a score, each with a ``reason``."""
        return [r for r in self.results if r.score is None]

    @property
    def mean(self) -> float | None:
        """The book's "Average score" (over scored entries, empty responses counting 0)."""
        return summarize_scores(self.scores)["mean"]

    def summary(self) -> dict[str, Any]:
        """Summary statistics and counts (scored + unscored == n; reasons cover the unscored)."""
        stats = summarize_scores(self.scores)
        reasons = Counter(r.reason for r in self.results if r.score is None)
        return {
            "n": self.n,
            "scored": len(self.scored),
            "unscored": len(self.unscored),
            "empty": sum(r.status == STATUS_EMPTY for r in self.results),
            "judged": sum(r.status == STATUS_SCORED for r in self.results),
            "cached": sum(r.cached for r in self.results),
            "reasons": dict(sorted(reasons.items())),
            "mean": stats["mean"],
            "std": stats["std"],
            "median": stats["median"],
            "min": stats["min"],
            "max": stats["max"],
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        return {
            "judge": self.judge,
            "source": self.source,
            "summary": self.summary(),
            "metrics": self.metrics,
            "entries": [r.to_dict() for r in self.results],
        }

    def book_lines(self) -> list[str]:
        """The book's two lines: ``Number of scores: X of N`` and ``Average score: Y``."""
        mean = self.mean
        return [
            f"Number of scores: {len(self.scored)} of {self.n}",
            f"Average score: {mean:.2f}" if mean is not None else "Average score: n/a",
        ]


def _response_text(entry: Mapping[str, Any], response_key: str) -> str:
    value = entry.get(response_key)
    return "" if value is None else str(value)


def validate_entries(entries: Sequence[Any], response_key: str, conversations: bool = False) -> None:
    """Raise ``ValueError`` naming the first bad entry (not a dict, missing fields). With ``conversations``, an
    entry may also be a conversation (``messages``, as ``gpt-sft generate`` writes it): valid, and ending on an
    assistant turn, the reference the response is scored against; otherwise one is refused."""
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise ValueError("the responses file must hold a JSON list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"entry {i} is not a JSON object")
        if "messages" in entry and "instruction" not in entry:
            if not conversations:
                raise ValueError(f"entry {i} is a conversation ('messages'): only gpt-sft evaluate scores "
                                 "conversations, pairwise judging takes instruction entries")
            problem = conversation_problem(entry, "messages", purpose="evaluation")
            if problem is not None:
                raise ValueError(f"entry {i}: {problem[1]}")
        else:
            for name in ("instruction", "output"):
                if not isinstance(entry.get(name), str):
                    raise ValueError(f"entry {i} has no string field {name!r}")
        if response_key not in entry:
            raise ValueError(
                f"entry {i} has no response field {response_key!r} (choose it with --response-key)"
            )


def entry_fingerprint(entry: Mapping[str, Any], response: str) -> str:
    """A short hash of an entry's instruction, input, output and response (of a conversation: its messages and the
    response)."""
    if "messages" in entry and "instruction" not in entry:
        text = json.dumps([entry["messages"], response])
    else:
        text = json.dumps([entry.get("instruction"), entry.get("input") or "", entry.get("output"), response])
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _judge_identity(judge: Judge) -> tuple[str, str]:
    backend = getattr(judge, "backend", None) or type(judge).__name__
    model = getattr(judge, "model", None)
    model = model if isinstance(model, str) else (getattr(judge, "model_name", None) or "")
    return str(backend), str(model)


def score_responses(
    entries: Sequence[Mapping[str, Any]],
    judge: Judge,
    *,
    response_key: str = "model_response",
    cache_path: str | os.PathLike[str] | None = None,
    concurrency: int = 1,
    parse_retries: int = 2,
    retry_unscored: bool = False,
    max_consecutive_failures: int = 3,
    progress: bool = True,
    on_result: Callable[[EntryResult], None] | None = None,
    style: PromptStyle | str = "alpaca",
    mode: JudgeMode | str = "book",
) -> JudgeReport:
    """Score every entry's response with ``judge``: 0-100 with the book's prompt (``mode="book"``), or
    as another :class:`~.modes.JudgeMode` asks (``structured``: the book's question with a JSON-schema
    reply; ``rubric``: 1-5).

    * An empty (or whitespace-only, or ``null``) response scores the scale's lowest (the book's 0)
      without asking the judge.
    * Each reply goes through the mode's parser (:func:`parse_score` for the book's prompt; the JSON
      ``score`` for structured modes); an unparsable reply is asked again up to
      ``parse_retries`` times, then the entry is unscored with reason ``"unparsable"`` and all its
      raw replies kept. (With temperature 0 a deterministic judge will usually repeat itself, so
      retries mainly help with sampling or flaky servers.)
    * A request that fails after the backend's transport retries leaves the entry unscored with
      reason ``"request_failed"``; one the server rejects (HTTP 400/413/422, e.g. too long) with
      ``"request_rejected"`` (neither is cached, so a later run asks again).
      ``max_consecutive_failures`` such failures in a row stop the run with
      :class:`JudgeUnavailableError` (0 disables this). :class:`JudgeFatalError` (bad key, unknown
      model) stops it at once.
    * With ``cache_path``, finished judgements are appended to a :class:`ScoreCache` as they
      finish and reused on the next run (``retry_unscored`` re-asks cached unparsable ones).
      Identical questions (same key) are asked once per run.
    * Up to ``concurrency`` questions are in flight at once (thread pool). ``on_result`` is called
      in the calling thread after each finished entry; an exception from it (e.g.
      ``KeyboardInterrupt``) stops the run after cancelling queued work, and what finished is
      already in the cache.
    """
    validate_entries(entries, response_key, conversations=True)
    mode = get_mode(mode) if isinstance(mode, str) else mode
    backend, model = _judge_identity(judge)
    cache = ScoreCache(cache_path) if cache_path is not None else None
    results: list[EntryResult | None] = [None] * len(entries)

    # questions to ask, grouped by key
    pending: dict[str, list[int]] = {}
    prompts: dict[str, str] = {}
    for i, entry in enumerate(entries):
        response = _response_text(entry, response_key)
        entry_id = entry_fingerprint(entry, response)
        if not response.strip():
            results[i] = EntryResult(index=i, score=mode.low, status=STATUS_EMPTY, entry_id=entry_id)
            continue
        prompt = mode.prompt(entry, response, style)
        key = cache_key(backend, model, prompt if mode.schema is None else f"{prompt}\x00{json.dumps(mode.schema)}")
        record = cache.get(key) if cache is not None else None
        if record is not None and not (retry_unscored and record.get("score") is None):
            results[i] = EntryResult(
                index=i,
                score=record.get("score"),
                status=record.get("status", STATUS_SCORED),
                reason=record.get("reason"),
                replies=list(record.get("replies") or []),
                attempts=int(record.get("attempts") or 0),
                cached=True,
                key=key,
                entry_id=entry_id,
            )
            continue
        pending.setdefault(key, []).append(i)
        prompts[key] = prompt

    def ask_one(key: str) -> EntryResult:
        replies: list[str] = []
        for _ in range(parse_retries + 1):
            try:
                reply = judge.ask(prompts[key]) if mode.schema is None else judge.ask(prompts[key], schema=mode.schema)
            except JudgeRequestError as exc:
                reason = REASON_REJECTED if isinstance(exc, JudgeRejectedError) else REASON_REQUEST_FAILED
                return EntryResult(index=-1, score=None, status=STATUS_UNSCORED,
                                   reason=reason, replies=replies,
                                   attempts=len(replies), error=str(exc), key=key)
            reply = "" if reply is None else str(reply)
            replies.append(stored_reply(reply))  # the score is read from the whole reply, only an excerpt is kept
            score = mode.parse(reply)
            if score is not None:
                return EntryResult(index=-1, score=score, status=STATUS_SCORED,
                                   replies=replies, attempts=len(replies), key=key)
        return EntryResult(index=-1, score=None, status=STATUS_UNSCORED,
                           reason=REASON_UNPARSABLE, replies=replies,
                           attempts=len(replies), key=key)

    def finish(outcome: EntryResult) -> None:
        if cache is not None and outcome.reason not in _FAILURE_REASONS:
            cache.append({
                "key": outcome.key, "score": outcome.score, "status": outcome.status,
                "reason": outcome.reason, "replies": outcome.replies, "attempts": outcome.attempts,
                "backend": backend, "model": model, "time": time.time(),
            })
        for i in pending[outcome.key]:
            results[i] = dataclasses.replace(outcome, index=i, replies=list(outcome.replies),
                                             entry_id=entry_fingerprint(entries[i], _response_text(entries[i], response_key)))
            if on_result is not None:
                on_result(results[i])

    try:
        ask_all(list(pending), ask_one, finish,
                failure=lambda outcome: outcome.error if outcome.reason in _FAILURE_REASONS else None,
                concurrency=concurrency, max_consecutive_failures=max_consecutive_failures, progress=progress,
                desc="Scoring entries", unit="entry")
    finally:
        if cache is not None:
            cache.close()

    assert all(r is not None for r in results)
    return JudgeReport(results=list(results))  # type: ignore[arg-type]


def compute_text_metrics(entries: Sequence[Mapping[str, Any]], response_key: str) -> dict[str, Any]:
    """Exact match and ROUGE-L F1 of responses vs ``output`` (a conversation's last answer), via the package's
    evaluate modules."""
    predictions = [_response_text(e, response_key) for e in entries]
    references = [reference_output(e) for e in entries]
    result: dict[str, Any] = {}
    result.update(evaluate.load(metric_path("exact_match")).compute(
        predictions=predictions, references=references))
    result.update(evaluate.load(metric_path("rouge_l")).compute(
        predictions=predictions, references=references))
    return result


