"""Conversation data: the ``messages`` and ShareGPT formats, how a format is detected, and what a valid conversation is.

A ``messages`` entry (the OpenAI / Hugging Face format) has a list ``messages`` of ``{"role", "content"}`` objects,
roles ``system``, ``user`` and ``assistant``. A ShareGPT entry has a list ``conversations`` of ``{"from", "value"}``
objects, with ``system``, ``human`` and ``gpt``; it is converted to a ``messages`` entry once, when it is loaded,
and nothing later sees ShareGPT. Other fields of an entry are kept.

A valid conversation: an optional system message first, then user and assistant messages taking turns, starting
with a user message, with at least one assistant message; every content a non-empty string without
``<|endoftext|>``. How it may end depends on what it is read for (``purpose``): training data, and responses to be
scored, end on an assistant message (there is nothing to learn after a question, and the last answer is the
reference a response is scored against); a conversation to be answered (``gpt-sft generate --data``) may instead end
on a user message, the question, when there is no reference (then it needs no assistant message at all). A bad
entry raises one :class:`~gpt_sft.data.validate.InstructionDataError` naming the source, the entry and the turn
(0-based, as in the file); ``skip_invalid`` counts and skips it (:func:`~gpt_sft.data.validate.validate_entries`).

Preference pairs in TRL's conversational format: ``prompt``, the conversation up to a question (a list of messages
ending on a user message), and ``chosen`` and ``rejected``, each a list of one assistant message. A pair is loaded as
the conversation of its prompt and chosen answer (``messages``) and the rejected answer's text (``rejected``), so
that held-out pairs are held-out conversations like any other (the chosen answer is the reference).

A bad entry raises one :class:`~gpt_sft.data.validate.InstructionDataError` naming the source, the entry and the
turn (0-based, as in the file); ``skip_invalid`` counts and skips it (:func:`~gpt_sft.data.validate.validate_entries`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .validate import END_OF_TEXT, UnparsableLine, json_type_name

DATA_FORMATS = ("auto", "alpaca", "messages", "sharegpt")
CONVERSATION_FORMATS = ("messages", "sharegpt")
# What a conversation is read for: it decides how it may end (see the module docstring)
PURPOSES = ("training", "generation", "evaluation")
_MUST_END_ON_AN_ANSWER = {"training": "training data must end on an assistant turn, not a user turn",
                          "evaluation": "a conversation to score must end on an assistant turn, the reference answer"}
ROLES = ("system", "user", "assistant")
PREFERENCE_SIDES = ("chosen", "rejected")
# ShareGPT's names for the roles, and the keys of one of its turns
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
_KEYS = {"messages": ("messages", "role", "content"), "sharegpt": ("conversations", "from", "value")}


def _role_names(data_format: str) -> dict[str, str]:
    """The format's role names -> ours."""
    return SHAREGPT_ROLES if data_format == "sharegpt" else {role: role for role in ROLES}


def detect_format(first: Any, columns: Sequence[str] | None = None) -> str:
    """``alpaca``, ``messages`` or ``sharegpt``: what the first entry (or a data set's columns) holds. An entry with
    an ``instruction`` is Alpaca data whatever else it has; TRL's conversational pairs (``prompt``, or ``chosen``
    without an instruction) are ``messages``; anything unrecognisable is left to Alpaca's validation, whose errors
    say what an entry needs."""
    keys = _keys(first, columns)
    if "instruction" in keys:
        return "alpaca"
    for name, (list_key, _, _) in _KEYS.items():
        if list_key in keys:
            return name
    return "messages" if holds_pairs(first, columns) else "alpaca"


def _keys(first: Any, columns: Sequence[str] | None) -> set:
    return set(columns) if columns is not None else set(first) if isinstance(first, Mapping) else set()


def holds_pairs(first: Any, columns: Sequence[str] | None = None) -> bool:
    """Whether conversational data holds TRL's preference pairs rather than conversations: a ``prompt`` or a
    ``chosen`` field, and no ``messages`` or ``instruction``."""
    keys = _keys(first, columns)
    return not keys & {"messages", "instruction"} and bool(keys & {"prompt", "chosen"})


