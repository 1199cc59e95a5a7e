"""Tests of gpt_sft.generate, gpt-sft generate and benchmarks/generation.py.

All on tiny random models. To make end-of-text stops happen, the ``lm_head`` row of token 50256 is
nudged along a random direction: the EOS logit then varies with the hidden state and becomes the
argmax after a few steps for some prompts and never for others (asserted, not assumed).
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_generate

from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.cli.generate import main
from gpt_sft.generate.batching import auto_batch_size
from gpt_sft.generate.book import generate_book_style
from gpt_sft.generate.decode import generate_token_ids
from gpt_sft.generate.responses import add_responses, generate_responses
from gpt_sft.generate.settings import GenerationSettings, PromptTruncationWarning

REPO_ROOT = Path(__file__).resolve().parents[1]
EOS = 50256
MAX_NEW = 20
LENGTHS = [5, 17, 3, 30, 11, 8, 25, 1, 40, 2]


def tiny_model(eos_scale: float = 0.05) -> GPTForCausalLM:
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()
    direction = torch.randn(64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.lm_head.weight[EOS] += eos_scale * direction  # EOS becomes argmax for some states
    return model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against other jobs and make these
    tiny-model tests 10-50x slower; the results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> GPTForCausalLM:
    return tiny_model()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50000, (n,), generator=g).tolist() for n in LENGTHS]


@pytest.fixture(scope="module")
def tokenizer():
    from gpt_sft.model.tokenizer import get_tokenizer

    return get_tokenizer()


def settings(**kwargs) -> GenerationSettings:
    return GenerationSettings(**{"max_new_tokens": MAX_NEW, "progress": False, **kwargs})


def book(model, ids, max_new=MAX_NEW, context=256, **kwargs) -> list[int]:
    return generate_book_style(model, torch.tensor([ids]), max_new, context, **kwargs)[0, len(ids):].tolist()


@pytest.fixture(scope="module")
def greedy_reference(model, prompts) -> list[list[int]]:
    return [book(model, p) for p in prompts]


# ------------------------------------------------------------------------------------------ greedy


def test_batched_greedy_equals_one_at_a_time_and_book(model, prompts, greedy_reference):
    batched = generate_token_ids(model, prompts, settings(batch_size=4))
    single = [generate_token_ids(model, [p], settings(batch_size=1)).sequences[0] for p in prompts]
    assert batched.sequences == single == greedy_reference
    # End-of-text stops really happen, for some prompts and not for others; EOS is never in a response.
    stopped = [s for s, eos in zip(batched.sequences, batched.stopped_at_eos) if eos]
    running = [s for s, eos in zip(batched.sequences, batched.stopped_at_eos) if not eos]
    assert 2 <= len(stopped) and len(running) >= 1
    assert all(len(s) < MAX_NEW for s in stopped) and all(len(s) == MAX_NEW for s in running)
    assert all(EOS not in s for s in batched.sequences)
    assert batched.num_new_tokens == sum(map(len, greedy_reference))
    assert batched.prompt_ids == prompts and batched.num_shrunk == batched.num_truncated == 0


@pytest.mark.parametrize("batch_size", [1, 3, len(LENGTHS), "auto"])
def test_batch_size_and_order_do_not_change_results(model, prompts, greedy_reference, batch_size):
    order = [3, 0, 9, 7, 1, 5, 8, 2, 6, 4]
    out = generate_token_ids(model, [prompts[i] for i in order], settings(batch_size=batch_size))
    assert out.sequences == [greedy_reference[i] for i in order]  # caller's order, despite length sorting


def test_no_eos_stop_when_disabled(model, prompts):
    out = generate_token_ids(model, prompts[:4], settings(eos_token_id=None, batch_size=2))
    assert all(len(s) == MAX_NEW for s in out.sequences) and not any(out.stopped_at_eos)
    assert out.sequences == [book(model, p, eos_id=None) for p in prompts[:4]]


def test_transformers_backend_gives_the_same_greedy_tokens(model, prompts, greedy_reference):
    out = generate_token_ids(model, prompts, settings(batch_size=4, backend="transformers"))
    assert out.sequences == greedy_reference


def test_transformers_backend_sampling_config(model, prompts, monkeypatch):
    seen = {}
    real_generate = model.generate

    def spy(*args, generation_config, **kwargs):
        seen["config"], seen["model_config"] = generation_config, model.generation_config
        return real_generate(*args, generation_config=generation_config, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    kw = dict(backend="transformers", temperature=0.8, seed=1, max_new_tokens=3, eos_token_id=None)
    first = generate_token_ids(model, prompts[:3], settings(**kw)).sequences
    assert seen["config"].top_k == 0 and seen["config"].do_sample  # no hidden top-k of 50
    assert seen["model_config"].eos_token_id is None and model.generation_config.eos_token_id == EOS
    assert first == generate_token_ids(model, prompts[:3], settings(**kw)).sequences  # seeded


def test_generation_restores_training_mode(prompts):
    m = tiny_model()
    m.train()
    generate_token_ids(m, prompts[:2], settings(max_new_tokens=2))
    assert m.training


# ------------------------------------------------------------------------------ per-prompt budgets

BUDGETS = [1, 7, 25, 3, 12, 25, 2, 18, 5, 9]  # one per prompt of LENGTHS


@pytest.mark.parametrize("batch_size,backend", [(1, "cache"), (3, "cache"), ("auto", "cache"), (4, "transformers")])
def test_per_prompt_budgets_are_prefixes_of_a_long_run(model, prompts, batch_size, backend):
    common = max(BUDGETS)
    long = generate_token_ids(model, prompts, settings(max_new_tokens=common, eos_token_id=None, batch_size=batch_size))
    out = generate_token_ids(model, prompts, settings(eos_token_id=None, batch_size=batch_size, backend=backend),
                             max_new_tokens=BUDGETS)
    assert [len(s) for s in out.sequences] == BUDGETS and not any(out.stopped_at_eos)
    assert out.num_new_tokens == sum(BUDGETS) and out.prompt_ids == prompts
    assert out.sequences == [s[:b] for s, b in zip(long.sequences, BUDGETS)]
    if batch_size == 3:  # the book's generate with the common budget, once
        for p, s, b in zip(prompts, out.sequences, BUDGETS):
            assert s == book(model, p, max_new=common, eos_id=None)[:b]


def test_per_prompt_budgets_override_settings_and_keep_eos_stops(model, prompts, greedy_reference):
    # settings.max_new_tokens is ignored; with end-of-text on, a budget cuts only longer responses.
    budgets = [MAX_NEW] * 5 + [4] * 5
    out = generate_token_ids(model, prompts, settings(max_new_tokens=2, batch_size=4), max_new_tokens=budgets)
    assert out.sequences == [ref[:b] for ref, b in zip(greedy_reference, budgets)]
    assert out.stopped_at_eos == [len(ref) < b for ref, b in zip(greedy_reference, budgets)]
    # a tuple, ints of any kind
    same = generate_token_ids(model, prompts, settings(batch_size=4), max_new_tokens=tuple(torch.tensor(budgets).tolist()))
    assert same.sequences == out.sequences


def test_per_prompt_budgets_are_validated(model, prompts):
    with pytest.raises(ValueError, match="3 budgets for 10 prompts"):
        generate_token_ids(model, prompts, settings(), max_new_tokens=[5, 5, 5])
    with pytest.raises(ValueError, match=r"max_new_tokens\[2\] must be >= 1"):
        generate_token_ids(model, prompts[:3], settings(), max_new_tokens=[5, 1, 0])
    with pytest.raises(ValueError, match=r"max_new_tokens\[0\] must be >= 1"):
        generate_token_ids(model, prompts[:1], settings(), max_new_tokens=[-2])
    with pytest.raises(ValueError, match="must be an integer"):
        generate_token_ids(model, prompts[:2], settings(), max_new_tokens=[5, 2.5])
    with pytest.raises(TypeError, match="one per prompt"):
        generate_token_ids(model, prompts[:1], settings(), max_new_tokens=5)
    assert generate_token_ids(model, [], settings(), max_new_tokens=[]).sequences == []


def test_per_prompt_budgets_follow_the_overflow_rules_prompt_by_prompt(model):
    long = list(range(1000, 1050))  # 50 tokens, context 64
    prompts = [long, long, [5, 6]]
    kw = dict(context_length=64, eos_token_id=None, batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 50 + 15 - 1 = 64 fits: no warning
        out = generate_token_ids(model, prompts[:1], settings(**kw), max_new_tokens=[15])
    assert len(out.sequences[0]) == 15 and out.num_shrunk == 0
    for backend in ("cache", "transformers"):
        with pytest.warns(PromptTruncationWarning, match="1 of 3 prompts .* with their max_new_tokens"):
            out = generate_token_ids(model, prompts, settings(**kw, backend=backend), max_new_tokens=[10, 30, 40])
        assert [len(s) for s in out.sequences] == [10, 15, 40] and out.num_shrunk == 1
        assert out.sequences[1] == book(model, long, max_new=15, context=64, eos_id=None)
        assert out.sequences[0] == out.sequences[1][:10]
    with pytest.warns(PromptTruncationWarning):
        out = generate_token_ids(model, prompts, settings(**kw, overflow="truncate"), max_new_tokens=[10, 30, 40])
    assert out.prompt_ids == [long, long[-35:], [5, 6]] and out.num_truncated == 1
    with pytest.raises(ValueError, match="max_new_tokens=30 exceeds"):
        generate_token_ids(model, prompts, settings(**kw, overflow="error"), max_new_tokens=[10, 30, 40])


def test_auto_batch_size_uses_the_largest_budget(model, prompts, monkeypatch):
    import gpt_sft.generate.decode as decode

    seen = []
    real = decode.auto_batch_size
    monkeypatch.setattr(decode, "auto_batch_size",
                        lambda model, length, new, **kw: seen.append((length, new)) or real(model, length, new, **kw))
    generate_token_ids(model, prompts, settings(max_new_tokens=2, eos_token_id=None), max_new_tokens=BUDGETS)
    assert seen == [(max(LENGTHS), max(BUDGETS))]


# ---------------------------------------------------------------------------------------- sampling


def test_sampling_is_seeded_and_independent_of_batching(model, prompts):
    run = lambda **kw: generate_token_ids(model, prompts, settings(temperature=1.0, top_k=50, **kw)).sequences
    first = run(seed=7, batch_size=4)
    assert first == run(seed=7, batch_size=4) == run(seed=7, batch_size=1)
    assert first != run(seed=8, batch_size=4)
    torch.manual_seed(5)
    unseeded = run(seed=None, batch_size=4)
    torch.manual_seed(5)
    assert unseeded == run(seed=None, batch_size=4)  # seed=None follows torch's global RNG


@pytest.mark.parametrize("temperature,top_k", [(1.0, None), (0.7, 5)])
def test_sampling_equals_book_generate_seeded_per_prompt(model, prompts, temperature, top_k):
    ours = generate_token_ids(model, prompts, settings(temperature=temperature, top_k=top_k, seed=11, batch_size=4))
    for i, p in enumerate(prompts):
        torch.manual_seed(11 + i)
        assert ours.sequences[i] == book(model, p, temperature=temperature, top_k=top_k)


def test_top_k_1_equals_greedy(model, prompts, greedy_reference):
    out = generate_token_ids(model, prompts, settings(temperature=1.5, top_k=1, seed=3, batch_size=4))
    assert out.sequences == greedy_reference
    assert generate_token_ids(model, prompts, settings(top_k=3, batch_size=4)).sequences == greedy_reference


def test_top_k_samples_only_among_the_k_best(model, prompts):
    ids = prompts[1]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    firsts = {
        generate_token_ids(model, [ids], settings(max_new_tokens=1, temperature=5.0, top_k=3, seed=s)).sequences[0][0]
        for s in range(25)
    }
    assert firsts <= top3 and len(firsts) > 1


# -------------------------------------------------------------------------------- context overflow


def test_overflow_shrink_keeps_the_prompt_and_matches_the_book(model):
    long = list(range(1000, 1050))  # 50 tokens, context 64: the book crops from the 16th new token on
    for backend in ("cache", "transformers"):
        with pytest.warns(PromptTruncationWarning, match="1 of 3 prompts"):
            out = generate_token_ids(model, [long, [5, 6], list(range(34))], settings(
                max_new_tokens=30, context_length=64, eos_token_id=None, batch_size=3, backend=backend))
        assert out.prompt_ids[0] == long and out.num_shrunk == 1 and out.num_truncated == 0
        assert [len(s) for s in out.sequences] == [15, 30, 30]  # 34 + 30 - 1 = 64 still fits
        assert out.sequences[0] == book(model, long, max_new=15, context=64, eos_id=None)
        assert out.sequences[0] == book(model, long, max_new=16, context=64, eos_id=None)[:15]
        assert out.sequences[2] == book(model, list(range(34)), max_new=30, context=64, eos_id=None)


def test_overflow_truncate_cuts_the_prompt_from_the_left(model):
    long = list(range(1000, 1050))
    with pytest.warns(PromptTruncationWarning):
        out = generate_token_ids(model, [long], settings(max_new_tokens=30, context_length=64, overflow="truncate"))
    assert out.prompt_ids[0] == long[-35:] and out.num_truncated == 1
    assert out.sequences[0] == book(model, long[-35:], max_new=30, context=64)
    # Under "shrink", a prompt that fills the whole context is cut the same way.
    with pytest.warns(PromptTruncationWarning):
        out = generate_token_ids(model, [list(range(1000, 1070))], settings(max_new_tokens=30, context_length=64))
    assert out.prompt_ids[0] == list(range(1035, 1070)) and out.num_truncated == 1
    # ... while a prompt of exactly the context length keeps its prompt and gets one token (as the book).
    with pytest.warns(PromptTruncationWarning):
        out = generate_token_ids(model, [list(range(64))], settings(max_new_tokens=30, context_length=64))
    assert out.prompt_ids[0] == list(range(64)) and len(out.sequences[0]) <= 1


def test_overflow_error_and_impossible_budgets(model):
    with pytest.raises(ValueError, match="exceeds the context length"):
        generate_token_ids(model, [list(range(60))], settings(max_new_tokens=10, context_length=64, overflow="error"))
    with pytest.raises(ValueError, match="no room"):
        generate_token_ids(model, [list(range(70))], settings(max_new_tokens=65, context_length=64))
    with pytest.raises(ValueError, match="empty prompt"):
        generate_token_ids(model, [[1, 2], []], settings())


def test_real_context_limit_of_the_model(model):
    """Positions never exceed the model's n_positions (256): the model would raise if they did."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate_token_ids(model, [list(range(250)), [7]], settings(eos_token_id=None, batch_size=2))
    assert len(out.sequences[0]) == 7 and len(out.sequences[1]) == MAX_NEW  # 250 + 7 - 1 = 256
    assert any(issubclass(w.category, PromptTruncationWarning) for w in caught)
    # The book's generate crops its running context instead (and can slide past the window).
    assert len(book(model, list(range(300)), max_new=3, eos_id=None)) == 3


