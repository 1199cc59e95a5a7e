"""The book's judge prompt, and reading a score out of an untrusted reply.

The book's ``ollama_evaluate.py`` asks a judge model to score each response from 0 to 100 with a
fixed prompt and skips any reply that ``int()`` cannot parse. Real judges answer "The answer is 85."
or "Score: 7/10": :func:`parse_score` reads such replies by documented rules and refuses ambiguous
ones, so that nothing is guessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ..data.conversation_format import split_reference
from ..data.prompts import PromptStyle, format_prompt

#: The book's judge prompt (``ollama_evaluate.py``), verbatim.
JUDGE_PROMPT_TEMPLATE = (
    "Given the input `{prompt}` "
    "and correct output `{output}`, "
    "score the model response `{response}`"
    " on a scale from 0 to 100, where 100 is the best score. "
    "Respond with the integer number only."
)
# How a conversation's turns are named to the judge, one turn a line before the question. Plain names, not the
# model's prompt layout: its <|endoftext|> separators are special tokens to many judges' tokenizers.
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
NO_EARLIER_TURNS = "(none)"


def conversational(template: str, single_turn_question: str, conversation_question: str) -> str:
    """A judge template for conversations made from a single-turn one: its question about the input replaced by one
    about the earlier turns (``{history}``) and the last input; the reference, the response and the scoring
    instruction stay word for word."""
    if template.count(single_turn_question) != 1:
        raise ValueError(f"the judge template does not ask {single_turn_question!r} once: {template!r}")
    return template.replace(single_turn_question, conversation_question)


#: The book's judge prompt for a conversation: its earlier turns, then its last question where the book shows the
#: input, and the same reference, response and scoring instruction.
CONVERSATION_JUDGE_PROMPT_TEMPLATE = conversational(
    JUDGE_PROMPT_TEMPLATE, "Given the input `{prompt}` ",
    "Given a conversation's earlier turns `{history}`, its last input `{prompt}` ")


def conversation_fields(entry: Mapping[str, Any]) -> dict[str, str]:
    """What a conversation's judge prompt shows: ``history`` (the turns before its last question, one a line, as
    ``Role: content``), ``prompt`` (the last question as the user wrote it) and ``output`` (the answer that follows
    it, the reference)."""
    question, reference = split_reference(entry["messages"])
    if reference is None:
        raise ValueError("a conversation to score must end on an assistant turn, the reference answer")
    history = "\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in question[:-1])
    return {"history": history or NO_EARLIER_TURNS, "prompt": question[-1]["content"], "output": reference}


def reference_output(entry: Mapping[str, Any]) -> str:
    """The correct output a response is scored against: an Alpaca entry's ``output``, a conversation's last answer."""
    return conversation_fields(entry)["output"] if "messages" in entry else str(entry["output"])
_PARSE_LIMIT = 10_000  # characters of a judge reply that parse_score looks at
_SHORT_REPLY_WORDS = 6  # an uncued lone number anywhere in a reply this short is its score


def build_judge_prompt(entry: Mapping[str, Any], response: str, style: PromptStyle | str = "alpaca") -> str:
    """The exact prompt the book sends to the judge for ``entry`` and a model ``response``: the entry
    is shown as the model saw it, in its prompt ``style`` (the book's alpaca by default, where
    ``format_prompt`` is the book's ``format_input``, byte for byte). A conversation (a ``messages``
    entry) is asked about with :data:`CONVERSATION_JUDGE_PROMPT_TEMPLATE`."""
    if "messages" in entry:
        return CONVERSATION_JUDGE_PROMPT_TEMPLATE.format(**conversation_fields(entry), response=response)
    return JUDGE_PROMPT_TEMPLATE.format(prompt=format_prompt(entry, style), output=entry["output"], response=response)


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


