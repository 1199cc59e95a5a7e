"""Answers from a model behind an OpenAI-compatible server (``gpt-sft serve``, llama.cpp, vLLM...), streamed.

The prompt is sent as text to ``/v1/completions`` with ``stream: true`` (server-sent events), formatted
with the checkpoint's prompt style, so the server sees exactly what our model sees and the answer is
read back with the same rule (:class:`~gpt_sft.generate.stream.ResponseText`). ``/v1/chat/completions``
would apply the server's chat template instead, which a GGUF export carries but another server may not.

The sampling fields are llama.cpp's (vLLM reads the same names): ``top_k`` (0 = off), ``top_p: 1``,
``min_p: 0`` and ``repeat_penalty: 1`` switch off the server's own defaults (llama-cpp-python: top-k
40, top-p 0.95, min-p 0.05, repeat penalty 1.1), so that temperature 0 is the greedy answer of
``gpt-sft generate --prompt`` (on an ``f32`` GGUF) and sampling follows the same rules as ours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import requests

from ..model.tokenizer import END_OF_TEXT
from .settings import GenerationSettings
from .stream import ResponseText, StreamUpdate

CONNECT_TIMEOUT = 10.0  # seconds to reach the server; a reply may then take as long as generation does
READ_TIMEOUT = 300.0  # seconds without a byte from the server before we give up


class EndpointError(RuntimeError):
    """The server could not be reached or refused the request (the message names ``--url``)."""


def api_base(url: str) -> str:
    """``http://host:port/v1`` from ``http://host:port``, ``.../v1`` or ``.../v1/``."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r}: an http:// or https:// address is needed (e.g. http://127.0.0.1:8000)")
    return base if base.endswith("/v1") else base + "/v1"


class RemoteModel:
    """A model served with an OpenAI-compatible API; ``name`` is the served model (the first one listed). The API
    key, if the environment variable ``api_key_env`` holds one, goes with every request; ``None`` sends none."""

    def __init__(self, url: str, name: str | None = None, api_key_env: str | None = "OPENAI_API_KEY"):
        self.base = api_base(url)
        self.url = url
        key = os.environ.get(api_key_env) if api_key_env else None
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.name = name or self._served_model()

    def _served_model(self) -> str:
        try:
            reply = requests.get(f"{self.base}/models", headers=self.headers, timeout=CONNECT_TIMEOUT)
        except requests.RequestException as err:
            raise EndpointError(f"--url {self.url}: no server answers at {self.base}/models ({type(err).__name__}); "
                                "start one with gpt-sft serve --model DIR") from None
        if reply.status_code != 200:
            raise EndpointError(f"--url {self.url}: GET {self.base}/models answered HTTP {reply.status_code}")
        models = [m.get("id") for m in (reply.json().get("data") or []) if isinstance(m, dict)]
        if not models or not models[0]:
            raise EndpointError(f"--url {self.url}: {self.base}/models lists no model")
        return str(models[0])

    def request_body(self, prompt: str, settings: GenerationSettings) -> dict:
        """The ``/v1/completions`` request for ``prompt`` under ``settings`` (see the module docstring)."""
        body = {"model": self.name, "prompt": prompt, "max_tokens": int(settings.max_new_tokens),
                "temperature": float(settings.temperature), "top_k": int(settings.top_k or 0), "top_p": 1.0,
                "min_p": 0.0, "repeat_penalty": 1.0, "stream": True, "stop": [END_OF_TEXT]}
        if settings.seed is not None:
            body["seed"] = int(settings.seed)
        return body

    def stream(self, prompt: str, settings: GenerationSettings) -> Iterator[StreamUpdate]:
        """The answer to ``prompt`` (already formatted), one update per streamed piece of text."""
        reader = ResponseText(settings.style, prompt)
        continuation, pieces, finish = "", 0, None
        yield StreamUpdate("", prompt=prompt)
        try:
            reply = requests.post(f"{self.base}/completions", json=self.request_body(prompt, settings),
                                  headers=self.headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        except requests.RequestException as err:
            raise EndpointError(f"--url {self.url}: the request failed ({type(err).__name__})") from None
        with reply:
            if reply.status_code != 200:
                raise EndpointError(f"--url {self.url}: POST {self.base}/completions answered HTTP "
                                    f"{reply.status_code}: {reply.text[:300]}")
            for event in _events(reply):
                choice = (event.get("choices") or [{}])[0]
                text = choice.get("text") or ""
                finish = choice.get("finish_reason") or finish
                if text:
                    continuation += text
                    pieces += 1
                    yield StreamUpdate(reader.partial(continuation), new_tokens=pieces, prompt=prompt)
        yield StreamUpdate(reader.final(continuation), done=True, new_tokens=pieces, stopped_at_eos=finish == "stop",
                           prompt=prompt)


def _events(reply: requests.Response) -> Iterator[dict]:
    """The JSON payloads of a server-sent event stream, until ``data: [DONE]``."""
    for raw in reply.iter_lines():
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue  # comments (": ping"), event names, blank separators
        data = line[len("data:"):].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise EndpointError(f"the server sent an event that is not JSON: {data[:200]!r}") from None
        if "error" in event:
            raise EndpointError(f"the server reported an error: {str(event['error'])[:300]}")
        yield event


__all__ = ["EndpointError", "RemoteModel", "api_base"]
