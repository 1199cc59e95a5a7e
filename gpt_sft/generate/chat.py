"""A chat session with an instruction-tuned model: what the terminal and the web chat share.

The book's prompt format has one instruction (and an optional input) per prompt and no turns, so a checkpoint
trained on it answers every instruction on its own and nothing of earlier turns is sent (:data:`SINGLE_TURN_NOTE`,
shown by both front ends). A checkpoint trained on conversations (its recipe says so) is sent the chat's history
with each message, in the layout it was trained on (:class:`ConversationFormat`, :data:`CONVERSATION_NOTE`); when
the history no longer fits the context the oldest turns are left out
(:func:`~gpt_sft.data.conversation_format.fit_conversation`) and the front end says so (:func:`history_note`).

A session holds the prompt style, the sampling settings, the input attached to the next instruction, the
conversation so far and the last prompt sent, and reads the terminal's ``/commands``
(:meth:`ChatSession.handle`). The answers come from an *answerer*: ``stream_answer`` on our model, or
``RemoteModel.stream`` on an OpenAI-compatible server.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ..data.conversation_format import ConversationLayout, FittedConversation, fit_conversation
from ..data.conversations import question_problem
from ..data.prompts import PromptStyle
from .responses import TextCodec
from .settings import GenerationSettings
from .stream import StreamUpdate

SINGLE_TURN_NOTE = ("Single-turn, as in the book: each instruction is answered on its own; "
                    "no history is sent to the model.")
CONVERSATION_NOTE = ("A conversation, as the checkpoint was trained: each message is sent with the history of this "
                     "chat, in the training layout; when it no longer fits the context, the oldest turns are left out.")
NO_HISTORY = ("no history: this checkpoint was trained on single-turn data, so each instruction is answered on its "
              "own")

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

CONVERSATION_HELP = """\
Type a message and press Enter; it is sent with the conversation so far, and the answer is printed as it is generated (Ctrl-C stops it).
  /history               show the conversation sent with the next message
  /reset                 forget the conversation (the system message stays)
  /system TEXT | off     the system message, first in every prompt (/system alone shows it)
  /prompt                show the exact prompt text last sent to the model
  /temperature X         0 = greedy (the book's); > 0 samples
  /top-k K | off         keep the K most likely tokens
  /max-new-tokens N      most new tokens per answer (the history is fitted into the context less these)
  /seed N | random       sampling seed
  /settings              show the settings
  /help                  this text
  /exit                  quit (also Ctrl-D, or Ctrl-C at an empty prompt)
A line starting with // sends the text after the first / as a message."""


@dataclass(frozen=True)
class Say:
    """Show ``text`` to the user (a command's answer, or an error in it)."""

    text: str


@dataclass(frozen=True)
class Ask:
    """Send ``prompt`` (the formatted ``instruction`` and ``input``) to the model. In a conversation,
    ``instruction`` is the new message and ``fitted`` what of the conversation the prompt holds."""

    prompt: str
    instruction: str
    input: str
    fitted: FittedConversation | None = None


@dataclass(frozen=True)
class Exit:
    """The user asked to quit."""


def token_counter(tokenizer) -> Callable[[str], int]:
    """The length in tokens of a text as the model is given it (``<|endoftext|>`` is one token, as in prompts)."""
    codec = TextCodec(tokenizer)
    return lambda text: len(codec.encode_batch([text])[0])


@dataclass(frozen=True)
class ConversationFormat:
    """How a checkpoint trained on conversations is talked to: the text around each message (the recipe's layout),
    how a text is counted in tokens, and the model's context length (``None``: unknown, the history is not fitted)."""

    layout: ConversationLayout
    count_tokens: Callable[[str], int]
    context_length: int | None

    def turn(self, system: str | None, history: Sequence[dict[str, str]], message: str, max_new_tokens: int) -> Ask:
        """The turn that sends ``message`` after ``history`` (user and assistant messages) and the ``system``
        message: the earliest exchanges are left out while the prompt does not fit the context less
        ``max_new_tokens``. The one place the terminal and the web chat build a conversation's prompt.

        Raises:
            ValueError: the message or the history is not a conversation (the reason, naming the turn).
        """
        messages = [{"role": "system", "content": system}] if system else []
        messages += [dict(m) for m in history] + [{"role": "user", "content": message}]
        problem = question_problem(messages)
        if problem is not None:
            raise ValueError(problem)
        budget = None if self.context_length is None else self.context_length - int(max_new_tokens)
        fitted = fit_conversation(messages, self.layout, self.count_tokens, budget)
        return Ask(fitted.prompt, message, "", fitted)


def history_note(turn: Ask) -> str | None:
    """What a chat shows when ``turn`` leaves out the oldest turns of its conversation (else ``None``)."""
    fitted = turn.fitted
    if fitted is None or not fitted.dropped:
        return None
    turns = "turn" if fitted.dropped == 1 else f"{fitted.dropped} turns"
    return (f"history: the oldest {turns} of the conversation left out, so that the prompt fits the context less the "
            f"new tokens allowed ({fitted.budget} tokens)")


def show_history(system: str | None, history: Sequence[dict[str, str]], dropped: int = 0) -> str:
    """The conversation as text, one message after another."""
    if not history and not system:
        return "no conversation yet"
    lines = [f"--- the conversation ({len(history) // 2} turns{', and a system message' if system else ''}) ---"]
    if system:
        lines.append(f"[system]\n{system}")
    for k, message in enumerate(history):
        left_out = " (left out of the last prompt: it did not fit)" if k < 2 * dropped else ""
        lines.append(f"[{message['role']}]{left_out}\n{message['content']}")
    return "\n".join(lines + ["--- end of the conversation ---"])


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
    """The state of one chat: style, settings, the pending input, the conversation (for a checkpoint trained on
    conversations: ``conversation`` is set) and the last prompt sent."""

    def __init__(self, answer: Answerer, style: PromptStyle, settings: GenerationSettings,
                 conversation: ConversationFormat | None = None):
        self.answer = answer
        self.style = style
        self.settings = dataclasses.replace(settings, style=style, progress=False)
        self.conversation = conversation
        self.system: str | None = None
        self.history: list[dict[str, str]] = []  # user and assistant messages, in order
        self.dropped = 0  # the earliest exchanges the last prompt left out
        self.pending_input = ""
        self.last_prompt: str | None = None
        self.reading_input: list[str] | None = None  # lines of a multi-line /input so far

    def prompt_for(self, instruction: str, input_: str = "") -> str:
        """The exact prompt text for an instruction and input, in the session's prompt style."""
        return self.style.format_prompt({"instruction": instruction, "input": input_})

    def ask(self, instruction: str, input_: str = "") -> Ask:
        """Record and return the turn for ``instruction`` (with ``input_``, else the input set by ``/input``); in a
        conversation, the message sent with the history (a ``ValueError`` says why a message cannot be)."""
        if self.conversation is not None:
            turn = self.conversation.turn(self.system, self.history, instruction, self.settings.max_new_tokens)
            self.last_prompt, self.dropped = turn.prompt, turn.fitted.dropped
            return turn
        input_ = input_ or self.pending_input
        self.pending_input = ""
        self.last_prompt = self.prompt_for(instruction, input_)
        return Ask(self.last_prompt, instruction, input_)

    def remember(self, turn: Ask, answer: str) -> bool:
        """Add a conversation's exchange to the history; an empty answer is not kept (nor its message: a
        conversation's turns alternate)."""
        if turn.fitted is None or not answer.strip():
            return False
        self.history += [{"role": "user", "content": turn.instruction}, {"role": "assistant", "content": answer}]
        return True

    def stream(self, turn: Ask) -> Iterator[StreamUpdate]:
        """The model's answer to ``turn``, as it is generated; in a conversation, the answer (as far as it came,
        when it is stopped) joins the history at its end."""
        updates = self.answer(turn.prompt, self.settings)
        return updates if turn.fitted is None else self._remembered(turn, updates)

    def _remembered(self, turn: Ask, updates: Iterator[StreamUpdate]) -> Iterator[StreamUpdate]:
        text = ""
        try:
            for update in updates:
                text = update.text
                yield update
        except (GeneratorExit, KeyboardInterrupt):  # stopped: what was shown is the answer; a failure keeps nothing
            updates.close()
            self.remember(turn, text)
            raise
        self.remember(turn, text)

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
        if text.startswith("//") or not text.startswith("/"):
            try:
                return self.ask(text[1:] if text.startswith("//") else text)
            except ValueError as err:  # a conversation's message it cannot send (one line, naming the turn)
                return Say(f"not sent: {err}")
        command, _, argument = text.partition(" ")
        argument = argument.strip()
        if command in ("/exit", "/quit"):
            return Exit()
        if command == "/help":
            return Say(HELP if self.conversation is None else CONVERSATION_HELP)
        if command in ("/history", "/reset", "/system"):
            return Say(self.conversation_command(command, argument))
        if command == "/input" and self.conversation is not None:
            return Say("a conversation's messages have no separate input: type the whole message")
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

    def conversation_command(self, command: str, argument: str) -> str:
        """``/history``, ``/reset`` and ``/system``: what they answer."""
        if self.conversation is None:
            if command == "/system":
                return f"{NO_HISTORY}; /input attaches an input to the next instruction instead"
            return NO_HISTORY
        if command == "/history":
            return show_history(self.system, self.history, self.dropped)
        if command == "/reset":
            forgotten = len(self.history) // 2
            self.history, self.dropped = [], 0
            kept = "; the system message stays (/system off removes it)" if self.system else ""
            return f"conversation forgotten ({forgotten} turns): the next message starts a new one{kept}"
        if not argument:
            return f"system message: {self.system}" if self.system else "no system message (/system TEXT sets one)"
        if argument.lower() == "off":
            self.system = None
            return "system message removed"
        if self.conversation.layout.system_head is None:
            return f"prompt style {self.style.name!r} has no place for a system message"
        self.system = argument
        return "system message set: it opens every prompt from the next message on"


__all__ = ["CONVERSATION_HELP", "CONVERSATION_NOTE", "HELP", "NO_HISTORY", "SINGLE_TURN_NOTE", "Answerer", "Ask",
           "ChatSession", "ConversationFormat", "Exit", "Say", "history_note", "show_history", "token_counter"]
