"""Magpie-style instruction generation: an instruction-tuned model, sent only its chat template's user header as a
raw completion, writes a user's instruction itself; asked that instruction through chat, it writes the response.

The header is the text a chat template puts before a user's message ("<|im_start|>user\\n" for ChatML). It comes
from the served model's template (llama.cpp's ``/props``, Ollama's ``/api/show``, the tokenizer of the ``hf``
backend) or from the user. The instruction ends where the model would end its user turn: the template's end-of-turn
marker is the completion's stop string and is cut off the reply.

Replies are untrusted text read by ``make-preferences``' rules (:func:`.preferences.read_rewrite`): an empty,
over-long or ``<|endoftext|>``-carrying instruction or response is refused, so is an instruction an earlier entry
already has (case and spacing aside: ``repeated``), one cut off by the token limit before the model ended its turn
(``unfinished``) and a response that is its instruction again (``unchanged``).
The asking, the cache and the runner are :func:`.preferences.ask_rewrites`'. Every requested entry ends valid or
with a reason.

The reflection pass (``reflect=True``) asks the model to critique and rewrite each kept instruction, then the
response (to the rewritten instruction when that one passed); a rewrite replaces the original only if it passes the
same checks, and a rewritten instruction only together with a response to it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .http import Judge
from .preferences import UNCHANGED, RewriteRun, ask_rewrites, read_rewrite, rewrite_key

SENTINEL = "GPT_SFT_USER_MESSAGE_7f3a"  # the user's message while a template is rendered: the header is before it
REPEATED = "repeated"
UNFINISHED = "unfinished"  # the raw completion hit the token limit before the end of the user's turn
# end-of-turn markers of the template families whose user header is recognisable
KNOWN_END_OF_TURN = {"<|im_start|>": "<|im_end|>", "<|start_header_id|>": "<|eot_id|>",
                     "<start_of_turn>": "<end_of_turn>", "[INST]": "[/INST]"}
REFLECT_SCHEMA = {"type": "object", "properties": {"critique": {"type": "string"},
                                                   "rewrite": {"type": "string", "minLength": 1}},
                  "required": ["critique", "rewrite"], "additionalProperties": False}
REFLECT_INSTRUCTION_TEMPLATE = (
    "Here is an instruction a user gave an AI assistant.\n\n### Instruction:\n{instruction}\n\n"
    "Critique it: is it clear, specific and answerable? Then rewrite it to be better. Reply with a JSON object with "
    "your critique in its \"critique\" field and the improved instruction in its \"rewrite\" field.")
REFLECT_RESPONSE_TEMPLATE = (
    "Here is an instruction and an AI assistant's response.\n\n### Instruction:\n{instruction}\n\n"
    "### Response:\n{response}\n\nCritique the response: is it correct, complete and helpful? Then rewrite it to be "
    "better. Reply with a JSON object with your critique in its \"critique\" field and the improved response in its "
    "\"rewrite\" field.")


def render_header(template: str, system: str | None = None) -> tuple[str, str]:
    """``(user header, end-of-turn marker)`` of a Jinja chat template (Hugging Face's, as llama.cpp serves it): the
    template renders a user message (after ``system``'s, if given) that is a sentinel; the header is the text before
    it, the marker the first line after it. The template is untrusted text: rendered in Jinja's sandbox, with empty
    BOS/EOS tokens (a server adds BOS itself)."""
    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
    try:
        text = env.from_string(template).render(messages=messages, add_generation_prompt=False, bos_token="",
                                                eos_token="")
    except Exception as err:  # any failure of an untrusted template is "no header from it"
        raise ValueError(f"the chat template could not be rendered ({type(err).__name__}: {err})") from None
    if text.count(SENTINEL) != 1 or system and system not in text.split(SENTINEL)[0]:
        raise ValueError("the chat template does not show the user's message (and the system prompt) once")
    header, after = text.split(SENTINEL)
    return header, (after.strip().splitlines() or [""])[0]


def go_template_header(template: str) -> tuple[str, str]:
    """``(user header, end-of-turn marker)`` of an Ollama (Go) template, as far as plain text shows them: the
    literal text right before the user's message (``{{ .Prompt }}``, or the ``{{ .Content }}`` after the first
    ``"user"``) back to the previous action, and the first line of the literal text after it."""
    action = r"\{\{-?\s*\.(?:Prompt|Content)\s*-?\}\}"
    prompt = re.search(r"\{\{-?\s*\.Prompt\s*-?\}\}", template)
    user = template.find('"user"')
    found = prompt or (re.compile(action).search(template, user) if user >= 0 else None)
    if found is None:
        raise ValueError("the Ollama template has no {{ .Prompt }} or user {{ .Content }}")
    before = template[: found.start()]
    header = before[before.rfind("}}") + 2 if "}}" in before else 0:]
    after = template[found.end():]
    after = after[: after.find("{{")] if "{{" in after else after
    if found.group(0).startswith("{{-"):
        header = header.rstrip()
    return header, (after.strip().splitlines() or [""])[0]


def known_end_of_turn(header: str) -> str | None:
    """The end-of-turn marker of a recognised template family's ``header``."""
    return next((end for start, end in KNOWN_END_OF_TURN.items() if start in header), None)


def normalised(text: str) -> str:
    return " ".join(text.lower().split())


@dataclass
class GenerationReport:
    """The entries made (the book's format, in index order) and what became of every requested one."""

    kept: list[dict[str, str]] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)  # per index: status, reason, replies
    runs: list[RewriteRun] = field(default_factory=list)
    questions: int = 0

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["status"] != "kept"]

    def summary(self) -> dict[str, Any]:
        reasons = Counter(e["reason"] for e in self.failed)
        reflected = Counter(e["reflection"] for e in self.entries if e.get("reflection"))
        stopped = next((run.stopped for run in self.runs if run.stopped), None)
        return {"requested": len(self.entries), "kept": len(self.kept), "refused": len(self.failed),
                "reasons": dict(sorted(reasons.items())), "reflection": dict(sorted(reflected.items())),
                "questions": self.questions, "cached": sum(run.cached for run in self.runs),
                "asked": sum(run.asked for run in self.runs), "stopped": stopped}


