"""The judge backends, each one class plus one registry entry: Ollama's native chat API (as the book),
any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI), and a Hugging Face model in-process."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import requests
import torch

from ..model.loading import load_model, load_tokenizer
from .errors import JudgeRequestError
from .http import Judge, JudgeConfig, HTTPJudge
from .text import safe_text


class OllamaJudge(HTTPJudge):
    """Ollama's native chat API, exactly as the book calls it.

    ``POST {url}/api/chat`` with ``{"model", "messages": [{"role": "user", ...}], "options":
    {"seed": 123, "temperature": 0, "num_ctx": 2048}}``; the reply streams as newline-delimited JSON
    chunks whose ``message.content`` pieces are concatenated until a chunk has ``"done": true``.
    """

    backend = "ollama"

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__(config)
        self.endpoint = f"{self.url}/api/chat"

    def payload(self, prompt: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
        """The request body for ``prompt``; with ``schema``, Ollama's ``format`` constrains the reply."""
        options: dict[str, Any] = {
            "seed": self.config.seed,
            "temperature": self.config.temperature,
            "num_ctx": self.config.num_ctx,
        }
        if self.config.max_tokens is not None:
            options["num_predict"] = self.config.max_tokens
        options.update(self.config.options)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "options": options,
            "stream": True,
        }
        if schema is not None:
            body["format"] = schema
        return body

    def ask(self, prompt: str, schema: dict[str, Any] | None = None) -> str:
        """Send ``prompt``; return the judge's full reply text."""
        self.structured_output = "ollama format (JSON schema)" if schema is not None else None
        return self._post(self.endpoint, self.payload(prompt, schema))

    def complete(self, text: str, *, stop: list[str], seed: int) -> str:
        """The model's raw continuation of ``text`` (``POST /api/generate`` with ``"raw": true``: no template
        applied), stopped at ``stop``; the transport rules are :meth:`ask`'s. A continuation the model ended (its
        ``done_reason`` is not ``length``: not cut by ``max_tokens``) ends with ``stop[0]``, so a cached reply says
        whether it was finished."""
        body = self.payload("", None)
        del body["messages"]
        body.update(prompt=text, raw=True)
        body["options"].update(seed=seed, stop=stop)
        text = self._post(f"{self.url}/api/generate", body)
        return text + stop[0] if stop and self._local.finish_reason != "length" else text

    def chat_template(self) -> tuple[str, str] | None:
        """``("jinja", template)`` when the model's metadata keeps its Hugging Face chat template, else ``("go",
        template)``: Ollama's own template of the model (``POST /api/show``); ``None`` if the server says neither."""
        try:
            response = self._session.post(f"{self.url}/api/show", json={"model": self.model, "verbose": True},
                                          headers=self._headers(), timeout=min(10.0, self.config.timeout))
            data = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return None
        info = data.get("model_info") if isinstance(data, dict) else None
        jinja = info.get("tokenizer.chat_template") if isinstance(info, dict) else None
        if isinstance(jinja, str) and jinja:
            return "jinja", jinja
        go = data.get("template") if isinstance(data, dict) else None
        return ("go", go) if isinstance(go, str) and go else None

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
            self._note_model(chunk.get("model"))
            parts.append(message.get("content") or chunk.get("response") or "")  # /api/chat's or /api/generate's
            if chunk.get("done"):
                self._local.finish_reason = chunk.get("done_reason")
                return "".join(parts)
        raise ValueError("stream ended without a 'done' chunk")


