"""LLM-as-a-judge evaluation of instruction responses (chapter 7.8 of the book, hardened).

The book's ``ollama_evaluate.py`` asks a judge model (Llama 3 via Ollama) to score each model
response from 0 to 100 with a fixed prompt, gives empty responses 0 without asking, skips any reply
that ``int()`` cannot parse, and prints ``Number of scores: X of N`` / ``Average score: Y``. This
module keeps that prompt, those defaults and that output, and adds what a long evaluation against a
real server needs:

* three backends behind one :class:`Judge` protocol (``ask(prompt) -> str``):
  :class:`OllamaJudge` (native streaming ``/api/chat``), :class:`OpenAIJudge` (any
  OpenAI-compatible ``/v1/chat/completions``: vLLM, llama.cpp server, Ollama, OpenAI) and
  :class:`HFJudge` (a local Hugging Face causal LM, in-process);
* timeouts and retries with exponential backoff on connection errors, timeouts, 5xx and 429;
* a documented, robust score parser for untrusted replies (:func:`parse_score`);
* unparsable replies retried, then recorded as *unscored* with the raw reply (never dropped);
* bounded concurrency (thread pool) and a tqdm progress bar;
* a resumable JSONL cache (:class:`ScoreCache`) so an interrupted run never asks a finished entry
  again, and an atomically written JSON report.

This module knows nothing of training or generation: its input is the book's
``instruction-data-with-response.json`` format (a JSON list of ``instruction``/``input``/``output``
entries plus a response field, ``model_response`` by default).

Secrets: the OpenAI-compatible backend reads its API key from an environment variable (default
``OPENAI_API_KEY``). The key is only ever placed in the ``Authorization`` header; it is not stored in
:class:`JudgeConfig`, not shown by ``repr``, and replaced by ``***`` in every error message and in
the judge's replies (so neither the console, the cache nor the report can contain it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import urllib3

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the cache is not locked
    fcntl = None

from .atomic_io import write_json_atomic
from .config_cli import CommandParser
from .command_errors import add_debug_flag, report_errors
from .prompts import format_prompt

__all__ = [
    "JUDGE_PROMPT_TEMPLATE",
    "BACKENDS",
    "JudgeConfig",
    "Judge",
    "OllamaJudge",
    "OpenAIJudge",
    "HFJudge",
    "make_judge",
    "JudgeError",
    "JudgeRequestError",
    "JudgeRejectedError",
    "JudgeFatalError",
    "JudgeUnavailableError",
    "parse_score",
    "build_judge_prompt",
    "cache_key",
    "ScoreCache",
    "EntryResult",
    "JudgeReport",
    "score_responses",
    "summarize_scores",
    "safe_excerpt",
    "main",
]

#: The book's judge prompt (``ollama_evaluate.py``), verbatim.
JUDGE_PROMPT_TEMPLATE = (
    "Given the input `{prompt}` "
    "and correct output `{output}`, "
    "score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)

BACKENDS = ("ollama", "openai", "hf")

_DEFAULT_URLS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000"}
_DEFAULT_MODEL = "llama3"  # the book's judge
_REPLY_EXCERPT = 120  # characters of a judge reply shown on the console
_PARSE_LIMIT = 10_000  # characters of a judge reply that parse_score looks at
_SHORT_REPLY_WORDS = 6  # an uncued lone number anywhere in a reply this short is its score
_MAX_BODY = 16 * 1024 * 1024  # bytes of one HTTP reply body we are willing to hold
STORED_REPLY_CHARS = 4000  # characters of a judge reply kept in the cache and the report


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


class JudgeError(RuntimeError):
    """Base class of the judge's errors."""


class JudgeRequestError(JudgeError):
    """A request failed after all transport retries (connection error, timeout, 5xx, 429).

    The entry is recorded as unscored with reason ``"request_failed"`` and is *not* cached, so a
    later run asks again.
    """


class JudgeRejectedError(JudgeRequestError):
    """The server refused this one request (HTTP 400/413/422, e.g. prompt longer than the context).

    Not retried; the entry is unscored with reason ``"request_rejected"`` and not cached.
    """


class JudgeFatalError(JudgeError):
    """A failure that retrying cannot fix (401/403 bad key, 404 unknown model or URL): the run stops."""


class JudgeCacheBusyError(JudgeError):
    """Another evaluation holds the score cache."""


class JudgeUnavailableError(JudgeError):
    """Too many consecutive request failures: the run stops; finished entries stay in the cache."""


# --------------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------------


def build_judge_prompt(entry: Mapping[str, Any], response: str) -> str:
    """The exact prompt the book sends to the judge for ``entry`` and a model ``response``."""
    return JUDGE_PROMPT_TEMPLATE.format(
        # format_prompt(entry, "alpaca") is the book's format_input(entry), byte for byte
        prompt=format_prompt(entry, "alpaca"), output=entry["output"], response=response
    )


