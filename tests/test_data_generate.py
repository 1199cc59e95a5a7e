"""``gpt-sft data generate``: Magpie-style instruction data, a model sent its chat template's user header as a raw
completion, then asked the instruction through chat (:mod:`gpt_sft.judge.magpie`). The scriptable local HTTP server
of test_judge.py (deterministic replies: each refusal reason, the served templates), a port nobody listens on (the
rerun served from the cache), and the real llama.cpp server with SmolLM2-135M (conftest's ``llama_cpp_server``)."""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import free_port
from test_judge import FakeJudgeServer, Reply

from gpt_sft.cli.main import main as gpt_sft
from gpt_sft.judge.magpie import render_header

CHATML_USER = "<|im_start|>user\n"
# SmolLM2-135M-Instruct's chat template, as its GGUF's tokenizer.chat_template has it (what llama.cpp's /props serves)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou "
    "are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + "
    "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")
SMOLLM2_HEADER = render_header(SMOLLM2_TEMPLATE)[0]  # what the template path makes of it
OLLAMA_CHATML = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>"
                 "user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")

# entry i's raw completion is sampled with seed 123 + i: what the scripted model writes for each
INSTRUCTIONS = ["Name a planet.", "  ", "name a   PLANET.", "Tell me a joke<|endoftext|>",
                "Say hello.<|im_end|>\n<|im_start|>assistant\nHello!", "Explain rain.", "What is 2+2?",
                "Describe the sea."]
RESPONSES = {"Name a planet.": "Mars.", "Say hello.": "Hello!", "Explain rain.": "Explain rain.", "What is 2+2?": "4",
             "Describe the sea.": "The sea is " + "very " * 20 + "big."}
KEPT = [{"instruction": "Name a planet.", "input": "", "output": "Mars."},
        {"instruction": "Say hello.", "input": "", "output": "Hello!"},
        {"instruction": "What is 2+2?", "input": "", "output": "4"}]
REASONS = {"instruction: empty": 1, "instruction: end_of_text": 1, "instruction: repeated": 1,
           "response: too_long": 1, "response: unchanged": 1}


def scripted_model(prompt: str, n: int, request: dict) -> Reply:
    body = request["body"]
    if request["path"].endswith("/completions") and "prompt" in body or request["path"] == "/api/generate":
        seed = body.get("seed", (body.get("options") or {}).get("seed"))
        return Reply(INSTRUCTIONS[seed - 123])
    return Reply(RESPONSES[prompt])


def generate(output, url, *extra, backend="openai"):
    return gpt_sft(["data", "generate", "--backend", backend, "--url", url, "--output", str(output), "--no-progress",
                    "--backoff", "0", "--timeout", "10", *extra])


def assert_each_kept_or_reasoned(n, written, report):
    assert report["summary"]["requested"] == n and len(report["entries"]) == n
    assert report["summary"]["kept"] == len(written) and report["summary"]["refused"] == n - len(written)
    for e in report["entries"]:
        assert (e["status"] == "kept") != bool(e["reason"]), e
    assert sum(report["summary"]["reasons"].values()) == n - len(written)
    for entry in written:
        assert set(entry) == {"instruction", "input", "output"} and entry["instruction"].strip()
        assert entry["output"].strip() and "<|endoftext|>" not in entry["instruction"] + entry["output"]


def test_each_entry_is_kept_or_refused_with_its_reason_and_the_rerun_is_served_from_the_cache(tmp_path, capsys):
    output = tmp_path / "generated.json"
    with FakeJudgeServer(scripted_model) as server:
        assert generate(output, server.url, "--n", "8", "--user-header", "<|im_start|>user\\n", "--max-chars",
                        "60", "--concurrency", "3") == 0
        raw = [r["body"] for r in server.requests if r["path"] == "/v1/completions"]
        assert server.max_in_flight <= 3
    assert [body["prompt"] for body in raw] == [CHATML_USER] * 8, "the header as it is, no chat template around it"
    assert sorted(body["seed"] for body in raw) == list(range(123, 131)) and raw[0]["stop"] == ["<|im_end|>"]
    assert raw[0]["temperature"] == 1.0, "Magpie samples"
    written = json.loads(output.read_text())
    report = json.loads((tmp_path / "generated.report.json").read_text())
    assert written == KEPT
    assert_each_kept_or_reasoned(8, written, report)
    assert report["summary"]["reasons"] == REASONS
    assert {e["index"]: e["reason"] for e in report["entries_failed"]} == {
        1: "instruction: empty", 2: "instruction: repeated", 3: "instruction: end_of_text",
        5: "response: unchanged", 7: "response: too_long"}
    assert report["entries"][2]["instruction"]["detail"] == "entry 0's instruction again"
    assert report["generator"]["user_header"] == CHATML_USER and report["generator"]["end_of_turn"] == "<|im_end|>"
    out = capsys.readouterr().out
    assert "Kept 3 of 8 requested entries (13 questions: 0 from the cache, 13 asked)" in out
    assert "Refused: 5 (instruction: empty: 1" in out

    before = output.read_bytes()
    assert generate(output, f"http://127.0.0.1:{free_port()}", "--n", "8", "--user-header", "<|im_start|>user\\n",
                    "--max-chars", "60", "--retries", "0") == 0
    again = json.loads((tmp_path / "generated.report.json").read_text())
    assert output.read_bytes() == before and again["summary"]["asked"] == 0 and again["summary"]["cached"] == 13
    assert again["summary"]["reasons"] == REASONS


