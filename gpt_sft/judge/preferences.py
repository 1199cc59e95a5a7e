"""Making preference data: a model, asked through the judge's backends, rewrites each reference response
into a chosen and a rejected version, for preference tuning (DPO).

The book (chapter 7's preference-data notebook) asks Llama 3 through Ollama, for each entry of its
instruction data, to rewrite the reference ``output`` slightly more polite or more impolite, picked at
random; the rewrite is one side of the pair and the original ``output`` the other (polite is chosen,
impolite rejected). Its file, ``instruction-data-with-preference.json``, has ``instruction``,
``input``, ``output``, ``chosen`` and ``rejected``. Two pairings are offered:

* ``both`` (the default): both sides are rewrites, ``chosen`` under the chosen instruction (by default
  politer) and ``rejected`` under the rejected one (by default ruder); two requests an entry. Neither
  side is the unchanged reference, so the pair differs in the one quality asked for.
* ``book``: the book's scheme, one request an entry: chosen or rejected is rewritten (a fair coin per
  entry, seeded by the judge seed and the entry's index, so a resumed or ``--limit``-ed run picks the
  same side) and the original ``output`` is the other side.

The instructions are sentences the user may replace (``chosen_instruction``/``rejected_instruction``):
"Make it more concise." against "Make it wordier and vaguer." makes a conciseness preference set.

A reply is untrusted text. It is asked for as the JSON object ``{"rewrite": "..."}`` through the
backend's structured output (a JSON schema for llama.cpp, vLLM, OpenAI and Ollama; the ``hf`` backend
does not constrain it and its reply is read as JSON if it is JSON, else as plain text). The rewrite is
stripped (and one pair of quotes or backticks around all of it removed); it is refused, with the reason
recorded, when it is empty, longer than ``max_chars``, contains GPT-2's ``<|endoftext|>`` (the training
data would be refused), is the original again, or is a bare number where the response is not one (a model
that answers with a score); a pair whose sides are the same text is refused too.
Nothing in a reply is ever run.

Requests use the judge's machinery: transport retries with backoff and a total deadline per request
(:mod:`.http`), a bounded number in flight and a stop when the server is gone (:mod:`.runner`), and the
resumable cache (:mod:`.cache`), keyed by backend, model, prompt, schema and the generation settings.
The cache keeps each question's raw reply and the rules are applied again when it is read, so a rerun
with another ``max_chars`` needs no request. Every entry ends with a pair or a reason.
"""

from __future__ import annotations

import dataclasses
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.validate import END_OF_TEXT
from .cache import ScoreCache, cache_key
from .errors import JudgeRejectedError, JudgeRequestError, JudgeUnavailableError
from .http import Judge
from .modes import parse_json_field
from .runner import ask_all
from .text import stored_reply

DEFAULT_CHOSEN_INSTRUCTION = "Make it more polite: courteous, friendly and respectful."
DEFAULT_REJECTED_INSTRUCTION = "Make it less polite: curt, rude or condescending, but not offensive."
PAIRINGS = ("both", "book")
SIDES = ("chosen", "rejected")
CACHED_REPLY_CHARS = 20_000  # of a raw reply kept in the cache; max_chars may not exceed it

# no placeholder in the reply format: SmolLM2-135M copied "<the rewritten response>" into its replies
REWRITE_PROMPT_TEMPLATE = (
    "Rewrite a response to an instruction{and_input}. {style} Keep its facts and meaning.\n\n"
    "### Instruction:\n{instruction}\n\n"
    "{input_block}"
    "### Response to rewrite:\n{output}\n\n"
    "{reply_format}"
)
REWRITE_TEXT_TEMPLATE = ("Rewrite a text. {style} Keep its facts and meaning.\n\n"
                         "### Text to rewrite:\n{text}\n\n"
                         "{reply_format}")
JSON_REPLY = 'Reply with a JSON object with the rewritten response in its "rewrite" field.'
TEXT_REPLY = "Reply with the rewritten response only."
REWRITE_SCHEMA = {"type": "object", "properties": {"rewrite": {"type": "string", "minLength": 1}},
                  "required": ["rewrite"], "additionalProperties": False}

