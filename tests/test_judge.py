"""Tests of the LLM judge (gpt_sft.judge, gpt-sft evaluate) against local stand-in servers.

Ollama cannot be installed here, so its native streaming ``/api/chat`` protocol is spoken by a small
threaded ``http.server`` on 127.0.0.1 written below (:class:`FakeJudgeServer`); the same server also
speaks the OpenAI-compatible ``/v1/chat/completions``. It can be scripted per request (reply text,
HTTP status, delay, hang) and counts requests per judge prompt, which is how the tests check that
retries happen, that cached entries are never asked again and that the API key is sent as a Bearer
header and appears nowhere else. The real OpenAI-compatible server (llama.cpp) is exercised in
``test_judge_server.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpt_sft.cli.evaluate import main as evaluate_main
from gpt_sft.common import atomic_io
from gpt_sft.judge.backends import HFJudge, OllamaJudge, OpenAIJudge
from gpt_sft.judge.cache import ScoreCache, cache_key
from gpt_sft.judge.errors import JudgeFatalError, JudgeRequestError, JudgeUnavailableError
from gpt_sft.judge.http import JudgeConfig
from gpt_sft.judge.prompt import build_judge_prompt, parse_score
from gpt_sft.judge.scoring import EntryResult, score_responses

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-SECRET-0123456789abcdef"


# --------------------------------------------------------------------------------------------------
# A scriptable local judge server (Ollama native streaming + OpenAI-compatible)
# --------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the fake server does for one request."""

    text: str = "85"
    status: int = 200
    delay: float = 0.0  # seconds before answering
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body for error statuses (default: a JSON error)
    lines: list[str] | None = None  # raw Ollama stream lines instead of the normal chunks
    hang: bool = False  # never answer (until the server stops)
    finish_reason: str = "stop"  # why the reply ended ("length": cut by max_tokens)


def response_of(prompt: str) -> str:
    """The model response embedded in a judge prompt (between 'score the model response `' and '`')."""
    m = re.search(r"score the model response `(.*)` on a scale", prompt, re.S)
    return m.group(1) if m else ""


class FakeJudgeServer:
    """Threaded HTTP server on 127.0.0.1 speaking Ollama's ``/api/chat`` stream and ``/v1/chat/completions``, and
    their raw completions (``/api/generate``, ``/v1/completions``: the prompt is the request's ``prompt``).

    ``responder(prompt, n, request)`` returns a :class:`Reply`; ``n`` is how many times this prompt
    has been asked so far (1 for the first time). ``counts`` counts requests per prompt. ``pages``: the JSON
    answered to other paths (``GET /props``, ``POST /api/show``), by path.
    """

    def __init__(self, responder: Callable[[str, int, dict], Reply] | None = None,
                 pages: dict[str, dict] | None = None) -> None:
        self.responder = responder or (lambda prompt, n, req: Reply("85"))
        self.pages = pages or {}
        self.counts: Counter[str] = Counter()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection; body ends at close

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802
                self._page()

            def _page(self):
                if self.path not in server.pages:
                    self.send_error(404)
                    return
                payload = json.dumps(server.pages[self.path]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path in server.pages:
                    self._page()
                    return
                prompt = body["prompt"] if "prompt" in body else body.get("messages", [{}])[-1].get("content", "")
                request = {"path": self.path, "headers": dict(self.headers), "body": body}
                with server.lock:
                    server.counts[prompt] += 1
                    n = server.counts[prompt]
                    server.requests.append(request)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    reply = server.responder(prompt, n, request)
                    if reply.hang:
                        server._stop.wait(60)
                        return
                    if reply.delay:
                        time.sleep(reply.delay)
                    if reply.status != 200:
                        payload = (reply.body if reply.body is not None
                                   else json.dumps({"error": f"status {reply.status}"})).encode()
                        self.send_response(reply.status)
                        for k, v in reply.headers.items():
                            self.send_header(k, v)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                    if self.path == "/api/chat" and reply.lines is not None:
                        self.send_response(200)
                        self.end_headers()
                        self.wfile.write("".join(line + "\n" for line in reply.lines).encode())
                    elif self.path in ("/api/chat", "/api/generate"):
                        self._ollama(body, reply.text, reply.finish_reason)
                    elif self.path in ("/v1/chat/completions", "/v1/completions"):
                        self._openai(body, reply.text, reply.finish_reason)
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _ollama(self, body, text, finish_reason="stop"):
                # Ollama streams newline-delimited JSON chunks, then one with "done": true
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                pieces = [text[i:i + 2] for i in range(0, len(text), 2)] or [""]
                for piece in pieces:
                    chunk = ({"model": body.get("model"), "response": piece, "done": False} if "prompt" in body
                             else {"model": body.get("model"), "message": {"role": "assistant", "content": piece},
                                   "done": False})
                    self.wfile.write((json.dumps(chunk) + "\n").encode())
                    self.wfile.flush()
                self.wfile.write((json.dumps({"model": body.get("model"), "done": True, "done_reason": finish_reason})
                                  + "\n").encode())

            def _openai(self, body, text, finish_reason="stop"):
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 **({"text": text} if "prompt" in body
                                    else {"message": {"role": "assistant", "content": text}})}],
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeJudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def asks_for(self, entry: dict, key: str = "model_response") -> int:
        """How many times the judge prompt of ``entry`` was requested."""
        return self.counts[build_judge_prompt(entry, entry[key])]


def make_entries(n: int, *, empty: tuple[int, ...] = ()) -> list[dict]:
    """``n`` book-format entries; the response of entry i is 'resp-i' (or '' for i in ``empty``)."""
    return [
        {
            "instruction": f"Instruction number {i}.",
            "input": "some input" if i % 2 else "",
            "output": f"Correct output {i}.",
            "model_response": "" if i in empty else f"resp-{i}",
        }
        for i in range(n)
    ]