def resolve_format(data_format: str, first: Any, columns: Sequence[str] | None = None) -> str:
    """``data_format``, or with ``auto`` the detected one."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"--data-format {data_format!r}: choose from {', '.join(DATA_FORMATS)}")
    return detect_format(first, columns) if data_format == "auto" else data_format


def conversation_problem(entry: Any, data_format: str, purpose: str = "training",
                         turn_name: Callable[[int], str] = "turn {}".format) -> tuple[str, str] | None:
    """``(reason, message)`` if ``entry`` is not a valid conversation of ``data_format`` (``messages`` or
    ``sharegpt``) for ``purpose`` (``training``, ``generation`` or ``evaluation``), else ``None``. The message names
    the turn, as ``turn_name`` of its index puts it."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}: choose from {', '.join(PURPOSES)}")
    list_key, role_key, content_key = _KEYS[data_format]
    roles = _role_names(data_format)
    if isinstance(entry, UnparsableLine):
        return "not valid JSON", entry.message
    if not isinstance(entry, Mapping):
        return "not an object", f"expected an object with {list_key!r}, got {json_type_name(entry)}"
    turns = entry.get(list_key)
    if not isinstance(turns, list) or not turns:
        found = "is missing" if list_key not in entry else f"is {json_type_name(turns)}" if turns != [] else "is empty"
        return f"no '{list_key}'", f"field {list_key!r} {found}; a {data_format} entry needs a non-empty list of turns"
    previous = None
    for t, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            return "turn not an object", f"{turn_name(t)}: expected an object with {role_key!r} and {content_key!r}, " \
                                         f"got {json_type_name(turn)}"
        raw_role, content = turn.get(role_key), turn.get(content_key)
        role = roles.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            return "unknown role", f"{turn_name(t)}: unknown {role_key!r} {raw_role!r} (expected one of " \
                                   f"{', '.join(roles)})"
        if not isinstance(content, str):
            return "content not a string", f"{turn_name(t)}: {content_key!r} must be a string, got " \
                                           f"{json_type_name(content)}"
        if not content.strip():
            return "empty content", f"{turn_name(t)}: {content_key!r} is empty"
        if END_OF_TEXT in content:
            return f"'{END_OF_TEXT}' in content", f"{turn_name(t)}: {content_key!r} contains '{END_OF_TEXT}', GPT-2's " \
                                                  "end-of-text/padding token; remove it"
        if role == "system" and t > 0:
            return "system message not first", f"{turn_name(t)}: a system message is allowed only as the first turn"
        if role == "user" and previous == "user":
            return "two user turns in a row", f"{turn_name(t)}: two user turns in a row (turns {t - 1} and {t})"
        if role == "assistant" and previous != "user":
            return "assistant turn without a question", f"{turn_name(t)}: an assistant turn must follow a user turn"
        previous = role
    # a question alone is something to answer, though nothing to learn from or score
    if "assistant" not in {roles.get(turn.get(role_key)) for turn in turns} and not (
            purpose == "generation" and previous == "user"):
        return "no assistant turn", "the conversation has no assistant turn"
    if previous == "user" and purpose in _MUST_END_ON_AN_ANSWER:
        return "ends on a user turn", f"{turn_name(len(turns) - 1)}: {_MUST_END_ON_AN_ANSWER[purpose]}"
    return None


def question_problem(messages: Any) -> str | None:
    """Why ``messages`` is not a conversation to answer (a chat's history and its new message: valid, ending on a
    user message, no answer yet needed), else ``None``. The message names the turn."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {'role', 'content'} objects"
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        return f"turn {len(messages) - 1}: the last message must be the user's, the one to answer"
    problem = conversation_problem({"messages": messages}, "messages", purpose="generation")
    return problem[1] if problem else None


def to_messages(entry: Mapping[str, Any], data_format: str) -> dict[str, Any]:
    """A valid entry in the ``messages`` format: its turns as ``{"role", "content"}`` (only those keys), its other
    fields kept. ShareGPT's ``conversations`` becomes ``messages``."""
    list_key, role_key, content_key = _KEYS[data_format]
    roles = _role_names(data_format)
    messages = [{"role": roles[turn[role_key]], "content": turn[content_key]} for turn in entry[list_key]]
    return {"messages": messages, **{k: v for k, v in entry.items() if k not in (list_key, "messages")}}


def preference_problem(entry: Any) -> tuple[str, str] | None:
    """``(reason, message)`` if ``entry`` is not a valid conversational preference pair, else ``None``. The message
    names the field and the turn: ``'prompt' turn 2: ...``, ``'chosen': ...``."""
    if isinstance(entry, UnparsableLine):
        return "not valid JSON", entry.message
    if not isinstance(entry, Mapping):
        return "not an object", f"expected an object with 'prompt', 'chosen' and 'rejected', got {json_type_name(entry)}"
    prompt = entry.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        found = "is missing" if "prompt" not in entry else f"is {json_type_name(prompt)}" if prompt != [] else "is empty"
        return "no 'prompt'", f"field 'prompt' {found}; a conversational preference pair needs the conversation up to " \
                              "its question as 'prompt' (a list of messages), and one assistant message as 'chosen' " \
                              "and as 'rejected' (TRL's explicit-prompt format)"
    found = conversation_problem({"messages": prompt}, "messages", purpose="generation",
                                 turn_name="'prompt' turn {}".format)
    if found is not None and found[0] != "no assistant turn":  # a prompt may well be one question
        return found
    if prompt[-1]["role"] != "user":
        return "prompt not ending on a user turn", f"'prompt' turn {len(prompt) - 1}: the prompt must end on a user " \
                                                   "turn, the question that 'chosen' and 'rejected' answer"
    for side in PREFERENCE_SIDES:
        answer = entry.get(side)
        one = isinstance(answer, list) and len(answer) == 1 and isinstance(answer[0], Mapping)
        if not one or answer[0].get("role") != "assistant":
            got = (f"a message with role {answer[0].get('role')!r}" if one else f"{len(answer)} messages"
                   if isinstance(answer, list) else json_type_name(answer))
            return f"'{side}' not one assistant message", f"field '{side}' must be a list of one assistant message " \
                                                          f"([{{\"role\": \"assistant\", \"content\": ...}}]), got {got}"
        # the answer checked as the reply to the prompt's question
        found = conversation_problem({"messages": [prompt[-1], answer[0]]}, "messages", turn_name=lambda t: f"'{side}'")
        if found is not None:
            return found
    return None


def pair_to_messages(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A valid conversational pair as loaded: ``messages``, its prompt and chosen answer; ``rejected``, the rejected
    answer's text; its other fields kept."""
    messages = [{"role": m["role"], "content": m["content"]} for m in [*entry["prompt"], *entry["chosen"]]]
    return {"messages": messages, "rejected": entry["rejected"][0]["content"],
            **{k: v for k, v in entry.items() if k not in ("prompt", "chosen", "rejected", "messages")}}


__all__ = ["CONVERSATION_FORMATS", "DATA_FORMATS", "PREFERENCE_SIDES", "PURPOSES", "ROLES", "SHAREGPT_ROLES",
           "conversation_problem", "detect_format", "holds_pairs", "pair_to_messages", "preference_problem",
           "question_problem", "resolve_format", "to_messages"]