# why a side has no text (the entry's reason is "<side>: <code>")
EMPTY = "empty"
TOO_LONG = "too_long"
UNCHANGED = "unchanged"
HAS_END_OF_TEXT = "end_of_text"
A_NUMBER = "a_number"  # a bare number for a response that is not one: a score, not a rewrite
UNPARSABLE = "unparsable"
REQUEST_FAILED = "request_failed"  # transport failure after all retries (not cached: asked again next run)
REQUEST_REJECTED = "request_rejected"  # HTTP 400/413/422 for this request (not cached)
NOT_ASKED = "not_asked"  # the run stopped (the server failed too often) before this question
SAME_PAIR = "chosen_equals_rejected"
_NOT_CACHED = frozenset({REQUEST_FAILED, REQUEST_REJECTED})
_QUOTES = (("```", "```"), ("`", "`"), ('"', '"'), ("\u201c", "\u201d"))


@dataclass(frozen=True)
class PreferenceSpec:
    """What to ask for: the pairing (``both`` or ``book``), the instruction for each side, whether the
    reply is asked for as JSON through structured output, and the longest rewrite accepted."""

    pairing: str = "both"
    chosen_instruction: str = DEFAULT_CHOSEN_INSTRUCTION
    rejected_instruction: str = DEFAULT_REJECTED_INSTRUCTION
    structured: bool = True
    max_chars: int = 4000

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise ValueError(f"pairing must be one of {', '.join(PAIRINGS)}, got {self.pairing!r}")
        for side in SIDES:
            if not getattr(self, f"{side}_instruction").strip():
                raise ValueError(f"the {side} instruction is empty")
        if not 1 <= self.max_chars <= CACHED_REPLY_CHARS:
            raise ValueError(f"max_chars must be between 1 and {CACHED_REPLY_CHARS}, got {self.max_chars}")

    @property
    def schema(self) -> dict[str, Any] | None:
        return REWRITE_SCHEMA if self.structured else None

    def instruction(self, side: str) -> str:
        return getattr(self, f"{side}_instruction").strip()

    def prompt(self, entry: Mapping[str, Any], side: str) -> str:
        """The rewrite request for ``entry``'s ``output`` on ``side``."""
        return rewrite_prompt(entry, "output", self.instruction(side), self.structured)

    def rewritten_sides(self, index: int, seed: int) -> tuple[str, ...]:
        """The sides of entry ``index`` that are rewritten (``book``: one, by a seeded coin per entry)."""
        if self.pairing == "both":
            return SIDES
        return (SIDES[0],) if random.Random(f"{seed}:{index}").random() < 0.5 else (SIDES[1],)


def rewrite_prompt(entry: Mapping[str, Any], field_name: str, instruction: str, structured: bool = True) -> str:
    """The request to rewrite ``entry[field_name]`` following ``instruction`` (a sentence). The ``output`` of an
    entry with an ``instruction`` is shown with its instruction and input (:data:`REWRITE_PROMPT_TEMPLATE`, the
    one ``make-preferences`` asks); any other field is rewritten as a text on its own."""
    reply_format = JSON_REPLY if structured else TEXT_REPLY
    if field_name != "output" or "instruction" not in entry:
        return REWRITE_TEXT_TEMPLATE.format(style=instruction.strip(), text=entry[field_name],
                                            reply_format=reply_format)
    given = entry.get("input") or ""
    return REWRITE_PROMPT_TEMPLATE.format(
        and_input=" and its input" if given else "", instruction=entry["instruction"],
        input_block=f"### Input:\n{given}\n\n" if given else "", output=entry["output"],
        style=instruction.strip(), reply_format=reply_format)


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())  # a whitespace-only change is no change


