"""``gpt-sft chat --web`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The page is served by a ``gpt-sft chat --web`` process; the test types into it as a user does, waits
for the status to say ``done`` and reads the answer off the page: it must be what ``gpt-sft generate
--prompt`` prints. The screenshot is kept in ``test-artifacts/chat-web.png``. The same page then asks
``gpt-sft serve`` (llama.cpp, the demo exported to an f32 GGUF) through its endpoint field. Without the
browser or Playwright the tests skip, saying which is missing; in CI (``GPT_SFT_LANE`` set, and
``.ci/run`` installs Chromium) they fail instead. A checkpoint trained on conversations (``conftest.recall_run``)
gets the conversation page, served from a thread of the test's process, and holds held-out conversations there, each
answer the model's own in this process, the word of the first turn last (issue 25, item 8).

What the page exposes is tested as the attacks are made: requests to the running server (Gradio's HTTP
API, as any client can send them) that name a listener of ours as the endpoint, or another ``Host``; the
listener is a real HTTP server in a thread that records every request and its ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import importlib.util
import itertools
import json
import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import RECALL_TRAIN, REPO_ROOT, free_port, generate_cli, gpt_sft_server, on_every_core, stop_process
from test_chat import rambler, recall_model  # noqa: F401 - the fixtures, used by name
from test_chat import tokens

from gpt_sft.cli.chat import ChatConfig, answerer
from gpt_sft.cli.chat import main as chat_main
from gpt_sft.cli.chat_web import PAGE_ENDPOINT_REFUSED, WebChat
from gpt_sft.common.options import parse_config
from gpt_sft.data.conversation_format import render_conversation
from gpt_sft.data.prompts import format_prompt, get_prompt_style
from gpt_sft.generate.chat import ChatSession
from gpt_sft.generate.remote import RemoteModel
from gpt_sft.generate.settings import GenerationSettings

ARTIFACTS = REPO_ROOT / "test-artifacts"
IN_CI = bool(os.environ.get("GPT_SFT_LANE"))
ALPACA = get_prompt_style("alpaca")
API_KEY = "sk-test-not-for-any-page"  # in the web chat's environment: a key the page must not spend
DEMO_PAGES = pytest.mark.xdist_group("demo-pages")  # demo_page's worker (the browser's): the page starts once


def _missing(reason: str):
    if IN_CI:
        pytest.fail(f"{reason}: .ci/run installs it, and CI must run the browser test")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the system's packages, through Playwright (never Playwright's own download)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        _missing("Chromium is not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        _missing("playwright is not installed (the dev extra installs it)")
    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        with on_every_core():  # Playwright's driver, then the browser, are started here
            playwright = stack.enter_context(sync_playwright())
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _web_chat(folder: Path, log: Path, *flags: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    return gpt_sft_server(["chat", "--model", str(folder), "--web", "--port", str(port), *flags], log, url), url


@pytest.fixture(scope="module")
def demo_page(demo_run, tmp_path_factory):
    """``gpt-sft chat --web`` on the trained demo, with ``$OPENAI_API_KEY`` set as a user's may be; yields its URL."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", API_KEY)
        proc, url = _web_chat(demo_run[0], tmp_path_factory.mktemp("chat-web") / "chat.log")
    try:
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
def listener():
    """A real OpenAI-compatible server on a free 127.0.0.1 port, in a thread: it lists one model, answers every
    completion "Hi." and records ``(method, path, Authorization header)`` of each request. Yields ``(URL, records)``."""
    seen: list[tuple[str, str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.answer(json.dumps({"data": [{"id": "listener"}]}), "application/json")

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.answer('data: {"choices": [{"text": "Hi.", "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n',
                        "text/event-stream")

        def answer(self, text: str, content_type: str) -> None:
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            body = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # the test reads the records, not stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _page_request(url: str, endpoint: str) -> list:
    """The page's Send as any HTTP client can make it (Gradio's HTTP API): the last update, ``[answer, prompt,
    status, ...]``."""
    data = ["Say hi.", "", 0, 0, 8, None, endpoint, 0]  # instruction, input, the settings, endpoint, turns so far
    request = urllib.request.Request(f"{url}gradio_api/call/respond", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        event_id = json.load(reply)["event_id"]
    # a bound for a page that never answers, not a speed: a fresh page's first answer took over 120 s once, on 2
    # cores with two training loops and another suite beside it
    with urllib.request.urlopen(f"{url}gradio_api/call/respond/{event_id}", timeout=600) as reply:
        events = reply.read().decode()  # server-sent events: "event: complete\ndata: [...]" last
    return json.loads([line for line in events.splitlines() if line.startswith("data:")][-1][len("data:"):])


@DEMO_PAGES
def test_the_page_cannot_make_the_server_ask_an_endpoint_it_names(demo_page, listener):
    """The attack: a request to the web chat (its environment holds an API key) naming our listener as the
    endpoint. Refused before anything is sent: no key, and no request to a URL of the page's choosing."""
    url, seen = listener
    answer, _, status, *_ = _page_request(demo_page, url)
    assert status == f"error (turn 1): {PAGE_ENDPOINT_REFUSED}" and answer == ""
    assert "--allow-page-endpoint" in status
    assert seen == [], "nothing reaches the page's endpoint"


def test_a_message_typed_while_an_answer_ends_is_not_wiped(listener):
    """A conversation's turn empties the message box once, when its answer starts; its later updates leave the box as
    it is. They emptied it every time, and the browser test that typed its next message at the status' "done" and
    clicked Send saw that message wiped by the turn's last update ("type a message first", on 2 loaded cores)."""
    import gradio

    from gpt_sft.data.conversation_format import conversation_layout
    from gpt_sft.generate.chat import ConversationFormat

    url, _ = listener
    cfg = parse_config(ChatConfig, ["--url", url, "--web"], prog="gpt-sft chat")
    answer, _ = answerer(cfg)
    phi3 = get_prompt_style("phi3")
    chat = WebChat(ChatSession(answer, phi3, cfg.settings(), ConversationFormat(conversation_layout(phi3), len, None)),
                   allow_page_endpoint=False)
    updates = list(chat.converse("Hello.", "", 0, 0, 8, None, "", 0, []))
    boxes = [update[-1] for update in updates]
    assert len(boxes) >= 3 and boxes[0] == "" and all(box == gradio.skip() for box in boxes[1:]), boxes
    assert updates[-1][2] == "done (turn 1): 1 new tokens, end of text"
    assert updates[-1][5] == [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": "Hi."}]


def test_with_allow_page_endpoint_the_key_goes_only_to_the_command_lines_url(listener, monkeypatch):
    """``--url`` (the command line's) gets ``Authorization: Bearer KEY``; the endpoint a page names, allowed by
    ``--allow-page-endpoint``, is asked and answers, but gets no Authorization header, even at the same URL."""
    url, seen = listener
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    cfg = parse_config(ChatConfig, ["--url", url, "--web", "--allow-page-endpoint"], prog="gpt-sft chat")
    answer, _ = answerer(cfg)  # what gpt-sft chat's main does before chat_web.serve
    chat = WebChat(ChatSession(answer, ALPACA, cfg.settings()), allow_page_endpoint=cfg.allow_page_endpoint)
    *_, (text, _, status, _, _) = chat.respond("Say hi.", "", 0, 0, 8, None, "", 0)
    assert (text, status) == ("Hi.", "done (turn 1): 1 new tokens, end of text")
    assert seen == [("GET", "/v1/models", f"Bearer {API_KEY}"), ("POST", "/v1/completions", f"Bearer {API_KEY}")]
    seen.clear()
    *_, (text, _, status, _, _) = chat.respond("Say hi.", "", 0, 0, 8, None, url, 1)
    assert (text, status) == ("Hi.", "done (turn 2): 1 new tokens, end of text")
    assert seen == [("GET", "/v1/models", None), ("POST", "/v1/completions", None)]


def test_the_page_starts_when_its_first_render_is_slow(listener, monkeypatch):
    """On a busy machine the page's first render can take seconds. Gradio's launch asked for the page itself (one
    HEAD, 3 s, then it gave up) and refused to start, "When localhost is not accessible, a shareable link must be
    created": three web chat tests failed so on 2 loaded cores. A HEAD held back 4 s stands in for that machine (the
    real load cannot be made to last a given time here); the server is real, started as ``gpt-sft chat --web``
    starts it, and must serve the page."""
    from gpt_sft.cli import chat_web

    class SlowFirstRender(chat_web.HostCheck):  # the page's HEAD waits, as a render does on a loaded machine
        async def __call__(self, scope, receive, send) -> None:
            if scope["type"] == "http" and scope["method"] == "HEAD":
                await asyncio.sleep(4)
            await super().__call__(scope, receive, send)

    monkeypatch.setattr(chat_web, "HostCheck", SlowFirstRender)
    url, _ = listener
    port = free_port()
    cfg = parse_config(ChatConfig, ["--url", url, "--web", "--port", str(port)], prog="gpt-sft chat")
    answer, _ = answerer(cfg)
    ended: list[object] = []

    def serve() -> None:
        try:
            ended.append(chat_web.serve(ChatSession(answer, ALPACA, cfg.settings()), "banner", cfg))
        except BaseException as error:  # noqa: BLE001 - the test reports what stopped the server
            ended.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for _ in itertools.count():
            assert not ended, f"the web chat stopped at launch: {ended[0]!r}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=60) as page:
                    assert page.status == 200 and b"gpt-sft chat" in page.read()
                    break
            time.sleep(0.2)
        thread.join(6)  # past the HEAD's 4 s: Gradio's check, were it still made, would have given up by now
        assert not ended, f"the web chat stopped after launch: {ended[0]!r}"
    finally:
        import gradio

        gradio.close_all(verbose=False)
        thread.join(60)


@DEMO_PAGES
def test_on_loopback_the_server_answers_only_requests_for_its_own_names(demo_page):
    """DNS rebinding: a web page the user visits points its own domain at 127.0.0.1 and uses the chat as a page of
    that domain; its requests name that domain in ``Host``, and are refused."""
    port = urlsplit(demo_page).port

    def status(host: str, path: str = "/") -> int:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            connection.request("GET", path, headers={"Host": host})
            return connection.getresponse().status
        finally:
            connection.close()

    assert status("evil.example") == 403
    assert status(f"evil.example:{port}", "/config") == 403
    assert status(f"127.0.0.1:{port}") == 200
    assert status(f"localhost:{port}", "/config") == 200


def _open(browser, url: str, ready: str = "#instruction textarea"):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.locator(ready).wait_for(timeout=60_000)
    return page


def _status(page) -> str:
    return page.locator("#status input").input_value()


def _ask(page, turn: int, instruction: str, input_: str | None = None, *, enter: bool = False) -> str:
    """Type the tab's ``turn``-th turn, send it, wait for its stream to end; the answer as the page shows it."""
    page.locator("#instruction textarea").fill(instruction)
    if input_ is not None:
        page.locator("#input textarea").fill(input_)
    if enter:
        page.locator("#instruction textarea").press("Enter")
    else:
        page.locator("#send").click()
    # the status names the tab's turn: "generating... (turn N)", then "done (turn N): ..." after the last update
    page.wait_for_function("n => ['done', 'error'].some(word => document.querySelector('#status input').value"
                           ".startsWith(`${word} (turn ${n})`))", arg=turn, timeout=120_000)
    assert _status(page).startswith(f"done (turn {turn})"), _status(page)
    return page.locator("#answer textarea").input_value()


def _shown_prompt(page) -> str:
    """The prompt panel's text, opening the panel (closed until asked for) first."""
    if not page.locator("#prompt textarea").is_visible():
        page.get_by_text("The exact prompt sent to the model").click()
    return page.locator("#prompt textarea").input_value()


def _set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Tab")  # Gradio takes a number field's value when it loses focus


def test_the_web_chat_answers_in_the_browser_as_generate_does(browser, demo_page, demo_run):
    folder, entries = demo_run
    entry = next(e for e in reversed(entries) if "\n" in e["input"])
    expected = generate_cli(folder, entry["instruction"], entry["input"])
    page = _open(browser, demo_page)
    try:
        assert "no history is sent to the model" in page.content()
        assert not page.locator("#conversation").count() and not page.locator("#reset").count(), "one turn at a time"
        assert not page.locator("#endpoint").is_visible(), "only --allow-page-endpoint lets the page name a server"
        assert _ask(page, 1, entry["instruction"], entry["input"]) == expected == entry["output"]
        assert _status(page).endswith("end of text")
        assert not page.locator("#prompt textarea").is_visible(), "the prompt is shown on request"
        assert _shown_prompt(page) == format_prompt(entry, ALPACA)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "chat-web.png"), full_page=True)
        print(f"screenshot: {ARTIFACTS / 'chat-web.png'}")

        _set_number(page, "max-new-tokens", "3")  # the settings are the page's
        short = _ask(page, 2, entry["instruction"], "", enter=True)
        assert short == generate_cli(folder, entry["instruction"], "", "--max-new-tokens", "3")
        assert "the most new tokens allowed" in _status(page)
        assert page.locator("#prompt textarea").input_value() == format_prompt({**entry, "input": ""}, ALPACA)
    finally:
        page.close()
    assert (ARTIFACTS / "chat-web.png").stat().st_size > 10_000


@contextlib.contextmanager
def web_chat_in_a_thread(*argv: str) -> Iterator[str]:
    """``gpt-sft chat --web ARGV`` (its main, as the command runs it) in a thread of this process on a free port;
    yields its URL once the page answers; every Gradio server of this process is closed at the end. For the pages
    whose point is the page: ``demo_page`` is the one started as the command (its process, its start-up); a second
    process only imports torch, transformers and Gradio again (~15 CPU-s; the fixture that started one took 18 to
    36 s, the browser's launch included, on 2 loaded cores)."""
    import gradio

    port = free_port()
    ended: list[object] = []

    def serve() -> None:
        try:
            ended.append(chat_main([*argv, "--web", "--port", str(port)]))
        except BaseException as error:  # noqa: BLE001 - the test reports what stopped the server
            ended.append(error)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180  # a bound for a page that never comes up, not a speed
        while True:
            assert not ended, f"the web chat stopped at launch: {ended[0]!r}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=60) as page:
                    if page.status == 200:
                        break
            assert time.monotonic() < deadline, f"no page at {url}"
            time.sleep(0.2)
        yield url
    finally:
        gradio.close_all(verbose=False)
        thread.join(60)


def _converse(page, turn: int, message: str) -> list[str]:
    """Send the tab's ``turn``-th message, wait for its answer to end; the answers the view shows, in order."""
    page.locator("#message textarea").fill(message)
    page.locator("#send").click()
    page.wait_for_function("n => ['done', 'error'].some(word => document.querySelector('#status input').value"
                           ".startsWith(`${word} (turn ${n})`))", arg=turn, timeout=120_000)
    assert _status(page).startswith(f"done (turn {turn})"), _status(page)
    return _shown(page, "bot")


def _shown(page, role: str) -> list[str]:
    """The view's messages of ``role`` (``user`` or ``bot``), their spaces as the browser lays them out."""
    return [" ".join(text.split()) for text in page.locator(f"#conversation [data-testid={role}]").all_inner_texts()]


# Gradio's queue, in this process here, uses a pandas option that pandas 3 deprecates: its warnings, not ours
@pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
def test_the_web_chat_holds_a_conversation_with_a_checkpoint_trained_on_conversations(
        browser, recall_reference, recall_model):  # noqa: F811 - the fixture
    """The recall model's page, held-out conversations typed turn by turn: the view holds the tab's conversation; each
    message is sent with its history in the training layout (the prompt panel shows it) and answered as in this
    process: ``OK.``, the count, then the word of the first turn. Reset forgets the conversation; with a system
    message and the context too small, the oldest turns are left out, the view says so, the system message is kept."""
    reference = recall_reference

    def spaced(text: str) -> str:
        return " ".join(text.split())

    with web_chat_in_a_thread("--model", str(reference.folder), "--max-new-tokens", "4") as url:
        page = _open(browser, url, ready="#message textarea")
        try:
            assert "each message is sent with the history of this chat" in page.content()
            assert not page.locator("#instruction").count() and not page.locator("#input").count()
            turns = itertools.count(1)
            for messages, expected in zip(reference.chats, reference.chat_answers, strict=True):
                asked = []
                for message, answer in zip(messages[0::2], expected, strict=True):
                    asked.append(message)
                    shown = _converse(page, next(turns), message["content"])
                    assert shown == [spaced(m["content"]) for m in asked[1::2]] + [answer]
                    assert _shown_prompt(page) == render_conversation(asked, reference.style)
                    asked.append({"role": "assistant", "content": answer})
                assert asked == messages, "every turn answered right, the word last"
                assert _shown(page, "user") == [spaced(m["content"]) for m in messages[0::2]]
                assert page.locator("#history-note").inner_text() == ""
                _reset(page)

            system = {"role": "system", "content": "Be brief."}
            page.locator("#system textarea").fill(system["content"])
            *history, question = reference.chats[0][:-1]
            for message in history[0::2]:
                _converse(page, next(turns), message["content"])
            short = render_conversation([system, question], reference.style)
            max_new_tokens = RECALL_TRAIN["context_length"] - tokens(short)  # no earlier turn fits with the question
            _set_number(page, "max-new-tokens", str(max_new_tokens))
            assert _converse(page, next(turns), question["content"])[-1] == spaced(recall_model(short, max_new_tokens))
            assert _shown_prompt(page) == short
            assert page.locator("#history-note").inner_text() == (
                "history: the oldest 2 turns of the conversation left out, so that the prompt fits the context less "
                f"the new tokens allowed ({tokens(short)} tokens)")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "chat-web-conversation.png"), full_page=True)

            _reset(page)
            _set_number(page, "max-new-tokens", "4")
            _converse(page, next(turns), "Hello.")
            assert _shown_prompt(page) == render_conversation([system, {"role": "user", "content": "Hello."}],
                                                              reference.style)
        finally:
            page.close()


