"""``gpt-sft data rewrite``: one field of every entry rewritten by a model into a new field, through the same
machinery as ``make-preferences`` (:func:`gpt_sft.judge.preferences.ask_rewrites`). The scriptable local HTTP judge
server of test_judge.py (deterministic replies, counted requests), a port nobody listens on (the rerun served from
the cache), and the real llama.cpp server with SmolLM2-135M (conftest's ``llama_cpp_server``)."""

from __future__ import annotations

import json
import re
import sys
import time

import pytest
from conftest import free_port
from test_judge import FakeJudgeServer, Reply

from gpt_sft.cli.main import main as gpt_sft

PASSIVE = "Rewrite it in the passive voice."
ENTRIES = [
    {"instruction": "Name a planet.", "input": "", "output": "Astronomers observed Mars."},
    {"instruction": "Describe the cat.", "input": "a cat", "output": "The cat chased the mouse."},
    {"instruction": "Say something.", "input": "", "output": "The dog ate the bone."},
]


def text_of(prompt: str) -> str:
    return re.search(r"### (?:Response|Text) to rewrite:\n(.*)\n\n", prompt, re.DOTALL).group(1)


def passive_or_not(prompt: str, n: int, request: dict) -> Reply:
    """A rewriter that makes the first entry passive, returns the second unchanged and leaks <|endoftext|> in the
    third."""
    text = text_of(prompt)
    reply = {"Astronomers observed Mars.": "Mars was observed by astronomers.",
             "The dog ate the bone.": "The bone was eaten<|endoftext|>"}.get(text, text)
    return Reply(json.dumps({"rewrite": reply}))


def rewrite(data, output, url, *extra):
    return gpt_sft(["data", "rewrite", "--data", str(data), "--field", "output", "--into", "output_2",
                    "--instruction", PASSIVE, "--output", str(output), "--backend", "openai", "--url", url,
                    "--no-progress", "--backoff", "0", "--timeout", "10", *extra])


def assert_each_rewritten_or_reasoned(entries, written, report):
    failed = {e["index"]: e["reason"] for e in report["entries_failed"]}
    assert len(written) == len(entries)
    for i, (before, after) in enumerate(zip(entries, written)):
        assert {k: v for k, v in after.items() if k != "output_2"} == before, "the other fields are untouched"
        assert ("output_2" in after) != (i in failed), (i, after, failed)
        assert i not in failed or failed[i]
    assert report["summary"]["rewritten"] + report["summary"]["failed"] == len(entries)


def test_the_field_is_rewritten_refusals_recorded_and_the_rerun_served_from_the_cache(tmp_path, capsys):
    data, output = tmp_path / "data.json", tmp_path / "passive.json"
    data.write_text(json.dumps(ENTRIES))
    with FakeJudgeServer(passive_or_not) as server:
        assert rewrite(data, output, server.url) == 0
        assert len(server.counts) == 3 and all(PASSIVE in prompt for prompt in server.counts)
    written = json.loads(output.read_text())
    report = json.loads((tmp_path / "passive.rewrite-report.json").read_text())
    assert_each_rewritten_or_reasoned(ENTRIES, written, report)
    assert [e.get("output_2") for e in written] == ["Mars was observed by astronomers.", None, None]
    assert report["summary"]["reasons"] == {"end_of_text": 1, "unchanged": 1} and report["summary"]["asked"] == 3
    assert report["generator"]["instruction"] == PASSIVE and report["generator"]["into"] == "output_2"
    assert "Rewrote output into output_2: 1 of 3 entries" in capsys.readouterr().out

    # the server gone: the same file from the cache, nothing asked
    before = output.read_bytes()
    assert rewrite(data, output, f"http://127.0.0.1:{free_port()}", "--judge-model", report["generator"]["model"],
                   "--retries", "0") == 0
    again = json.loads((tmp_path / "passive.rewrite-report.json").read_text())
    assert output.read_bytes() == before and again["summary"]["asked"] == 0 and again["summary"]["cached"] == 3


