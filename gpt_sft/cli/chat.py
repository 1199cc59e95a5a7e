"""``gpt-sft chat``: talk to a fine-tuned model in the terminal, or (``--web``) in the browser.

One instruction, with an optional input, per turn, in the checkpoint's own prompt format (its recipe's
style); the answer is printed as it is generated, and with greedy decoding it is the answer
``gpt-sft generate --prompt`` prints. A checkpoint trained on conversations is sent each message with the
chat's history, in the layout its recipe recorded (``/history``, ``/reset``, ``/system``). Ctrl-C stops the answer, not the chat. ``--url`` talks to a model
behind an OpenAI-compatible server instead (``gpt-sft serve``, so a GGUF export is tried in the same
chat); ``--model`` then only names the checkpoint whose recipe gives the prompt format.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..common.options import option, parse_config
from ..data.prompts import PromptStyle, get_prompt_style
from ..generate.settings import GenerationSettings
from .errors import report_errors

# The model, tokenizer and chat machinery (torch, transformers, datasets: seconds to import) is imported inside the
# functions that use it, after the options parse: `gpt-sft chat --help` and an option error answer without it.

try:  # line editing and history at the prompt where the platform has it
    import readline
except ImportError:  # pragma: no cover - Windows
    readline = None


@dataclass
class ChatConfig:
    """Chat with a fine-tuned model: one instruction per turn, answers streamed."""

    model: str | None = option(None, "Checkpoint folder (or any source --model of generate takes); with --url, only "
                               "the checkpoint whose recipe gives the prompt format")
    url: str | None = option(None, "An OpenAI-compatible server to ask instead of loading --model (gpt-sft serve, "
                             "llama.cpp, vLLM), e.g. http://127.0.0.1:8000")
    served_model: str | None = option(None, "With --url: the model name to ask for (default: the first the server lists)")
    api_key_env: str = option("OPENAI_API_KEY", "With --url: environment variable holding the API key, if the "
                              "server needs one (sent to --url only)")
    prompt_style: str | None = option(None, "Prompt style; default: the checkpoint's recipe (alpaca without one)")
    max_new_tokens: int | None = option(None, "New tokens per answer; default: the checkpoint's training run's "
                                        "max_new_tokens, else the book's 256, at most a quarter of the context")
    temperature: float = option(GenerationSettings.temperature, "0: greedy (the book); > 0 samples")
    top_k: int | None = option(GenerationSettings.top_k, "Keep the k most likely tokens before sampling or argmax")
    seed: int | None = option(GenerationSettings.seed, "Sampling seed of every answer (as generate's --seed)")
    web: bool = option(False, "Serve the chat as a web page (Gradio) instead of the terminal", switch=True)
    host: str = option("127.0.0.1", "With --web: the address to listen on (0.0.0.0 exposes it to the network); on "
                       "a loopback one, only requests for this machine's own names are answered")
    port: int = option(7860, "With --web: the port")
    allow_page_endpoint: bool = option(False, "With --web: let the page name an OpenAI-compatible server to ask "
                                       "instead; it never gets the API key, but whoever reaches the page can make "
                                       "this machine request any URL", switch=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = option("auto", "auto (the checkpoint's), float32, bfloat16, float16")
    trust_remote_code: bool = option(False, "Allow a model folder that is not a gpt-sft checkpoint to run its own "
                                     "Python code (auto_map)", switch=True)

    def __post_init__(self) -> None:
        if not self.model and not self.url:
            raise ValueError("--model is required (a checkpoint folder), or --url for a served model")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        try:
            self.settings()
        except ValueError as err:  # GenerationSettings speaks of fields; a command line user typed flags
            raise ValueError(f"--{str(err).replace('_', '-')}") from None

    def settings(self, max_new_tokens: int | None = None) -> GenerationSettings:
        """The chat's settings; ``max_new_tokens``: the default for this model (:func:`default_max_new_tokens`), where
        the user gave none."""
        given = self.max_new_tokens if self.max_new_tokens is not None else max_new_tokens
        return GenerationSettings(max_new_tokens=GenerationSettings.max_new_tokens if given is None else given,
                                  temperature=self.temperature, top_k=self.top_k, seed=self.seed, batch_size=1,
                                  progress=False)


def training_max_new_tokens(model: str) -> int | None:
    """The ``max_new_tokens`` a checkpoint's training run recorded (its ``training_args.json``), if any."""
    try:
        value = json.loads((Path(model) / "training_args.json").read_text(encoding="utf-8")).get("max_new_tokens")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def default_max_new_tokens(cfg: ChatConfig) -> tuple[int, str]:
    """The new tokens per answer and where the number comes from, in words: ``--max-new-tokens`` as given; else the
    checkpoint's training run's ``max_new_tokens`` (else the book's 256), never more than a quarter of the model's
    context, so that the prompt (a conversation's history) keeps the rest."""
    if cfg.max_new_tokens is not None:
        return cfg.max_new_tokens, "--max-new-tokens"
    from ..model.loading import peek_context_length

    value, source = GenerationSettings.max_new_tokens, "the default"
    recorded = training_max_new_tokens(cfg.model) if cfg.model else None
    if recorded:
        value, source = recorded, "the checkpoint's training run"
    context = peek_context_length(cfg.model) if cfg.model else None
    if context and value > max(1, context // 4):
        value, source = max(1, context // 4), f"a quarter of the model's context of {context} tokens"
    return value, source


def style_source(cfg: ChatConfig, has_recipe: bool) -> str:
    """Where the prompt format comes from, in words (shown at the start)."""
    if cfg.prompt_style:
        return "--prompt-style"
    return "the checkpoint's recipe" if has_recipe else "the default: no recipe.json in --model"


def answerer(cfg: ChatConfig) -> tuple[Any, str]:
    """How answers are made (an :data:`~gpt_sft.generate.chat.Answerer`), and what that is in words: our model
    loaded, or the server at ``--url``."""
    from ..generate.remote import RemoteModel
    from ..generate.stream import stream_answer
    from ..model.loading import load_model, load_tokenizer

    if cfg.url:
        remote = RemoteModel(cfg.url, cfg.served_model, cfg.api_key_env)
        return remote.stream, f"{remote.name} at {remote.base} (OpenAI-compatible server)"
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    return partial(stream_answer, model, tokenizer), f"{cfg.model} (loaded here)"


def conversation_format(cfg: ChatConfig, recipe: Any, style: PromptStyle) -> Any:
    """For a checkpoint trained on conversations: its layout (the recipe's, or ``--prompt-style``'s), counted with
    GPT-2's tokenizer against its context length (a :class:`~gpt_sft.generate.chat.ConversationFormat`); ``None``
    for one trained on single-turn data. ``recipe``: the checkpoint's :class:`~gpt_sft.data.recipe.Recipe` or None."""
    from ..data.recipe import checkpoint_layout
    from ..generate.chat import ConversationFormat, token_counter
    from ..model.loading import peek_context_length
    from ..model.tokenizer import get_tokenizer

    layout = checkpoint_layout(recipe, style, cfg.prompt_style)
    if layout is None:
        return None
    return ConversationFormat(layout, token_counter(get_tokenizer()), peek_context_length(cfg.model))


def _cancel_or_quit(session: Any) -> bool:
    """Ctrl-C at the prompt: drop a half-typed line or a multi-line input (True), or quit (False)."""
    if session.reading_input is not None:
        session.reading_input = None
        print("\n(input dropped)")
        return True
    if readline is not None and readline.get_line_buffer():
        print()
        return True
    return False


def terminal_safe(text: str) -> str:
    """``text`` as it may reach a terminal: newlines and tabs kept, every other control or format character (ESC
    and the rest of C0, DEL, C1, bidirectional overrides) written as its escape, so that what a model or a server
    sends cannot move the cursor, clear or recolour the screen, or fake a line of ours."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf") else repr(c)[1:-1]
                   for c in text)


def show_answer(session: Any, turn: Any, out=sys.stdout) -> None:
    """Print the answer to ``turn`` (an :class:`~gpt_sft.generate.chat.Ask`) of ``session`` (a
    :class:`~gpt_sft.generate.chat.ChatSession`) as it comes; Ctrl-C stops it and returns to the prompt."""
    from ..generate.chat import history_note
    from ..generate.remote import EndpointError

    note = history_note(turn)
    if note:
        print(f"[{note}]", file=out)
    shown = ""
    updates = session.stream(turn)
    try:
        for update in updates:
            if update.note and not update.done and not update.new_tokens:
                print(f"[note: {terminal_safe(update.note)}]", file=out)
            if update.done and not update.text.startswith(shown):  # a style with its own extraction rule
                print(f"\n[the finished answer reads:]\n{terminal_safe(update.text)}", end="", file=out)
            elif update.text != shown:
                print(terminal_safe(update.text[len(shown):]), end="", file=out, flush=True)
            shown = update.text
            if update.done and not update.stopped_at_eos:
                print(f"\n[{terminal_safe(update.note) if update.note else f'{update.new_tokens} new tokens, the most allowed: /max-new-tokens raises it'}]",
                      end="", file=out)
    except KeyboardInterrupt:
        updates.close()
        print(" [stopped]", end="", file=out)
    except (EndpointError, OSError) as err:  # (requests' errors are OSErrors) the server failed this answer, not the chat
        print(f"\n[error: {terminal_safe(str(err))}]", end="", file=out)
    print(file=out, flush=True)


def run_terminal(session: Any, banner: str) -> int:
    from ..generate.chat import Ask, Exit, Say

    print(banner, flush=True)
    while True:
        try:
            line = input(session.prompt_label)
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            if _cancel_or_quit(session):
                continue
            print()
            return 0
        action = session.handle(line)
        if isinstance(action, Exit):
            return 0
        if isinstance(action, Say):
            print(terminal_safe(action.text), flush=True)
        elif isinstance(action, Ask):
            show_answer(session, action)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft chat``."""
    cfg = parse_config(ChatConfig, argv, prog="gpt-sft chat")
    from ..data.recipe import checkpoint_style
    from ..generate.chat import CONVERSATION_NOTE, SINGLE_TURN_NOTE, ChatSession
    from . import chat_web

    if cfg.model and not cfg.url and Path(cfg.model).suffix == ".gguf":
        raise ValueError(f"--model {cfg.model}: a GGUF file is not loaded here; serve it (gpt-sft serve --model "
                         f"{cfg.model}) and chat with --url http://127.0.0.1:8000")
    if cfg.model:
        style, recipe = checkpoint_style(cfg.model, cfg.prompt_style)
    else:
        style, recipe = get_prompt_style(cfg.prompt_style or "alpaca"), None
    if cfg.web:
        chat_web.check_gradio()  # before the (slower) model load
    conversation = conversation_format(cfg, recipe, style)
    answer, backend = answerer(cfg)
    max_new_tokens, source = default_max_new_tokens(cfg)
    session = ChatSession(answer, style, cfg.settings(max_new_tokens), conversation)
    banner = "\n".join([
        f"gpt-sft chat with {backend}",
        f"Prompt format: {style.name}, from {style_source(cfg, recipe is not None)}.",
        f"Max new tokens per answer: {max_new_tokens}, from {source}.",
        SINGLE_TURN_NOTE if conversation is None else CONVERSATION_NOTE,
    ])
    if cfg.web:  # the page shows the settings in their own fields
        return chat_web.serve(session, banner, cfg)
    commands = "" if conversation is None else "/history shows the conversation, /reset forgets it; "
    return run_terminal(session, f"{banner}\nSettings: {session.describe_settings()}.\n{commands}"
                                 "/help lists the commands; /exit, Ctrl-D or Ctrl-C at an empty prompt quits.")
