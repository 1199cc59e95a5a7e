"""A chat session with an instruction-tuned model: what the terminal and the web chat share.

The book's prompt format has one instruction (and an optional input) per prompt and no turns, so every
instruction is answered on its own and nothing of earlier turns is sent (:data:`SINGLE_TURN_NOTE`, shown
by both front ends). A session holds the prompt style, the sampling settings, the input attached to the
next instruction and the last prompt sent, and reads the terminal's ``/commands``
(:meth:`ChatSession.handle`). The answers come from an *answerer*: ``stream_answer`` on our model, or
``RemoteModel.stream`` on an OpenAI-compatible server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..data.prompts import PromptStyle
from .settings import GenerationSettings
from .stream import StreamUpdate

SINGLE_TURN_NOTE = ("Single-turn, as in the book: each instruction is answered on its own; "
                    "no history is sent to the model.")

Answerer = Callable[[str, GenerationSettings], Iterator[StreamUpdate]]

HELP = """\
Type an instruction and press Enter; the answer is printed as it is generated (Ctrl-C stops it).
  /input TEXT            attach TEXT as the input of the next instruction (/input alone: several lines, end with an empty line)
  /prompt                show the exact prompt text last sent to the model
  /temperature X         0 = greedy (the book's); > 0 samples
  /top-k K | off         keep the K most likely tokens
  /max-new-tokens N      most new tokens per answer
  /seed N | random       sampling seed (the same seed gives the answer gpt-sft generate --prompt --seed N gives)
  /settings              show the settings
  /help                  this text
  /exit                  quit (also Ctrl-D, or Ctrl-C at an empty prompt)
A line starting with // sends the text after the first / as an instruction."""


@dataclass(frozen=True)
class Say:
    """Show ``text`` to the user (a command's answer, or an error in it)."""

    text: str


@dataclass(frozen=True)
class Ask:
    """Send ``prompt`` (the formatted ``instruction`` and ``input``) to the model."""

    prompt: str
    instruction: str
    input: str


@dataclass(frozen=True)
class Exit:
    """The user asked to quit."""


# command -> GenerationSettings field; the value is parsed by _setting_value
SETTING_COMMANDS = {"/temperature": "temperature", "/top-k": "top_k", "/max-new-tokens": "max_new_tokens",
                    "/seed": "seed"}


def _setting_value(command: str, field: str, text: str) -> float | int | None:
    if field == "top_k" and text.lower() in ("off", "none", "0"):
        return None
    if field == "seed" and text.lower() in ("random", "none"):
        return None
    try:
        return float(text) if field == "temperature" else int(text)
    except ValueError:
        kind = "a number" if field == "temperature" else "an integer"
        extra = {"top_k": " or off", "seed": " or random"}.get(field, "")
        raise ValueError(f"{command} needs {kind}{extra}, got {text!r}") from None


class ChatSession:
    """The state of one chat: style, settings, the pending input and the last prompt sent."""

    def __init__(self, answer: Answerer, style: PromptStyle, settings: GenerationSettings):
        self.answer = answer
        self.style = style
        self.settings = dataclasses.replace(settings, style=style, progress=False)
        self.pending_input = ""
        self.last_prompt: str | None = None
        self.reading_input: list[str] | None = None  # lines of a multi-line /input so far

    def prompt_for(self, instruction: str, input_: str = "") -> str:
        """The exact prompt text for an instruction and input, in the session's prompt style."""
        return self.style.format_prompt({"instruction": instruction, "input": input_})

    def ask(self, instruction: str, input_: str = "") -> Ask:
        """Record and return the turn for ``instruction`` (with ``input_``, else the input set by ``/input``)."""
        input_ = input_ or self.pending_input
        self.pending_input = ""
        self.last_prompt = self.prompt_for(instruction, input_)
        return Ask(self.last_prompt, instruction, input_)

    def stream(self, turn: Ask) -> Iterator[StreamUpdate]:
        """The model's answer to ``turn``, as it is generated."""
        return self.answer(turn.prompt, self.settings)

    def change(self, field: str, value) -> str:
        """Set one sampling setting (validated by :class:`GenerationSettings`); the new settings, as text."""
        self.settings = dataclasses.replace(self.settings, **{field: value})
        return self.describe_settings()

    def describe_settings(self) -> str:
        s = self.settings
        return (f"temperature {s.temperature:g}{' (greedy)' if s.greedy else ''}, top-k {s.top_k or 'off'}, "
                f"max new tokens {s.max_new_tokens}, seed {'random' if s.seed is None else s.seed}")

    @property
    def prompt_label(self) -> str:
        """What the terminal shows before the user types."""
        return "input> " if self.reading_input is not None else "you> "

    def handle(self, line: str) -> Say | Ask | Exit | None:
        """What one line typed in the terminal asks for (``None``: nothing to do)."""
        if self.reading_input is not None:
            if line.strip():
                self.reading_input.append(line.rstrip("\n"))
                return None
            self.pending_input, self.reading_input = "\n".join(self.reading_input), None
            if not self.pending_input:
                return Say("no input attached")
            return Say(f"input attached to the next instruction ({len(self.pending_input.splitlines())} lines)")
        text = line.strip()
        if not text:
            return None
        if text.startswith("//"):
            return self.ask(text[1:])
        if not text.startswith("/"):
            return self.ask(text)
        command, _, argument = text.partition(" ")
        argument = argument.strip()
        if command in ("/exit", "/quit"):
            return Exit()
        if command == "/help":
            return Say(HELP)
        if command == "/input":
            if argument:
                self.pending_input = argument
                return Say("input attached to the next instruction")
            self.reading_input = []
            return Say("type the input, several lines if needed; an empty line ends it")
        if command == "/prompt":
            if self.last_prompt is None:
                return Say("no prompt sent yet")
            return Say(f"--- the prompt last sent ({self.style.name} style) ---\n{self.last_prompt}\n--- end of prompt ---")
        if command == "/settings":
            return Say(self.describe_settings())
        if command in SETTING_COMMANDS:
            field = SETTING_COMMANDS[command]
            if not argument:
                return Say(f"{command} needs a value; now: {self.describe_settings()}")
            try:
                return Say(self.change(field, _setting_value(command, field, argument)))
            except ValueError as err:  # GenerationSettings names its field, the user typed the command
                message = str(err)
                return Say(message.replace(field, command, 1) if message.startswith(field) else message)
        return Say(f"unknown command {command}; /help lists the commands")


__all__ = ["HELP", "SINGLE_TURN_NOTE", "Answerer", "Ask", "ChatSession", "Exit", "Say"]
