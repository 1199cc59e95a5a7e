"""The judge backends, each one class plus one registry entry: Ollama's native chat API (as the book),
any OpenAI-compatible server (vLLM, llama.cpp, Ollama, OpenAI), and a Hugging Face model in-process."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..model.loading import load_model, load_tokenizer
from .http import Judge, JudgeConfig, _HTTPJudge
from .text import safe_text


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

    def ask(self, prompt: str) -> str:
        """Greedy-decode a reply to ``prompt`` and return only the new text."""
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


# backend name -> class: add a backend by adding one class and one entry here
BACKENDS: dict[str, type] = {"ollama": OllamaJudge, "openai": OpenAIJudge, "hf": HFJudge}


def make_judge(config: JudgeConfig) -> Judge:
    """The judge object for ``config.backend``."""
    return BACKENDS[config.backend](config)