def generate_entries(judge: Judge, header: str, end_of_turn: str, n: int, *, seed: int, max_chars: int,
                     reflect: bool = False, parse_retries: int = 0, **asking: Any) -> GenerationReport:
    """Make ``n`` entries with ``judge`` (see the module). ``asking``: :func:`.preferences.ask_rewrites`' options
    (``cache_path``, ``concurrency``, ``retry_failed``, ``max_consecutive_failures``, ``progress``). Entry ``i``'s
    instruction is sampled with seed ``seed + i`` (and ``+ n`` for each request made for it before: parse retries,
    ``retry_failed``), so each differs and a rerun asks the same questions: its cache key holds the header, the
    marker, ``i`` and the generation settings."""
    report = GenerationReport(questions=n)
    key_of = rewrite_key(judge, None)
    keys = [key_of(f"\x00magpie instruction\x00{header}\x00{end_of_turn}\x00{i}") for i in range(n)]
    index_of = {key: i for i, key in enumerate(keys)}

    def ask_instruction(key: str, attempt: int) -> str:
        return judge.complete(header, stop=[end_of_turn], seed=seed + index_of[key] + n * attempt)

    def read_instruction(reply: str, reply_chars: int | None, _original: str):
        cut = reply.split(end_of_turn, 1)[0]
        whole = reply_chars if reply_chars is not None and reply_chars > len(reply) else None  # a cut cached copy
        text, reason, detail = read_rewrite(cut, whole, "", max_chars, json_field=None, refuse_numbers=False)
        if text is not None and end_of_turn not in reply:  # the backend appends it to a turn the model ended
            return None, UNFINISHED, f"no {end_of_turn} within --max-tokens: the instruction was cut off"
        return text, reason, detail

    run = ask_rewrites(dict.fromkeys(keys, header), dict.fromkeys(keys, ""), judge, schema=None, max_chars=max_chars,
                       ask=ask_instruction, read=read_instruction, parse_retries=parse_retries,
                       desc="Generating instructions", **asking)
    report.runs.append(run)
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        outcome = run.outcome(key)
        entry = {"index": i, "status": "kept", "reason": None, "instruction": _record(outcome)}
        report.entries.append(entry)
        if outcome.text is None:
            entry.update(status="failed", reason=f"instruction: {outcome.reason}")
        elif normalised(outcome.text) in seen:
            entry.update(status="failed", reason=f"instruction: {REPEATED}")
            entry["instruction"].update(reason=REPEATED,
                                        detail=f"entry {seen[normalised(outcome.text)]}'s instruction again")
        else:
            seen[normalised(outcome.text)] = i
            entry["text"] = {"instruction": outcome.text}

    def plain(reply: str, reply_chars: int | None, original: str):
        return read_rewrite(reply, reply_chars, original, max_chars, json_field=None, refuse_numbers=False)

    asked = {i: e["text"]["instruction"] for i, e in enumerate(report.entries) if e["status"] == "kept"}
    answers = _ask_each(report, judge, asked, asked, None, plain, run.stopped, "response", parse_retries,
                        "Generating responses", **asking)
    for i, outcome in answers.items():
        entry = report.entries[i]
        entry["response"] = _record(outcome)
        if outcome.text is None:
            entry.update(status="failed", reason=f"response: {outcome.reason}")
        else:
            entry["text"]["output"] = outcome.text
    if reflect:
        _reflect(report, judge, max_chars, parse_retries, **asking)
    for entry in report.entries:
        text = entry.pop("text", {})
        if entry["status"] == "kept":
            report.kept.append({"instruction": text["instruction"], "input": "", "output": text["output"]})
    return report