def read_rewrite(reply: str, reply_chars: int | None, original: str, max_chars: int, *,
                 json_field: str | None = "rewrite", refuse_numbers: bool = True) -> tuple[str | None, str | None, str]:
    """``(rewrite, None, "")`` from an untrusted ``reply``, or ``(None, reason, detail)``.

    A reply that starts with ``{`` must be a JSON object with a string ``rewrite`` (a cut-off one is
    ``unparsable``: the reply hit the token limit); any other reply is the rewrite as plain text (for
    backends that cannot constrain their reply). ``reply_chars`` is the reply's length when ``reply`` is
    a cut copy (from the cache). ``json_field=None`` reads every reply as plain text and ``refuse_numbers=False``
    accepts a bare number (``data generate``: a response may be a JSON object or a number)."""
    text = (reply or "").strip()
    if reply_chars is not None and reply_chars > len(reply or ""):
        return None, TOO_LONG, f"the reply has {reply_chars} characters"
    if json_field is not None and text.startswith("{"):
        value = parse_json_field(text, json_field)
        if not isinstance(value, str):
            return None, UNPARSABLE, f"not a JSON object with a string {json_field!r} (cut off by --max-tokens?)"
        text = value.strip()
    for opening, closing in _QUOTES:  # small models echo the prompt's quoting; a quote inside is kept
        inner = text[len(opening):-len(closing)]
        if (len(text) > len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing)
                and opening not in inner and closing not in inner):
            text = inner.strip()
            break
    if not text:
        return None, EMPTY, "the rewrite is empty"
    if len(text) > max_chars:
        return None, TOO_LONG, f"{len(text)} characters, more than --max-chars {max_chars}"
    if END_OF_TEXT in text:
        return None, HAS_END_OF_TEXT, f"contains {END_OF_TEXT}, GPT-2's end-of-text token"
    if _same(text, original):
        return None, UNCHANGED, "the rewrite is the original output"
    if refuse_numbers and _is_number(text) and not _is_number(original):
        return None, A_NUMBER, f"the reply {text!r} is a bare number (a score?), not a rewrite of the response"
    return text, None, ""


def _is_number(text: str) -> bool:
    try:
        float(text.strip().rstrip(".%").replace(",", ""))
    except ValueError:
        return False
    return True


@dataclass
class Rewrite:
    """One question's outcome: the rewrite, or ``None`` with a reason; the raw replies (excerpts)."""

    key: str
    text: str | None
    reason: str | None = None
    detail: str = ""
    replies: list[str] = field(default_factory=list)
    cached: bool = False


@dataclass
class PreferenceReport:
    """The pairs (the book's format, in input order) and what became of every entry."""

    pairs: list[dict[str, str]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # invalid entries the loader skipped
    asked: int = 0  # questions sent to the backend in this run, parse retries included (not transport retries)
    questions: int = 0
    cached: int = 0
    stopped: str | None = None  # why the run stopped early, if it did

    @property
    def failed(self) -> list[dict[str, Any]]:
        """``{"index", "reason", ...}`` of every entry without a pair (skipped invalid ones included)."""
        return self.skipped + [e for e in self.entries if e["status"] != "pair"]

    def summary(self) -> dict[str, Any]:
        reasons = Counter(part for e in self.failed for part in e["reason"].split("; "))
        return {"n": len(self.entries) + len(self.skipped), "pairs": len(self.pairs), "failed": len(self.failed),
                "skipped_invalid": len(self.skipped), "questions": self.questions, "cached": self.cached,
                "asked": self.asked, "reasons": dict(sorted(reasons.items())), "stopped": self.stopped}

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "pair_indices": [e["index"] for e in self.entries if e["status"] == "pair"],
                "entries_failed": self.failed, "entries": self.entries}


def _settings(judge: Judge) -> list[Any]:
    config = getattr(judge, "config", None)
    return [getattr(config, name, None) for name in ("max_tokens", "temperature", "seed")]


def _backend_model(judge: Judge) -> tuple[str, str]:
    backend = str(getattr(judge, "backend", None) or type(judge).__name__)
    model = getattr(judge, "model", None)
    return backend, str(model if isinstance(model, str) else getattr(judge, "model_name", "") or "")


def rewrite_key(judge: Judge, schema: Mapping[str, Any] | None):
    """The cache key of a rewrite prompt asked of ``judge``: backend, model, prompt, schema and the generation
    settings (a callable ``prompt -> key``)."""
    backend, model = _backend_model(judge)
    salt = "\x00rewrite\x00" + json.dumps([schema, _settings(judge)], sort_keys=True)
    return lambda prompt: cache_key(backend, model, prompt + salt)


@dataclass
class RewriteRun:
    """What :func:`ask_rewrites` got: each question's :class:`Rewrite` by key, and how it went."""

    done: dict[str, Rewrite] = field(default_factory=dict)
    asked: int = 0  # questions sent in this run, parse retries included (not transport retries)
    cached: int = 0
    stopped: str | None = None  # why the run stopped early, if it did

    def outcome(self, key: str) -> Rewrite:
        return self.done.get(key) or Rewrite(key, None, NOT_ASKED, "the run stopped before this request")