class OpenAIJudge(HTTPJudge):
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

    def served_models(self) -> list[str]:
        """The model ids the server lists (``GET /v1/models``); ``[]`` if it does not say. A llama.cpp or
        vLLM server answers for its own model whatever name a request gives, and echoes that name back,
        so this -- not the reply -- says which judge answered."""
        try:
            response = self._session.get(self.endpoint.replace("/chat/completions", "/models"),
                                         headers=self._headers(), timeout=min(10.0, self.config.timeout))
            data = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return []
        items = data.get("data") if isinstance(data, dict) else None
        return [safe_text(str(m["id"]), 200) for m in items or [] if isinstance(m, dict) and m.get("id")]

    @property
    def has_api_key(self) -> bool:
        """Whether an API key was found (the key itself is not exposed)."""
        return bool(self._api_key)

    # How a JSON schema is sent: OpenAI's and vLLM's ``json_schema`` response format, else
    # llama-cpp-python's ``json_object`` with a ``schema`` (its server rejects the other with HTTP 422).
    SCHEMA_DIALECTS = ("json_schema", "json_object")

    def payload(self, prompt: str, schema: dict[str, Any] | None = None, dialect: str = "json_schema") -> dict[str, Any]:
        """The request body for ``prompt``; with ``schema``, a ``response_format`` in ``dialect``."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.config.temperature,
            "seed": self.config.seed,
            "max_tokens": self.config.max_tokens if self.config.max_tokens is not None else 32,
            "stream": False,
        }
        if schema is not None and dialect == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "judgement", "schema": schema, "strict": True}}
        elif schema is not None:
            body["response_format"] = {"type": "json_object", "schema": schema}
        body.update(self.config.options)
        return body

    def ask(self, prompt: str, schema: dict[str, Any] | None = None) -> str:
        """Send ``prompt``; return the judge's reply text. With ``schema``, the first request finds the
        dialect the server takes (``json_schema``: a server that names ``response_format`` in its error --
        llama-cpp-python answers HTTP 500 -- gets ``json_object`` from then on; any other failure is retried
        with backoff, as every request is)."""
        if schema is None:
            return self._post(self.endpoint, self.payload(prompt))
        dialect = getattr(self, "_dialect", None)
        if dialect is None:
            # One quick look, then the usual retries with backoff: a server warming up (500, 429, a dropped
            # connection) is retried as always; only an error that names response_format switches the dialect.
            for retries in (0, None):
                try:
                    reply = self._post(self.endpoint, self.payload(prompt, schema, "json_schema"), retries=retries)
                except JudgeRequestError as err:
                    if "response_format" in str(err):
                        self._dialect = "json_object"
                        break
                    if retries is None:
                        raise
                else:
                    self._dialect = "json_schema"
                    self.structured_output = "response_format json_schema"
                    return reply
        self.structured_output = f"response_format {self._dialect}"
        return self._post(self.endpoint, self.payload(prompt, schema, self._dialect))

    def complete(self, text: str, *, stop: list[str], seed: int) -> str:
        """The model's raw continuation of ``text`` (``POST /v1/completions``: no template applied), stopped at
        ``stop``; the transport rules are :meth:`ask`'s. A continuation the model ended (its ``finish_reason`` is not
        ``length``: not cut by ``max_tokens``) ends with ``stop[0]``, so a cached reply says whether it was
        finished."""
        body = self.payload("")
        del body["messages"]
        body.update(prompt=text, seed=seed, stop=stop)
        text = self._post(self.endpoint.replace("/chat/completions", "/completions"), body)
        return text + stop[0] if stop and self._local.finish_reason != "length" else text

    def chat_template(self) -> tuple[str, str] | None:
        """``("jinja", template)`` from llama.cpp's ``GET /props``; ``None`` where the server has no such page
        (llama-cpp-python, vLLM, OpenAI)."""
        try:
            response = self._session.get(self.endpoint.replace("/v1/chat/completions", "/props"),
                                         headers=self._headers(), timeout=min(10.0, self.config.timeout))
            data = response.json() if response.status_code == 200 else {}
        except (requests.RequestException, ValueError):
            return None
        template = data.get("chat_template") if isinstance(data, dict) else None
        return ("jinja", template) if isinstance(template, str) and template else None

    def _read(self, response, deadline: float) -> str:
        data = json.loads(b"".join(self._chunks(response, deadline)).decode("utf-8"))
        if isinstance(data, dict) and "error" in data and "choices" not in data:
            raise ValueError(f"server error: {safe_text(json.dumps(data['error']), 200)}")
        self._note_model(data.get("model"))
        choice = data["choices"][0]
        self._local.finish_reason = choice.get("finish_reason")
        content = choice["message"].get("content") if "message" in choice else choice["text"]  # chat or completion
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
            trust = bool(config.options.get("trust_remote_code", False))
            tokenizer = tokenizer or load_tokenizer(config.model, trust_remote_code=trust)
            model = model or load_model(config.model, device=device or "cpu", trust_remote_code=trust)
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

    def chat_template(self) -> tuple[str, str] | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return ("jinja", template) if isinstance(template, str) and template else None

    def complete(self, text: str, *, stop: list[str], seed: int) -> str:
        """The model's continuation of ``text`` as it is (no template applied), sampled at the config's temperature
        with ``seed`` (greedy at 0), cut at the first of ``stop`` (or EOS) and then ending with ``stop[0]``."""
        with self._lock, torch.no_grad():
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            enc = {k: v.to(self.lm.device) for k, v in enc.items()}
            pad_id = self.tokenizer.pad_token_id
            pad_id = self.tokenizer.eos_token_id if pad_id is None else pad_id
            temperature = self.config.temperature
            sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            torch.manual_seed(seed)
            out = self.lm.generate(**enc, max_new_tokens=self.max_new_tokens, pad_token_id=pad_id, **sampling)
        continuation = self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=False)
        ended = False
        for marker in [*stop, self.tokenizer.eos_token or ""]:
            if marker and marker in continuation:
                continuation, ended = continuation.split(marker, 1)[0], True
        return continuation + stop[0] if stop and ended else continuation

    def _digit_tokens(self) -> list[int]:
        """Ids of the tokens that are digits only (a number is made of these)."""
        if not hasattr(self, "_digits"):
            vocab = self.tokenizer.get_vocab()
            ids = sorted(set(vocab.values()))
            texts = self.tokenizer.batch_decode([[i] for i in ids])
            self._digits = [i for i, t in zip(ids, texts) if t.isascii() and t.isdigit() and len(t) <= 3]
        return self._digits

    def _ask_constrained(self, text: str, schema: dict[str, Any]) -> str:
        """``{"score": N}`` by constrained decoding: the reply starts as that object's text, and only digit
        tokens (at most three) may follow, then ``}`` ends it. A cheap grammar for the one schema we use."""
        start = '{"score": '
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        enc = self.tokenizer(text + start, return_tensors="pt", add_special_tokens=not has_template)
        enc = {k: v.to(self.lm.device) for k, v in enc.items()}
        prompt_len = enc["input_ids"].shape[1]
        close = self.tokenizer.encode("}", add_special_tokens=False)
        eos = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else close[0]
        digits = self._digit_tokens()

        def allowed(_batch: int, ids: torch.Tensor) -> list[int]:
            new = ids[prompt_len:].tolist()
            if new and new[-1] in close:
                return [eos]
            return digits if not new else (digits + close if len(new) < 3 else close)

        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        out = self.lm.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=pad_id,
                               prefix_allowed_tokens_fn=allowed)
        # token by token: some tokenizers put spaces between decoded tokens
        digit_ids = set(digits)
        digits_text = "".join(self.tokenizer.decode([t]) for t in out[0, prompt_len:].tolist() if t in digit_ids)
        reply = start + digits_text
        return reply if reply.endswith("}") else reply + "}"

    def ask(self, prompt: str, schema: dict[str, Any] | None = None) -> str:
        """Greedy-decode a reply to ``prompt`` and return only the new text; with a ``{"score": integer}``
        ``schema``, constrained to it (any other schema is not enforced here: the reply is read as text)."""
        text = self.render(prompt)
        if schema is not None and "score" in (schema.get("properties") or {}):  # other schemas: parsed from text
            self.structured_output = "constrained decoding"
            with self._lock, torch.no_grad():
                return self._ask_constrained(text, schema)
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


# backend name -> class: add a backend by adding one class and one entry here
BACKENDS: dict[str, type] = {"ollama": OllamaJudge, "openai": OpenAIJudge, "hf": HFJudge}


def make_judge(config: JudgeConfig) -> Judge:
    """The judge object for ``config.backend``."""
    return BACKENDS[config.backend](config)


