"""``/v1/chat/completions`` for a checkpoint trained on conversations, in front of an OpenAI-compatible server.

``gpt-sft serve`` runs llama.cpp's server, which would format a chat request with the template in the GGUF file
and send the whole history, however long. For a checkpoint trained on conversations, :class:`ConversationCompletions`
(ASGI middleware around the server's app) answers the chat route itself:

* the message list (a system message, earlier turns, the new user message) is checked as a conversation
  (:func:`~gpt_sft.data.conversations.question_problem`; a bad one is HTTP 400 naming the turn);
* it is fitted into the context less the tokens kept for the answer (``max_tokens``; without it, the book's 256 or
  half the context, whichever is smaller), the oldest whole exchanges left out and the system message kept
  (:func:`~gpt_sft.data.conversation_format.fit_conversation`, as the terminal and web chats do);
* the prompt is rendered in the checkpoint's layout and sent to the server's own ``/v1/completions`` (the text
  ``<|endoftext|>`` between exchanges is read there as the token 50256, as in training), with the layout's closing
  marker (``<|im_end|>`` for chatml) as a stop string;
* the reply, streamed or not, is turned back into a chat completion (``chat.completion``, or
  ``chat.completion.chunk`` events), with one more field, which OpenAI clients ignore::

      "gpt_sft": {"dropped_turns": 2, "prompt": "<the exact prompt sent>", "prompt_tokens": 117}

  (on the first event of a stream). ``dropped_turns`` counts the exchanges (a user message and its answer each) left
  out.

Every other route, and the server's errors, pass through unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ..data.conversation_format import ConversationLayout, FittedConversation, fit_conversation
from ..data.conversations import question_problem
from .settings import GenerationSettings

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
# fields a completion request has no use for; what they would ask for is refused when set (REFUSED)
CHAT_ONLY_FIELDS = ("messages", "max_completion_tokens", "logprobs", "top_logprobs", "tools", "tool_choice",
                    "functions", "function_call", "response_format", "parallel_tool_calls")
REFUSED = {"tools": "tool calls", "functions": "function calls", "logprobs": "logprobs"}
EVENT_END = re.compile(rb"\r?\n\r?\n")  # the blank line that ends a server-sent event


class ChatRequestError(ValueError):
    """A chat request this route cannot answer (HTTP 400; the message says why)."""


class ConversationCompletions:
    """ASGI middleware: ``POST /v1/chat/completions`` answered in ``layout`` through ``/v1/completions`` of ``app``
    (see the module docstring). ``count_tokens`` counts a prompt as the server will; ``context_length`` is the
    server's context window."""

    def __init__(self, app, layout: ConversationLayout, count_tokens: Callable[[str], int], context_length: int):
        self.app = app
        self.layout = layout
        self.count_tokens = count_tokens
        self.context_length = int(context_length)

    def answer_tokens(self, request: dict[str, Any]) -> int | None:
        """The ``max_tokens`` (or ``max_completion_tokens``) a request asks for, else ``None``."""
        value = request.get("max_tokens", request.get("max_completion_tokens"))
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ChatRequestError(f"max_tokens must be a non-negative integer, got {value!r}")
        return value or None

    def fit(self, request: Any) -> FittedConversation:
        """What of the request's conversation is sent: checked, fitted into the context less the answer's tokens, and
        rendered in the layout. The one place this route builds its prompt."""
        if not isinstance(request, dict):
            raise ChatRequestError("the request body must be a JSON object")
        for field, what in REFUSED.items():
            if request.get(field):
                raise ChatRequestError(f"{field}: {what} are not supported by a gpt-sft conversation model")
        response_format = request.get("response_format")
        if response_format and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
            raise ChatRequestError("response_format: only text answers are supported by a gpt-sft conversation model")
        messages = request.get("messages")
        problem = question_problem(messages)
        if problem is not None:
            raise ChatRequestError(f"messages: {problem}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        kept = self.answer_tokens(request)
        if kept is None:
            kept = min(GenerationSettings.max_new_tokens, self.context_length // 2)
        return fit_conversation(messages, self.layout, self.count_tokens, self.context_length - kept)

    def completion_request(self, request: dict[str, Any], fitted: FittedConversation) -> dict[str, Any]:
        """The ``/v1/completions`` request: the chat request's own settings, the fitted prompt, and the layout's
        closing marker as a stop string (the end-of-text is the server's end-of-generation already)."""
        completion = {key: value for key, value in request.items() if key not in CHAT_ONLY_FIELDS}
        stop = request.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        marker = self.layout.assistant_tail.strip()
        completion.update(prompt=fitted.prompt, max_tokens=self.answer_tokens(request),
                          stop=stop + ([marker] if marker and marker not in stop else []))
        return completion

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            try:
                request = json.loads(body or b"null")
            except ValueError as err:
                raise ChatRequestError(f"the request body is not JSON ({err})") from None
            fitted = self.fit(request)
        except ChatRequestError as err:
            await send_json(send, 400, {"error": {"message": f"gpt-sft serve: {err}", "type": "invalid_request_error",
                                                  "param": None, "code": None}})
            return
        data = json.dumps(self.completion_request(request, fitted)).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        inner = {**scope, "path": COMPLETIONS_PATH, "raw_path": COMPLETIONS_PATH.encode(),
                 "headers": headers + [(b"content-length", str(len(data)).encode())]}
        given = False

        async def replay() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()  # after the body: a disconnect, which the server watches for while it streams

        await self.app(inner, replay, ChatReply(send, fitted).send)


class ChatReply:
    """Turns the server's completion reply into a chat completion as it is sent: a JSON reply whole, a stream event
    by event. Anything but a successful reply (an error) passes through unchanged."""

    def __init__(self, send, fitted: FittedConversation):
        self.forward = send
        self.extra = {"gpt_sft": {"dropped_turns": fitted.dropped, "prompt": fitted.prompt,
                                  "prompt_tokens": fitted.tokens}}
        self.kind = "pass"  # or "json", "stream"
        self.start: dict | None = None
        self.held = b""
        self.first = True

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = dict((k.lower(), v) for k, v in message.get("headers", []))
            if message["status"] == 200:
                streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
                self.kind = "stream" if streaming else "json"
            if self.kind == "pass":
                await self.forward(message)
                return
            # the length changes: it is given again for a JSON reply, and a stream has none
            message = {**message, "headers": [(k, v) for k, v in message.get("headers", [])
                                              if k.lower() != b"content-length"]}
            if self.kind == "stream":
                await self.forward(message)
            else:
                self.start = message
            return
        if message["type"] != "http.response.body" or self.kind == "pass":
            await self.forward(message)
            return
        self.held += message.get("body", b"")
        more = message.get("more_body", False)
        if self.kind == "json":
            if not more:
                data = json.dumps(self.chat_reply(json.loads(self.held))).encode()
                self.start["headers"].append((b"content-length", str(len(data)).encode()))
                await self.forward(self.start)
                await self.forward({"type": "http.response.body", "body": data, "more_body": False})
            return
        # split as bytes: a character cut between two pieces is whole once its event is
        *events, self.held = EVENT_END.split(self.held) if more else [*EVENT_END.split(self.held), b""]
        out = "".join(self.chat_event(event.decode("utf-8")) for event in events if event.strip())
        if out or not more:
            await self.forward({"type": "http.response.body", "body": out.encode("utf-8"), "more_body": more})

    def chat_reply(self, completion: dict) -> dict:
        """A ``text_completion`` as a ``chat.completion``."""
        return {"id": chat_id(completion.get("id")), "object": "chat.completion", "created": completion.get("created"),
                "model": completion.get("model"), "choices": [
                    {"index": c.get("index", 0), "message": {"role": "assistant", "content": c.get("text", "")},
                     "logprobs": None, "finish_reason": c.get("finish_reason")} for c in completion.get("choices", [])],
                "usage": completion.get("usage"), **self.extra}

    def chat_event(self, event: str) -> str:
        """One server-sent event of a completion stream as one of a chat stream (comments and ``[DONE]`` as they
        are)."""
        lines = event.replace("\r\n", "\n").split("\n")
        data = "\n".join(line[len("data:"):].strip() for line in lines if line.startswith("data:"))
        if not data or data == "[DONE]":
            return "\n".join(lines) + "\n\n"
        chunk = json.loads(data)
        choices = []
        for c in chunk.get("choices", []):
            delta = {"role": "assistant"} if self.first else {}
            if c.get("text") or self.first:
                delta["content"] = c.get("text") or ""
            choices.append({"index": c.get("index", 0), "delta": delta, "logprobs": None,
                            "finish_reason": c.get("finish_reason")})
        reply = {"id": chat_id(chunk.get("id")), "object": "chat.completion.chunk", "created": chunk.get("created"),
                 "model": chunk.get("model"), "choices": choices, **(self.extra if self.first else {})}
        self.first = False
        return f"data: {json.dumps(reply)}\n\n"


def chat_id(completion_id: Any) -> Any:
    """``chatcmpl-...`` for a completion's ``cmpl-...``."""
    return "chat" + completion_id if isinstance(completion_id, str) and completion_id.startswith("cmpl-") \
        else completion_id


async def send_json(send, status: int, value: Any) -> None:
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["CHAT_PATH", "COMPLETIONS_PATH", "ChatReply", "ChatRequestError", "ConversationCompletions", "chat_id",
           "send_json"]
