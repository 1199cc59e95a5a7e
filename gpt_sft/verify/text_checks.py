"""The checks of a checkpoint's text side: its tokenizer against tiktoken, its chat template against the training
format. Both read the run's held-out entries, written exactly as training wrote them (:func:`training_text`), and
count the entries that differ: a count of 0 passes, and the first difference is named.
"""

from __future__ import annotations

from ..common.tokens import END_OF_TEXT
from ..data.chat_template import prompt_parts
from ..data.conversation_format import render_conversation, split_reference
from ..data.prompts import format_text
from ..model.tokenizer import get_tokenizer
from .check import AT_MOST, Check, skipped
from .subject import Subject

TOKENIZER, TEMPLATE = "tokenizer", "chat template"
CONTEXT = 24  # characters shown on each side of the first difference of two texts
TOKENS_SHOWN = 3  # tokens shown from the first difference of two token lists


def training_text(subject: Subject, entry: dict) -> str:
    """An entry as training tokenized it, its end-of-text written out (the tokenizer reads it as 50256): a
    conversation in the run's layout, each answer closed by it; an instruction as prompt and response, then it."""
    if subject.layout is not None:
        return render_conversation(entry["messages"], subject.layout)
    return format_text(entry, subject.style)[1] + END_OF_TEXT


def first_difference(got: str, expected: str) -> str:
    """Where two texts part: ``at character 12: '...got...' vs '...expected...'``."""
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    start = max(0, at - CONTEXT)
    return f"at character {at}: {got[start:at + CONTEXT]!r} vs {expected[start:at + CONTEXT]!r}"


def first_token_difference(got: list[int], expected: list[int]) -> str:
    """Where two token lists part, with the text of the tokens from there: ``at token 4: [220, 5562] ' that' vs
    [326] ' that'``."""
    at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    decode = get_tokenizer().decode

    def shown(ids: list[int]) -> str:
        part = ids[at:at + TOKENS_SHOWN]
        return f"{part} {decode(part)!r}"

    return f"at token {at}: {shown(got)} vs {shown(expected)}"


def tokenizer_check(subject: Subject, entries: list[dict]) -> Check:
    """The checkpoint's tokenizer (``AutoTokenizer``, as a user of the folder gets it) against tiktoken's ``gpt2``
    encoding (the book's tokenizer, what training used) on the held-out entries' training texts."""
    name = "ids vs tiktoken gpt2 (texts differing)"
    on = f"{len(entries)} held-out training texts, <|endoftext|> included"
    if subject.tokenizer is None:
        return Check(TOKENIZER, name, None, 0, detail=subject.tokenizer_error)
    if not entries:
        return skipped(TOKENIZER, name, subject.data_error)
    tiktoken = get_tokenizer()
    differing, detail = 0, ""
    for index, entry in enumerate(entries):
        text = training_text(subject, entry)
        ours, expected = subject.tokenizer(text)["input_ids"], tiktoken.encode(text, allowed_special={END_OF_TEXT})
        if ours != expected:
            differing += 1
            detail = detail or f"held-out entry {index}: {first_token_difference(ours, expected)} (tiktoken)"
    return Check(TOKENIZER, name, differing, 0, AT_MOST, f"{on}; {detail}" if detail else on)


def rendered_and_expected(subject: Subject, entry: dict) -> list[tuple[list[dict], bool, str]]:
    """``(messages, add_generation_prompt, the training text it must render)`` for one held-out entry. A
    conversation: its question (every message up to its last answer) with the answer's header, and the whole
    conversation. An instruction: its user message (the entry's input in the ``input`` key) with and without the
    response's header, and, for an entry with an input, that input as a system message before it."""
    if subject.layout is not None:
        question, _ = split_reference(entry["messages"])
        return [(question, True, render_conversation(question, subject.layout)),
                (entry["messages"], False, render_conversation(entry["messages"], subject.layout))]
    prompt, _ = format_text(entry, subject.style)
    header = prompt_parts(subject.style).header
    user = {"role": "user", "content": entry["instruction"]}
    cases = [([{**user, "input": entry.get("input") or ""}], True, prompt + header),
             ([{**user, "input": entry.get("input") or ""}], False, prompt)]
    if entry.get("input"):
        cases.append(([{"role": "system", "content": entry["input"]}, user], True, prompt + header))
    return cases


def template_check(subject: Subject, entries: list[dict]) -> Check:
    """``apply_chat_template`` of the checkpoint's tokenizer (what a Hugging Face pipeline, a server or Ollama
    formats a chat with) against the training text of each held-out entry (:func:`rendered_and_expected`)."""
    kind = "conversations" if subject.conversational else "entries"
    name = f"apply_chat_template vs the training format ({kind} differing)"
    on = f"{len(entries)} held-out {kind}"
    if subject.tokenizer is None:
        return Check(TEMPLATE, name, None, 0, detail=subject.tokenizer_error)
    if not entries:
        return skipped(TEMPLATE, name, subject.data_error)
    try:
        prompt_parts(subject.style)
    except ValueError as err:  # a style of functions: no template can be made for it, none to check
        return skipped(TEMPLATE, name, str(err))
    if not subject.tokenizer.chat_template:
        return Check(TEMPLATE, name, None, 0, detail=f"{subject.folder}: the tokenizer has no chat template "
                                                    "(gpt-sft refresh-code adds its recipe's)")
    differing, detail = 0, ""
    for index, entry in enumerate(entries):
        for messages, generation_prompt, expected in rendered_and_expected(subject, entry):
            try:
                rendered = subject.tokenizer.apply_chat_template(messages, tokenize=False,
                                                                 add_generation_prompt=generation_prompt)
                problem = "" if rendered == expected else first_difference(rendered, expected)
            except Exception as err:  # noqa: BLE001 - the template's own raise_exception, or a broken template
                problem = f"the template raised {type(err).__name__}: {err}"
            if problem:
                differing += 1
                which = "with" if generation_prompt else "without"
                count = f"{len(messages)} message{'s' if len(messages) > 1 else ''}"
                detail = detail or f"held-out entry {index} ({count}, {which} the generation prompt): {problem}"
                break
    return Check(TEMPLATE, name, differing, 0, AT_MOST, f"{on}; {detail}" if detail else on)


__all__ = ["TEMPLATE", "TOKENIZER", "first_difference", "first_token_difference", "template_check", "tokenizer_check",
           "training_text"]
