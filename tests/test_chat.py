"""``gpt-sft chat`` in the terminal: the streamed answer is ``gpt-sft generate --prompt``'s, token for token.

The session's commands and the streaming reader are tested as plain Python; the terminal chat itself is
driven through a real pseudo-terminal (pexpect) on the trained offline demo, and compared with a
``gpt-sft generate --prompt`` process. Ctrl-C is sent as the terminal sends it (the ^C character, which
the kernel turns into SIGINT), to a random model that writes long answers.

A checkpoint trained on conversations (``conftest.recall_run``: it answers the last question with the word the first
turn gave, and cannot without the history) holds held-out conversations in the terminal, and is asked them whole
through ``gpt-sft serve``'s ``/v1/chat/completions``; every answer is the model's own in this process
(``conftest.recall_reference``), the word last (issue 25, item 8).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from conftest import RECALL_TRAIN, free_port, generate_cli

from gpt_sft.cli.chat import main as chat_main
from gpt_sft.cli.chat import ChatConfig, default_max_new_tokens, show_answer, terminal_safe
from gpt_sft.common.options import parse_config
from gpt_sft.data.conversation_format import conversation_layout, render_conversation
from gpt_sft.data.prompts import PromptStyle, format_prompt, get_prompt_style
from gpt_sft.export.checkpoint import save_checkpoint
from gpt_sft.generate.chat import (CONVERSATION_NOTE, NO_HISTORY, SINGLE_TURN_NOTE, Ask, ChatSession,
                                   ConversationFormat, Exit, Say, token_counter)
from gpt_sft.generate.responses import generate_responses
from gpt_sft.generate.settings import GenerationSettings
from gpt_sft.generate.stream import ResponseText, StreamUpdate, stream_answer
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.loading import load_model, load_tokenizer
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.model.tokenizer import get_tokenizer

ALPACA = get_prompt_style("alpaca")


# ------------------------------------------------------------------ the streamed text


def test_the_shown_text_never_takes_back_a_character():
    prompt = format_prompt({"instruction": "Name a colour."}, ALPACA)
    reader = ResponseText(ALPACA, prompt)
    # a continuation as it grows token by token; U+FFFD is the first byte of a character not yet complete
    steps = ["\n", "\n\n###", "\n\n### Resp", "\n\n### Response:", "\n\n### Response:\n", "\n\n### Response:\n Red",
             "\n\n### Response:\n Red and", "\n\n### Response:\n Red and gr\ufffd", "\n\n### Response:\n Red and gr\xe9",
             "\n\n### Response:\n Red and gr\xe9en ", "\n\n### Response:\n Red and gr\xe9en ###",
             "\n\n### Response:\n Red and gr\xe9en ### Res"]
    shown = [reader.partial(step) for step in steps]
    assert not any("#" in text or "\ufffd" in text for text in shown), "what may still change is held back"
    assert shown[-1] == "Red and gr\xe9en"
    assert all(b.startswith(a) for a, b in itertools.pairwise(shown))
    final = reader.final(steps[-1])
    assert final == ALPACA.extract_response(prompt + steps[-1], prompt) == "Red and gr\xe9en ### Res"
    assert final.startswith(shown[-1])


def test_a_style_with_its_own_extraction_shows_only_growing_text():
    style = PromptStyle(name="upper", prompt="{instruction}", response="{output}",
                                                 extract=lambda text, prompt: text[len(prompt):].strip().upper()[::-1])
    reader = ResponseText(style, "Q")
    assert reader.partial("ab") == "BA"
    assert reader.partial("abc") == "BA", "CBA does not extend BA: nothing new is shown"
    assert reader.final("abc") == "CBA"


@pytest.fixture(scope="module")
def demo(demo_run):
    folder, entries = demo_run
    return folder, load_model(folder, device="cpu", dtype="float32"), load_tokenizer(folder), entries


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_streamed_answers_are_generate_responses(demo, temperature):
    """Greedy and sampled (same seed): the last update is generate_responses' answer, and every update
    extends the one before."""
    _, model, tokenizer, entries = demo
    settings = GenerationSettings(temperature=temperature, top_k=20 if temperature else None, seed=11,
                                  max_new_tokens=24, progress=False)
    held_out = entries[-6:] + [{"instruction": "Name three primary colors.", "input": ""}]
    for entry in held_out:
        expected = generate_responses(model, tokenizer, [entry], settings)[0]
        updates = list(stream_answer(model, tokenizer, format_prompt(entry, ALPACA), settings))
        assert updates[-1].done and updates[-1].text == expected, entry
        assert all(b.text.startswith(a.text) for a, b in itertools.pairwise(updates))
        assert [u.new_tokens for u in updates[1:-1]] == list(range(1, len(updates) - 1)), "one update per token"
        if temperature == 0 and "output" in entry:
            assert expected == entry["output"], "the trained demo answers its held-out tasks"


def test_an_answer_that_runs_out_of_context_says_so(demo):
    _, model, tokenizer, _ = demo
    prompt = format_prompt({"instruction": "Count the words in the list. " * 12}, ALPACA)  # ~110 of 128 tokens
    last = list(stream_answer(model, tokenizer, prompt, GenerationSettings(max_new_tokens=256, progress=False)))[-1]
    if last.stopped_at_eos:
        assert last.note is None
    else:
        assert "context of 128" in last.note and last.new_tokens < 256


# ------------------------------------------------------------------ the session's commands


def _session(answers=None) -> ChatSession:
    return ChatSession(lambda prompt, settings: iter(answers or []), ALPACA, GenerationSettings())


def test_escape_sequences_from_a_model_or_server_reach_the_terminal_escaped():
    from gpt_sft.cli.chat import show_answer
    from gpt_sft.generate.stream import StreamUpdate

    evil = "Sure\x1b[2J\x1b]0;owned\x07\nyou> fake\u202etxt.exe\tok"
    updates = [StreamUpdate(text=evil[:6]), StreamUpdate(text=evil, done=True, stopped_at_eos=False,
                                                          note="server says \x1b[31mred")]
    session = _session(updates)
    out = io.StringIO()
    show_answer(session, session.handle("hi"), out=out)
    shown = out.getvalue()
    assert not any(c in shown for c in "\x1b\x07\u202e"), repr(shown)
    assert "Sure\\x1b[2J\\x1b]0;owned\\x07\nyou> fake\\u202etxt.exe\tok" in shown  # newline and tab kept
    assert "[server says \\x1b[31mred]" in shown


def test_a_server_error_ends_the_answer_not_the_chat():
    from gpt_sft.cli.chat import show_answer
    from gpt_sft.generate.remote import EndpointError
    from gpt_sft.generate.stream import StreamUpdate

    def failing(prompt, settings):
        yield StreamUpdate("Half an ans")
        raise EndpointError("the server reported an error: \x1b[2Jout of memory")

    session = ChatSession(failing, ALPACA, GenerationSettings())
    out = io.StringIO()
    show_answer(session, session.handle("hi"), out=out)
    assert out.getvalue() == "Half an ans\n[error: the server reported an error: \\x1b[2Jout of memory]\n"
    assert isinstance(session.handle("/max-new-tokens 3"), Say), "the chat goes on"


def test_commands_change_the_settings_and_name_themselves_in_errors():
    session = _session()
    assert isinstance(session.handle("/temperature 0.7"), Say) and session.settings.temperature == 0.7
    session.handle("/top-k 5")
    session.handle("/max-new-tokens 12")
    session.handle("/seed random")
    assert (session.settings.top_k, session.settings.max_new_tokens, session.settings.seed) == (5, 12, None)
    session.handle("/top-k off")
    assert session.settings.top_k is None
    assert session.handle("/max-new-tokens 0").text == "/max-new-tokens must be >= 1, got 0"
    assert session.handle("/temperature hot").text == "/temperature needs a number, got 'hot'"
    assert session.handle("/temperature -1").text.startswith("/temperature must be a finite number >= 0")
    assert session.handle("/top-k").text.startswith("/top-k needs a value")
    assert session.handle("/wat").text == "unknown command /wat; /help lists the commands"
    assert session.settings.max_new_tokens == 12, "a refused value changes nothing"
    # a seed no torch generator takes was accepted, then ended the chat at the next sampled answer
    from gpt_sft.generate.settings import MAX_SEED

    session.handle("/seed 7")
    assert session.handle("/seed 99999999999999999999999").text.startswith("/seed must be from 0 to ")
    assert session.handle("/seed -1").text.startswith("/seed must be from 0 to ") and session.settings.seed == 7
    torch.Generator().manual_seed(MAX_SEED - 1 + 2**31)  # the largest seed, plus a prompt index, is taken
    assert isinstance(session.handle("/exit"), Exit) and session.handle("   ") is None


def test_input_is_attached_to_the_next_instruction_only():
    session = _session()
    assert session.handle("/prompt").text == "no prompt sent yet"
    session.handle("/input door fire")
    turn = session.handle("Count the words in the list.")
    assert isinstance(turn, Ask) and turn.input == "door fire"
    assert turn.prompt == format_prompt({"instruction": "Count the words in the list.", "input": "door fire"}, ALPACA)
    assert session.handle("Again.").input == "", "the input was for one instruction"
    assert session.handle("/input").text.startswith("type the input") and session.prompt_label == "input> "
    assert session.handle("a") is None and session.handle("b") is None
    assert "2 lines" in session.handle("").text and session.pending_input == "a\nb"
    assert session.handle("//input is a word").instruction == "/input is a word"
    assert session.last_prompt in session.handle("/prompt").text


# ------------------------------------------------------------------ conversations: what is sent


CHATML = get_prompt_style("chatml")
CHATML_LAYOUT = conversation_layout("chatml")


def tokens(text: str) -> int:
    """A prompt's length as the model is given it (``<|endoftext|>`` one token), counted here with tiktoken."""
    return len(get_tokenizer().encode(text, allowed_special={"<|endoftext|>"}))