# --------------------------------------------------------------------------------------------------
# Score parsing
# --------------------------------------------------------------------------------------------------

_NUM = r"[-+\u2212]?[0-9]+(?:\.[0-9]+)?"
# a number not glued to a preceding word character, dot or digit-slash
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUM}(?![\w])")
# "X/Y", "X out of Y", "X (out of Y)"
_FRACTION_RE = re.compile(
    rf"(?<![\w.])(?P<num>{_NUM})\s*(?:\(\s*)?(?:/|\bout\s+of\b)\s*(?P<den>[0-9]+(?:\.[0-9]+)?)(?!\w)\)?",
    re.IGNORECASE,
)
# echoes of the scale from the prompt, removed before numbers are counted
_SCALE_ECHO_RE = re.compile(
    r"(?:on\s+)?(?:a\s+|the\s+)?scale\s+(?:from\s+|of\s+)?0\s*(?:to|-|\u2013)\s*100"
    r"|\(\s*0\s*(?:to|-|\u2013)\s*100\s*\)"
    r"|where\s+100\s+is\s+the\s+best(?:\s+score)?",
    re.IGNORECASE,
)
_THINK_RE = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
# a cue word/phrase directly followed by the score
_CUE_RE = re.compile(
    r"(?:"
    r"\b(?:final\s+|overall\s+|total\s+)?(?:score|rating|grade|answer|verdict)s?\b"
    r"(?:\s+(?:is|of|would\s+be|will\s+be|=|:))*"
    r"|\b(?:i\s+would|i[\u2019']d|i\s+will|i)\s+(?:give|rate|score|assign|award)"
    r"(?:\s+(?:it|this|that|the(?:\s+model)?\s+response|the\s+model's\s+response|this\s+response))?"
    r"(?:\s+(?:a|an))?(?:\s+(?:score|rating)(?:\s+of)?)?"
    r")"
    r"\s*(?:[:=]|-(?=\s))?\s*[\"'(\[]?\s*(?=[-+\u2212]?[0-9])",
    re.IGNORECASE,
)


def _to_float(text: str) -> float:
    return float(text.replace("\u2212", "-"))


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def _in_range(value: float) -> int | None:
    if not (0.0 <= value <= 100.0) or math.isnan(value):
        return None
    return _round_half_up(value)


def _value_at(text: str, pos: int) -> tuple[float | None, int]:
    """The score value that starts at ``pos`` (a fraction is scaled to 0-100) and where it ends.

    Returns ``(None, end)`` for a fraction that is out of range or has a zero denominator.
    """
    frac = _FRACTION_RE.match(text, pos)
    if frac:
        num, den = _to_float(frac.group("num")), _to_float(frac.group("den"))
        if den <= 0 or num < 0 or num > den:
            return None, frac.end()
        return (num * 100.0 / den), frac.end()
    number = _NUMBER_RE.match(text, pos)
    if number is None:  # pragma: no cover - callers only pass positions of numbers
        return None, pos
    return _to_float(number.group(0)), number.end()