def fast_config(server: FakeJudgeServer, backend: str = "ollama", **kw) -> JudgeConfig:
    kw.setdefault("timeout", 5.0)
    kw.setdefault("retries", 2)
    kw.setdefault("backoff", 0.01)
    return JudgeConfig(backend=backend, url=server.url, **kw)


# --------------------------------------------------------------------------------------------------
# parse_score
# --------------------------------------------------------------------------------------------------

PARSE_TABLE = [
    # bare numbers (what the prompt asks for)
    ("85", 85), ("  85\n", 85), ("85.", 85), ("0", 0), ("100", 100), ("**85**", 85), ("`85`", 85),
    ('"85"', 85), ("85%", 85), ("+85", 85),
    # decimals round half up
    ("85.5", 86), ("84.4", 84), ("99.5", 100), ("0.4", 0),
    # out of range
    ("150", None), ("-5", None), ("101", None), ("100.4", None), ("\u22125", None),
    # fractions are scaled to 0-100
    ("85/100", 85), ("Score: 7/10", 70), ("4 out of 5", 80), ("7.5/10", 75), ("85 (out of 100)", 85),
    ("11/10", None), ("5/0", None),
    # cues
    ("The answer is 85.", 85), ("The answer is 100.", 100), ("Score: 92", 92), ("**Score:** 92", 92),
    ("score = 40", 40), ("Rating: 8/10", 80), ("Final score: 77\nThe response is ok.", 77),
    ("I would give it a score of 75 out of 100.", 75), ("I'd rate it 90%", 90),
    ("I\u2019d give this response 60.", 60), ("I give it 35", 35),
    ("Score: 85. Two of the 3 sentences are fine.", 85),
    ("Score: 85. The reference would get a score of 100.", None),  # two different cued values
    ("Score: 150", None), ("Score -5", None), ("The answer is 85, final score: 85", 85),
    # no cue: a single distinct number
    ("I think 85 is fair.", 85), ("85\n\nThe response matches the reference.", 85),
    ("On a scale from 0 to 100, 85.", 85), ("Out of 100, 85", 85), ("85 ... yes, 85", 85),
    ("Based on the comparison the response is accurate but less vivid than the reference: 85", 85),
    ("85. The response is accurate and uses a fitting simile, though less vivid than lightning.", 85),
    # an uncued lone number inside longer prose is not a score (real SmolLM2-135M replies)
    ("A sonnet is a 14-line poem with a specific rhyme scheme and meter, often written in iambic pentameter.",
     None),
    ("The chemical formula for magnesium sulfate is 2Mg(OH)3.", None),
    ("```python\ndef is_prime(n):\n    if n < 2:\n        return False\n    max_num = int(input(", None),
    ("The sentence is: The transient nature of her visit left a lasting impression.\n\nOutput: 0.5, the model "
     "response was `She was seen", None),
    ("The car is as fast as a bullet.", None), ("1000 grams is equal to 1 kilogram.", None),
    ("The task is to provide the plural form of 'cactus' with a score of 100.", 100),  # cued
    ("a 3-year-old could do it", None),
    # several different numbers without a cue: ambiguous
    ("80 or 90", None), ("Between 70 and 80", None), ("1. Accuracy 2. Style", None),
    # nothing numeric / junk
    ("", None), ("   ", None), (None, None), ("garbage", None), ("eighty-five", None),
    ("The response is correct.", None), ("85th percentile", None), ("\x1b[31m", None),
    ("1,000", None), ("\u0668\u0665", None),  # non-ASCII digits are not read
    ("x" * 20000 + " 85", None),  # only the first 10,000 characters are read
    # reasoning ("thinking") judges
    ("<think>Between 70 and 80, maybe 75.</think>\n80", 80), ("<think>hmm, 70 or 90", None),
]


@pytest.mark.parametrize("reply,expected", PARSE_TABLE)
def test_parse_score_table(reply, expected):
    assert parse_score(reply) == expected


# --------------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------------


def test_judge_prompt_is_the_books():
    entry = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast.",
             "output": "The car is as fast as lightning.", "model_response": "The car is as fast as a bullet."}
    expected = (
        "Given the input `Below is an instruction that describes a task. Write a response that "
        "appropriately completes the request.\n\n### Instruction:\nRewrite the sentence using a simile."
        "\n\n### Input:\nThe car is very fast.` and correct output `The car is as fast as lightning.`, "
        "score the model response `The car is as fast as a bullet.` on a scale from 0 to 100, where 100 "
        "is the best score. Respond with the integer number only."
    )
    assert build_judge_prompt(entry, entry["model_response"]) == expected
    no_input = {"instruction": "Name a color.", "output": "Blue."}  # input missing entirely
    assert "### Input" not in build_judge_prompt(no_input, "Red.")
    assert "### Input" not in build_judge_prompt({**no_input, "input": ""}, "Red.")


# --------------------------------------------------------------------------------------------------
# Backends against the local server
# --------------------------------------------------------------------------------------------------


def test_ollama_streaming_protocol_and_book_options():
    with FakeJudgeServer(lambda p, n, r: Reply("The answer is 85.")) as server:
        judge = OllamaJudge(fast_config(server))
        assert judge.ask("hello") == "The answer is 85."  # streamed in 2-char chunks, concatenated
        req = server.requests[0]
        assert req["path"] == "/api/chat"
        assert req["body"]["model"] == "llama3"
        assert req["body"]["messages"] == [{"role": "user", "content": "hello"}]
        assert req["body"]["options"] == {"seed": 123, "temperature": 0.0, "num_ctx": 2048}
        assert "Authorization" not in req["headers"]


