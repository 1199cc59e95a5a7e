"""``gpt-sft chat --web`` in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The page is served by a ``gpt-sft chat --web`` process; the test types into it as a user does, waits
for the status to say ``done`` and reads the answer off the page: it must be what ``gpt-sft generate
--prompt`` prints. The screenshot is kept in ``test-artifacts/chat-web.png``. The same page then asks
``gpt-sft serve`` (llama.cpp, the demo exported to an f32 GGUF) through its endpoint field. Without the
browser or Playwright the tests skip, saying which is missing; in CI (``GPT_SFT_LANE`` set, and
``.ci/run`` installs Chromium) they fail instead.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, free_port, generate_cli, gpt_sft_server, stop_process
from test_chat import rambler  # noqa: F401 - rambler: the fixture, used by name

from gpt_sft.data.prompts import format_prompt, get_prompt_style
from gpt_sft.generate.remote import RemoteModel
from gpt_sft.generate.settings import GenerationSettings

ARTIFACTS = REPO_ROOT / "test-artifacts"
IN_CI = bool(os.environ.get("GPT_SFT_LANE"))
ALPACA = get_prompt_style("alpaca")


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

    with sync_playwright() as playwright:
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
    """``gpt-sft chat --web`` on the trained demo; yields its URL."""
    proc, url = _web_chat(demo_run[0], tmp_path_factory.mktemp("chat-web") / "chat.log")
    try:
        yield url
    finally:
        stop_process(proc)


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(url)
    page.locator("#instruction textarea").wait_for(timeout=60_000)
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


@pytest.mark.slow
def test_the_page_streams_and_its_stop_button_stops(browser, rambler, tmp_path):  # noqa: F811 - the fixture
    """On a random model whose answers run on: the answer grows in the page, Stop ends it."""
    proc, url = _web_chat(rambler, tmp_path / "chat.log", "--max-new-tokens", "3000")
    page = _open(browser, url)
    try:
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
    finally:
        page.close()
        stop_process(proc)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (the dev extra installs it)")
def test_the_same_page_talks_to_gpt_sft_serve(browser, demo_page, demo_run, demo_server):
    """The demo exported to an f32 GGUF and served by llama.cpp: asked through the page's endpoint field
    (and through RemoteModel directly), it answers what ``gpt-sft generate --prompt`` prints."""
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
    page = _open(browser, demo_page)
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