def parse_score(reply: str | None) -> int | None:
    """Extract a 0-100 integer score from an untrusted judge reply, or ``None`` if unparsable.

    The rule, applied in this order (the reply is never evaluated, only pattern-matched):

    0. Reasoning blocks of "thinking" judges (``<think>…</think>``) are removed; a reply that is
       still inside an unclosed ``<think>`` has no answer yet (→ ``None``). Markdown emphasis/code
       marks (``*``, ``_``, backticks) are removed, as are echoes of the prompt's scale ("on a
       scale from 0 to 100", "(0-100)", "where 100 is the best score").
    1. **Bare number.** If the whole reply is one number (optionally with a trailing ``.``, ``%``
       or quotes), that number: ``"85"``, ``"85."``, ``"**85**"`` → 85.
    2. **Fractions are scaled.** ``"X/Y"``, ``"X out of Y"`` and ``"X (out of Y)"`` mean
       ``100·X/Y``: ``"85/100"`` → 85, ``"Score: 7/10"`` → 70, ``"4 out of 5"`` → 80. ``X > Y``
       or ``Y = 0`` is out of range.
    3. **Cue.** A number (or fraction) directly after a cue — ``score``, ``rating``, ``grade``,
       ``answer``, ``verdict`` (optionally ``final``/``overall``, followed by ``is``/``of``/``:``/
       ``=``), or ``I would give/rate/score (it|this response) (a) (score of)`` — is the score:
       ``"The answer is 85."`` → 85, ``"I'd rate it 90"`` → 90. If several cues carry *different*
       values the reply is ambiguous → ``None``. A cued value that is out of range → ``None``
       (no fallback to other numbers).
    4. **Single number in answer position.** Without a cue, if all the numbers in the reply
       (denominators and hyphenated compounds like "14-line" excluded) have one and the same value,
       that value counts only if one of them is where an answer stands: at the very start of the
       reply (``"85\n\nThe response is…"``), at its very end after a space or colon (``"… so: 85."``),
       or anywhere in a short reply of at most 6 words (``"I think 85 is fair"`` → 85). A lone
       number inside longer prose is not a score (``"A sonnet is a 14-line poem with …"``,
       ``"… sulfate is 2Mg(OH)3."`` → ``None``). Two different numbers (``"80 or 90"``) → ``None``.
    5. **Range and rounding.** Values outside 0-100 (``150``, ``-5``) → ``None``. Decimals are
       rounded half up: ``85.5`` → 86, ``84.4`` → 84.

    Anything else (empty text, words only) → ``None``. Only the first 10,000 characters of a
    reply are looked at.
    """
    if reply is None:
        return None
    text = str(reply)[:_PARSE_LIMIT]
    if not text.strip():
        return None
    text = _THINK_RE.sub(" ", text)
    if re.search(r"<think>", text, re.IGNORECASE):
        return None  # still thinking when the reply was cut off
    text = re.sub(r"[*_`]", "", text)
    text = text.replace("\u2013", "-")
    text = _SCALE_ECHO_RE.sub(" ", text).strip()
    if not text:
        return None

    # 1. the whole reply is one number (or fraction)
    bare = re.fullmatch(
        rf"[\"'(\[]?\s*({_NUM}(?:\s*(?:/|out\s+of)\s*[0-9]+(?:\.[0-9]+)?)?)\s*%?\s*[\"')\]]?\s*[.!]?",
        text, re.IGNORECASE)
    if bare:
        value, _ = _value_at(text, bare.start(1))
        return None if value is None else _in_range(value)

    # 3. cue words
    cued: list[float | None] = []
    for cue in _CUE_RE.finditer(text):
        value, _ = _value_at(text, cue.end())
        cued.append(value)
    if cued:
        distinct = {v for v in cued}
        if len(distinct) != 1:
            return None
        (value,) = distinct
        return None if value is None else _in_range(value)

    # 4. a single distinct number, in answer position
    values: list[float | None] = []
    in_answer_position = len(text.split()) <= _SHORT_REPLY_WORDS
    pos = 0
    while True:
        match = _NUMBER_RE.search(text, pos)
        if match is None:
            break
        value, end = _value_at(text, match.start())
        pos = max(end, match.end())
        if re.search(r"(?:\bout\s+of|/)\s*$", text[: match.start()], re.IGNORECASE):
            continue  # a bare denominator ("out of 100") is not a candidate
        if re.match(r"-[a-z]", text[end:], re.IGNORECASE):
            continue  # a hyphenated compound ("14-line", "3-year-old") is not a score
        values.append(value)
        at_start = match.start() == 0
        at_end = (re.fullmatch(r"[\s.!%)\]\"']*", text[end:]) is not None
                  and (match.start() == 0 or text[match.start() - 1] in " \t\n:=\"'(["))
        in_answer_position = in_answer_position or at_start or at_end
    distinct_values = set(values)
    if len(distinct_values) != 1 or not in_answer_position:
        return None
    (value,) = distinct_values
    return None if value is None else _in_range(value)