def test_ollama_broken_streams_are_retried():
    no_done = ['{"message":{"role":"assistant","content":"4"},"done":false}']
    error = ['{"error":"model crashed"}']
    garbled = ['{"message": {"content": "4"', '{"done":true}']
    scripts = {"a": [no_done, Reply("42")], "b": [error, Reply("")], "c": [garbled, garbled, garbled]}

    def responder(prompt, n, req):
        step = scripts[prompt][n - 1]
        return step if isinstance(step, Reply) else Reply(lines=step)

    with FakeJudgeServer(responder) as server:
        judge = OllamaJudge(fast_config(server, retries=2))
        assert judge.ask("a") == "42"  # a stream without a done chunk is a bad reply: retried
        assert judge.ask("b") == ""  # an error chunk is retried; an empty complete stream is ""
        with pytest.raises(JudgeRequestError, match=r"bad reply .* \(after 3 attempts\)"):
            judge.ask("c")
        assert server.counts == {"a": 2, "b": 2, "c": 3}
    # nothing listening: connection refused -> retried, then JudgeRequestError
    config = JudgeConfig(backend="ollama", url="http://127.0.0.1:9", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(JudgeRequestError, match="ConnectionError"):
        OllamaJudge(config).ask("q")


def test_openai_backend_payload_and_bearer_key():
    with FakeJudgeServer(lambda p, n, r: Reply("70")) as server:
        judge = OpenAIJudge(fast_config(server, "openai", model="smol"), environ={"OPENAI_API_KEY": SECRET})
        assert judge.ask("q") == "70"
        req = server.requests[0]
        assert req["path"] == "/v1/chat/completions"
        assert req["headers"]["Authorization"] == f"Bearer {SECRET}"
        body = req["body"]
        assert body["model"] == "smol" and body["temperature"] == 0 and body["seed"] == 123
        assert body["max_tokens"] == 32 and body["messages"] == [{"role": "user", "content": "q"}]
        assert SECRET not in repr(judge) and SECRET not in json.dumps(judge.config.to_dict())
        # a base URL that already ends in /v1 is not doubled; no key -> no header
        judge2 = OpenAIJudge(JudgeConfig(backend="openai", url=server.url + "/v1/", model="m"), environ={})
        assert judge2.ask("q") == "70"
        assert server.requests[1]["path"] == "/v1/chat/completions"
        assert "Authorization" not in server.requests[1]["headers"]


def test_retry_after_500_and_429():
    def responder(prompt, n, req):
        if n == 1:
            return Reply(status=500)
        if n == 2:
            return Reply(status=429, headers={"Retry-After": "0"})
        return Reply("The answer is 85.")

    with FakeJudgeServer(responder) as server:
        entries = make_entries(2)
        report = score_responses(entries, OllamaJudge(fast_config(server, retries=3)), progress=False)
        assert report.scores == [85, 85]
        assert all(server.asks_for(e) == 3 for e in entries)
        assert [r.attempts for r in report.results] == [1, 1]  # transport retries are not parse attempts


def test_timeout_then_success_and_timeout_exhausted():
    def silent_first(prompt, n, req):  # the first request never gets an answer: only the timeout ends it
        return Reply(hang=True) if n == 1 else Reply("60")

    with FakeJudgeServer(silent_first) as server:
        judge = OllamaJudge(fast_config(server, timeout=2.0, retries=1))
        assert judge.ask("q") == "60"
        assert server.counts["q"] == 2

    with FakeJudgeServer(lambda p, n, r: Reply(hang=True)) as server:
        entries = make_entries(1)
        judge = OllamaJudge(fast_config(server, timeout=0.5, retries=1))
        report = score_responses(entries, judge, progress=False, max_consecutive_failures=0)
        (result,) = report.results
        assert result.score is None and result.reason == "request_failed"
        assert "Timeout" in result.error or "timed out" in result.error.lower()
        assert server.asks_for(entries[0]) == 2


def test_stream_total_deadline_is_enforced():
    """A server that keeps streaming slowly past the timeout is cut off (total, not per-read, timeout)."""
    LINES, sent = 1000, []

    class Trickle(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(LINES):  # 50 s in all: only a total deadline stops reading before the end
                    self.wfile.write(b'{"message":{"content":"8"},"done":false}\n')
                    self.wfile.flush()
                    sent.append(1)
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config = JudgeConfig(url=f"http://127.0.0.1:{httpd.server_address[1]}", timeout=0.5, retries=0)
        with pytest.raises(JudgeRequestError, match="not finished within"):
            OllamaJudge(config).ask("q")
        assert 0 < len(sent) < LINES  # cut off while the server was still streaming
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_garbage_reply_retried_then_unscored_and_shown_escaped(tmp_path, capsys):
    evil = "no idea\x1b[2J\nNumber of scores: 999 of 999"

    def responder(prompt, n, req):
        return Reply(evil) if response_of(prompt) == "resp-1" else Reply("The answer is 85.")

    entries = make_entries(3)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "report.json"
    with FakeJudgeServer(responder) as server:
        rc = evaluate_main(["--prompt", "book", "--responses", str(path), "--url", server.url, "--output", str(out),
                     "--parse-retries", "2", "--backoff", "0.01", "--no-progress", "--no-metrics"])
        assert rc == 0
        assert server.asks_for(entries[1]) == 3  # 1 + 2 parse retries
        assert server.asks_for(entries[0]) == 1
    stdout = capsys.readouterr().out
    assert "Number of scores: 2 of 3\nAverage score: 85.00\n" in stdout
    assert "Unscored: 1 (unparsable: 1)" in stdout
    assert "\x1b" not in stdout and "\\x1b[2J\\n" in stdout  # escaped, never interpreted
    # the reply cannot forge an output line: it stays inside the one escaped line of its entry
    assert [line for line in stdout.splitlines() if line.startswith("Number of scores")] == [
        "Number of scores: 2 of 3"]
    report = json.loads(out.read_text())
    e1 = report["entries"][1]
    assert e1["score"] is None and e1["reason"] == "unparsable" and e1["replies"] == [evil] * 3
    s = report["summary"]
    assert (s["n"], s["scored"], s["unscored"], s["reasons"]) == (3, 2, 1, {"unparsable": 1})


def test_empty_response_scores_zero_without_a_request():
    entries = make_entries(3, empty=(1,))
    entries[2]["model_response"] = "   \n"  # whitespace-only counts as empty
    with FakeJudgeServer(lambda p, n, r: Reply("90")) as server:
        report = score_responses(entries, OllamaJudge(fast_config(server)), progress=False)
        assert report.scores == [90, 0, 0]
        assert len(server.requests) == 1
    s = report.summary()
    assert s["empty"] == 2 and s["judged"] == 1 and s["scored"] == 3 and s["mean"] == 30.0
    assert report.book_lines() == ["Number of scores: 3 of 3", "Average score: 30.00"]


def test_api_key_never_in_output_or_report(tmp_path, capsys, monkeypatch):
    """The key goes in the Authorization header only, even when a server echoes it in errors."""
    monkeypatch.setenv("MY_JUDGE_KEY", SECRET)

    def responder(prompt, n, req):
        echoed = json.dumps({"error": f"bad things, you sent {req['headers'].get('Authorization')}"})
        if response_of(prompt) == "resp-0" and n == 1:
            return Reply(status=500, body=echoed)  # retried, then fine
        if response_of(prompt) == "resp-1":
            return Reply(status=503, body=echoed)  # fails for good: error recorded in the report
        return Reply(f"Score: 80 {SECRET}")  # the judge even repeats the key in its reply (redacted)

    entries = make_entries(3)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "report.json"
    with FakeJudgeServer(responder) as server:
        rc = evaluate_main(["--prompt", "book", "--responses", str(path), "--backend", "openai", "--url", server.url,
                     "--judge-model", "m", "--api-key-env", "MY_JUDGE_KEY", "--output", str(out),
                     "--retries", "1", "--backoff", "0.01", "--no-progress", "--no-metrics"])
        assert rc == 0
        assert all(r["headers"].get("Authorization") == f"Bearer {SECRET}" for r in server.requests)
    captured = capsys.readouterr()
    report_text = out.read_text()
    cache_text = Path(str(out) + ".cache.jsonl").read_text()
    for text in (captured.out, captured.err, report_text, cache_text):
        assert SECRET not in text
    report = json.loads(report_text)
    assert report["judge"]["api_key_env"] == "MY_JUDGE_KEY"
    assert report["entries"][1]["reason"] == "request_failed" and "***" in report["entries"][1]["error"]
    assert report["entries"][0]["replies"] == ["Score: 80 ***"] and report["entries"][0]["score"] == 80
    assert "request_failed: 1" in captured.out


def test_reply_echoing_the_key_is_redacted_everywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    entries = make_entries(1)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "r.json"
    with FakeJudgeServer(lambda p, n, r: Reply(f"my key is {SECRET}")) as server:
        assert evaluate_main(["--prompt", "book", "--responses", str(path), "--backend", "openai", "--url", server.url,
                       "--output", str(out), "--no-progress", "--no-metrics", "--backoff", "0.01"]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in out.read_text()
    assert SECRET not in Path(str(out) + ".cache.jsonl").read_text()
    assert "my key is ***" in out.read_text()


def test_fatal_http_error_stops_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    body = json.dumps({"error": f"model 'llama3' not found, try pulling it first ({SECRET})"})
    entries = make_entries(4)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    with FakeJudgeServer(lambda p, n, r: Reply(status=404, body=body)) as server:
        with pytest.raises(JudgeFatalError, match="HTTP 404"):
            score_responses(entries, OllamaJudge(fast_config(server)), progress=False)
        assert len(server.requests) == 1  # not retried
        rc = evaluate_main(["--prompt", "book", "--responses", str(path), "--backend", "openai", "--url", server.url,
                     "--output", str(tmp_path / "r.json"), "--no-progress", "--no-metrics"])
    err = capsys.readouterr().err
    assert rc == 1 and "not found" in err and SECRET not in err and "***" in err
    assert not (tmp_path / "r.json").exists()


def test_rejected_request_is_unscored_not_fatal(tmp_path):
    """A 400 for one entry (e.g. prompt longer than the context) does not stop the run."""

    def responder(prompt, n, req):
        if response_of(prompt) == "resp-1":
            return Reply(status=400, body='{"error": "Requested tokens (4200) exceed context window of 2048"}')
        return Reply("70")

    entries = make_entries(3)
    cache = tmp_path / "c.jsonl"
    with FakeJudgeServer(responder) as server:
        report = score_responses(entries, OpenAIJudge(fast_config(server, "openai")), cache_path=cache,
                                 progress=False)
        assert server.asks_for(entries[1]) == 1  # not retried
    assert report.scores == [70, None, 70]
    r1 = report.results[1]
    assert r1.reason == "request_rejected" and "exceed context window" in r1.error
    assert report.summary()["reasons"] == {"request_rejected": 1}
    assert len(cache.read_text().splitlines()) == 2  # not cached: asked again next time


def test_consecutive_failures_abort_and_are_not_cached(tmp_path):
    entries = make_entries(6)
    cache = tmp_path / "c.jsonl"
    with FakeJudgeServer(lambda p, n, r: Reply(status=502)) as server:
        with pytest.raises(JudgeUnavailableError, match="3 requests in a row failed"):
            score_responses(entries, OllamaJudge(fast_config(server, retries=1)), cache_path=cache,
                            progress=False)
        assert len(server.requests) == 3 * 2  # 3 entries x (1 + 1 retry), then stop
    assert not cache.exists() or cache.read_text() == ""


def test_bounded_concurrency():
    entries = make_entries(8)
    # each reply takes 1 s, so requests sent together overlap in the server however loaded the machine is
    with FakeJudgeServer(lambda p, n, r: Reply("50", delay=1.0)) as server:
        report = score_responses(entries, OllamaJudge(fast_config(server)), concurrency=4, progress=False)
    assert report.scores == [50] * 8
    assert server.max_in_flight == 4  # four at once, never more


def test_identical_questions_asked_once():
    entries = make_entries(3)
    entries[2] = dict(entries[0])
    with FakeJudgeServer(lambda p, n, r: Reply("40")) as server:
        report = score_responses(entries, OllamaJudge(fast_config(server)), progress=False)
    assert report.scores == [40, 40, 40] and len(server.requests) == 2


# --------------------------------------------------------------------------------------------------
# Cache and resume
# --------------------------------------------------------------------------------------------------


def test_cache_key_depends_on_backend_model_and_prompt():
    k = cache_key("ollama", "llama3", "p")
    assert k == cache_key("ollama", "llama3", "p")
    assert len({k, cache_key("openai", "llama3", "p"), cache_key("ollama", "phi3", "p"),
                cache_key("ollama", "llama3", "p2")}) == 4


def test_interrupt_from_callback_then_resume(tmp_path):
    entries = make_entries(8, empty=(3,))
    cache = tmp_path / "cache.jsonl"
    seen: list[EntryResult] = []

    def stop_after_three(result: EntryResult) -> None:
        seen.append(result)
        if len(seen) == 3:
            raise KeyboardInterrupt

    def responder(prompt, n, req):
        return Reply("gibberish") if response_of(prompt) == "resp-1" else Reply("Score: 75")

    with FakeJudgeServer(responder) as server:
        judge = OllamaJudge(fast_config(server))
        with pytest.raises(KeyboardInterrupt):
            score_responses(entries, judge, cache_path=cache, parse_retries=1, on_result=stop_after_three,
                            progress=False)
        assert len(cache.read_text().splitlines()) == 3
        asked_before = Counter(server.counts)
        report = score_responses(entries, judge, cache_path=cache, parse_retries=1, progress=False)
        # nothing that finished before the interrupt is asked again
        for entry in entries[:3]:
            assert asked_before[build_judge_prompt(entry, entry["model_response"])] == server.asks_for(entry)
        assert server.asks_for(entries[0]) == 1 and server.asks_for(entries[1]) == 2  # 1 + 1 parse retry
        assert all(server.asks_for(e) == 1 for i, e in enumerate(entries) if i not in (1, 3))
        assert server.asks_for(entries[3]) == 0
    assert [r.cached for r in report.results[:4]] == [True, True, True, False]  # 3: empty, never cached
    s = report.summary()
    assert s["scored"] + s["unscored"] == 8 and s["reasons"] == {"unparsable": 1} and s["empty"] == 1
    assert report.results[1].replies == ["gibberish", "gibberish"]
    assert all(r.score is not None or r.reason for r in report.results)

    # a third run asks nothing at all; --retry-unscored re-asks only the unparsable one
    with FakeJudgeServer(lambda p, n, r: Reply("33")) as server:
        again = score_responses(entries, OllamaJudge(fast_config(server)), cache_path=cache, progress=False)
        assert len(server.requests) == 0 and again.scores == report.scores
        retried = score_responses(entries, OllamaJudge(fast_config(server)), cache_path=cache,
                                  retry_unscored=True, progress=False)
        assert len(server.requests) == 1 and retried.scores[1] == 33


def test_cache_ignores_a_truncated_last_line(tmp_path):
    cache_path = tmp_path / "c.jsonl"
    good = {"key": "a", "score": 10, "status": "scored", "replies": ["10"]}
    cache_path.write_text(json.dumps(good) + "\n" + '{"key": "b", "score": 2')  # killed mid-write
    cache = ScoreCache(cache_path)
    assert set(cache.records) == {"a"} and cache.skipped_lines == 1
    cache.append({"key": "c", "score": 30, "status": "scored"})
    cache.close()
    reloaded = ScoreCache(cache_path)
    assert set(reloaded.records) == {"a", "c"} and reloaded.skipped_lines == 1


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_killed_cli_resumes_without_re_asking(tmp_path, capsys):
    """Run scripts/evaluate.py as a subprocess, SIGKILL it after k entries, then resume."""
    n, k = 7, 3
    entries = make_entries(n)
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    out, cache = tmp_path / "report.json", tmp_path / "cache.jsonl"
    hang = threading.Event()
    hang.set()

    def responder(prompt, n_asked, req):
        index = int(response_of(prompt).split("-")[1])
        if index >= k and hang.is_set():
            return Reply(hang=True)  # the judge stops answering after k entries
        return Reply(f"The answer is {10 * index}.")

    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--prompt", "book", "--responses", str(path),
           "--output", str(out), "--cache", str(cache), "--no-progress", "--no-metrics", "--timeout", "60"]
    with FakeJudgeServer(responder) as server:
        proc = subprocess.Popen(cmd + ["--url", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _wait_for(lambda: cache.exists() and len(cache.read_text().splitlines()) == k
                      and server.counts and sum(server.counts.values()) == k + 1, 60)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        assert not out.exists()
        hang.clear()
        # resume (in-process: the same main(), without paying for a second interpreter start-up)
        assert evaluate_main(cmd[2:] + ["--url", server.url]) == 0
        for i, entry in enumerate(entries):
            # finished entries were asked exactly once; the one in flight at the kill twice
            assert server.asks_for(entry) == (2 if i == k else 1)
    done = capsys.readouterr()
    assert "Resuming from cache" in done.err
    report = json.loads(out.read_text())
    assert [e["score"] for e in report["entries"]] == [10 * i for i in range(n)]
    assert [e["cached"] for e in report["entries"]] == [True] * k + [False] * (n - k)
    s = report["summary"]
    assert s["scored"] + s["unscored"] == n and s["cached"] == k
    assert f"Number of scores: {n} of {n}\nAverage score: 30.00" in done.out


# --------------------------------------------------------------------------------------------------
# CLI and report
# --------------------------------------------------------------------------------------------------


def test_cli_report_metrics_and_atomic_write(tmp_path, capsys, monkeypatch):
    entries = make_entries(4, empty=(2,))
    entries[0]["model_response"] = entries[0]["output"].upper()  # exact match after normalisation
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    out = tmp_path / "sub" / "report.json"
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(atomic_io.os, "replace", lambda a, b: (replaced.append((str(a), str(b))), real_replace(a, b)))
    scores = {"resp-1": "Score: 60", "resp-3": "90/100"}
    with FakeJudgeServer(lambda p, n, r: Reply(scores.get(response_of(p), "30"))) as server:
        rc = evaluate_main(["--prompt", "book", "--responses", str(path), "--url", server.url, "--output", str(out), "--no-progress"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Number of scores: 4 of 4\nAverage score: 45.00\n" in stdout
    assert "exact_match: 0.2500" in stdout and "rougeL:" in stdout
    report = json.loads(out.read_text())
    assert replaced and replaced[-1][1] == str(out) and replaced[-1][0] != str(out)
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    s = report["summary"]
    assert s == {**s, "n": 4, "scored": 4, "unscored": 0, "empty": 1, "judged": 3, "mean": 45.0,
                 "median": 45.0, "min": 0.0, "max": 90.0, "reasons": {}}
    assert abs(s["std"] - 33.541019662496844) < 1e-9  # population std of 30, 60, 0, 90
    assert report["metrics"]["exact_match"] == 0.25 and 0 < report["metrics"]["rougeL"] < 1
    assert report["judge"]["backend"] == "ollama" and report["judge"]["options"] == {}
    assert "Respond with the integer number only." in report["judge"]["prompt_template"]
    assert [e["replies"] for e in report["entries"]] == [["30"], ["Score: 60"], [], ["90/100"]]


def test_cli_rejects_bad_input(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"instruction": "x", "output": "y"}]))
    assert evaluate_main(["--prompt", "book", "--responses", str(path), "--no-progress"]) == 2
    assert "no response field 'model_response'" in capsys.readouterr().err
    path.write_text(json.dumps([{"instruction": "x", "output": "y", "answer": ""}]))
    assert evaluate_main(["--prompt", "book", "--responses", str(path), "--response-key", "answer", "--no-progress", "--no-metrics",
                   "--output", str(tmp_path / "r.json")]) == 0
    assert "Number of scores: 1 of 1\nAverage score: 0.00" in capsys.readouterr().out
    assert evaluate_main(["--prompt", "book", "--responses", str(path), "--backend", "hf", "--response-key", "answer"]) == 2


def test_console_script_is_declared():
    text = (REPO_ROOT / "setup.cfg").read_text()
    assert "gpt-sft-evaluate = gpt_sft.cli.evaluate:main" in text


# --------------------------------------------------------------------------------------------------
# HF backend with a tiny local model
# --------------------------------------------------------------------------------------------------


def test_hf_judge_in_process(tiny_hf_judge_dir, tmp_path, capsys):
    judge = HFJudge(JudgeConfig(backend="hf", model=str(tiny_hf_judge_dir), max_tokens=1))
    assert judge.render("the score").startswith("<|user|> the score ")
    assert judge.render("x").endswith("<|assistant|>")
    assert judge.ask("the score") == "85"
    entries = make_entries(3, empty=(0,))
    report = score_responses(entries, judge, progress=False)
    assert report.scores == [0, 85, 85]

    path = tmp_path / "responses.json"
    path.write_text(json.dumps(entries))
    rc = evaluate_main(["--prompt", "book", "--responses", str(path), "--backend", "hf", "--judge-model", str(tiny_hf_judge_dir),
                 "--max-tokens", "2", "--output", str(tmp_path / "r.json"), "--no-progress", "--no-metrics"])
    assert rc == 0
    assert "Number of scores: 3 of 3\nAverage score: 56.67" in capsys.readouterr().out  # "85 85" -> 85


# --------------------------------------------------------------------------------------------------
# prompt modes, agreement statistics, pairwise verdicts


def test_structured_and_rubric_replies_are_read_from_json_only_in_range():
    from gpt_sft.judge.modes import MODES

    structured, rubric = MODES["structured"], MODES["rubric"]
    assert structured.parse('{"score": 85}') == 85 and structured.parse('{ "score": 0 }') == 0
    assert structured.parse('{"score": 101}') is None and structured.parse('{"score": true}') is None
    assert structured.parse('{"score": 85.0}') == 85
    assert structured.parse("The answer is 85.") == 85, "an unconstrained reply falls back to the book's rules"
    assert rubric.parse('{"score": 4}') == 4 and rubric.parse('{"score": 7}') is None
    assert rubric.parse("I give it 4") == 4 and rubric.parse("3 or 4") is None
    assert "Respond with the integer number only." not in structured.template
    assert structured.template.replace('Respond with a JSON object {{"score": <integer 0-100>}}.', "") == \
        MODES["book"].template.replace("Respond with the integer number only.", ""), "the book's question otherwise"


def test_the_backends_send_the_schema_their_way():
    from gpt_sft.judge.modes import score_schema

    schema = score_schema(0, 100)
    ollama = OllamaJudge(JudgeConfig(backend="ollama")).payload("q", schema)
    assert ollama["format"] == schema
    openai = OpenAIJudge(JudgeConfig(backend="openai"), environ={})
    assert openai.payload("q", schema)["response_format"]["json_schema"]["schema"] == schema
    assert openai.payload("q", schema, "json_object")["response_format"] == {"type": "json_object", "schema": schema}
    assert "response_format" not in openai.payload("q")


def test_an_openai_server_without_json_schema_gets_json_object(tmp_path):
    """A server that rejects OpenAI's json_schema format naming response_format (llama-cpp-python
    answers HTTP 500) is asked with json_object + schema from then on, without the transport retries."""
    seen = []

    def responder(prompt, n, req):
        fmt = (req["body"].get("response_format") or {}).get("type")
        seen.append(fmt)
        if fmt == "json_schema":
            return Reply(status=500, body='{"error": "validation error: response_format: json_schema"}')
        return Reply('{"score": 70}')

    with FakeJudgeServer(responder) as server:
        judge = OpenAIJudge(fast_config(server, "openai", retries=3), environ={})
        report = score_responses(make_entries(3), judge, mode="structured", progress=False)
    assert report.scores == [70, 70, 70]
    assert seen == ["json_schema", "json_object", "json_object", "json_object"]
    assert judge.structured_output == "response_format json_object"


def test_a_server_warming_up_is_retried_before_the_dialect_is_known():
    """Structured scoring's first requests find the dialect. Two 500s and then a 429 at the start used to lose those
    entries and stop the run ("3 requests in a row failed"): they are retried with backoff like any request, and
    only an error that names response_format switches the dialect."""
    def responder(prompt, n, req):
        if len(server.requests) <= 2:
            return Reply(status=500, body='{"error": "loading model"}')
        if len(server.requests) == 3:
            return Reply(status=429, headers={"Retry-After": "0"})
        return Reply('{"score": 70}')

    with FakeJudgeServer(responder) as server:
        judge = OpenAIJudge(fast_config(server, "openai", retries=3), environ={})
        report = score_responses(make_entries(3), judge, mode="structured", progress=False, concurrency=1)
    assert report.scores == [70, 70, 70]
    assert judge.structured_output == "response_format json_schema", "a 500 without response_format switches nothing"
    assert [(r["body"].get("response_format") or {}).get("type") for r in server.requests] == ["json_schema"] * 6


def test_hf_judge_structured_mode_is_constrained(tiny_hf_judge_dir):
    """With the schema, even a random tiny model can only answer {"score": <digits>}."""
    judge = HFJudge(JudgeConfig(backend="hf", model=str(tiny_hf_judge_dir), max_tokens=8))
    from gpt_sft.judge.modes import score_schema

    reply = judge.ask("Score this.", schema=score_schema(0, 100))
    assert re.fullmatch(r'\{"score": [0-9]{1,9}\}', reply), reply
    report = score_responses(make_entries(3), judge, mode="structured", progress=False)
    assert all(r.status in ("scored", "unscored") for r in report.results)
    assert all(r.score is None or 0 <= r.score <= 100 for r in report.results)
    assert all(json.loads(r.reply)["score"] is not None for r in report.results)


def test_correlations_match_hand_computed_values():
    from gpt_sft.judge.agreement import average_ranks, kendall_tau_b, pearson, spearman

    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    assert abs(kendall_tau_b(x, y) - 0.6) < 1e-12  # 8 concordant, 2 discordant of 10 pairs
    assert abs(spearman(x, y) - 0.8) < 1e-12  # 1 - 6 * 4 / (5 * 24)
    assert abs(pearson(x, y) - 0.8) < 1e-12
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert abs(kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) - 0.8) < 1e-12  # tau-b: 4 / sqrt(5 * 5)
    assert pearson([1, 1, 1], [1, 2, 3]) is None, "a constant judge has no correlation"


def test_compare_pairs_entries_by_fingerprint(tmp_path, capsys):
    from gpt_sft.cli.evaluate import main as evaluate_main

    entries = make_entries(6)
    scores = {"a": [10, 20, 30, 40, 50, None], "b": [15, 25, 20, 45, 60, 70]}
    paths = []
    for name, values in scores.items():
        def responder(prompt, n, req, values=values):
            i = int(response_of(prompt).split("-")[1])
            return Reply("no idea" if values[i] is None else str(values[i]))

        with FakeJudgeServer(responder) as server:
            out = tmp_path / f"{name}.json"
            rows = entries if name == "a" else entries[::-1]  # another order: paired by fingerprint
            (tmp_path / f"{name}-responses.json").write_text(json.dumps(rows))
            assert evaluate_main(["--prompt", "book", "--responses", str(tmp_path / f"{name}-responses.json"), "--url",
                                  server.url, "--output", str(out), "--no-progress", "--no-metrics", "--no-cache",
                                  "--parse-retries", "0"]) == 0
        paths.append(out)
    capsys.readouterr()
    assert evaluate_main(["compare", str(paths[0]), str(paths[1]), "--output", str(tmp_path / "c.json")]) == 0
    found = json.loads((tmp_path / "c.json").read_text())
    assert found["n"] == 5 and found["left_out"] == 1
    from gpt_sft.judge.agreement import pearson

    assert abs(found["pearson"] - pearson([10, 20, 30, 40, 50], [15, 25, 20, 45, 60])) < 1e-12
    assert (tmp_path / "a-vs-b.png").is_file()


def test_compare_and_pairwise_read_regular_files_of_a_sane_size_only(tmp_path, capsys, monkeypatch):
    """/dev/zero was read until the machine ran out of memory; a FIFO would block for ever."""
    from gpt_sft.cli.evaluate import main as evaluate_main
    from gpt_sft.common import json_input

    report = tmp_path / "report.json"
    report.write_text(json.dumps({"entries": []}))
    capsys.readouterr()
    assert evaluate_main(["compare", "/dev/zero", str(report)]) == 1
    assert capsys.readouterr().err.strip() == "error: not a readable judge report: /dev/zero: not a regular file"
    assert evaluate_main(["pairwise", "--responses", "/dev/zero", "--against", str(report), "--url",
                          "http://127.0.0.1:9"]) == 1
    assert "cannot use /dev/zero: /dev/zero: not a regular file" in capsys.readouterr().err
    monkeypatch.setattr(json_input.read_json_file, "__defaults__", (10,))
    assert evaluate_main(["compare", str(report), str(report)]) == 1
    assert f"{report}: {report.stat().st_size} bytes, larger than the 10 a JSON input may have" in capsys.readouterr().err


def test_pairwise_verdicts_combine_over_both_orders(tmp_path):
    from gpt_sft.judge.pairwise import combine, judge_pairs, win_rate_interval

    assert combine("A", "B") == "win" and combine("A", "tie") == "win" and combine("A", "A") == "tie"
    assert combine("B", "A") == "loss" and combine("tie", "tie") == "tie" and combine(None, "A") is None
    a = make_entries(4)
    b = [{**e, "model_response": "bad"} for e in a]

    def responder(prompt, n, req):  # prefers the response that is not "bad", whichever position it has
        first = re.search(r"Response A: `(.*?)`", prompt, re.S).group(1)
        return Reply('{"winner": "B"}' if first == "bad" else '{"winner": "A"}')

    with FakeJudgeServer(responder) as server:
        judge = OpenAIJudge(fast_config(server, "openai"), environ={})
        report = judge_pairs(a, b, judge, cache_path=str(tmp_path / "cache.jsonl"), progress=False)
    s = report.summary()
    assert (s["win"], s["tie"], s["loss"]) == (4, 0, 0) and s["first_position_preferred"] == 0.5
    assert s["win_rate"] == 1.0 and s["win_rate_ci95"] == [1.0, 1.0]
    rate, low, high = win_rate_interval(["win", "loss", "tie", "win"])
    assert rate == 0.625 and 0 <= low < rate < high <= 1
    with pytest.raises(ValueError, match="different entries"):
        judge_pairs(a, [{**b[0], "instruction": "x"}] + b[1:], judge, progress=False)


# --------------------------------------------------------------------------------------------------
# conversations (gpt-sft generate's output on conversation data)


def conversation_entries() -> list[dict]:
    """Two answered conversations as ``gpt-sft generate`` writes them: ``messages`` ending on the reference answer,
    and the model's response beside them."""
    return [
        {"messages": [{"role": "system", "content": "Answer in one word."},
                      {"role": "user", "content": "My cat is called Tom."}, {"role": "assistant", "content": "Noted."},
                      {"role": "user", "content": "What is my cat called?"}, {"role": "assistant", "content": "Tom."}],
         "model_response": "tom"},
        {"messages": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Red."}],
         "model_response": "Blue."},
    ]


def test_a_conversation_is_judged_with_its_earlier_turns_and_scored_against_its_last_answer(tmp_path, capsys):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(conversation_entries()))
    out = tmp_path / "report.json"
    with FakeJudgeServer(lambda p, n, r: Reply("70")) as server:
        assert evaluate_main(["--prompt", "book", "--responses", str(path), "--url", server.url, "--output", str(out),
                              "--no-progress"]) == 0
        asked = sorted(server.counts)
    assert asked == sorted([
        "Given a conversation's earlier turns `System: Answer in one word.\nUser: My cat is called Tom.\nAssistant: "
        "Noted.`, its last input `What is my cat called?` and correct output `Tom.`, score the model response `tom` "
        "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only.",
        "Given a conversation's earlier turns `(none)`, its last input `Name a colour.` and correct output `Red.`, "
        "score the model response `Blue.` on a scale from 0 to 100, where 100 is the best score. Respond with the "
        "integer number only."])
    report = json.loads(out.read_text())
    assert report["summary"]["scored"] == 2 and report["metrics"]["exact_match"] == 0.5  # "tom" is "Tom." normalised
    assert report["judge"]["conversation_prompt_template"].startswith(
        "Given a conversation's earlier turns `{history}`")
    assert "Number of scores: 2 of 2" in capsys.readouterr().out
    # the other modes ask about the same turns, with their own scale
    from gpt_sft.judge.modes import MODES

    entry = conversation_entries()[0]
    rubric = MODES["rubric"].prompt(entry, "tom")
    assert ("Earlier turns of the conversation:\nSystem: Answer in one word.\nUser: My cat is called Tom.\n"
            "Assistant: Noted.\n\nLast instruction:\nWhat is my cat called?\n\nCorrect output:\nTom.\n\n"
            "Model response:\ntom\n\n") in rubric
    structured = MODES["structured"].prompt(entry, "tom")
    assert structured == build_judge_prompt(entry, "tom").replace(
        "Respond with the integer number only.", 'Respond with a JSON object {"score": <integer 0-100>}.')


def test_a_conversation_without_its_reference_answer_is_refused_in_one_line(tmp_path, capsys):
    entries = conversation_entries()
    entries[0]["messages"] = entries[0]["messages"][:4]  # ends on the question: nothing to score against
    path = tmp_path / "unanswered.json"
    path.write_text(json.dumps(entries))
    assert evaluate_main(["--responses", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "entry 0: turn 3: a conversation to score must end on an assistant turn, the reference answer" in err
    assert len(err.strip().splitlines()) == 1
    # side-by-side judging takes instruction entries only, and says so
    answered = tmp_path / "answered.json"
    answered.write_text(json.dumps(conversation_entries()))
    assert evaluate_main(["pairwise", "--responses", str(answered), "--against", str(answered)]) == 1
    err = capsys.readouterr().err
    assert "entry 0 is a conversation ('messages')" in err and len(err.strip().splitlines()) == 1