def _record(outcome) -> dict[str, Any]:
    record = {"cached": outcome.cached, "replies": outcome.replies}
    return record if outcome.text is not None else {**record, "reason": outcome.reason, "detail": outcome.detail}


def _ask_each(report: GenerationReport, judge: Judge, prompts_by_index: dict[int, str], originals: dict[int, str],
              schema, read: Callable, stopped: str | None, what: str, parse_retries: int, desc: str,
              **asking: Any) -> dict[int, Any]:
    """Ask one chat question per entry index (``prompts_by_index``), read by ``read`` against ``originals``: each
    index's outcome (``not_asked`` for all when an earlier phase ``stopped``)."""
    key_of = rewrite_key(judge, schema)
    keys = {i: key_of(f"{prompt}\x00magpie {what}") for i, prompt in prompts_by_index.items()}
    prompts = {keys[i]: prompt for i, prompt in prompts_by_index.items()}
    if stopped:
        run = RewriteRun(stopped=stopped)
    else:
        run = ask_rewrites(prompts, {keys[i]: originals[i] for i in keys}, judge, schema=schema, read=read,
                           parse_retries=parse_retries, desc=desc, **asking)
        report.runs.append(run)
    report.questions += len(prompts)
    return {i: run.outcome(key) for i, key in keys.items()}  # not_asked for all when stopped


def _reflect(report: GenerationReport, judge: Judge, max_chars: int, parse_retries: int, **asking: Any) -> None:
    """The reflection pass over the kept entries (see the module); each entry's ``reflection`` says what it did."""
    kept = {e["index"]: e["text"] for e in report.entries if e["status"] == "kept"}
    stopped = next((run.stopped for run in report.runs if run.stopped), None)

    def rewritten(reply: str, reply_chars: int | None, original: str):
        return read_rewrite(reply, reply_chars, original, max_chars, refuse_numbers=False)

    new_instructions = _ask_each(
        report, judge, {i: REFLECT_INSTRUCTION_TEMPLATE.format(instruction=t["instruction"]) for i, t in kept.items()},
        {i: t["instruction"] for i, t in kept.items()}, REFLECT_SCHEMA, rewritten, stopped, "reflect instruction",
        parse_retries, "Reflecting on instructions", **asking)
    others = Counter(normalised(t["instruction"]) for t in kept.values())
    instruction = {}
    for i, outcome in new_instructions.items():
        if outcome.text is not None and others[normalised(outcome.text)]:
            outcome.text, outcome.reason, outcome.detail = None, REPEATED, "another entry's instruction"
        if outcome.text is not None:
            others[normalised(outcome.text)] += 1
        report.entries[i]["reflected_instruction"] = _record(outcome)
        instruction[i] = outcome.text or kept[i]["instruction"]
    stopped = next((run.stopped for run in report.runs if run.stopped), None)
    new_responses = _ask_each(
        report, judge, {i: REFLECT_RESPONSE_TEMPLATE.format(instruction=instruction[i], response=t["output"])
                        for i, t in kept.items()},
        {i: t["output"] for i, t in kept.items()}, REFLECT_SCHEMA, rewritten, stopped, "reflect response",
        parse_retries, "Reflecting on responses", **asking)
    for i, outcome in new_responses.items():
        entry, text = report.entries[i], kept[i]
        if outcome.text is not None and normalised(outcome.text) == normalised(instruction[i]):
            outcome.text, outcome.reason, outcome.detail = None, UNCHANGED, "the response is its instruction"
        entry["reflected_response"] = _record(outcome)
        new_instruction = new_instructions[i].text
        if outcome.text is None:
            entry["reflection"] = f"kept the original: response {outcome.reason}"
        elif new_instruction is None:
            entry["reflection"] = f"rewrote the response (instruction {new_instructions[i].reason})"
            text["output"] = outcome.text
        else:
            entry["reflection"] = "rewrote both"
            text.update(instruction=new_instruction, output=outcome.text)


__all__ = ["KNOWN_END_OF_TURN", "REFLECT_INSTRUCTION_TEMPLATE", "REFLECT_RESPONSE_TEMPLATE", "REFLECT_SCHEMA",
           "REPEATED", "UNFINISHED", "GenerationReport", "generate_entries", "go_template_header", "known_end_of_turn",
           "render_header"]