# ------------------------------------------------------------------------------------------- text


ENTRIES = [
    {"instruction": "Name a primary color.", "input": "", "output": "Red."},
    {"instruction": "Convert to passive voice.", "input": "The cat chased the mouse.", "output": "..."},
    {"instruction": "What is the capital of France? Answer briefly, please, in one word only.", "output": "Paris."},
]


def test_generate_responses_extracts_like_the_book(model, tokenizer):
    from gpt_sft.data.prompts import extract_response, format_prompt

    for style in ("alpaca", "phi3"):
        responses = generate_responses(model, tokenizer, ENTRIES, settings(style=style, batch_size=2))
        for entry, response in zip(ENTRIES, responses):
            prompt = format_prompt(entry, style)
            ids = tokenizer.encode(prompt)
            generated = tokenizer.decode(ids + book(model, ids))  # the book's token_ids_to_text
            assert response == extract_response(generated, prompt, style)
            assert isinstance(response, str)


def test_hf_tokenizer_gives_the_same_responses(model, tokenizer):
    from gpt_sft.model.tokenizer import get_hf_tokenizer

    assert generate_responses(model, get_hf_tokenizer(), ENTRIES, settings()) == generate_responses(
        model, tokenizer, ENTRIES, settings()
    )


def test_raw_prompts_and_overrides(model, tokenizer):
    text = "The quick brown fox"
    ids = tokenizer.encode(text)
    raw = generate_responses(model, tokenizer, text, style="raw", max_new_tokens=5, progress=False)
    assert raw == [tokenizer.decode(ids + book(model, ids, max_new=5))[len(text):]]
    assert generate_responses(model, tokenizer, [], settings()) == []
    with pytest.raises(ValueError, match="need a prompt style"):
        generate_responses(model, tokenizer, ENTRIES, settings(style="raw"))