def ask_rewrites(
    prompts: Mapping[str, str],
    originals: Mapping[str, str],
    judge: Judge,
    *,
    schema: Mapping[str, Any] | None = REWRITE_SCHEMA,
    max_chars: int = 4000,
    cache_path: str | None = None,
    concurrency: int = 1,
    parse_retries: int = 0,
    retry_failed: bool = False,
    max_consecutive_failures: int = 3,
    progress: bool = True,
    desc: str = "Rewriting responses",
    ask: Callable[[str, int], str] | None = None,
    read: Callable[[str, int | None, str], tuple[str | None, str | None, str]] | None = None,
) -> RewriteRun:
    """Ask ``judge`` each rewrite prompt (``key -> prompt``, keys from :func:`rewrite_key`) and read each reply
    with :func:`read_rewrite` against ``originals[key]``: the machinery ``make-preferences`` and
    ``data rewrite`` share. Cached replies are read again (unusable ones asked again with ``retry_failed``);
    an unusable reply is asked again up to ``parse_retries`` times; after ``max_consecutive_failures``
    failed requests in a row the rest is not asked and :attr:`RewriteRun.stopped` says why.
    ``KeyboardInterrupt`` and :class:`~.errors.JudgeFatalError` propagate; finished questions are in the
    cache either way.

    ``ask(key, attempt)`` sends a question (default: ``judge.ask`` with the prompt and ``schema``; ``attempt``
    counts its earlier requests, those of cached runs included, so a sampling caller can vary the seed) and
    ``read(reply, reply_chars, original)`` applies the rules to a reply (default: :func:`read_rewrite` with
    ``max_chars``): ``data generate`` asks raw completions and reads them by its own rules through the same cache
    and runner."""
    backend, model = _backend_model(judge)
    if ask is None:
        def ask(key: str, attempt: int) -> str:
            return judge.ask(prompts[key]) if schema is None else judge.ask(prompts[key], schema=schema)
    if read is None:
        def read(reply: str, reply_chars: int | None, original: str) -> tuple[str | None, str | None, str]:
            return read_rewrite(reply, reply_chars, original, max_chars)
    run = RewriteRun()
    cache = ScoreCache(cache_path) if cache_path is not None else None
    done = run.done
    todo = []
    earlier: dict[str, int] = {}  # requests made for a question in earlier runs (re-asked by retry_failed)
    for key in prompts:
        record = cache.get(key) if cache is not None else None
        if record is not None and isinstance(record.get("reply"), str):
            text, reason, detail = read(record["reply"], record.get("reply_chars"), originals[key])
            if text is not None or not retry_failed:
                done[key] = Rewrite(key, text, reason, detail, list(record.get("replies") or []), cached=True)
                continue
            earlier[key] = int(record.get("attempts") or 0)
        todo.append(key)
    run.cached = len(done)
    count_lock = threading.Lock()

    def ask_one(key: str) -> tuple[Rewrite, str]:
        outcome, reply = Rewrite(key, None, EMPTY), ""
        for attempt in range(parse_retries + 1):
            with count_lock:
                run.asked += 1
            try:
                reply = ask(key, earlier.get(key, 0) + attempt)
            except JudgeRequestError as err:
                reason = REQUEST_REJECTED if isinstance(err, JudgeRejectedError) else REQUEST_FAILED
                return dataclasses.replace(outcome, reason=reason, detail=str(err)), ""
            reply = "" if reply is None else str(reply)
            outcome.replies.append(stored_reply(reply))
            text, reason, detail = read(reply, None, originals[key])
            outcome.text, outcome.reason, outcome.detail = text, reason, detail
            if text is not None:
                break
        return outcome, reply

    def finish(result: tuple[Rewrite, str]) -> None:
        outcome, reply = result
        done[outcome.key] = outcome
        if cache is not None and outcome.reason not in _NOT_CACHED:
            cache.append({"key": outcome.key, "status": "rewrite", "reply": reply[:CACHED_REPLY_CHARS],
                          "reply_chars": len(reply), "replies": outcome.replies,
                          "attempts": earlier.get(outcome.key, 0) + len(outcome.replies),
                          "backend": backend, "model": model, "time": time.time()})

    try:
        ask_all(todo, ask_one, finish,
                failure=lambda result: result[0].detail if result[0].reason in _NOT_CACHED else None,
                concurrency=concurrency, max_consecutive_failures=max_consecutive_failures, progress=progress,
                desc=desc, unit="request")
    except JudgeUnavailableError as err:
        run.stopped = str(err)
    finally:
        if cache is not None:
            cache.close()
    return run