def _reset(page) -> None:
    """Click Reset; the conversation is forgotten, in the view too."""
    page.locator("#reset").click()
    page.wait_for_function("() => document.querySelector('#status input').value.startsWith('conversation "
                           "forgotten')", timeout=60_000)
    assert _shown(page, "user") == [] and page.locator("#history-note").inner_text() == ""


@pytest.mark.slow
def test_the_page_streams_and_its_stop_button_stops(browser, rambler):  # noqa: F811 - the fixture
    """On a random model whose answers run on: the answer grows in the page, Stop ends it."""
    with web_chat_in_a_thread("--model", str(rambler), "--max-new-tokens", "3000") as url:
        page = _open(browser, url)
        try:
            stream_and_stop(page)
        finally:
            page.close()


def stream_and_stop(page) -> None:
    """Ask for an answer that runs on; see it grow, press Stop, see it end."""
    page.locator("#instruction textarea").fill("Tell me everything.")
    page.locator("#send").click()
    seen: list[str] = []
    deadline = time.monotonic() + 180  # a loaded 2-core machine is slow to the first tokens
    while len({s for s in seen if s}) < 3:
        assert time.monotonic() < deadline and not _status(page).startswith("done"), (seen[-1:], _status(page))
        seen.append(page.locator("#answer textarea").input_value())
        time.sleep(0.2)
    assert _status(page).startswith("generating")
    grown = [s for s in seen if s]
    assert all(b.startswith(a) for a, b in itertools.pairwise(grown)), "the answer only grows"
    page.locator("#stop").click()
    page.wait_for_function("() => document.querySelector('#status input').value.startsWith('stopped (turn 1)')",
                           timeout=60_000)
    stopped = page.locator("#answer textarea").input_value()
    assert stopped.startswith(grown[-1])
    time.sleep(1)
    assert page.locator("#answer textarea").input_value() == stopped, "nothing arrives after Stop"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (the dev extra installs it)")