def conversation_session(context_length: int | None = 128) -> tuple[ChatSession, list[str]]:
    """A chatml conversation session whose model answers "Fine." (as a stream), and the prompts it was sent."""
    sent = []

    def answer(prompt, settings):
        sent.append(prompt)
        yield StreamUpdate("Fi", new_tokens=1)
        yield StreamUpdate("Fine.", done=True, new_tokens=2, stopped_at_eos=True)

    fmt = ConversationFormat(CHATML_LAYOUT, token_counter(get_tokenizer()), context_length)
    return ChatSession(answer, CHATML, GenerationSettings(max_new_tokens=8), fmt), sent


def test_a_conversation_session_sends_its_history_in_the_training_layout():
    session, sent = conversation_session(context_length=None)
    assert session.handle("/history").text == "no conversation yet"
    for k, message in enumerate(["Hi.", "My word is lemon.", "What is my word?"]):
        out = io.StringIO()
        show_answer(session, session.handle(message), out=out)
        assert out.getvalue() == "Fine.\n"
        asked = [m for q in ["Hi.", "My word is lemon.", "What is my word?"][:k] for m in
                 ({"role": "user", "content": q}, {"role": "assistant", "content": "Fine."})]
        assert sent[-1] == render_conversation(asked + [{"role": "user", "content": message}], "chatml")
    assert sent[-1] == ("<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\nFine.<|im_end|>\n<|endoftext|>"
                        "<|im_start|>user\nMy word is lemon.<|im_end|>\n<|im_start|>assistant\nFine.<|im_end|>\n"
                        "<|endoftext|><|im_start|>user\nWhat is my word?<|im_end|>\n<|im_start|>assistant\n")
    assert session.last_prompt in session.handle("/prompt").text
    history = session.handle("/history").text.split("\n")
    assert history[0] == "--- the conversation (3 turns) ---" and history[-1] == "--- end of the conversation ---"
    assert history[1:-1] == ["[user]", "Hi.", "[assistant]", "Fine.", "[user]", "My word is lemon.", "[assistant]",
                             "Fine.", "[user]", "What is my word?", "[assistant]", "Fine."]
    assert session.handle("/system Answer in one word.").text.startswith("system message set")
    again = session.handle("Again?")  # asked, never sent
    assert again.prompt.startswith("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nHi.")
    assert session.handle("/reset").text.startswith("conversation forgotten (3 turns)"), "Again? was never answered"
    show_answer(session, session.handle("New start."), out=io.StringIO())
    assert sent[-1] == render_conversation([{"role": "system", "content": "Answer in one word."},
                                            {"role": "user", "content": "New start."}], "chatml")
    assert session.handle("/input x").text.startswith("a conversation's messages have no separate input")
    assert session.handle("say <|endoftext|> now").text.startswith("not sent: turn 3: 'content' contains")