# --------------------------------------------------------------------------------------------------
# Configuration and backends
# --------------------------------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """Everything that selects and tunes a judge backend (no secrets: only the key's env var name).

    ``url`` and ``model`` default per backend (Ollama: ``http://localhost:11434``; OpenAI-compatible:
    ``http://localhost:8000``; model ``llama3`` like the book; ``hf`` needs a model id or folder).
    ``seed``, ``temperature`` and ``num_ctx`` are the book's Ollama options. ``max_tokens`` bounds
    the reply (``None``: 32 for ``openai``/``hf``, unset for Ollama as in the book). ``options`` is
    merged into Ollama's ``options`` or into the OpenAI request body. ``retries`` counts transport
    retries (connection errors, timeouts, 5xx, 429) with exponential backoff starting at
    ``backoff`` seconds and capped at ``max_backoff`` (a 429's ``Retry-After`` is honoured up to
    that cap); ``timeout`` is the total seconds allowed per request.
    """

    backend: str = "ollama"
    url: str | None = None
    model: str | None = None
    seed: int = 123
    temperature: float = 0.0
    num_ctx: int = 2048
    max_tokens: int | None = None
    timeout: float = 120.0
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 30.0
    api_key_env: str = "OPENAI_API_KEY"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown judge backend {self.backend!r}; choose one of {BACKENDS}")
        if self.url is None and self.backend in _DEFAULT_URLS:
            self.url = _DEFAULT_URLS[self.backend]
        if self.model is None:
            if self.backend == "hf":
                raise ValueError("the hf judge backend needs a model id or folder (--judge-model)")
            self.model = _DEFAULT_MODEL
        if self.retries < 0 or self.timeout <= 0:
            raise ValueError("retries must be >= 0 and timeout > 0")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description for the report (the env var *name*, never its value; a password in
        the URL is replaced by ``***``)."""
        return {**dataclasses.asdict(self), "url": redact_url(self.url)}


def url_password(url: str | None) -> str | None:
    """The password of ``http://user:password@host/...``, if any."""
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None


def redact_url(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``, for messages and reports."""
    password = url_password(url)
    return url.replace(f":{password}@", ":***@", 1) if password else url


@runtime_checkable
class Judge(Protocol):
    """A judge: anything with ``ask(prompt) -> str`` (the raw reply text).

    ``backend`` and ``model`` (optional attributes) enter the cache key, so that scores from one
    judge are never reused for another.
    """

    def ask(self, prompt: str) -> str:  # pragma: no cover - protocol
        ...


class _Redactor:
    """Removes secrets (the API key, a password in the URL) from any text before it can reach a
    message, log or report."""

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = [secret for secret in secrets if secret]

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        return "_Redactor(***)"


class _HTTPJudge:
    """Shared HTTP plumbing: a session, total-time timeouts, retries with exponential backoff."""

    backend = "http"
    _RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
    _FATAL_STATUS = frozenset({401, 402, 403, 404, 405, 407})

    def __init__(self, config: JudgeConfig, *, api_key: str | None = None) -> None:
        import requests

        self.config = config
        self.model = config.model
        self.url = (config.url or "").rstrip("/")
        self._requests = requests
        self._local = threading.local()
        self._api_key = api_key
        self._redact = _Redactor(api_key, url_password(self.url))
        self._sleep = time.sleep

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={redact_url(self.url)!r}, model={self.model!r})"

    # one requests.Session per thread (Session is not guaranteed thread-safe)
    @property
    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._requests.Session()  # honours HTTP(S)_PROXY/NO_PROXY like requests does
            self._local.session = session
        return session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _error_text(self, response) -> str:
        """A redacted, escaped excerpt of an error reply's body (at most 4 KiB is read)."""
        body = bytearray()
        try:
            for chunk in response.iter_content(chunk_size=1024):
                body.extend(chunk)
                if len(body) >= 4096:
                    break
        except Exception:  # a broken error body is still an error; say what we have
            pass
        return safe_excerpt(self._redact(body.decode("utf-8", errors="replace")), 300)

    def _backoff_delay(self, attempt: int, response=None) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * (2**attempt))
        if response is not None:
            retry_after = response.headers.get("Retry-After")
            if retry_after:
                try:
                    delay = min(self.config.max_backoff, max(delay, float(retry_after)))
                except ValueError:
                    pass
        return delay * (1.0 + 0.1 * random.random())  # a little jitter

    def _post(self, url: str, payload: dict[str, Any]) -> Any:
        """POST with retries; returns the parsed reply via :meth:`_read` or raises a JudgeError."""
        requests = self._requests
        last_error = "no attempt made"
        for attempt in range(self.config.retries + 1):
            deadline = time.monotonic() + self.config.timeout
            response = None
            try:
                # always streamed at the HTTP level, so _read can enforce the total deadline
                response = self._session.post(
                    url,
                    json=payload,
                    headers=self._headers(),
                    stream=True,
                    timeout=(min(10.0, self.config.timeout), self.config.timeout),
                )
                if response.status_code in self._RETRY_STATUS or response.status_code >= 500:
                    last_error = f"HTTP {response.status_code}: {self._error_text(response)}"
                elif response.status_code in self._FATAL_STATUS:
                    raise JudgeFatalError(
                        f"judge server at {redact_url(url)} answered HTTP {response.status_code}: "
                        f"{self._error_text(response)}"
                    )
                elif response.status_code >= 400:
                    raise JudgeRejectedError(
                        f"{redact_url(url)}: HTTP {response.status_code}: {self._error_text(response)}"
                    )
                else:
                    # a reply that repeats the key (prompt injection, echoing proxies) is redacted
                    return self._redact(self._read(response, deadline))
            except (JudgeFatalError, JudgeRejectedError):
                raise
            except (requests.ConnectionError, requests.Timeout, TimeoutError, urllib3.exceptions.HTTPError) as exc:
                last_error = f"{type(exc).__name__}: {self._redact(str(exc))}"
            except (requests.RequestException, ValueError, KeyError, TypeError, IndexError) as exc:
                # a broken/garbled reply body: retry, it may be transient
                last_error = f"bad reply ({type(exc).__name__}): {self._redact(str(exc))}"
            finally:
                if response is not None:
                    response.close()
            if attempt < self.config.retries:
                self._sleep(self._backoff_delay(attempt, response))
        raise JudgeRequestError(
            safe_text(f"{redact_url(url)}: {last_error} (after {self.config.retries + 1} attempts)", 500)
        )

    def _read(self, response, deadline: float) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _chunks(self, response, deadline: float) -> Iterator[bytes]:
        """The reply body as it arrives, cut off at ``deadline`` however slowly the server sends it.

        ``read1`` returns as soon as any bytes are there (``iter_content`` waits for a whole chunk, so
        a body sent one byte at a time never reached a deadline check), and the socket waits at most
        until the deadline for each piece."""
        raw = response.raw
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"reply not finished within {self.config.timeout} s")
            if sock is not None:
                sock.settimeout(remaining)
            try:
                chunk = raw.read1(65536, decode_content=True) if hasattr(raw, "read1") else raw.read(65536)
            except Exception as err:  # the socket timed out at the deadline, or the connection broke
                if time.monotonic() >= deadline - 0.01:
                    raise TimeoutError(f"reply not finished within {self.config.timeout} s") from err
                raise
            if not chunk:
                return
            size += len(chunk)
            if size > _MAX_BODY:
                raise ValueError(f"reply body larger than {_MAX_BODY} bytes")
            yield chunk


