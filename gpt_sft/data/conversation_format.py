"""How a conversation (a ``messages`` list) becomes training text, for each built-in prompt style.

A conversation is cut into *exchanges*: a user message and the assistant's answer. Each exchange is rendered as
the style's single-turn prompt and response, and every answer is closed by ``<|endoftext|>`` (GPT-2's id 50256, a
real token, not text), so that generation stops after one turn; the next exchange's text follows it directly. The
text a style puts once at the start (Alpaca's preamble line) is written once, and a system message takes its place;
styles without such a line give the system message a first block of its own. A one-turn conversation without a
system message is therefore byte for byte the style's single-turn text (:func:`gpt_sft.data.prompts.format_text`),
and its closing end-of-text is the one the book's collator appends.

``alpaca``::

    {system, or: Below is an instruction that describes a task. Write a response that appropriately completes the request.}

    ### Instruction:
    {user 1}

    ### Response:
    {assistant 1}<|endoftext|>

    ### Instruction:
    {user 2}

    ### Response:
    {assistant 2}<|endoftext|>

``phi3`` (a system message, if any, is a first block ``<|system|>\\n{system}\\n``)::

    <|user|>
    {user 1}
    <|assistant|>:
    {assistant 1}<|endoftext|><|user|>
    {user 2}
    <|assistant|>:
    {assistant 2}<|endoftext|>

``chatml`` (``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, as plain text)::

    <|im_start|>system
    {system}<|im_end|>
    <|im_start|>user
    {user 1}<|im_end|>
    <|im_start|>assistant
    {assistant 1}<|im_end|>
    <|endoftext|><|im_start|>user
    {user 2}<|im_end|>
    <|im_start|>assistant
    {assistant 2}<|im_end|>
    <|endoftext|>

A style registered at run time has no system block: its exchanges are its single-turn prompt and response.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .chat_template import jinja_text, prompt_parts
from .prompts import ALPACA, CHATML, PHI3, PromptStyle, format_prompt, get_prompt_style
from .validate import END_OF_TEXT

ALPACA_PREAMBLE = ALPACA.format_prompt({"instruction": "", "input": ""}).split("\n\n", 1)[0]


@dataclass(frozen=True)
class ConversationLayout:
    """The fixed text around each message of a conversation in one prompt style.

    Attributes:
        opening: Text before the first exchange when there is no system message (Alpaca's preamble line).
        system_head, system_tail: Around a system message, which replaces ``opening``; ``None``: the style has no
            place for one.
        user_head, user_tail: Around a user message.
        assistant_head, assistant_tail: Around an answer (``assistant_head`` is the generation prompt); the
            end-of-text follows ``assistant_tail``.
    """

    style: str
    opening: str
    system_head: str | None
    system_tail: str
    user_head: str
    user_tail: str
    assistant_head: str
    assistant_tail: str

    def spec(self) -> dict[str, Any]:
        """The layout as plain data, for a checkpoint's recipe."""
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ConversationLayout":
        return cls(**{name: spec[name] for name in cls.__dataclass_fields__})

    def start(self, system: str | None) -> str:
        """The text before the first exchange."""
        if system is None:
            return self.opening
        if self.system_head is None:
            raise ValueError(f"prompt style {self.style!r} has no place for a system message; use alpaca, phi3 or "
                             "chatml, or leave the system message out")
        return self.system_head + system + self.system_tail

    def exchange(self, user: str, assistant: str) -> tuple[str, str]:
        """``(prompt, response)`` of one exchange: the text up to the answer, and the answer (without end-of-text)."""
        return self.user_head + user + self.user_tail, self.assistant_head + assistant + self.assistant_tail


def _single_turn(style: PromptStyle) -> ConversationLayout:
    parts = prompt_parts(style)
    return ConversationLayout(style.name, "", None, "", parts.plain_head, parts.plain_tail, parts.header, parts.trailer)


# The single-turn layouts, cut where a system message goes (tests check both agree for one turn).
_BUILT_IN = {
    ALPACA.name: ConversationLayout(ALPACA.name, ALPACA_PREAMBLE, "", "", "\n\n### Instruction:\n", "",
                                    "\n\n### Response:\n", ""),
    PHI3.name: ConversationLayout(PHI3.name, "", "<|system|>\n", "\n", "<|user|>\n", "", "\n<|assistant|>:\n", ""),
    CHATML.name: ConversationLayout(CHATML.name, "", "<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n",
                                    "<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n"),
}


def conversation_layout(style: PromptStyle | str = "alpaca") -> ConversationLayout:
    """The layout of a built-in style, or of a registered style's single-turn prompt (no system message).

    Raises:
        ValueError: a style whose prompt does not place its fields verbatim.
    """
    resolved = get_prompt_style(style)
    built_in = _BUILT_IN.get(resolved.name)
    if built_in is not None and resolved.spec() == get_prompt_style(resolved.name).spec():
        return built_in
    return _single_turn(resolved)


def exchanges(messages: Sequence[Mapping[str, str]]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """``(system, [(user, assistant), ...])`` of a valid conversation; the last answer is ``None`` when it ends on
    a user message (a question to answer)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    pairs = [(turns[i]["content"], turns[i + 1]["content"] if i + 1 < len(turns) else None)
             for i in range(0, len(turns), 2)]
    return system, pairs


def render_pieces(messages: Sequence[Mapping[str, str]], layout: ConversationLayout,
                  first: int = 0) -> list[tuple[str, str]]:
    """``(prompt, response)`` per exchange from exchange ``first`` on (earlier ones dropped, the system message
    kept); the first prompt starts with the opening or the system message. Each response is followed by an
    end-of-text. An unanswered last question has the response ``""``."""
    system, pairs = exchanges(messages)
    pieces = []
    for k, (user, assistant) in enumerate(pairs[first:]):
        prompt, response = layout.exchange(user, assistant or "")
        pieces.append(((layout.start(system) if k == 0 else "") + prompt, response if assistant is not None else ""))
    return pieces


def render_conversation(messages: Sequence[Mapping[str, str]],
                        style: ConversationLayout | PromptStyle | str = "alpaca", first: int = 0) -> str:
    """The whole training text, each answer closed by ``<|endoftext|>`` (written out; the tokenizer reads it as id
    50256). A conversation ending on a user message ends with the generation prompt (the answer's header): the
    text a model trained on such conversations is given to answer it. ``first``: as in :func:`render_pieces`."""
    layout = style if isinstance(style, ConversationLayout) else conversation_layout(style)
    pieces = render_pieces(messages, layout, first)
    text = END_OF_TEXT.join(prompt + response for prompt, response in pieces)
    if messages[-1]["role"] == "assistant":
        return text + END_OF_TEXT
    return text + layout.assistant_head


@dataclass(frozen=True)
class FittedConversation:
    """What is sent to answer a conversation's last message (:func:`fit_conversation`).

    Attributes:
        messages: The system message (if any), the exchanges that fit, and the question.
        prompt: Their text up to the answer (:func:`render_conversation`).
        tokens: The prompt's length in tokens.
        dropped: How many of the earliest exchanges (a user message and its answer each) were left out.
        budget: The most tokens the prompt could have (``None``: no limit); ``tokens > budget`` when even the
            question alone, with the system message, is longer.
    """

    messages: list[dict[str, str]]
    prompt: str
    tokens: int
    dropped: int
    budget: int | None


def fit_conversation(messages: Sequence[Mapping[str, str]], layout: ConversationLayout,
                     count_tokens: Callable[[str], int], budget: int | None) -> FittedConversation:
    """The prompt answering ``messages`` (a valid conversation ending on a user message) in ``layout``, with the
    earliest whole exchanges dropped until it is at most ``budget`` tokens (the model's context less the tokens
    kept for the answer), the system message always kept and no message ever cut. The question itself is never
    dropped: when even it does not fit, the generation's own rule for a prompt too long applies.

    Every place a user talks to a model trained on conversations (the terminal and web chats, ``gpt-sft serve``'s
    ``/v1/chat/completions``) fits its history with this function, so that they drop the same turns."""
    system, pairs = exchanges(messages)
    head = [{"role": "system", "content": system}] if system is not None else []
    for first in range(len(pairs)):
        prompt = render_conversation(messages, layout, first)
        tokens = count_tokens(prompt)
        if budget is None or tokens <= budget or first == len(pairs) - 1:
            kept = [{"role": role, "content": content} for user, answer in pairs[first:]
                    for role, content in (("user", user), ("assistant", answer)) if content is not None]
            return FittedConversation(head + kept, prompt, tokens, first, budget)
    raise ValueError("a conversation to answer needs a user message")


def split_reference(messages: Sequence[Mapping[str, str]]) -> tuple[list[Mapping[str, str]], str | None]:
    """``(question, reference)`` of a held-out conversation: the messages up to its last user message, and the
    answer that follows it (``None`` when the conversation ends on the question, unanswered)."""
    if messages[-1]["role"] == "assistant":
        return list(messages[:-1]), messages[-1]["content"]
    return list(messages), None


def entry_prompt(entry: Mapping[str, Any], style: PromptStyle | str = "alpaca",
                 layout: ConversationLayout | None = None) -> str:
    """The text a model is given to answer ``entry``. An Alpaca entry: its prompt in ``style``
    (:func:`~gpt_sft.data.prompts.format_prompt`, the book's: the model writes the response header itself). A
    conversation (a ``messages`` entry): every message before its last answer -- the system message and all earlier
    exchanges, each answer closed by ``<|endoftext|>`` -- then the answer's header, in ``layout`` (default: the
    style's); i.e. the training text up to the answer to its last user message, what ``apply_chat_template(...,
    add_generation_prompt=True)`` gives."""
    if "messages" not in entry:
        return format_prompt(entry, style)
    question, _ = split_reference(entry["messages"])
    return render_conversation(question, layout or conversation_layout(style))


def extract_answer(generated_text: str, prompt: str, layout: ConversationLayout) -> str:
    """The answer in ``generated_text`` (the :func:`entry_prompt` of a conversation and the model's continuation):
    the continuation up to the text that closes an answer in ``layout`` (chatml's ``<|im_end|>``; the others close
    it with the end-of-text alone, where generation stops), stripped."""
    text = generated_text[len(prompt):]
    closing = layout.assistant_tail.strip()
    return (text.split(closing, 1)[0] if closing else text).strip()


def conversation_chat_template(layout: ConversationLayout | PromptStyle | str = "alpaca") -> str:
    """The Jinja chat template of a checkpoint trained on conversations: ``apply_chat_template(messages,
    add_generation_prompt=True)`` is :func:`render_conversation` of them, i.e. the training text up to the next
    answer (each earlier answer closed by ``<|endoftext|>``, which the tokenizer reads as id 50256). A message
    list that is not a conversation (a role out of place or unknown, content that is not text) raises an error
    that says what is wrong."""
    if not isinstance(layout, ConversationLayout):
        layout = conversation_layout(layout)

    def fail(problem: str) -> str:
        return "{{ raise_exception(" + json.dumps(f"gpt-sft conversation ({layout.style} format): {problem}") + ") }}"

    system = (fail("this prompt style has no place for a system message") if layout.system_head is None
              else jinja_text(layout.system_head) + "{{ message['content'] }}" + jinja_text(layout.system_tail))
    return (
        "{%- set state = namespace(previous='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is not string -%}" + fail("every content must be text") + "{%- endif -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- if not loop.first -%}" + fail("a system message is allowed only first") + "{%- endif -%}" + system +
        "{%- elif message['role'] == 'user' -%}"
        "{%- if state.previous == 'user' -%}" + fail("two user messages in a row") + "{%- endif -%}"
        "{%- if loop.first -%}" + jinja_text(layout.opening) + "{%- endif -%}"
        + jinja_text(layout.user_head) + "{{ message['content'] }}" + jinja_text(layout.user_tail) +
        "{%- elif message['role'] == 'assistant' -%}"
        "{%- if state.previous != 'user' -%}" + fail("an assistant message must follow a user message") +
        "{%- endif -%}"
        + jinja_text(layout.assistant_head) + "{{ message['content'] }}" + jinja_text(layout.assistant_tail + END_OF_TEXT) +
        "{%- else -%}" + fail("roles are system, user and assistant") +
        "{%- endif -%}"
        "{%- set state.previous = message['role'] -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + jinja_text(layout.assistant_head) + "{%- endif -%}"
    )


__all__ = ["ALPACA_PREAMBLE", "ConversationLayout", "FittedConversation", "conversation_chat_template",
           "conversation_layout", "entry_prompt", "exchanges", "extract_answer", "fit_conversation",
           "render_conversation", "render_pieces", "split_reference"]
