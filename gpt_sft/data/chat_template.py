"""A prompt style as a Hugging Face chat template, saved with every checkpoint's tokenizer.

The book's format is single-turn: one instruction, with an optional input. The template takes
one user message -- its ``content`` is the instruction, an optional ``input`` key the entry's input --
optionally after one system message, whose content is then the input (the only second field that
OpenAI-compatible servers and Ollama pass through), and renders
:func:`~gpt_sft.data.prompts.format_prompt` of that entry character for character;
with ``add_generation_prompt=True`` the style's response header follows, so that
``pipeline(messages)`` answers with the bare response. Anything else raises an error naming the format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .prompts import PromptStyle, get_prompt_style


_INSTRUCTION_MARK = "\x00gpt-sft-instruction\x00"
_INPUT_MARK = "\x00gpt-sft-input\x00"
_OUTPUT_MARK = "\x00gpt-sft-output\x00"
_SINGLE_TURN = (
    "gpt-sft models follow the book's single-turn format: pass one message, "
    "{'role': 'user', 'content': <instruction>} (an optional 'input' key, or a system message before it, is the "
    "entry's input); a conversation with history cannot be formatted"
)


def jinja_text(text: str) -> str:
    """``text`` as a Jinja expression that prints it verbatim (a string literal, so the
    ``trim_blocks``/``lstrip_blocks`` of transformers' chat-template environment cannot touch it)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _split_once(text: str, mark: str, style: str) -> tuple[str, str]:
    before, found, after = text.partition(mark)
    if not found or mark in after:
        raise ValueError(f"prompt style {style!r} does not place its fields verbatim, so it has no chat template")
    return before, after


@dataclass(frozen=True)
class PromptParts:
    """A style's prompt as fixed text around its fields, for any template language:
    ``plain_head + instruction + plain_tail`` without an input, ``input_head + instruction +
    input_middle + input + input_tail`` with one, ``header``: the response's text before the output, and ``trailer``:
    its text after the output (chatml's ``<|im_end|>\\n``; empty for the book's styles)."""

    plain_head: str
    plain_tail: str
    input_head: str
    input_middle: str
    input_tail: str
    header: str
    trailer: str = ""


def prompt_parts(style: PromptStyle | str = "alpaca") -> PromptParts:
    """The fixed text of ``style`` around the instruction, the input and the output.

    Raises:
        ValueError: a style whose prompt is a function that does not place the fields verbatim, or whose
            response does not end with the output.
    """
    resolved = get_prompt_style(style)
    plain = resolved.format_prompt({"instruction": _INSTRUCTION_MARK, "input": ""})
    with_input = resolved.format_prompt({"instruction": _INSTRUCTION_MARK, "input": _INPUT_MARK})
    plain_head, plain_tail = _split_once(plain, _INSTRUCTION_MARK, resolved.name)
    input_head, rest = _split_once(with_input, _INSTRUCTION_MARK, resolved.name)
    input_middle, input_tail = _split_once(rest, _INPUT_MARK, resolved.name)
    response = resolved.format_response({"instruction": _INSTRUCTION_MARK, "input": "", "output": _OUTPUT_MARK})
    header, trailer = _split_once(response, _OUTPUT_MARK, resolved.name)
    if _INSTRUCTION_MARK in header + trailer:
        raise ValueError(f"prompt style {resolved.name!r}: its response repeats the instruction, "
                         "so it has no chat template")
    return PromptParts(plain_head, plain_tail, input_head, input_middle, input_tail, header, trailer)


def chat_template(style: PromptStyle | str = "alpaca") -> str:
    """A Jinja chat template for ``tokenizer.chat_template`` that renders a style's prompt.

    It takes one user message: its ``content`` is the instruction and an optional ``input`` key (or the
    content of a system message before it) the entry's input. ``apply_chat_template(messages,
    tokenize=False)`` is then exactly :func:`format_prompt` of that entry (what the book generates from);
    with ``add_generation_prompt=True`` the style's response header follows (alpaca
    ``"\\n\\n### Response:\\n"``), i.e. the training text up to the output, so that ``pipeline(messages)``
    answers with the bare response. More messages or non-text content raise an error naming the format.

    Raises:
        ValueError: a style whose prompt is a function that does not place the fields verbatim.
    """
    parts = prompt_parts(style)
    fail = "{{ raise_exception(" + json.dumps(_SINGLE_TURN) + ") }}"
    return (
        "{%- set system = messages | length == 2 and messages[0]['role'] == 'system' -%}"
        "{%- set entry = messages[-1] -%}"
        "{%- if messages | length not in (1, 2) or (messages | length == 2 and not system) or entry['role'] != 'user'"
        " or entry['content'] is not string or (system and (messages[0]['content'] is not string or "
        "(entry['input'] is defined and entry['input']))) -%}"
        + fail + "{%- endif -%}"
        "{%- set input = messages[0]['content'] if system else (entry['input'] if entry['input'] is defined else '') -%}"
        "{%- if input -%}"
        + jinja_text(parts.input_head) + "{{ entry['content'] }}" + jinja_text(parts.input_middle) + "{{ input }}"
        + jinja_text(parts.input_tail)
        + "{%- else -%}"
        + jinja_text(parts.plain_head) + "{{ entry['content'] }}" + jinja_text(parts.plain_tail)
        + "{%- endif -%}"
        "{%- if add_generation_prompt -%}" + jinja_text(parts.header) + "{%- endif -%}"
    )