class OllamaJudge(_HTTPJudge):
    """Ollama's native chat API, exactly as the book calls it.

    ``POST {url}/api/chat`` with ``{"model", "messages": [{"role": "user", ...}], "options":
    {"seed": 123, "temperature": 0, "num_ctx": 2048}}``; the reply streams as newline-delimited JSON
    chunks whose ``message.content`` pieces are concatenated until a chunk has ``"done": true``.
    """

    backend = "ollama"

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__(config)
        self.endpoint = f"{self.url}/api/chat"

    def payload(self, prompt: str) -> dict[str, Any]:
        """The request body for ``prompt``."""
        options: dict[str, Any] = {
            "seed": self.config.seed,
            "temperature": self.config.temperature,
            "num_ctx": self.config.num_ctx,
        }
        if self.config.max_tokens is not None:
            options["num_predict"] = self.config.max_tokens
        options.update(self.config.options)
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "options": options,
            "stream": True,
        }

    def ask(self, prompt: str) -> str:
        """Send ``prompt``; return the judge's full reply text."""
        return self._post(self.endpoint, self.payload(prompt))

    def _lines(self, response, deadline: float) -> Iterator[bytes]:
        pending = b""
        for piece in self._chunks(response, deadline):
            pending += piece
            *lines, pending = pending.split(b"\n")
            yield from lines
        if pending:
            yield pending

    def _read(self, response, deadline: float) -> str:
        parts: list[str] = []
        for line in self._lines(response, deadline):
            if not line.strip():
                continue
            chunk = json.loads(line)
            if "error" in chunk:
                raise ValueError(f"server error in stream: {safe_text(str(chunk['error']), 200)}")
            message = chunk.get("message") or {}
            parts.append(message.get("content") or "")
            if chunk.get("done"):
                return "".join(parts)
        raise ValueError("stream ended without a 'done' chunk")


class OpenAIJudge(_HTTPJudge):
    """Any OpenAI-compatible chat-completions server (vLLM, llama.cpp server, Ollama, OpenAI).

    ``POST {url}/v1/chat/completions`` (``/v1`` is not doubled if ``url`` already ends with it)
    with ``temperature`` 0, ``seed`` 123 and a small ``max_tokens`` (default 32). The API key is read
    from the environment variable ``config.api_key_env`` (default ``OPENAI_API_KEY``); when set it is
    sent as ``Authorization: Bearer …`` and nowhere else.
    """

    backend = "openai"

    def __init__(self, config: JudgeConfig, *, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        super().__init__(config, api_key=environ.get(config.api_key_env) or None)
        base = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.endpoint = f"{base}/v1/chat/completions"

    @property
    def has_api_key(self) -> bool:
        """Whether an API key was found (the key itself is not exposed)."""
        return bool(self._api_key)

    def payload(self, prompt: str) -> dict[str, Any]:
        """The request body for ``prompt``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
            "seed": self.config.seed,
            "max_tokens": self.config.max_tokens if self.config.max_tokens is not None else 32,
            "stream": False,
        }
        body.update(self.config.options)
        return body

    def ask(self, prompt: str) -> str:
        """Send ``prompt``; return the judge's reply text."""
        return self._post(self.endpoint, self.payload(prompt))

    def _read(self, response, deadline: float) -> str:
        data = json.loads(b"".join(self._chunks(response, deadline)).decode("utf-8"))
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            raise ValueError(f"server error: {safe_text(json.dumps(data['error']), 200)}")
        content = data["choices"][0]["message"].get("content")
        return content if isinstance(content, str) else ""


class HFJudge:
    """A local Hugging Face causal LM as the judge, in-process and greedy.

    Loads ``AutoModelForCausalLM``/``AutoTokenizer`` from ``config.model`` (a Hub id or a folder),
    wraps the prompt with the tokenizer's chat template when it has one (otherwise the raw prompt),
    decodes greedily for ``max_tokens`` (default 32) new tokens and returns them as text. Calls are
    serialised with a lock (one model, one forward at a time). ``model``/``tokenizer`` may be passed
    in directly (then nothing is loaded).
    """

    backend = "hf"

    def __init__(self, config: JudgeConfig, *, model=None, tokenizer=None, device: str | None = None) -> None:
        self.config = config
        self.model_name = config.model
        self.model = config.model  # cache-key name
        if model is None or tokenizer is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            trust = bool(config.options.get("trust_remote_code", False))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model, trust_remote_code=trust)
            model = model or AutoModelForCausalLM.from_pretrained(config.model, trust_remote_code=trust)
        if device is not None:
            model = model.to(device)
        model.eval()
        self.lm = model
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self.max_new_tokens = config.max_tokens if config.max_tokens is not None else 32

    def __repr__(self) -> str:
        return f"HFJudge(model={self.model_name!r})"

    def render(self, prompt: str) -> str:
        """The text fed to the model: the chat template applied to one user turn, if any."""
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def ask(self, prompt: str) -> str:
        """Greedy-decode a reply to ``prompt`` and return only the new text."""
        import torch

        text = self.render(prompt)
        with self._lock, torch.no_grad():
            has_template = bool(getattr(self.tokenizer, "chat_template", None))
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not has_template)
            enc = {k: v.to(self.lm.device) for k, v in enc.items()}
            pad_id = self.tokenizer.pad_token_id
            if pad_id is None:
                pad_id = self.tokenizer.eos_token_id
            out = self.lm.generate(
                **enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad_id
            )
        new_tokens = out[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)