def test_the_same_page_talks_to_gpt_sft_serve(browser, demo_run, demo_server):
    """The demo exported to an f32 GGUF and served by llama.cpp: asked through the page's endpoint field
    (``--allow-page-endpoint``) and through RemoteModel directly, it answers what ``gpt-sft generate --prompt``
    prints."""
    folder, entries = demo_run
    url, _, _ = demo_server
    remote = RemoteModel(url)
    assert remote.name == "demo"
    settings = GenerationSettings(max_new_tokens=16, progress=False)
    for entry in entries[-3:]:
        updates = list(remote.stream(format_prompt(entry, ALPACA), settings))
        assert updates[-1].done and updates[-1].stopped_at_eos and updates[-1].text == entry["output"], entry
        assert all(b.text.startswith(a.text) for a, b in itertools.pairwise(updates))
    entry = next(e for e in reversed(entries) if "\n" in e["input"])
    expected = generate_cli(folder, entry["instruction"], entry["input"])
    with web_chat_in_a_thread("--model", str(folder), "--allow-page-endpoint") as page_url:
        page = _open(browser, page_url)
        try:
            page.locator("#endpoint textarea").fill(url)
            assert _ask(page, 1, entry["instruction"], entry["input"]) == expected
            assert _shown_prompt(page) == format_prompt(entry, ALPACA)
            page.locator("#endpoint textarea").fill(f"http://127.0.0.1:{free_port()}")
            page.locator("#send").click()
            page.wait_for_function("() => document.querySelector('#status input').value.startsWith('error (turn 2)')",
                                   timeout=60_000)
            assert "no server answers" in _status(page) and "gpt-sft serve" in _status(page)
        finally:
            page.close()


def test_the_readme_shows_both_chats_and_a_small_screenshot():
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Talk to your model"):]
    assert ".venv/bin/gpt-sft chat --model outputs/demo\n" in section
    assert ".venv/bin/gpt-sft chat --model outputs/demo --web --port 7860\n" in section
    image = REPO_ROOT / "docs" / "chat-web.png"
    assert "](docs/chat-web.png)" in section and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.stat().st_size < 200_000


def test_the_readme_shows_the_conversational_demo_s_two_commands_and_a_small_screenshot():
    """Issue 25, item 9: the commands whose data and recipe ``conftest.recall_run`` trains, and the web chat holding
    a conversation on their model."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("The offline demo has a conversational variant"):readme.index("### Talk to your model")]
    assert ".venv/bin/python -m gpt_sft.data.synthetic outputs/demo-conversations.json 400 --conversations\n" in section
    assert ".venv/bin/accelerate launch -q scripts/train.py --config scripts/recipes/demo-conversations.yaml" in section
    image = REPO_ROOT / "docs" / "chat-web-conversation.png"
    assert "](docs/chat-web-conversation.png)" in section and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.stat().st_size < 200_000
