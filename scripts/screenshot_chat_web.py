#!/usr/bin/env python
"""The README's screenshot of the web chat holding a conversation (docs/chat-web-conversation.png).

Starts ``gpt-sft chat --model MODEL --web`` on a free 127.0.0.1 port, types the messages into the page in headless
Chromium (Debian's ``chromium``, driven by Playwright: the dev extra), waits for each answer and saves the page::

    python scripts/screenshot_chat_web.py --model outputs/demo-conversations --out docs/chat-web-conversation.png

The answers are printed, so a model that answered wrongly is seen before its screenshot is committed.
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# The demo's recall conversation: a word, a counting task that does not contain it, the question for it
MESSAGES = ('Remember the word "blue".', "Count the words in the list. List: cat", "What was the word?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_chat(model: str, port: int, max_new_tokens: int | None, log) -> subprocess.Popen:
    flags = [] if max_new_tokens is None else ["--max-new-tokens", str(max_new_tokens)]
    proc = subprocess.Popen([sys.executable, "-m", "gpt_sft.cli.main", "chat", "--model", model, "--web", *flags,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180  # Gradio's import alone takes many seconds on a busy small CPU
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise SystemExit(f"gpt-sft chat --web did not come up on {url}; its log: {log.name}")


def converse(page, turn: int, message: str) -> str:
    """Send the page's ``turn``-th message and wait for its status to say the answer ended; the answer shown."""
    page.locator("#message textarea").fill(message)
    page.locator("#send").click()
    page.wait_for_function("n => ['done', 'error'].some(w => document.querySelector('#status input').value"
                           ".startsWith(`${w} (turn ${n})`))", arg=turn, timeout=120_000)
    status = page.locator("#status input").input_value()
    if not status.startswith("done"):
        raise SystemExit(f"turn {turn}: {status}")
    return page.locator("#conversation [data-testid=bot]").all_inner_texts()[-1].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/demo-conversations")
    parser.add_argument("--out", default="docs/chat-web-conversation.png")
    parser.add_argument("--width", type=int, default=1000, help="The page's width in pixels")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="Default: the chat's (the training run's max_new_tokens, at most a quarter of the context)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.NamedTemporaryFile("wb", suffix=".log", delete=False) as log:
        port = free_port()
        proc = start_chat(args.model, port, args.max_new_tokens, log)
        url = f"http://127.0.0.1:{port}/"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium, headless=True)
                page = browser.new_page(viewport={"width": args.width, "height": 800})
                page.goto(url)
                page.locator("#message textarea").wait_for(timeout=60_000)
                for turn, message in enumerate(MESSAGES, 1):
                    print(f"> {message}\n{converse(page, turn, message)}")
                # the whole conversation, not the view's scrolled end
                page.add_style_tag(content="#conversation, #conversation * {height: auto !important; "
                                           "max-height: none !important; overflow: visible !important}")
                png = page.screenshot(full_page=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    save_small(png, Path(args.out))
    return 0


def save_small(png: bytes, out: Path) -> None:
    """The screenshot with a 256-colour palette: a page of flat colours and text stays sharp at a third of the size
    (the README's images are kept small)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)
    print(f"wrote {out} ({image.width}x{image.height}, {out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    sys.exit(main())
