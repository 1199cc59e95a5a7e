"""How the judge is asked, and how its reply is read: the book's prompt, structured output, a rubric.

* ``book`` -- the book's prompt verbatim, the reply read by :func:`~.prompt.parse_score`: for parity
  with the book's published scores (a large judge such as Llama 3 8B answers with a bare integer).
* ``structured`` (the default) -- the book's question, but the reply is constrained to the JSON
  object ``{"score": <integer 0-100>}`` by the backend's structured-output feature (a JSON schema in
  ``response_format`` for llama.cpp and vLLM, Ollama's ``format``, constrained decoding in the HF
  judge). A small judge that rambles under the book's prompt ("The answer is ...") then always answers.
* ``rubric`` -- a 1-5 scale with each level described, also structured. Small judges are less noisy
  with a few labelled levels than with 101 unlabelled ones; prefer it for judges under ~1B parameters,
  or when scores should be comparable across judges. Its scores are on 1-5, not 0-100.

A reply is untrusted text: a score is taken only from a JSON object with an integer ``score`` in the
mode's range, or, when the backend could not constrain the reply, read by the documented text rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..data.prompts import PromptStyle, format_prompt
from .prompt import (CONVERSATION_JUDGE_PROMPT_TEMPLATE, JUDGE_PROMPT_TEMPLATE, conversation_fields, conversational,
                     parse_score)

STRUCTURED_PROMPT_TEMPLATE = JUDGE_PROMPT_TEMPLATE.replace(
    "Respond with the integer number only.", 'Respond with a JSON object {{"score": <integer 0-100>}}.')
STRUCTURED_CONVERSATION_PROMPT_TEMPLATE = CONVERSATION_JUDGE_PROMPT_TEMPLATE.replace(
    "Respond with the integer number only.", 'Respond with a JSON object {{"score": <integer 0-100>}}.')

RUBRIC_PROMPT_TEMPLATE = (
    "You grade a model's response to an instruction.\n\n"
    "Instruction:\n{prompt}\n\n"
    "Correct output:\n{output}\n\n"
    "Model response:\n{response}\n\n"
    "Is the model response correct? Grade it on this scale:\n"
    "1 = wrong, off the task, or empty\n"
    "2 = wrong, but about the task\n"
    "3 = partly correct\n"
    "4 = correct, with small flaws\n"
    "5 = correct and complete, as good as the correct output\n"
    'Respond with a JSON object {{"score": <integer 1-5>}}.'
)
RUBRIC_CONVERSATION_PROMPT_TEMPLATE = conversational(
    RUBRIC_PROMPT_TEMPLATE.replace("a model's response to an instruction", "a model's response to the last "
                                   "instruction of a conversation"),
    "Instruction:\n{prompt}\n\n", "Earlier turns of the conversation:\n{history}\n\nLast instruction:\n{prompt}\n\n")


def score_schema(low: int, high: int) -> dict[str, Any]:
    """The JSON schema of ``{"score": <integer low..high>}``. The range is an ``enum``: llama.cpp's
    schema-to-grammar conversion ignores ``minimum``/``maximum`` (SmolLM2 answered ``{"score": 200}``)."""
    return {"type": "object", "properties": {"score": {"type": "integer", "enum": list(range(low, high + 1))}},
            "required": ["score"], "additionalProperties": False}


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_json_field(reply: str, field: str) -> Any:
    """``reply``'s JSON object's ``field`` (the first ``{...}`` in the reply), else ``None``."""
    match = _JSON_OBJECT.search(reply or "")
    if match is None:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    return value.get(field) if isinstance(value, dict) else None


@dataclass(frozen=True)
class JudgeMode:
    """One way to ask: the prompt template (``{prompt}``, ``{output}``, ``{response}``), the score range,
    and whether the reply is constrained to :func:`score_schema`; ``conversation_template`` asks the same about
    a conversation (``{history}``: its earlier turns, ``{prompt}``: its last question)."""

    name: str
    template: str
    low: int
    high: int
    structured: bool
    conversation_template: str

    @property
    def schema(self) -> dict[str, Any] | None:
        return score_schema(self.low, self.high) if self.structured else None

    def prompt(self, entry: Mapping[str, Any], response: str, style: PromptStyle | str = "alpaca") -> str:
        """The question for ``entry`` and the model's ``response``; the entry as the model saw it, a conversation as
        its turns (:func:`~.prompt.conversation_fields`)."""
        if "messages" in entry:
            return self.conversation_template.format(**conversation_fields(entry), response=response)
        return self.template.format(prompt=format_prompt(entry, style), output=entry["output"], response=response)

    def parse(self, reply: str) -> int | None:
        """The score in ``reply``, or ``None``: a JSON ``score`` (an integer in range), else the text
        rules (for the book's 0-100 scale; a lone integer in range for other scales)."""
        value = parse_json_field(reply, "score") if self.structured else None
        if isinstance(value, bool):
            value = None
        if isinstance(value, int) and self.low <= value <= self.high:
            return value
        if isinstance(value, float) and value.is_integer() and self.low <= value <= self.high:
            return int(value)
        if (self.low, self.high) == (0, 100):
            return parse_score(reply)
        numbers = re.findall(r"(?<![\w.])[0-9]+(?![\w.])", reply or "")
        inside = {int(n) for n in numbers if self.low <= int(n) <= self.high}
        return inside.pop() if len(inside) == 1 else None


MODES: dict[str, JudgeMode] = {
    "book": JudgeMode("book", JUDGE_PROMPT_TEMPLATE, 0, 100, structured=False,
                      conversation_template=CONVERSATION_JUDGE_PROMPT_TEMPLATE),
    "structured": JudgeMode("structured", STRUCTURED_PROMPT_TEMPLATE, 0, 100, structured=True,
                            conversation_template=STRUCTURED_CONVERSATION_PROMPT_TEMPLATE),
    "rubric": JudgeMode("rubric", RUBRIC_PROMPT_TEMPLATE, 1, 5, structured=True,
                        conversation_template=RUBRIC_CONVERSATION_PROMPT_TEMPLATE),
}


def get_mode(name: str) -> JudgeMode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"--prompt must be one of {', '.join(MODES)}, got {name!r}") from None



__all__ = ["MODES", "RUBRIC_CONVERSATION_PROMPT_TEMPLATE", "RUBRIC_PROMPT_TEMPLATE",
           "STRUCTURED_CONVERSATION_PROMPT_TEMPLATE", "STRUCTURED_PROMPT_TEMPLATE", "JudgeMode", "get_mode",
           "parse_json_field", "score_schema"]