def test_a_stopped_answer_joins_the_history_as_far_as_it_came_and_a_failed_one_does_not():
    from gpt_sft.generate.remote import EndpointError

    session, _ = conversation_session()
    updates = session.stream(session.handle("Tell me a story."))
    assert next(updates).text == "Fi"
    updates.close()  # what Ctrl-C and the Stop button do
    assert session.history[-1] == {"role": "assistant", "content": "Fi"}

    def failing(prompt, settings):
        yield StreamUpdate("Half")
        raise EndpointError("gone")

    session.answer = failing
    out = io.StringIO()
    show_answer(session, session.handle("And then?"), out=out)
    assert "[error: gone]" in out.getvalue() and len(session.history) == 2, "nothing of the failed turn is kept"


def test_the_oldest_turns_are_left_out_when_the_history_no_longer_fits_and_the_chat_says_so():
    session, sent = conversation_session(context_length=128)
    session.handle("/system Be brief.")
    for message in ["First message, a long one: " + "words " * 12, "Second message.", "Third message.", "Fourth."]:
        out = io.StringIO()
        show_answer(session, session.handle(message), out=out)
    budget = 128 - 8  # the context less /max-new-tokens
    system, asked = {"role": "system", "content": "Be brief."}, [m for m in session.history]
    kept = next(k for k in range(4) if sent[-1] == render_conversation([system, *asked[2 * k:-1]], CHATML_LAYOUT))
    assert kept > 0 and tokens(sent[-1]) <= budget < tokens(render_conversation([system, *asked[2 * kept - 2:-1]],
                                                                                CHATML_LAYOUT))
    turns = "turn" if kept == 1 else f"{kept} turns"
    assert out.getvalue() == f"[history: the oldest {turns} of the conversation left out, so that the prompt fits " \
                             f"the context less the new tokens allowed ({budget} tokens)]\nFine.\n"
    assert "(left out of the last prompt: it did not fit)" in session.handle("/history").text
    # a question alone too long for the context is sent whole: the generation's rule for a long prompt applies
    show_answer(session, session.handle("/reset") and session.handle("word " * 200), out=io.StringIO())
    assert sent[-1].endswith(" word<|im_end|>\n<|im_start|>assistant\n") and tokens(sent[-1]) > budget