def test_add_responses_to_lists_and_datasets(model, tokenizer):
    from datasets import Dataset

    responses = generate_responses(model, tokenizer, Dataset.from_list(ENTRIES[:2]), settings(max_new_tokens=4))
    with_responses = add_responses(ENTRIES[:2], responses)
    assert [e["model_response"] for e in with_responses] == responses and "model_response" not in ENTRIES[0]
    ds = add_responses(Dataset.from_list(ENTRIES[:2]), responses, key="r")
    assert ds["r"] == responses
    assert add_responses(ds, ["x", "y"], key="r")["r"] == ["x", "y"]  # replaces an existing column
    with pytest.raises(ValueError):
        add_responses(ENTRIES, responses)


def test_settings_validation_and_auto_batch_size(model, monkeypatch):
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_k": 0}, {"batch_size": "big"},
                {"batch_size": 0}, {"overflow": "wrap"}, {"backend": "vllm"}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)
    assert auto_batch_size(model, 100, 256) == 32  # CPU cap (plenty of RAM for a tiny model)
    assert auto_batch_size(model, 100, 256, num_prompts=3) == 3
    import gpt_sft.generate.batching as batching

    per_sequence = batching._bytes_per_sequence(model, 100, 256)
    monkeypatch.setattr(batching, "_available_ram", lambda: 4 * 5 * per_sequence)
    assert auto_batch_size(model, 100, 256) == 5  # 25% of the available RAM
    monkeypatch.setattr(batching, "_available_ram", lambda: 0)
    assert auto_batch_size(model, 100, 256) == 1


