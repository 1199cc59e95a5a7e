"""``gpt-sft make-preferences``: preference pairs made by asking a model, through the judge's backends, to
rewrite each response. Real servers throughout: the scriptable local HTTP judge server of test_judge.py
(deterministic replies, counted requests, HTTP 500s), a port nobody listens on, and the real llama.cpp
server with SmolLM2-135M (conftest's ``llama_cpp_server``)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import free_port
from test_judge import FakeJudgeServer, Reply

from gpt_sft.cli.make_preferences import main as prefs_main
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.preference import load_preference_data
from gpt_sft.judge.backends import OpenAIJudge
from gpt_sft.judge.http import JudgeConfig
from gpt_sft.judge.preferences import (DEFAULT_CHOSEN_INSTRUCTION, DEFAULT_REJECTED_INSTRUCTION, PreferenceSpec,
                                       make_preference_pairs, read_rewrite)

FIELDS = ("instruction", "input", "output", "chosen", "rejected")


def make_entries(n: int) -> list[dict]:
    return [{"instruction": f"Instruction number {i}.", "input": "some input" if i % 2 else "",
             "output": f"Correct output {i}."} for i in range(n)]


def output_of(prompt: str) -> str:
    match = re.search(r"### Response to rewrite:\n(.*)\n\n", prompt, re.DOTALL)
    return match.group(1) if match else ""


def polite_or_rude(prompt: str, n: int, request: dict) -> Reply:
    """A rewriter that follows the default instructions: 'Kindly, ...' for chosen, 'Ugh. ...' for rejected."""
    word = "Kindly," if DEFAULT_CHOSEN_INSTRUCTION in prompt else "Ugh."
    return Reply(json.dumps({"rewrite": f"{word} {output_of(prompt)}"}))


def write_data(tmp_path: Path, entries: list) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(entries))
    return path


def run(data: Path, url: str, *extra: str, backend: str = "openai") -> int:
    return prefs_main(["--data", str(data), "--backend", backend, "--url", url, "--no-progress", "--backoff", "0",
                       "--timeout", "10", *extra])


def read_outputs(data: Path) -> tuple[list[dict], dict]:
    pairs = json.loads(data.with_name("data-with-preference.json").read_text())
    return pairs, json.loads(data.with_name("data-with-preference-report.json").read_text())


def assert_accounted(report: dict, n: int) -> None:
    """Every entry ends with a pair or a recorded reason, never both, never neither."""
    paired, failed = report["pair_indices"], [e["index"] for e in report["entries_failed"]]
    assert sorted(paired + failed) == list(range(n)) and not set(paired) & set(failed)
    assert all(e["reason"] for e in report["entries_failed"])
    s = report["summary"]
    assert s["n"] == n and s["pairs"] + s["failed"] == n


def assert_book_format(pairs: list[dict]) -> None:
    for pair in pairs:
        assert tuple(pair) == FIELDS and all(isinstance(pair[k], str) for k in FIELDS), pair
        assert pair["chosen"].strip() and pair["rejected"].strip() and pair["chosen"] != pair["rejected"]


def test_both_sides_rewritten_in_the_books_format(tmp_path, capsys):
    entries = make_entries(6)
    data = write_data(tmp_path, entries)
    with FakeJudgeServer(polite_or_rude) as server:
        assert run(data, server.url) == 0
        bodies = [r["body"] for r in server.requests]
    pairs, report = read_outputs(data)
    assert_accounted(report, 6)
    assert_book_format(pairs)
    assert [(p["instruction"], p["input"], p["output"]) for p in pairs] == [
        (e["instruction"], e["input"], e["output"]) for e in entries], "the input's order"
    assert [p["chosen"] for p in pairs] == [f"Kindly, Correct output {i}." for i in range(6)]
    assert [p["rejected"] for p in pairs] == [f"Ugh. Correct output {i}." for i in range(6)]
    assert len(bodies) == 12 and report["summary"]["asked"] == 12
    prompts = [b["messages"][-1]["content"] for b in bodies]
    assert sum(DEFAULT_CHOSEN_INSTRUCTION in p for p in prompts) == sum(DEFAULT_REJECTED_INSTRUCTION in p for p in prompts) == 6
    assert all(b["response_format"]["json_schema"]["schema"]["required"] == ["rewrite"] for b in bodies)
    assert all(b["max_tokens"] == 256 for b in bodies), "a rewrite needs more than the judge's 32 tokens"
    assert sum("### Input:\nsome input\n" in p for p in prompts) == 6  # the odd entries' inputs, both sides
    out = capsys.readouterr().out
    assert "Preference pairs: 6 of 6 entries (12 rewrites: 0 from the cache, 12 asked)" in out


def test_book_pairing_rewrites_one_side_and_keeps_the_output(tmp_path):
    data = write_data(tmp_path, make_entries(8))
    with FakeJudgeServer(polite_or_rude) as server:
        assert run(data, server.url, "--pairing", "book", "--backend", "ollama") == 0
        assert len(server.requests) == 8 and all(r["path"] == "/api/chat" for r in server.requests)
        assert all(r["body"]["format"]["required"] == ["rewrite"] for r in server.requests)  # Ollama's format
    pairs, report = read_outputs(data)
    assert_accounted(report, 8)
    assert_book_format(pairs)
    sides = [("chosen" if p["rejected"] == p["output"] else "rejected") for p in pairs]
    assert all((p["chosen"] == p["output"]) != (p["rejected"] == p["output"]) for p in pairs)
    assert set(sides) == {"chosen", "rejected"}, "a fair coin per entry"
    for p, side in zip(pairs, sides):
        assert p[side].startswith("Kindly," if side == "chosen" else "Ugh.")
    # the coin is seeded per entry: the same sides for the same entries, whatever the --limit
    spec = PreferenceSpec(pairing="book")
    assert [spec.rewritten_sides(i, 123) for i in range(8)] == [(s,) for s in sides]


def test_untrusted_replies_are_checked_and_each_failure_recorded(tmp_path, capsys):
    entries = make_entries(8)
    # per entry: the chosen reply, the rejected reply
    script = {
        0: ('{"rewrite": "Correct output 0."}', '{"rewrite": "Rude 0."}'),  # chosen is the original
        1: ('{"rewrite": "   "}', '{"rewrite": "Rude 1."}'),  # empty
        2: (json.dumps({"rewrite": "x" * 300}), '{"rewrite": "Rude 2."}'),  # longer than --max-chars 200
        3: ('{"rewrite": "Nice <|endoftext|> 3."}', '{"rewrite": "Rude 3."}'),  # GPT-2's end of text
        4: ('{"rewrite": "Same 4."}', '{"rewrite": "Same  4."}'),  # the two sides are one text
        5: ('{"rewrite": "Polite 5', '{"rewrite": "Rude 5."}'),  # JSON cut off at the token limit
        6: ('"Polite 6."', "`Rude 6.`"),  # plain text, quoted: the quotes go
        7: ('{"rewrite": "Polite \\"7\\"."}', "Rude 7. $(rm -rf ~)"),  # text, never run
    }

    def responder(prompt, n, request):
        index = int(output_of(prompt).split()[-1].rstrip("."))
        return Reply(script[index][0 if DEFAULT_CHOSEN_INSTRUCTION in prompt else 1])

    data = write_data(tmp_path, entries)
    with FakeJudgeServer(responder) as server:
        assert run(data, server.url, "--max-chars", "200") == 0
    pairs, report = read_outputs(data)
    assert_accounted(report, 8)
    assert_book_format(pairs)
    reasons = {e["index"]: e["reason"] for e in report["entries_failed"]}
    assert reasons == {0: "chosen: unchanged", 1: "chosen: empty", 2: "chosen: too_long", 3: "chosen: end_of_text",
                       4: "chosen_equals_rejected", 5: "chosen: unparsable"}
    assert report["summary"]["reasons"] == {"chosen: empty": 1, "chosen: end_of_text": 1, "chosen: too_long": 1,
                                            "chosen: unchanged": 1, "chosen: unparsable": 1,
                                            "chosen_equals_rejected": 1}
    failed = {e["index"]: e for e in report["entries_failed"]}
    assert failed[2]["sides"]["chosen"]["detail"] == "300 characters, more than --max-chars 200"
    assert failed[5]["sides"]["chosen"]["replies"] == ['{"rewrite": "Polite 5']  # the raw reply is kept
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("Polite 6.", "Rude 6."),
                                                           ('Polite "7".', "Rude 7. $(rm -rf ~)")]
    out = capsys.readouterr().out
    assert "Without a pair: 6 (" in out and "entry 2: chosen: too_long" in out

    # the cache keeps raw replies and the rules are applied again: a larger --max-chars needs no request
    with FakeJudgeServer(responder) as server:
        assert run(data, server.url, "--max-chars", "400") == 0
        assert server.requests == []
    pairs, report = read_outputs(data)
    assert 2 in report["pair_indices"] and report["summary"]["asked"] == 0


def test_read_rewrite_rules():
    assert read_rewrite('  {"rewrite": " a "}  ', None, "b", 10) == ("a", None, "")
    assert read_rewrite('"a" and "b"', None, "c", 20)[0] == '"a" and "b"', "inner quotes: not one quoted text"
    assert read_rewrite("```a```", None, "b", 10)[0] == "a"
    assert read_rewrite("{not json", None, "b", 10)[1] == "unparsable"
    assert read_rewrite('{"rewrite": 5}', None, "b", 10)[1] == "unparsable"
    assert read_rewrite(" a  b\n", None, "a b", 10)[1] == "unchanged", "a whitespace-only change is no change"
    assert read_rewrite("x" * 5, 30_000, "b", 10)[1] == "too_long", "a reply cut in the cache is too long"
    for score in ("87", '{"rewrite": "87"}', "87.5", "90%"):  # a judge's score is no rewrite of a sentence
        assert read_rewrite(score, None, "The capital of France is Paris.", 100)[1] == "a_number", score
    assert read_rewrite("4", None, "3", 10) == ("4", None, ""), "a number for a number can be a rewrite"


def test_user_instructions_change_the_prompt_and_the_cache_key(tmp_path):
    data = write_data(tmp_path, make_entries(3))
    concise, wordy = "Make it more concise.", "Make it wordier and vaguer."

    def responder(prompt, n, request):
        return Reply(json.dumps({"rewrite": ("Short: " if concise in prompt else "Long: ") + output_of(prompt)}))

    with FakeJudgeServer(responder) as server:
        assert run(data, server.url, "--chosen-instruction", concise, "--rejected-instruction", wordy) == 0
        prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
        assert sum(concise in p for p in prompts) == sum(wordy in p for p in prompts) == 3
        assert not any(DEFAULT_CHOSEN_INSTRUCTION in p or DEFAULT_REJECTED_INSTRUCTION in p for p in prompts)
        pairs, report = read_outputs(data)
        assert [p["chosen"] for p in pairs] == [f"Short: Correct output {i}." for i in range(3)]
        assert report["generator"]["chosen_instruction"] == concise
        # the same cache with the default instructions: other questions, asked anew (this responder gives both
        # sides one text then: no pair, exit status 1)
        assert run(data, server.url) == 1
        assert len(server.requests) == 12
    # an empty instruction is refused, naming the flag
    with pytest.raises(SystemExit):
        prefs_main(["--data", str(data), "--chosen-instruction", "  "])


def test_no_structured_asks_for_plain_text(tmp_path):
    data = write_data(tmp_path, make_entries(2))
    with FakeJudgeServer(lambda p, n, r: Reply(("Please: " if DEFAULT_CHOSEN_INSTRUCTION in p else "No: ")
                                                + output_of(p))) as server:
        assert run(data, server.url, "--no-structured") == 0
        assert all("response_format" not in r["body"] for r in server.requests)
        assert all(r["body"]["messages"][-1]["content"].endswith("Reply with the rewritten response only.")
                   for r in server.requests)
    pairs, _ = read_outputs(data)
    assert [p["chosen"] for p in pairs] == ["Please: Correct output 0.", "Please: Correct output 1."]


def test_server_errors_are_recorded_and_not_cached(tmp_path, capsys):
    data = write_data(tmp_path, make_entries(4))
    with FakeJudgeServer(lambda p, n, r: Reply(status=500)) as server:
        assert run(data, server.url, "--retries", "1", "--max-consecutive-failures", "0", backend="ollama") == 1
        assert len(server.requests) == 8 * 2  # every question, each retried once
    pairs, report = read_outputs(data)
    assert pairs == []
    assert_accounted(report, 4)
    assert {e["reason"] for e in report["entries_failed"]} == {"chosen: request_failed; rejected: request_failed"}
    assert "HTTP 500" in report["entries_failed"][0]["sides"]["chosen"]["detail"]
    assert "error: no pair was made" in capsys.readouterr().err
    cache = data.with_name("data-with-preference.json.cache.jsonl")
    assert not cache.exists() or cache.read_text() == "", "failures are asked again next run"

    # the server comes back: the rerun asks everything and makes every pair
    with FakeJudgeServer(polite_or_rude) as server:
        assert run(data, server.url) == 0
        assert len(server.requests) == 8
    assert len(read_outputs(data)[0]) == 4


def test_a_dead_server_stops_the_run_and_every_entry_has_a_reason(tmp_path, capsys):
    data = write_data(tmp_path, make_entries(5))
    assert run(data, f"http://127.0.0.1:{free_port()}", "--retries", "0") == 1
    _, report = read_outputs(data)
    assert_accounted(report, 5)
    parts = [part for e in report["entries_failed"] for part in e["reason"].split("; ")]
    assert parts.count("chosen: request_failed") + parts.count("rejected: request_failed") == 3
    assert "chosen: not_asked" in parts and report["summary"]["stopped"].startswith("3 requests in a row failed")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: stopped early") and "ConnectionError" in err[-1]


def test_ctrl_c_keeps_the_cache_and_the_rerun_continues(tmp_path):
    """A real Ctrl-C (SIGINT) to a running ``gpt-sft make-preferences``; the rerun asks only the rest."""
    n, k = 6, 2
    data = write_data(tmp_path, make_entries(n))
    cache = data.with_name("data-with-preference.json.cache.jsonl")
    slow = threading.Event()
    slow.set()

    def responder(prompt, asked, request):
        index = int(output_of(prompt).split()[-1].rstrip("."))
        if index >= k and slow.is_set():
            time.sleep(1.0)  # the server slows down after k entries: the user presses Ctrl-C
        return polite_or_rude(prompt, asked, request)

    with FakeJudgeServer(responder) as server:
        cmd = [sys.executable, "-m", "gpt_sft.cli.main", "make-preferences", "--data", str(data), "--backend",
               "openai", "--url", server.url, "--no-progress", "--pairing", "book", "--timeout", "10"]
        # SIGINT as a terminal delivers it: a job started in the background (CI scripts) inherits it ignored
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while not (cache.exists() and len(cache.read_text().splitlines()) >= k):
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130 and "run again to resume" in err, err
        finished = len(cache.read_text().splitlines())
        assert k <= finished < n
        slow.clear()
        asked_before = len(server.requests)
        assert run(data, server.url, "--pairing", "book") == 0
        assert len(server.requests) - asked_before == n - finished, "only what was not finished is asked"
    pairs, report = read_outputs(data)
    assert_accounted(report, n)
    assert len(pairs) == n and report["summary"]["cached"] == finished


def test_bad_data_and_flags_are_one_line_errors(tmp_path, capsys):
    entries = make_entries(4)
    entries[1] = {"instruction": "no output here"}
    data = write_data(tmp_path, entries)
    assert prefs_main(["--data", str(data), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --data") and "entry 1" in err
    with FakeJudgeServer(polite_or_rude) as server:
        assert run(data, server.url, "--skip-invalid") == 0
        assert len(server.requests) == 6
    _, report = read_outputs(data)
    assert_accounted(report, 4)
    assert report["pair_indices"] == [0, 2, 3], "indices in the file, not among the valid entries"
    assert report["entries_failed"][0]["index"] == 1 and "invalid entry" in report["entries_failed"][0]["reason"]
    assert report["source"]["entries_read"] == 4 and report["source"]["entries_valid"] == 3
    capsys.readouterr()

    for argv, flag in ((["--output", str(data)], "--output"), (["--max-chars", "0"], "--max-chars"),
                       (["--concurrency", "0"], "--concurrency"), (["--pairing", "sometimes"], "--pairing")):
        try:
            code = prefs_main(["--data", str(data), *argv])
        except SystemExit as exit_info:  # a bad flag value: the parser's one-line error
            code = exit_info.code
        assert code in (1, 2)
        message = capsys.readouterr().err.strip()
        assert len(message.splitlines()) == 1 and flag in message, message
    with pytest.raises(SystemExit):
        prefs_main([])
    assert "--data is required" in capsys.readouterr().err


def test_limit_and_concurrency(tmp_path):
    data = write_data(tmp_path, make_entries(10))
    with FakeJudgeServer(lambda p, n, r: Reply(polite_or_rude(p, n, r).text, delay=0.2)) as server:
        assert run(data, server.url, "--limit", "4", "--concurrency", "4") == 0
        assert server.max_in_flight == 4 and len(server.requests) == 8
    pairs, report = read_outputs(data)
    assert len(pairs) == 4 and report["summary"]["n"] == 4 and report["source"]["limit"] == 4


def test_the_output_loads_with_the_dpo_data_loader(tmp_path):
    data = write_data(tmp_path, make_entries(3))
    with FakeJudgeServer(polite_or_rude) as server:
        assert run(data, server.url) == 0
    path = data.with_name("data-with-preference.json")
    dataset, _ = load_preference_data(str(path))
    assert len(dataset) == 3 and dataset[0]["chosen"] == "Kindly, Correct output 0."
    assert len(load_instruction_data(str(path))) == 3, "also plain instruction data (output = the reference)"


def test_library_call_without_a_cache():
    entries = make_entries(2)
    with FakeJudgeServer(polite_or_rude) as server:
        judge = OpenAIJudge(JudgeConfig(backend="openai", url=server.url, model="m", max_tokens=64, timeout=5))
        report = make_preference_pairs(entries, judge, progress=False)
    assert [p["rejected"] for p in report.pairs] == ["Ugh. Correct output 0.", "Ugh. Correct output 1."]
    assert report.summary()["asked"] == 4 and report.summary()["cached"] == 0


# ---------------------------------------------------------------- the real llama.cpp server

N_REAL = 3  # 6 rewrites: each costs seconds of the one core a loaded machine gives the server


@pytest.mark.slow
def test_real_llama_cpp_rewriter_makes_pairs_and_resumes_without_a_server(llama_cpp_server, shared_data_dir, tmp_path,
                                                                          capsys, monkeypatch):
    """SmolLM2-135M rewrites 3 of the book's responses. A 135M model often copies the text or writes
    nonsense, so the test checks the plumbing, not the rewrites: every entry ends with a pair or a reason,
    pairs are in the book's format with two different sides, and a rerun with the cache gives the same
    pairs with the server out of reach (so without a single request)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    entries = json.loads((shared_data_dir / "instruction-data.json").read_text())[:N_REAL]
    data = write_data(tmp_path, entries)
    # sampling: at temperature 0 SmolLM2 mostly returns the response unchanged (recorded as such)
    args = ["--temperature", "0.8", "--max-tokens", "64", "--timeout", "60"]
    t0 = time.monotonic()
    rc = prefs_main(["--data", str(data), "--backend", "openai", "--url", llama_cpp_server, "--no-progress", *args])
    elapsed = time.monotonic() - t0
    out = capsys.readouterr().out
    pairs, report = read_outputs(data)
    assert rc == (0 if pairs else 1)
    assert_accounted(report, N_REAL)
    assert_book_format(pairs)
    assert report["summary"]["asked"] == 2 * N_REAL and report["generator"]["structured_output"] == \
        "response_format json_object", "llama.cpp's schema dialect, found by itself"
    served = report["generator"]["served_models"]
    assert served and "Preference pairs:" in out
    print(f"\nSmolLM2-135M rewrote {2 * N_REAL} responses in {elapsed:.1f} s "
          f"({elapsed / (2 * N_REAL):.2f} s each): {len(pairs)} of {N_REAL} entries got a pair; "
          f"reasons {report['summary']['reasons']}", file=sys.__stderr__)

    # the same run, the server gone: everything from the cache, nothing asked
    rc_again = prefs_main(["--data", str(data), "--backend", "openai", "--url", f"http://127.0.0.1:{free_port()}",
                           "--judge-model", served[0], "--no-progress", "--retries", "0", *args])
    assert rc_again == rc
    again_pairs, again = read_outputs(data)
    assert again_pairs == pairs and again["summary"]["asked"] == 0 and again["summary"]["cached"] == 2 * N_REAL
    assert again["entries_failed"] == [{**e, "sides": {s: {**v, "cached": True} if v.get("from") == "rewrite" else v
                                                       for s, v in e["sides"].items()}}
                                       for e in report["entries_failed"]]