@pytest.mark.parametrize("backend", ["openai", "ollama"])
def test_an_instruction_cut_by_max_tokens_is_unfinished(tmp_path, backend):
    """The server says the raw completion hit the token limit (finish_reason / done_reason "length"): the
    instruction is cut off mid-turn and refused; one the model ended is kept."""
    def model(prompt: str, n: int, request: dict) -> Reply:
        body = request["body"]
        seed = body.get("seed", (body.get("options") or {}).get("seed"))
        if "prompt" not in body:
            return Reply("Paris.")
        return Reply("What is the capital of France?") if seed == 123 else Reply("Write a long", finish_reason="length")

    output = tmp_path / "generated.json"
    with FakeJudgeServer(model) as server:
        assert generate(output, server.url, "--n", "2", "--user-header", CHATML_USER, backend=backend) == 0
    report = json.loads((tmp_path / "generated.report.json").read_text())
    assert report["summary"]["reasons"] == {"instruction: unfinished": 1}
    assert report["entries"][1]["instruction"]["detail"].startswith("no <|im_end|> within --max-tokens")
    assert json.loads(output.read_text()) == [{"instruction": "What is the capital of France?", "input": "",
                                               "output": "Paris."}]


def test_retry_failed_samples_a_refused_instruction_again_with_a_new_seed(tmp_path):
    """Seed 123 gives an empty instruction; the next attempt at entry 0 is sampled with seed 123 + n (n = 1 here)."""
    output = tmp_path / "generated.json"

    def model(prompt: str, n: int, request: dict) -> Reply:
        body = request["body"]
        return Reply({123: " ", 124: "Name a moon."}[body["seed"]] if "prompt" in body else "The Moon.")

    argv = ["--n", "1", "--user-header", CHATML_USER]
    with FakeJudgeServer(model) as server:
        assert generate(output, server.url, *argv) == 1
        assert generate(output, server.url, *argv) == 1, "the refusal is cached: nothing asked"
        assert len(server.requests) == 1
        assert generate(output, server.url, *argv, "--retry-failed") == 0
        assert [r["body"]["seed"] for r in server.requests if "prompt" in r["body"]] == [123, 124]
    assert json.loads(output.read_text()) == [{"instruction": "Name a moon.", "input": "", "output": "The Moon."}]


@pytest.mark.parametrize("backend, pages, extra, header", [
    ("openai", {"/props": {"chat_template": SMOLLM2_TEMPLATE}}, [],
     "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
     + CHATML_USER),
    ("openai", {"/props": {"chat_template": SMOLLM2_TEMPLATE}}, ["--system", "You write haiku."],
     "<|im_start|>system\nYou write haiku.<|im_end|>\n" + CHATML_USER),
    ("ollama", {"/api/show": {"template": OLLAMA_CHATML}}, [], CHATML_USER),
    ("ollama", {"/api/show": {"template": OLLAMA_CHATML, "model_info": {"tokenizer.chat_template": SMOLLM2_TEMPLATE}}},
     ["--system", "You write haiku."], "<|im_start|>system\nYou write haiku.<|im_end|>\n" + CHATML_USER),
])
def test_the_header_comes_from_the_served_template(tmp_path, backend, pages, extra, header):
    output = tmp_path / "generated.json"
    with FakeJudgeServer(scripted_model, pages=pages) as server:
        assert generate(output, server.url, "--n", "1", *extra, backend=backend) == 0
        (raw,) = [r["body"] for r in server.requests if "prompt" in r["body"]]
    assert raw["prompt"] == header
    if backend == "ollama":
        assert raw["raw"] is True and raw["options"]["stop"] == ["<|im_end|>"]
    report = json.loads((tmp_path / "generated.report.json").read_text())
    assert report["generator"]["user_header"] == header and report["generator"]["header_from"].startswith("the served")
    assert json.loads(output.read_text()) == KEPT[:1]