# -------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from gpt_sft.model.tokenizer import get_hf_tokenizer

    folder = tmp_path_factory.mktemp("ckpt")
    tiny_model().save_pretrained(folder)
    get_hf_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    entries = []
    for i in range(20):
        entry = {"instruction": f"Rewrite sentence {i} in a formal tone.", "input": f"Sentence {i} is ok.",
                 "output": f"Sentence {i} is acceptable."}
        if i % 3 == 0:
            entry["input"] = ""
        entries.append(entry)
    path = tmp_path_factory.mktemp("data") / "small-data.json"
    path.write_text(json.dumps(entries, indent=4))
    return path


def expected_responses(checkpoint, entries, max_new):
    model = GPTForCausalLM.from_pretrained(checkpoint)
    from gpt_sft.model.tokenizer import get_tokenizer

    return generate_responses(model, get_tokenizer(), entries, max_new_tokens=max_new, progress=False)


def test_cli_data_split_writes_the_books_format(checkpoint, data_file, tmp_path):
    output = tmp_path / "sub" / "with-response.json"
    proc = run_generate("--model", str(checkpoint), "--data", str(data_file), "--split", "all", "--output",
                      str(output), "--max-new-tokens", "8", "--batch-size", "4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    entries = json.loads(data_file.read_text())
    written = json.loads(output.read_text())
    assert [{k: v for k, v in e.items() if k != "model_response"} for e in written] == entries
    assert all(isinstance(e["model_response"], str) for e in written)
    assert [e["model_response"] for e in written] == expected_responses(checkpoint, entries, 8)
    assert output.read_text().startswith('[\n    {\n        "instruction"')  # indent=4 as the book
    assert [p.name for p in output.parent.iterdir()] == [output.name]  # no temp file left behind


def test_cli_default_test_split_and_failure_leaves_no_output(checkpoint, data_file, tmp_path, monkeypatch, capsys):
    output = tmp_path / "out.json"
    assert main(["--model", str(checkpoint), "--data", str(data_file), "--output", str(output),
                 "--max-new-tokens", "3", "--no-progress"]) == 0
    written = json.loads(output.read_text())
    assert [e["instruction"] for e in written] == [f"Rewrite sentence {i} in a formal tone." for i in (17, 18)]

    # A run that dies while writing leaves the previous file intact and no partial file.
    import gpt_sft.common.atomic_io as atomic_io

    def dies(fd):  # killed after part of the file is written
        raise RuntimeError("killed")

    monkeypatch.setattr(atomic_io.os, "fsync", dies)
    capsys.readouterr()
    assert main(["--model", str(checkpoint), "--data", str(data_file), "--output", str(tmp_path / "new.json"),
                 "--max-new-tokens", "2", "--no-progress"]) == 1
    assert "error: RuntimeError: killed (run with --debug for the traceback)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_cli_prompt_and_interactive(checkpoint):
    want = expected_responses(checkpoint, [{"instruction": "Name a color.", "input": ""},
                                           {"instruction": "Say hi.", "input": "politely"}], 6)
    proc = run_generate("--model", str(checkpoint), "--prompt", "Say hi.", "--input", "politely",
                      "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want[1] + "\n"

    proc = run_generate("--model", str(checkpoint), "--interactive", "--max-new-tokens", "6",
                      stdin="Name a color.\n\nexit\nSay hi.\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want[0] + "\n\n"  # one answer; blank lines skipped; stops at "exit"


def test_cli_rejects_bad_arguments(checkpoint, capsys):
    assert main(["--model", str(checkpoint)]) == 1  # no recipe to take the data from, and no --data
    assert "has no recipe (recipe.json): pass --data, --prompt or --interactive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(checkpoint), "--prompt", "x", "--interactive"])
    assert exit_info.value.code == 2 and "exclude each other" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- benchmark


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_generation", REPO_ROOT / "benchmarks" / "generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke_reference_lengths_and_book_estimate(tmp_path, capsys, tokenizer):
    module = load_benchmark()
    summary = module.main(["--model-size", "tiny", "--n-prompts", "5", "--book-prompts", "2",
                           "--data", str(tmp_path / "absent.json"), "--with-transformers", "--repeats", "2",
                           "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    # Synthetic prompts carry reference responses; each budget is their token count + 1.
    budgets = [len(tokenizer.encode(module.synthetic_entry(i)["output"])) + 1 for i in range(5)]
    assert summary["n_prompts"] == 5 and summary["lengths"] == "reference" and summary["max_new_tokens"] is None
    assert summary["budgets"] == {"min": min(budgets), "mean": sum(budgets) / 5, "max": max(budgets),
                                  "total": sum(budgets)}
    assert len(set(budgets)) > 1 and 5 <= min(budgets) and max(budgets) <= 50
    # The book's loop ran on 2 evenly spread prompts; its time for all 5 is scaled by the cost model.
    assert summary["book_prompts"] == 2 and summary["book_subset_indices"] == [1, 3] and summary["book_estimated"]
    cost = summary["book_cost_positions"]
    assert 0 < cost["subset"] < cost["all"]
    measured, estimate = summary["book_measured_subset_seconds"], summary["book_estimated_seconds"]
    assert 0 < measured < estimate and estimate == pytest.approx(measured * cost["all"] / cost["subset"])
    assert measured == pytest.approx(sum(summary["book_prompt_seconds"]))
    assert summary["speedup_estimated"] == pytest.approx(estimate / summary["ours_seconds"])
    assert summary["speedup_subset"] == pytest.approx(measured / summary["ours_subset_seconds"])
    assert summary["identical_greedy_outputs"] == summary["identical_greedy_outputs_subset_run"] == 2
    assert set(summary["results"]) == {"ours (batched, KV cache)", "book generate (batch 1, no cache)",
                                       "transformers model.generate (batched)"}
    assert len(summary["results"]["ours (batched, KV cache)"]["all_seconds"]) == 2
    assert "speed-up" in out and "estimated from 2 of 5 prompts" in out and "sum_{i=0}^{n-1} min(P+i, C)" in out
    assert "The book's 2 prompts only" in out and "identical to the book's: 2 of 2 prompts" in out
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads(json.dumps(summary))


def test_benchmark_smoke_fixed_lengths_whole_split_book_on_all(data_file, capsys):
    module = load_benchmark()
    # data_file has 20 entries: its test split holds 2, the default --n-prompts.
    summary = module.main(["--model-size", "tiny", "--data", str(data_file), "--lengths", "fixed",
                           "--max-new-tokens", "3", "--book-prompts", "all", "--repeats", "1"])
    out = capsys.readouterr().out
    assert summary["n_prompts"] == 2 and summary["lengths"] == "fixed" and summary["max_new_tokens"] == 3
    assert summary["budgets"] == {"min": 3, "mean": 3, "max": 3, "total": 6}
    assert summary["book_prompts"] == 2 and not summary["book_estimated"]  # measured, not estimated
    assert summary["book_estimated_seconds"] == summary["book_measured_subset_seconds"] > 0
    assert summary["ours_subset_seconds"] == summary["ours_seconds"]
    assert summary["identical_greedy_outputs"] == 2 and "estimated" not in out.split("greedy outputs")[0]


def test_benchmark_helpers():
    module = load_benchmark()
    assert module.spread(110, 8) == [6, 20, 34, 48, 61, 75, 89, 103]
    assert module.spread(5, 0) == module.spread(5, 5) == module.spread(5, 9) == [0, 1, 2, 3, 4]
    assert module.spread(7, 1) == [3]
    assert module.book_cost(3, 2, 100) == 3 + 4 and module.book_cost(10, 3, 11) == 10 + 11 + 11
    assert module.parse_book_prompts("all") == module.parse_book_prompts("0") == 0
    assert module.parse_book_prompts("8") == 8
    if module.DEFAULT_DATA.is_file():  # the book's data: the whole test split by default
        entries, _ = module.load_entries(module.DEFAULT_DATA, None)
        assert len(entries) == 110 and all(e["output"] for e in entries)