def test_a_single_turn_session_has_no_history_and_says_so():
    session = _session()
    for command in ("/history", "/reset"):
        assert session.handle(command).text == NO_HISTORY
    assert session.handle("/system Be brief.").text.startswith(NO_HISTORY)
    session.handle("My word is lemon.")
    turn = session.handle("What is my word?")
    assert turn.prompt == format_prompt({"instruction": "What is my word?"}, ALPACA) and turn.fitted is None


def test_chat_options_are_checked_with_one_line_naming_the_flag(capsys):
    for argv, words in ((["--temperature", "1"], "--model is required"),
                        (["--model", "x", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
                        (["--model", "x", "--port", "0"], "--port must be in 1..65535")):
        with pytest.raises(SystemExit) as exit_:
            chat_main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert chat_main(["--model", "m.gguf"]) == 1
    assert "gpt-sft serve --model m.gguf" in capsys.readouterr().err
    assert chat_main(["--url", "ftp://x", "--model", "m"]) == 1
    assert capsys.readouterr().err.strip().startswith("error: --url 'ftp://x': an http:// or https:// address")


def test_the_default_max_new_tokens_leaves_the_prompt_room(tmp_path):
    """Without --max-new-tokens: the training run's max_new_tokens, never more than a quarter of the context (the
    book's 256 on a 256-token model left a conversation's history no room)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_positions": 256}))

    def default(**flags) -> tuple[int, str]:
        return default_max_new_tokens(ChatConfig(model=str(folder), **flags))

    assert default() == (64, "a quarter of the model's context of 256 tokens")
    (folder / "training_args.json").write_text(json.dumps({"max_new_tokens": 12}))
    assert default() == (12, "the checkpoint's training run")
    assert ChatConfig(model=str(folder)).settings(default()[0]).max_new_tokens == 12
    (folder / "training_args.json").write_text(json.dumps({"max_new_tokens": 200}))
    assert default() == (64, "a quarter of the model's context of 256 tokens")
    assert default(max_new_tokens=200) == (200, "--max-new-tokens"), "what the user gives is obeyed"
    assert default_max_new_tokens(ChatConfig(model="gpt2")) == (256, "the default"), "the book's, on 1024 tokens"


# ------------------------------------------------------------------ in a real terminal

@pytest.fixture
def pexpect():
    """pexpect drives the terminal; missing, the terminal tests skip (in CI, where the dev extra installs it,
    they fail)."""
    try:
        import pexpect
    except ImportError:
        if os.environ.get("GPT_SFT_LANE"):
            pytest.fail("pexpect is missing: the dev extra installs it to drive the terminal chat")
        pytest.skip("pexpect is not installed (the dev extra installs it): it drives the terminal chat")
    return pexpect


def _spawn(pexpect, *args: str):
    env = {**os.environ, "TERM": "dumb"}  # no escape sequences from readline in what we read
    # SIGINT as a terminal delivers it: a job started in the background (CI scripts) inherits SIGINT ignored
    child = pexpect.spawn(sys.executable, ["-m", "gpt_sft.cli.main", "chat", *args], env=env, encoding="utf-8",
                          timeout=240, dimensions=(50, 400),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect_exact("you> ")
    return child


def _answer(child, line: str) -> str:
    """Send one line; the text printed before the next prompt, less the echo of the line."""
    child.sendline(line)
    child.expect_exact("you> ")
    echo, _, printed = child.before.replace("\r\n", "\n").partition("\n")
    assert echo == line
    return printed.removesuffix("\n")


@pytest.mark.slow
def test_terminal_chat_streams_the_answer_generate_prints(pexpect, demo_run):
    folder, entries = demo_run
    with_input = next(e for e in reversed(entries) if "\n" in e["input"])
    without = {"instruction": "Name three primary colors.", "input": ""}
    # the chat's default budget is the training run's max_new_tokens (the demo's 12): generate is asked the same
    budget, source = default_max_new_tokens(parse_config(ChatConfig, ["--model", str(folder)], prog="gpt-sft chat"))
    assert (budget, source) == (12, "the checkpoint's training run")
    expected = [generate_cli(folder, e["instruction"], e["input"], "--max-new-tokens", str(budget))
                for e in (with_input, without)]
    child = _spawn(pexpect, "--model", str(folder))
    try:
        banner = child.before
        assert SINGLE_TURN_NOTE in banner and "Prompt format: alpaca, from the checkpoint's recipe" in banner
        assert "Max new tokens per answer: 12, from the checkpoint's training run." in banner
        child.sendline("/input")
        child.expect_exact("input> ")
        for line in with_input["input"].split("\n"):
            child.sendline(line)
            child.expect_exact("input> ")
        assert "lines)" in _answer(child, "")
        assert _answer(child, with_input["instruction"]) == expected[0] == with_input["output"]
        shown = _answer(child, "/prompt").split("\n")
        assert "\n".join(shown[1:-1]) == format_prompt(with_input, ALPACA), "the exact prompt, input included"
        # an instruction it was never taught: it may run to the budget, and the chat then says so on a line of its own
        assert _turn(child, without["instruction"]) == ("", expected[1])
        assert _answer(child, "/prompt").split("\n")[1:-1] == format_prompt(without, ALPACA).split("\n"), \
            "single-turn: nothing of the first turn is sent"
        assert _answer(child, "/history") == _answer(child, "/reset") == NO_HISTORY
        assert "max new tokens 3" in _answer(child, "/max-new-tokens 3")
        short = _answer(child, with_input["instruction"]).split("\n")
        assert short[0] == generate_cli(folder, with_input["instruction"], "", "--max-new-tokens", "3")
        assert short[1].startswith("[") and "/max-new-tokens raises it" in short[1]
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.fixture(scope="module")
def rambler(tmp_path_factory) -> Path:
    """A random GPT with a long context: its greedy answers run for thousands of tokens."""
    torch.manual_seed(3)
    model = GPTForCausalLM(GPTConfig(n_layer=4, n_embd=256, n_head=4, n_positions=4096, tie_word_embeddings=True))
    return save_checkpoint(model.eval(), tmp_path_factory.mktemp("rambler") / "rambler")


def test_ctrl_c_stops_the_answer_not_the_chat(pexpect, rambler):
    child = _spawn(pexpect, "--model", str(rambler), "--max-new-tokens", "4000")
    try:
        child.sendline("Tell me everything.")
        child.expect_exact("Tell me everything.\r\n")
        child.expect(r"\S")  # the first characters of the answer are on the screen
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact("you> ")
        assert "Ctrl-C" not in child.before and "Traceback" not in child.before
        assert "max new tokens 2" in _answer(child, "/max-new-tokens 2"), "the chat goes on after the stop"
        child.sendintr()  # at an empty prompt: quits
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


# ------------------------------------------------------------------ conversations: the terminal, gpt-sft serve


@pytest.fixture(scope="module")
def recall_model(recall_reference):
    """The recall model (``conftest.recall_run``), loaded here: what it answers a prompt, greedily, as a chat asks it
    (``stream_answer``; ``style`` "raw": the continuation as it is)."""
    folder = recall_reference.folder
    model, tokenizer = load_model(folder, device="cpu", dtype="float32"), load_tokenizer(folder)

    def answer(prompt: str, max_new_tokens: int, style: PromptStyle | str = recall_reference.style) -> str:
        settings = GenerationSettings(max_new_tokens=max_new_tokens, style=style, progress=False)
        return list(stream_answer(model, tokenizer, prompt, settings))[-1].text

    return answer


def _turn(child, line: str) -> tuple[str, str]:
    """Send a message: ``(the lines printed before the answer, the answer)``, less the line saying it was cut."""
    printed = _answer(child, line)
    before, _, answer = printed.partition("]\n") if printed.startswith("[history") else ("", "", printed)
    return before, answer.rpartition("\n[")[0] if "/max-new-tokens raises it]" in answer else answer


@pytest.mark.slow
def test_terminal_chat_keeps_the_conversation_of_a_checkpoint_trained_on_conversations(
        pexpect, recall_reference, recall_model):
    """The recall model in a real terminal, held-out conversations typed turn by turn: every message goes with the
    history in the training layout (the prompt shown by /prompt is the training text up to the next answer), and the
    answers printed are the model's in this process: ``OK.``, the count, then the word of the first turn. /history
    and /reset between conversations; /system; with a context too small for the history, the oldest turns are left
    out and a line says so."""
    reference = recall_reference
    child = _spawn(pexpect, "--model", str(reference.folder), "--max-new-tokens", "4")
    try:
        assert CONVERSATION_NOTE in child.before and SINGLE_TURN_NOTE not in child.before
        for messages, expected in zip(reference.chats, reference.chat_answers, strict=True):
            asked = []
            for message, answer_expected in zip(messages[0::2], expected, strict=True):
                asked.append(message)
                before, answer = _turn(child, message["content"])
                assert before == "" and answer == answer_expected
                shown = _answer(child, "/prompt").split("\n")
                assert shown[0].startswith("--- the prompt last sent")
                assert "\n".join(shown[1:-1]) == render_conversation(asked, reference.style)
                asked.append({"role": "assistant", "content": answer})
            assert asked == messages, "every turn answered right, the word last"
            assert _answer(child, "/history").split("\n")[1:-1] == [line for m in asked
                                                                   for line in (f"[{m['role']}]", m["content"])]
            assert _answer(child, "/reset").startswith("conversation forgotten (3 turns)")

        system = {"role": "system", "content": "Be brief."}
        _answer(child, f"/system {system['content']}")
        *history, question = reference.chats[0][:-1]
        for message in history[0::2]:
            _turn(child, message["content"])
        short = render_conversation([system, question], reference.style)
        context = RECALL_TRAIN["context_length"]
        max_new_tokens = context - tokens(short)  # the system message and the question fit, no earlier turn
        _answer(child, f"/max-new-tokens {max_new_tokens}")
        before, answer = _turn(child, question["content"])
        assert before == "[history: the oldest 2 turns of the conversation left out, so that the prompt fits the " \
                         f"context less the new tokens allowed ({tokens(short)} tokens)"
        assert answer == terminal_safe(recall_model(short, max_new_tokens))
        assert "\n".join(_answer(child, "/prompt").split("\n")[1:-1]) == short
        assert _answer(child, "/reset").startswith("conversation forgotten (3 turns)")
        assert _answer(child, "/max-new-tokens 4").endswith("max new tokens 4, seed 123")
        _turn(child, "Hello.")
        assert "\n".join(_answer(child, "/prompt").split("\n")[1:-1]) == render_conversation(
            [system, {"role": "user", "content": "Hello."}], reference.style)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (the dev extra installs it)")


@contextlib.contextmanager
def served_in_a_thread(app, host: str, port: int) -> Iterator[str]:
    """``app`` served over HTTP by uvicorn (as ``uvicorn.run`` serves it) in a thread of this process; yields its
    ``/v1`` URL; stopped at the end."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server stopped before it started"
            time.sleep(0.05)
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(30)


@needs_llama_cpp
def test_serve_chat_completions_send_the_whole_history_in_the_training_layout(recall_reference, recall_model,
                                                                              tmp_path):
    """``gpt-sft serve`` on the recall model: its GGUF export and the server command it writes for a checkpoint
    trained on conversations, that command's app (llama.cpp's server, its chat route ours) served over HTTP. Each
    held-out conversation sent whole, in the training layout (the reply says which prompt), is answered with the word,
    as in this process; the last question alone is not (one answer for all, as test_conversation_demo's control).
    With a context too small, the oldest turns are left out, the system message kept, and the reply counts them; a
    stream says the same; a message list that is not a conversation is refused in one line naming the turn.

    The app runs in a thread here, not in the process ``gpt-sft serve`` starts (started so, this test took 40 s on 2
    loaded cores, now 6 to 9): the requests go through the same app, built from the same command line."""
    requests = pytest.importorskip("requests")
    from gpt_sft.cli.serve import ServeConfig, gguf_for, served_layout, server_command
    from gpt_sft.cli.serve_conversations import server_app

    reference = recall_reference
    cfg = parse_config(ServeConfig, ["--model", str(reference.folder), "--port", str(free_port()), "--gguf-type", "f32",
                                     "--threads", "1", "--gguf-cache", str(tmp_path / "cache")], prog="gpt-sft serve")
    gguf, name, context = gguf_for(cfg)
    command = server_command(gguf, name, cfg, context, served_layout(cfg))
    assert command[1:3] == ["-m", "gpt_sft.cli.serve_conversations"], "a conversation checkpoint's own server"
    app, server = server_app(command[3:])

    def chat(messages: list[dict], max_tokens: int, **extra):
        return requests.post(f"{url}/chat/completions", timeout=120, json={
            "messages": messages, "temperature": 0, "repeat_penalty": 1.0, "max_tokens": max_tokens, **extra})

    with served_in_a_thread(app, server.host, server.port) as url:
        answers, without_history = [], []
        for messages in reference.conversations:
            reply = chat(messages[:-1], 4).json()
            prompt = render_conversation(messages[:-1], reference.style)
            assert reply["gpt_sft"] == {"dropped_turns": 0, "prompt": prompt, "prompt_tokens": tokens(prompt)}
            assert reply["usage"]["prompt_tokens"] == tokens(prompt), "the server counts the prompt as we do"
            assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["role"] == "assistant"
            answers.append(reply["choices"][0]["message"]["content"])
            without_history.append(chat(messages[-2:-1], 4).json()["choices"][0]["message"]["content"])
        assert answers == reference.answers
        assert reference.exact_match(answers) >= 0.9, list(zip(answers, reference.words))
        assert len(set(without_history)) == 1 and reference.exact_match(without_history) < 0.3

        system = {"role": "system", "content": "Be brief."}
        messages = [system, *reference.chats[0][:-1]]
        short = render_conversation([system, messages[-1]], reference.style)
        max_tokens = context - tokens(short)  # room for the system message and the question only
        reply = chat(messages, max_tokens).json()
        assert reply["gpt_sft"] == {"dropped_turns": 2, "prompt": short, "prompt_tokens": tokens(short)}
        assert reply["usage"]["prompt_tokens"] == tokens(short)
        assert reply["choices"][0]["message"]["content"] == recall_model(short, max_tokens, "raw")
        with chat(messages, max_tokens, stream=True) as streamed:
            events = [json.loads(line[len(b"data: "):]) for line in streamed.iter_lines()
                      if line.startswith(b"data: {")]
        assert events[0]["gpt_sft"] == reply["gpt_sft"] and events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert {e["object"] for e in events} == {"chat.completion.chunk"}
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == \
            reply["choices"][0]["message"]["content"]

        refused = chat([*messages, {"role": "user", "content": "And the word?"}], 4)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "gpt-sft serve: messages: turn 6: two user turns in a row " \
                                                     "(turns 5 and 6)"


@needs_llama_cpp
@pytest.mark.slow
def test_serve_keeps_a_checkpoint_trained_on_single_turns_single_turn(demo_server):
    """The demo was trained on Alpaca data: ``/v1/chat/completions`` answers one message with its single-turn
    template, as before conversations existed, and refuses a history with the template's own message."""
    requests = pytest.importorskip("requests")
    url, _, _ = demo_server
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."},
                {"role": "user", "content": "Another one?"}]
    refused = requests.post(f"{url}/v1/chat/completions", json={"messages": messages, "max_tokens": 4}, timeout=120)
    assert refused.status_code == 500 and "single-turn format" in refused.json()["error"]["message"]
    reply = requests.post(f"{url}/v1/chat/completions", json={"messages": messages[-1:], "max_tokens": 4},
                          timeout=120).json()
    assert reply["object"] == "chat.completion" and "gpt_sft" not in reply