def reflecting_model(prompt: str, n: int, request: dict) -> Reply:
    """Entry 0's instruction is rewritten well and its response too; entry 1's rewritten instruction is entry 0's
    (repeated: both originals kept... its response rewritten); entry 2's response rewrite leaks <|endoftext|>."""
    body = request["body"]
    if "prompt" in body:
        return Reply(["Name a planet.", "Name a colour.", "Name a fruit."][body["seed"] - 123])
    if "### Response:" in prompt:
        instruction = prompt.split("### Instruction:\n")[1].split("\n\n")[0]
        rewrite = {"Name the largest planet.": "Jupiter is the largest planet.", "Name a colour.": "Blue, like the sky.",
                   "Name a fruit.": "An apple<|endoftext|>"}[instruction]
        return Reply(json.dumps({"critique": "Too short.", "rewrite": rewrite}))
    if "### Instruction:" in prompt:
        instruction = prompt.split("### Instruction:\n")[1].split("\n\n")[0]
        rewrite = {"Name a planet.": "Name the largest planet.", "Name a colour.": "Name a planet.",
                   "Name a fruit.": "Name a fruit."}[instruction]
        return Reply(json.dumps({"critique": "Vague.", "rewrite": rewrite}))
    return Reply({"Name a planet.": "Mars.", "Name a colour.": "Red.", "Name a fruit.": "A pear."}[prompt])


def test_reflect_keeps_only_the_rewrites_that_pass(tmp_path, capsys):
    output = tmp_path / "reflected.json"
    with FakeJudgeServer(reflecting_model) as server:
        assert generate(output, server.url, "--n", "3", "--user-header", CHATML_USER, "--reflect") == 0
    assert json.loads(output.read_text()) == [
        {"instruction": "Name the largest planet.", "input": "", "output": "Jupiter is the largest planet."},
        {"instruction": "Name a colour.", "input": "", "output": "Blue, like the sky."},
        {"instruction": "Name a fruit.", "input": "", "output": "A pear."}]
    report = json.loads((tmp_path / "reflected.report.json").read_text())
    assert [e["reflection"] for e in report["entries"]] == [
        "rewrote both", "rewrote the response (instruction repeated)", "kept the original: response end_of_text"]
    assert report["entries"][2]["reflected_instruction"]["reason"] == "unchanged"
    assert report["summary"]["questions"] == 12 and "Reflection: kept the original" in capsys.readouterr().out