def make_judge(config: JudgeConfig) -> Judge:
    """The judge object for ``config.backend``."""
    if config.backend == "ollama":
        return OllamaJudge(config)
    if config.backend == "openai":
        return OpenAIJudge(config)
    return HFJudge(config)


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def cache_key(backend: str, model: str, prompt: str) -> str:
    """SHA-256 of (judge backend, judge model, full judge prompt): one cache slot per question."""
    blob = json.dumps([backend, model, prompt], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ScoreCache:
    """An append-only JSONL file of finished judgements, for resuming an interrupted evaluation.

    One line per finished question (``{"key", "score", "status", "reason", "replies", ...}``),
    written under a lock, flushed and ``fsync``-ed before the next. On load, a line that does not
    parse (typically the last one, cut by a kill) is ignored; if the file does not end with a
    newline one is written before the next record so it cannot be glued to the broken fragment.
    Later lines for the same key win. Only judge verdicts are stored (scores, and replies that stayed
    unparsable); request failures are not, so they are asked again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        self._needs_newline = False
        self._owner = None
        self._claim()
        self._load()
        self._file = None

    def _claim(self) -> None:
        """Make this process the cache's only user (``<cache>.lock``, an advisory lock that the system
        drops when the process ends): two evaluations on one cache would ask every entry twice."""
        if fcntl is None or self._owner is not None:
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise JudgeCacheBusyError(
                f"{self.path} is in use by another evaluation ({holder}); wait for it to finish, "
                "or give this one its own cache with --cache"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._owner = handle

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                key = record["key"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                self.skipped_lines += 1
                continue
            if isinstance(key, str):
                self.records[key] = record

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record for ``key``, if any."""
        return self.records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        """Store ``record`` (must have ``key``) durably: write, flush, fsync."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self._claim()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
                if self._needs_newline:
                    self._file.write("\n")
                    self._needs_newline = False
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records[record["key"]] = record

    def close(self) -> None:
        """Close the file and let other evaluations use the cache (further appends reopen and reclaim it)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._owner is not None:
                self._owner.close()  # closing drops the lock
                self._owner = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

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