def test_any_field_is_rewritten_as_a_text_an_empty_one_is_not_asked_and_overwrite_field(tmp_path):
    data, output = tmp_path / "data.jsonl", tmp_path / "upper.jsonl"
    entries = [{**e, "input_2": "old"} for e in ENTRIES]
    data.write_text("".join(json.dumps(e) + "\n" for e in entries))
    with FakeJudgeServer(lambda prompt, n, req: Reply(json.dumps({"rewrite": text_of(prompt).upper()}))) as server:
        argv = ["data", "rewrite", "--data", str(data), "--field", "input", "--into", "input_2", "--instruction",
                "Shout it.", "--output", str(output), "--backend", "openai", "--url", server.url, "--no-progress"]
        assert gpt_sft(argv) == 1 and not output.exists(), "input_2 exists: --overwrite-field is needed"
        assert gpt_sft([*argv, "--overwrite-field"]) == 0
        (prompt,) = server.counts  # only the entry with an input is asked, as a text on its own
    assert "### Text to rewrite:\na cat\n\n" in prompt and "Shout it." in prompt and "### Instruction" not in prompt
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [e.get("input_2") for e in written] == [None, "A CAT", None], "no input: no input_2, the old one dropped"
    report = json.loads((tmp_path / "upper.rewrite-report.json").read_text())
    assert report["summary"]["reasons"] == {"no_text": 2} and report["summary"]["questions"] == 1


@pytest.mark.parametrize("argv, entries, message", [
    (["--field", "answer"], ENTRIES, "error: entry 0 has no string field 'answer' (--field)"),
    (["--into", "input"], ENTRIES, "error: entry 0 already has the field 'input' (--into)"),
    (["--into", "output"], ENTRIES, "error: --into output is --field"),
    (["--output", "{data}"], ENTRIES, "error: --output {data} is --data: the input is never changed"),
    ([], [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}],
     "error: {data} holds conversations: data rewrite rewrites a field of Alpaca entries"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, entries, message):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(entries))
    argv = [a.format(data=data) for a in argv]
    base = {"--field": "output", "--into": "output_2", "--output": str(tmp_path / "out.json")}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    try:
        result = gpt_sft(["data", "rewrite", "--data", str(data), "--instruction", PASSIVE, "--backend", "openai",
                          "--url", f"http://127.0.0.1:{free_port()}", "--no-progress",
                          *[x for kv in base.items() for x in kv]])
    except SystemExit as stop:
        result = stop.code
    err = capsys.readouterr().err
    assert result in (1, 2)
    assert err.startswith(message.format(data=data)) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_real_llama_cpp_rewrites_three_book_entries_and_resumes_without_a_server(llama_cpp_server, book_data_path,
                                                                                 tmp_path, capsys, monkeypatch):
    """SmolLM2-135M rewrites 3 of the book's responses in the passive voice. A 135M model often copies the text, so
    the test checks the plumbing: every entry ends with output_2 or a recorded reason, and a rerun with the server
    out of reach writes the same file from the cache."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    entries = json.loads(book_data_path.read_text())[:3]
    data, output = tmp_path / "data.json", tmp_path / "passive.json"
    data.write_text(json.dumps(entries))
    args = ["--temperature", "0.8", "--max-tokens", "48", "--timeout", "60"]
    t0 = time.monotonic()
    rc = rewrite(data, output, llama_cpp_server, *args)
    elapsed = time.monotonic() - t0
    written = json.loads(output.read_text())
    report = json.loads((tmp_path / "passive.rewrite-report.json").read_text())
    assert_each_rewritten_or_reasoned(entries, written, report)
    assert rc == (0 if report["summary"]["rewritten"] else 1) and report["summary"]["asked"] == 3
    served = report["generator"]["served_models"]
    assert served
    print(f"\nSmolLM2-135M rewrote 3 responses in {elapsed:.1f} s: {report['summary']['rewritten']} kept; reasons "
          f"{report['summary']['reasons']}", file=sys.__stderr__)

    before = output.read_bytes()
    assert rewrite(data, output, f"http://127.0.0.1:{free_port()}", "--judge-model", served[0], "--retries", "0",
                   *args) == rc
    again = json.loads((tmp_path / "passive.rewrite-report.json").read_text())
    assert output.read_bytes() == before and again["summary"]["asked"] == 0 and again["summary"]["cached"] == 3