def make_preference_pairs(
    entries: Sequence[Mapping[str, Any]],
    judge: Judge,
    *,
    spec: PreferenceSpec | None = None,
    indices: Sequence[int] | None = None,
    **asking: Any,
) -> PreferenceReport:
    """Ask ``judge`` for the rewrites of every entry's ``output`` and make the pairs (see the module).
    ``asking``: :func:`ask_rewrites`' options (``cache_path``, ``concurrency``, ``parse_retries``,
    ``retry_failed``, ``max_consecutive_failures``, ``progress``).

    ``indices`` are the entries' indices in their file (default ``0..n-1``), used in the report and for
    the ``book`` pairing's coin. An unusable reply is asked again up to ``parse_retries`` times (useful
    with a temperature above 0). Cached unusable replies are reused unless ``retry_failed``. When
    ``max_consecutive_failures`` requests fail in a row the run stops: what was not asked is
    ``not_asked`` and :attr:`PreferenceReport.stopped` says why. ``KeyboardInterrupt`` and
    :class:`~.errors.JudgeFatalError` propagate; finished questions are in the cache either way."""
    spec = spec or PreferenceSpec()
    indices = list(range(len(entries))) if indices is None else list(indices)
    if len(indices) != len(entries):
        raise ValueError(f"{len(indices)} indices for {len(entries)} entries")
    settings = _settings(judge)
    seed = settings[2] if isinstance(settings[2], int) else 123
    key_of = rewrite_key(judge, spec.schema)

    plans: list[dict[str, str | None]] = []  # per entry: side -> question key (None: the original output)
    prompts: dict[str, str] = {}
    originals: dict[str, str] = {}
    for index, entry in zip(indices, entries):
        plan: dict[str, str | None] = {side: None for side in SIDES}
        for side in spec.rewritten_sides(index, seed):
            prompt = spec.prompt(entry, side)
            key = key_of(prompt)
            plan[side], prompts[key], originals[key] = key, prompt, str(entry["output"])
        plans.append(plan)

    run = ask_rewrites(prompts, originals, judge, schema=spec.schema, max_chars=spec.max_chars, **asking)
    report = PreferenceReport(questions=len(prompts), asked=run.asked, cached=run.cached, stopped=run.stopped)
    done = run.done
    for index, entry, plan in zip(indices, entries, plans):
        report.entries.append(_entry_outcome(index, entry, plan, done, report))
    return report


def _entry_outcome(index: int, entry: Mapping[str, Any], plan: dict[str, str | None], done: dict[str, Rewrite],
                   report: PreferenceReport) -> dict[str, Any]:
    """The pair made of ``entry``'s sides (appended to ``report.pairs``), or the reasons there is none."""
    texts: dict[str, str | None] = {}
    sides: dict[str, dict[str, Any]] = {}
    reasons = []
    for side, key in plan.items():
        if key is None:
            texts[side] = str(entry["output"])
            sides[side] = {"from": "output"}
            continue
        outcome = done.get(key) or RewriteRun().outcome(key)
        texts[side] = outcome.text
        sides[side] = {"from": "rewrite", "cached": outcome.cached, "replies": outcome.replies}
        if outcome.text is None:
            sides[side].update(reason=outcome.reason, detail=outcome.detail)
            reasons.append(f"{side}: {outcome.reason}")
    if not reasons and _same(texts["chosen"], texts["rejected"]):
        reasons.append(SAME_PAIR)
    if reasons:
        return {"index": index, "status": "failed", "reason": "; ".join(reasons), "sides": sides}
    report.pairs.append({"instruction": str(entry["instruction"]), "input": str(entry.get("input") or ""),
                         "output": str(entry["output"]), "chosen": texts["chosen"], "rejected": texts["rejected"]})
    return {"index": index, "status": "pair", "reason": None, "sides": sides}


__all__ = ["DEFAULT_CHOSEN_INSTRUCTION", "DEFAULT_REJECTED_INSTRUCTION", "PAIRINGS", "REWRITE_PROMPT_TEMPLATE",
           "REWRITE_SCHEMA", "REWRITE_TEXT_TEMPLATE", "PreferenceReport", "PreferenceSpec", "Rewrite", "RewriteRun",
           "ask_rewrites", "make_preference_pairs", "read_rewrite", "rewrite_key", "rewrite_prompt"]