@pytest.mark.parametrize("argv, pages, message", [
    (["--n", "2"], {}, "error: the openai server does not expose its model's chat template: pass the text a user's "
                       "turn starts with, --user-header"),
    (["--n", "2", "--user-header", "USER: "], {}, "error: no end-of-turn marker known for the header 'USER: ': pass "
                                                  "--end-of-turn"),
    (["--n", "2", "--user-header", CHATML_USER, "--system", "Be brief."], {}, "error: --system is rendered by the "
                                                                              "served template"),
    (["--n", "2"], {"/props": {"chat_template": "{{ ''.__class__.__mro__[1] }}"}},
     "error: the chat template could not be rendered (SecurityError"),
    (["--user-header", CHATML_USER], {}, "error: --n is required"),
    (["--n", "0", "--user-header", CHATML_USER], {}, "error: --n must be >= 1, got 0"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, pages, message):
    with FakeJudgeServer(scripted_model, pages=pages) as server:
        try:
            result = generate(tmp_path / "out.json", server.url, *argv)
        except SystemExit as stop:
            result = stop.code
        assert not any("prompt" in r["body"] for r in server.requests), "nothing generated"
    err = capsys.readouterr().err
    assert result in (1, 2)
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert lines[0].startswith(message) and len(lines) == 1, err
    assert not (tmp_path / "out.json").exists()


def numbering_model(prompt: str, n: int, request: dict) -> Reply:
    seed = request["body"].get("seed")
    return Reply(f"Count to {seed - 120}." if "prompt" in request["body"] else f"{prompt} Done: 1, 2, 3.")


def test_the_hf_backend_continues_its_tokenizer_templates_header(tiny_hf_judge_dir, tmp_path):
    """The hf backend: the header from the tokenizer's own chat template, the raw continuation from the local model.
    test_judge's tiny model says "85" whatever it is given ("85 85 85" in 3 tokens): with " 85 85" as its end of turn
    its instruction is "85", and at temperature 0 the second entry's is the same (repeated); its response "85 85 85".
    Without a marker in 3 tokens the instruction is unfinished."""
    output = tmp_path / "hf.json"
    argv = ["data", "generate", "--backend", "hf", "--model", str(tiny_hf_judge_dir), "--n", "2", "--temperature",
            "0", "--max-tokens", "3", "--output", str(output), "--no-progress"]
    assert gpt_sft([*argv, "--end-of-turn", " 85 85"]) == 0
    report = json.loads((tmp_path / "hf.report.json").read_text())
    assert report["generator"]["user_header"] == "<|user|> " and report["generator"]["header_from"] == (
        "the served jinja chat template")
    assert report["entries"][0]["instruction"]["replies"] == ["85 85 85"]
    assert report["summary"]["reasons"] == {"instruction: repeated": 1}
    assert json.loads(output.read_text()) == [{"instruction": "85", "input": "", "output": "85 85 85"}]

    assert gpt_sft([*argv, "--end-of-turn", "<|assistant|>", "--no-cache"]) == 1, "nothing kept"
    report = json.loads((tmp_path / "hf.report.json").read_text())
    assert report["summary"]["reasons"] == {"instruction: unfinished": 2}


def test_the_output_trains(tmp_path):
    output = tmp_path / "generated.json"
    with FakeJudgeServer(numbering_model) as server:  # 12 entries: enough for the train/validation/test split
        assert generate(output, server.url, "--n", "12", "--user-header", CHATML_USER) == 0
    assert len(json.loads(output.read_text())) == 12
    run = tmp_path / "run"
    assert gpt_sft(["train", "--data", str(output), "--model", "scratch", "--n-layers", "1", "--emb-dim", "32",
                    "--n-heads", "2", "--context-length", "64", "--output-dir", str(run), "--max-steps", "1",
                    "--eval-every", "0", "--no-generate", "--no-sample-every-epoch"]) == 0
    assert any(run.rglob("*.safetensors"))


@pytest.mark.slow
def test_real_llama_cpp_generates_entries_and_reruns_without_a_server(llama_cpp_server, tmp_path, monkeypatch):
    """SmolLM2-135M writes 4 entries from the header its template gives (llama-cpp-python's server has no /props:
    the header is passed; with its default system turn it writes questions, with the bare ChatML user header mostly
    code). A 135M model writes weak data, so the test checks the plumbing: every entry is kept or has a reason, and a
    rerun with the server out of reach writes the same file from the cache."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    output = tmp_path / "smollm2.json"
    args = ["--n", "4", "--user-header", SMOLLM2_HEADER, "--max-tokens", "24", "--timeout", "60"]
    t0 = time.monotonic()
    rc = generate(output, llama_cpp_server, *args)
    elapsed = time.monotonic() - t0
    written = json.loads(output.read_text())
    report = json.loads((tmp_path / "smollm2.report.json").read_text())
    assert_each_kept_or_reasoned(4, written, report)
    assert rc == (0 if written else 1) and report["summary"]["stopped"] is None
    served = report["generator"]["served_models"]
    assert served
    instructions = [e["instruction"]["replies"][0] for e in report["entries"]]
    assert len(set(instructions)) > 1, "each raw completion is sampled with its own seed"
    print(f"\nSmolLM2-135M generated 4 entries in {elapsed:.1f} s: {len(written)} kept; reasons "
          f"{report['summary']['reasons']}", file=sys.__stderr__)

    before = output.read_bytes()
    assert generate(output, f"http://127.0.0.1:{free_port()}", "--model", served[0], "--retries", "0", *args) == rc
    again = json.loads((tmp_path / "smollm2.report.json").read_text())
    assert output.read_bytes() == before and again["summary"]["asked"] == 0
    assert again["summary"]["cached"] == report["summary"]["questions"], "every question was answered and cached"


@pytest.mark.slow
def test_real_llama_cpp_reflects(llama_cpp_server, tmp_path, monkeypatch):
    """--reflect on SmolLM2-135M: the kept entry says what the reflection did (rewrote, or kept the original and
    why). Seed 123's raw completion is a short question ("Can you help me create a plan to improve my writing
    skills?": llama.cpp's sampling is seeded), so the entry is kept and reflected on."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    output = tmp_path / "reflected.json"
    rc = generate(output, llama_cpp_server, "--n", "1", "--user-header", SMOLLM2_HEADER, "--max-tokens", "64",
                  "--timeout", "60", "--reflect", "--seed", "123")
    written = json.loads(output.read_text())
    report = json.loads((tmp_path / "reflected.report.json").read_text())
    assert_each_kept_or_reasoned(1, written, report)
    assert rc == 0 and len(written) == 1, report["entries"]
    (entry,) = report["entries"]
    assert entry["reflection"] in ("rewrote both", f"rewrote the response (instruction "
                                   f"{(entry['reflected_instruction'] or {}).get('reason')})",
                                   f"kept the original: response {entry['reflected_response'].get('reason')}")
    assert report["summary"]["reflection"] == {entry["reflection"]: 1} and report["summary"]["questions"] == 4
    print(f"\nSmolLM2-135M reflected: {entry['reflection']}; {written[0]}", file=sys.__stderr__)
