"""Talking to a judge server: its configuration, total-time deadlines, retries with backoff, and
secrets kept out of every message.

Secrets: the OpenAI-compatible backend reads its API key from an environment variable (default
``OPENAI_API_KEY``). The key is only ever placed in the ``Authorization`` header; it is not stored in
:class:`JudgeConfig`, not shown by ``repr``, and replaced by ``***`` in every error message and in
the judge's replies (so neither the console, the cache nor the report can contain it). A password in
the URL is treated the same way.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

import requests
import urllib3

from .errors import JudgeFatalError, JudgeRejectedError, JudgeRequestError
from .text import safe_excerpt, safe_text

BACKEND_NAMES = ("ollama", "openai", "hf")
_DEFAULT_URLS = {"ollama": "http://localhost:11434", "openai": "http://localhost:8000"}
_DEFAULT_MODEL = "llama3"  # the book's judge
_MAX_BODY = 16 * 1024 * 1024  # bytes of one HTTP reply body we are willing to hold


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
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"unknown judge backend {self.backend!r}; choose one of {BACKEND_NAMES}")
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
    """A judge: anything with ``ask(prompt) -> str`` (the raw reply text). A judge whose backend can
    constrain its reply takes ``ask(prompt, schema=...)``, a JSON schema the reply must follow.

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


class HTTPJudge:
    """Shared HTTP plumbing: a session, total-time timeouts, retries with exponential backoff."""

    backend = "http"
    _RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
    _FATAL_STATUS = frozenset({401, 402, 403, 404, 405, 407})

    def __init__(self, config: JudgeConfig, *, api_key: str | None = None) -> None:
        self.config = config
        self.model = config.model
        self.url = (config.url or "").rstrip("/")
        self._requests = requests
        self._local = threading.local()
        self._api_key = api_key
        self._redact = _Redactor(api_key, url_password(self.url))
        self._sleep = time.sleep
        self.reported_models: set[str] = set()  # the model names the server put in its replies
        self._models_lock = threading.Lock()

    def _note_model(self, name: Any) -> None:
        if isinstance(name, str) and name:
            with self._models_lock:
                self.reported_models.add(safe_text(self._redact(name), 200))

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

    def _post(self, url: str, payload: dict[str, Any], retries: int | None = None) -> Any:
        """POST with retries (``config.retries`` unless given); returns the parsed reply via :meth:`_read`
        or raises a JudgeError."""
        requests = self._requests
        last_error = "no attempt made"
        retries = self.config.retries if retries is None else retries
        for attempt in range(retries + 1):
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
            if attempt < retries:
                self._sleep(self._backoff_delay(attempt, response))
        raise JudgeRequestError(safe_text(f"{redact_url(url)}: {last_error} (after {retries + 1} attempts)", 500))

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