def validate_entries(entries: Sequence[Any], response_key: str) -> None:
    """Raise ``ValueError`` naming the first bad entry (not a dict, missing fields)."""
    if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
        raise ValueError("the responses file must hold a JSON list of entries")
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"entry {i} is not a JSON object")
        for name in ("instruction", "output"):
            if not isinstance(entry.get(name), str):
                raise ValueError(f"entry {i} has no string field {name!r}")
        if response_key not in entry:
            raise ValueError(
                f"entry {i} has no response field {response_key!r} (choose it with --response-key)"
            )


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
) -> JudgeReport:
    """Score every entry's response 0-100 with ``judge`` and the book's prompt.

    * An empty (or whitespace-only, or ``null``) response scores 0 without asking the judge.
    * Each reply goes through :func:`parse_score`; an unparsable reply is asked again up to
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
    validate_entries(entries, response_key)
    backend, model = _judge_identity(judge)
    cache = ScoreCache(cache_path) if cache_path is not None else None
    results: list[EntryResult | None] = [None] * len(entries)

    # questions to ask, grouped by key
    pending: dict[str, list[int]] = {}
    prompts: dict[str, str] = {}
    for i, entry in enumerate(entries):
        response = _response_text(entry, response_key)
        if not response.strip():
            results[i] = EntryResult(index=i, score=0, status=STATUS_EMPTY)
            continue
        prompt = build_judge_prompt(entry, response)
        key = cache_key(backend, model, prompt)
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
            )
            continue
        pending.setdefault(key, []).append(i)
        prompts[key] = prompt

    def ask_one(key: str) -> tuple[str, EntryResult]:
        replies: list[str] = []
        for _ in range(parse_retries + 1):
            try:
                reply = judge.ask(prompts[key])
            except JudgeRequestError as exc:
                reason = REASON_REJECTED if isinstance(exc, JudgeRejectedError) else REASON_REQUEST_FAILED
                return key, EntryResult(index=-1, score=None, status=STATUS_UNSCORED,
                                        reason=reason, replies=replies,
                                        attempts=len(replies), error=str(exc), key=key)
            reply = "" if reply is None else str(reply)
            replies.append(stored_reply(reply))  # the score is read from the whole reply, only an excerpt is kept
            score = parse_score(reply)
            if score is not None:
                return key, EntryResult(index=-1, score=score, status=STATUS_SCORED,
                                        replies=replies, attempts=len(replies), key=key)
        return key, EntryResult(index=-1, score=None, status=STATUS_UNSCORED,
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
            results[i] = dataclasses.replace(outcome, index=i, replies=list(outcome.replies))
            if on_result is not None:
                on_result(results[i])

    total_questions = len(pending)
    bar = None
    if progress and total_questions:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_questions, desc="Scoring entries", unit="entry", file=sys.stderr)
    complete = False
    failures = 0
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(concurrency)),
                                                     thread_name_prefix="judge")
    try:
        keys = iter(list(pending))
        in_flight: set[concurrent.futures.Future] = set()

        def refill() -> None:
            while len(in_flight) < max(1, int(concurrency)):
                key = next(keys, None)
                if key is None:
                    return
                in_flight.add(executor.submit(ask_one, key))

        refill()
        while in_flight:
            done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                in_flight.discard(future)
                key, outcome = future.result()  # JudgeFatalError propagates
                if outcome.reason in _FAILURE_REASONS:
                    failures += 1
                else:
                    failures = 0
                finish(outcome)
                if bar is not None:
                    bar.update(1)
                if max_consecutive_failures and failures >= max_consecutive_failures:
                    raise JudgeUnavailableError(
                        f"{failures} requests in a row failed; last error: {outcome.error}. "
                        "Finished entries are cached: fix the judge server and run again to resume."
                    )
            refill()
        complete = True
    finally:
        # do not wait for queued work on an error/interrupt; in-flight requests are abandoned
        executor.shutdown(wait=complete, cancel_futures=True)
        if bar is not None:
            bar.close()
        if cache is not None:
            cache.close()

    assert all(r is not None for r in results)
    return JudgeReport(results=list(results))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------------


def stored_reply(reply: str) -> str:
    """What the cache and the report keep of a judge reply: all of it, or its first
    :data:`STORED_REPLY_CHARS` characters and how long it was (a judge reply is untrusted text)."""
    if len(reply) <= STORED_REPLY_CHARS:
        return reply
    return reply[:STORED_REPLY_CHARS] + f"... [cut: {len(reply)} characters in all]"


def safe_text(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with a marker of how much was cut (no escaping)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def safe_excerpt(text: str | None, limit: int = _REPLY_EXCERPT) -> str:
    """A console-safe, escaped excerpt of untrusted text: ``repr`` of its first ``limit`` characters.

    ``repr`` escapes newlines, terminal escape sequences and other non-printable characters, so a
    judge reply cannot move the cursor, recolour the terminal or fake output lines.
    """
    if text is None:
        return "None"
    shown = repr(text[:limit])
    if len(text) > limit:
        shown += f"…(+{len(text) - limit} chars)"
    return shown




def compute_text_metrics(entries: Sequence[Mapping[str, Any]], response_key: str) -> dict[str, Any]:
    """Exact match and ROUGE-L F1 of responses vs ``output``, via the package's evaluate modules."""
    import evaluate

    from .metrics import metric_path

    predictions = [_response_text(e, response_key) for e in entries]
    references = [str(e["output"]) for e in entries]
    result: dict[str, Any] = {}
    result.update(evaluate.load(metric_path("exact_match")).compute(
        predictions=predictions, references=references))
    result.update(evaluate.load(metric_path("rouge_l")).compute(
        predictions=predictions, references=references))
    return result


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--option needs KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _counted(minimum: int, number=int):
    """An argparse type: a number of at least ``minimum``."""

    def parse(text: str):
        try:
            value = number(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if number is int else 'a number'}, got {text!r}") from None
        if not (value >= minimum) or (number is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be {'a finite number ' if number is float else ''}>= {minimum}, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The ``gpt-sft-evaluate`` / ``scripts/evaluate.py`` argument parser."""
    p = CommandParser(
        prog="gpt-sft-evaluate",
        description="Score model responses 0-100 with an LLM judge and the book's prompt "
        "(chapter 7.8), plus exact match and ROUGE-L.",
    )
    p.add_argument("--responses", required=True,
                   help="JSON list of entries with instruction/input/output and a response field")
    p.add_argument("--response-key", default="model_response",
                   help="field holding the model response (default: model_response)")
    p.add_argument("--backend", choices=BACKENDS, default="ollama",
                   help="judge backend (default: ollama, as in the book)")
    p.add_argument("--url", default=None,
                   help="judge server base URL (default: http://localhost:11434 for ollama, "
                        "http://localhost:8000 for openai)")
    p.add_argument("--judge-model", default=None,
                   help="judge model name, or a HF id/folder for --backend hf (default: llama3)")
    p.add_argument("--output", default=None, help="JSON report path (default: <responses>-judge-report.json)")
    p.add_argument("--cache", default=None, help="resumable JSONL cache (default: <output>.cache.jsonl)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write a cache")
    p.add_argument("--concurrency", type=_counted(1), default=1, help="questions in flight at once (default: 1)")
    p.add_argument("--timeout", type=_counted(0.001, float), default=120.0, help="total seconds per request (default: 120)")
    p.add_argument("--retries", type=_counted(0), default=3,
                   help="transport retries per request on connection errors, timeouts, 5xx, 429 (default: 3)")
    p.add_argument("--backoff", type=_counted(0, float), default=1.0,
                   help="first backoff in seconds, doubled per retry (default: 1)")
    p.add_argument("--parse-retries", type=_counted(0), default=2,
                   help="times an unparsable reply is asked again (default: 2)")
    p.add_argument("--retry-unscored", action="store_true", help="re-ask entries cached as unparsable")
    p.add_argument("--max-consecutive-failures", type=_counted(0), default=3,
                   help="stop after this many failed requests in a row (0: never; default: 3)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="env var holding the API key for --backend openai (default: OPENAI_API_KEY)")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--num-ctx", type=_counted(1), default=2048, help="Ollama context size (default: 2048)")
    p.add_argument("--max-tokens", type=_counted(1), default=None,
                   help="reply length bound (default: 32 for openai/hf, unset for ollama)")
    p.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="extra backend option (Ollama options / OpenAI body field); VALUE is JSON if it parses")
    p.add_argument("--limit", type=_counted(1), default=None, help="score only the first N entries")
    p.add_argument("--no-metrics", action="store_true", help="skip exact match and ROUGE-L")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(p)
    return p


def _print_unscored(report: JudgeReport, stream, limit: int = 20) -> None:
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


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``gpt-sft-evaluate``); returns the exit status."""
    args = build_parser().parse_args(argv)
    responses_path = Path(args.responses)
    try:
        entries = json.loads(responses_path.read_text(encoding="utf-8"))
        validate_entries(entries, args.response_key)
    except (OSError, ValueError) as exc:
        print(f"error: cannot use {responses_path}: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        entries = entries[: args.limit]
    output = Path(args.output) if args.output else responses_path.with_name(
        responses_path.stem + "-judge-report.json")
    cache_path = None if args.no_cache else Path(args.cache or str(output) + ".cache.jsonl")

    try:
        config = JudgeConfig(
            backend=args.backend, url=args.url, model=args.judge_model, seed=args.seed,
            temperature=args.temperature, num_ctx=args.num_ctx, max_tokens=args.max_tokens,
            timeout=args.timeout, retries=args.retries, backoff=args.backoff,
            api_key_env=args.api_key_env, options=dict(args.option),
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
            entries, judge, response_key=args.response_key, cache_path=cache_path,
            concurrency=args.concurrency, parse_retries=args.parse_retries,
            retry_unscored=args.retry_unscored,
            max_consecutive_failures=args.max_consecutive_failures,
            progress=not args.no_progress,
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

    report.judge = {**config.to_dict(), "prompt_template": JUDGE_PROMPT_TEMPLATE}
    report.source = {"responses": str(responses_path), "response_key": args.response_key,
                     "n": len(entries), "cache": str(cache_path) if cache_path else None}
    if not args.no_metrics:
        try:
            report.metrics = compute_text_metrics(entries, args.response_key)
        except Exception as exc:  # metrics are a bonus: never lose the judge's work over them
            print(f"warning: exact match / ROUGE-L not computed: {type(exc).__name__}: {exc}", file=sys.stderr)

    for line in report.book_lines():
        print(line)
    s = report.summary()
    if s["scored"]:
        print(f"Std: {s['std']:.2f}  Median: {s['median']:.2f}  Min: {s['min']:.0f}  Max: {s['max']:.0f}  "
              f"(empty responses scored 0: {s['empty']}, from cache: {s['cached']})")
    for name, value in report.metrics.items():
        if isinstance(value, (int, float)):
            print(f"{name}: {value:.4f}")
    _print_unscored(report, sys.stdout)
    write_json_atomic(output, report.to_dict())
    print(f"Report written to {output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
