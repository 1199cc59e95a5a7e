#!/usr/bin/env python
"""Benchmark: our batched KV-cache generation against the book's one-prompt-at-a-time ``generate``.

The task measured is the book's chapter 7 step "generate the responses to the test set": all
``--n-prompts`` prompts (default: the whole test split, 110 entries of the book's data, in the Alpaca
style), on a randomly initialised model (gpt2-small size, 124M, by default; no pretrained weights are
needed), our way (``generate_token_ids``: batched, KV cache) and the book's way
(``generate_book_style``: batch 1, no cache, the whole context re-run for every new token).

Response lengths (``--lengths``). A random model practically never emits end-of-text, and where it
would, the two methods would stop at different times; so *both* run with stopping disabled
(``eos_id=None``) and every prompt gets a fixed token budget, the same in both: the same work.

* ``reference`` (default): prompt ``i`` gets ``len(tokens of its reference response) + 1`` new tokens
  (tiktoken ``gpt2``; the ``+ 1`` is the end-of-text step a trained model takes), i.e. the work of a
  fine-tuned model that writes a reference-length answer and stops. Ours runs with per-prompt budgets
  (``generate_token_ids(..., max_new_tokens=budgets)``): a sequence leaves its batch when its budget is
  spent, exactly as it would on emitting end-of-text; batches are formed by prompt length as always,
  not by budget (a real run does not know the lengths in advance). Without the book's data file the
  prompts are synthetic ("rewrite this sentence formally") and so are their reference responses: the
  input sentence rewritten, one to four sentences (9-39 tokens, cycling with the prompt's
  index), like the book's test split (2-46 tokens, mean 12).
* ``fixed``: every prompt gets ``--max-new-tokens`` new tokens.

The book's loop is far too slow to run on every prompt on a CPU, so it runs on ``--book-prompts K``
prompts (default 8; ``0`` or ``all``: every prompt) spread evenly over the prompt list, each with its
own budget, and its time for all prompts is *estimated* by scaling the measured subset time by the
cost ratio: ``time_all ~= time_subset * cost(all prompts) / cost(subset)``. Cost model: without a
cache, producing ``n`` new tokens after a prompt of ``P`` tokens runs the model on
``sum_{i=0}^{n-1} min(P + i, C)`` token positions (``C`` = context length; the book crops there), and
time is proportional to positions (the printed per-prompt positions/s of the subset show how well that
holds). Printed: ours on all prompts against the estimate, and -- all measured -- ours against the
book on the same ``K`` prompts (ours batches only those ``K``, so that speed-up understates the
full-task one). Greedy decoding, so ours must equal the book's token for token on the subset; checked
and reported. Optionally (``--with-transformers``) transformers' ``model.generate`` as a third method
(on all prompts).

CPU timings on a shared machine are noisy: the fast methods run ``--repeats`` times (interleaved) and
their best time is reported (every time is printed too); the book's runs once (it lasts minutes, which
averages the noise); the load average is printed before and after.

    python benchmarks/generation.py             # 110 test prompts, reference lengths, 124M, book on 8
    python benchmarks/generation.py --model-size tiny --n-prompts 6 --book-prompts 2 --repeats 1  # smoke
    python benchmarks/generation.py --lengths fixed --n-prompts 32 --max-new-tokens 64 --book-prompts all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

from common import DEFAULT_DATA, machine_load  # noqa: E402

from gpt_sft import GPTConfig, GPTForCausalLM  # noqa: E402
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.prompts import format_prompt
from gpt_sft.data.split import split_dataset
from gpt_sft.generate.book import generate_book_style
from gpt_sft.generate.decode import generate_token_ids
from gpt_sft.generate.settings import GenerationSettings
from gpt_sft.model.tokenizer import get_tokenizer

BOOK_TEST_SIZE = 110  # the book's test split: int(0.10 * 1100); the synthetic default
TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}
OURS = "ours (batched, KV cache)"
TRANSFORMERS = "transformers model.generate (batched)"
BOOK = "book generate (batch 1, no cache)"
COST_MODEL = "cost(P prompt tokens, n new tokens) = sum_{i=0}^{n-1} min(P+i, C) token positions"


def build_model(size: str, seed: int) -> GPTForCausalLM:
    """A randomly initialised model: ``tiny`` or a GPT-2 preset (``124M``, ``gpt2-medium``...)."""
    torch.manual_seed(seed)
    config = GPTConfig(**TINY) if size == "tiny" else GPTConfig.from_preset(size)
    return GPTForCausalLM(config).eval()


SUBJECTS = ["the cat", "a river", "the committee", "my neighbour", "the old library", "a comet"]


def synthetic_entry(i: int) -> dict:
    """Synthetic entry ``i``: a formal-rewrite instruction, its input, and a reference response of 1-4
    sentences (``1 + i % 4``; 9-39 tokens) rewriting the input."""
    subject = SUBJECTS[(i + 1) % len(SUBJECTS)]
    sentences = [
        f"{subject.capitalize()} was observed on {i} occasions yesterday.",
        "The observations were recorded with considerable care.",
        f"Further details regarding {subject} will be provided in due course.",
        "We appreciate your patience in this matter.",
    ]
    return {
        "instruction": f"Rewrite the following sentence about {SUBJECTS[i % len(SUBJECTS)]} "
        + "in a more formal tone" * (1 + i % 3) + ".",
        "input": f"{subject.capitalize()} was seen {i} times yesterday.",
        "output": " ".join(sentences[: 1 + i % 4]),
    }


def load_entries(data: Path, n: int | None) -> tuple[list[dict], str]:
    """``n`` entries (``None``: the whole test split): the book's test split, or synthetic entries."""
    if data.is_file():
        test = split_dataset(load_instruction_data(str(data), progress=False))["test"]
        n = len(test) if n is None else n
        entries = [dict(test[i]) for i in range(min(n, len(test)))]
        source = f"book test split ({data})"
        if len(entries) < n:
            source += f", topped up with {n - len(entries)} synthetic"
    else:
        n = BOOK_TEST_SIZE if n is None else n
        entries = []
        source = "synthetic instructions (book data not found)"
    while len(entries) < n:  # synthetic, or topping up a short test split
        entries.append(synthetic_entry(len(entries)))
    return entries, source


def book_cost(prompt_length: int, new_tokens: int, context: int) -> int:
    """Token positions the book's loop runs the model on: ``sum_{i=0}^{n-1} min(P + i, C)``."""
    return sum(min(prompt_length + i, context) for i in range(new_tokens))


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (the middle of ``k`` equal parts); all if ``k >= n``."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [(2 * j + 1) * n // (2 * k) for j in range(k)]


def parse_book_prompts(value: str) -> int:
    """``--book-prompts``: a count, or ``0``/``all`` = every prompt (returned as 0)."""
    if value.strip().lower() == "all":
        return 0
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"--book-prompts must be >= 0 or 'all', got {value}")
    return count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=int, default=None,
                        help=f"prompts (default: the whole test split, {BOOK_TEST_SIZE} for the book's data)")
    parser.add_argument("--lengths", choices=("reference", "fixed"), default="reference",
                        help="new tokens per prompt: its reference response's tokens + 1 (default), or "
                        "--max-new-tokens for all")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="with --lengths fixed (default 64)")
    parser.add_argument("--book-prompts", type=parse_book_prompts, default=8,
                        help="prompts the book's loop runs on, evenly spread (default 8); 0 or all: every one")
    parser.add_argument("--model-size", default="124M", help="tiny, 124M (default), 355M, 774M, 1558M")
    parser.add_argument("--batch-size", default="auto", help="our batch size: an integer or auto (default)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--with-transformers", action="store_true", help="also time model.generate")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast methods (best is reported)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.n_prompts is not None and args.n_prompts < 1:
        parser.error("--n-prompts must be >= 1")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.model_size, args.seed).to(args.device)
    entries, source = load_entries(args.data, args.n_prompts)
    tokenizer = get_tokenizer()
    prompt_ids = [tokenizer.encode(format_prompt(e, "alpaca")) for e in entries]
    n = len(prompt_ids)
    if args.lengths == "reference":
        budgets = [len(tokenizer.encode(e["output"])) + 1 for e in entries]  # + the end-of-text step
    else:
        budgets = [args.max_new_tokens] * n
    context = model.config.n_positions
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    # eos_token_id=None: no early stop, exactly budgets[i] tokens for prompt i (as eos_id=None below).
    settings = GenerationSettings(eos_token_id=None, batch_size=batch_size, progress=False)
    subset = spread(n, args.book_prompts)
    k = len(subset)
    lengths = [len(p) for p in prompt_ids]
    total_new = sum(budgets)
    cost_all = sum(book_cost(p, b, context) for p, b in zip(lengths, budgets))
    cost_subset = sum(book_cost(lengths[i], budgets[i], context) for i in subset)
    subset_new = sum(budgets[i] for i in subset)

    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random {args.model_size} ({n_params / 1e6:.1f}M parameters; untied output head: "
          f"{model.config.tie_word_embeddings is False}), {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"prompts: {n} from {source}, {min(lengths)}-{max(lengths)} tokens")
    budget_text = (f"reference response tokens + 1, {min(budgets)}-{max(budgets)} "
                   f"(mean {statistics.mean(budgets):.1f})" if args.lengths == "reference" else f"{budgets[0]} each")
    print(f"new tokens per prompt: {budget_text}, {total_new} in all; end-of-text stopping disabled in every method")
    print(f"book's loop on {k} of {n} prompts (indices {subset if k <= 16 else str(subset[:16])[:-1] + ', ...]'})")
    load_before = machine_load()
    print(f"load average before: {load_before}", flush=True)

    # Warm-up (first-call allocations), not timed.
    generate_token_ids(model, prompt_ids[:2], GenerationSettings(max_new_tokens=2, eos_token_id=None, progress=False))
    generate_book_style(model, torch.tensor([prompt_ids[0]], device=args.device), 2, context, eos_id=None)

    # name -> (prompt indices, settings); "... on the subset" reruns ours on the book's prompts only.
    fast = {OURS: (list(range(n)), settings)}
    if args.with_transformers:
        fast[TRANSFORMERS] = (list(range(n)), GenerationSettings(
            eos_token_id=None, batch_size=batch_size, progress=False, backend="transformers"))
    if k < n:
        fast[OURS + " subset"] = (subset, settings)
    times: dict[str, list[float]] = {name: [] for name in fast}
    outputs = {}
    for _ in range(max(1, args.repeats)):
        for name, (indices, method_settings) in fast.items():
            start = time.perf_counter()
            outputs[name] = generate_token_ids(model, [prompt_ids[i] for i in indices], method_settings,
                                               max_new_tokens=[budgets[i] for i in indices])
            times[name].append(time.perf_counter() - start)
    for name, (indices, _) in fast.items():
        assert [len(s) for s in outputs[name].sequences] == [budgets[i] for i in indices], name
    if k == n:
        times[OURS + " subset"], outputs[OURS + " subset"] = times[OURS], outputs[OURS]

    book, book_times = [], []
    for i in subset:
        ids = prompt_ids[i]
        start = time.perf_counter()
        out = generate_book_style(model, torch.tensor([ids], device=args.device), budgets[i], context, eos_id=None)
        book_times.append(time.perf_counter() - start)
        book.append(out[0, len(ids):].tolist())
    assert [len(b) for b in book] == [budgets[i] for i in subset]
    book_subset_seconds = sum(book_times)
    book_estimated_seconds = book_subset_seconds * cost_all / cost_subset
    rates = [book_cost(lengths[i], budgets[i], context) / t for i, t in zip(subset, book_times)]

    best = {name: min(values) for name, values in times.items()}
    ours_seconds, ours_subset_seconds = best[OURS], best[OURS + " subset"]
    identical = sum(outputs[OURS].sequences[i] == b for i, b in zip(subset, book))
    identical_subset_run = sum(a == b for a, b in zip(outputs[OURS + " subset"].sequences, book))
    estimated = k < n

    def row(name, prompts, seconds, new_tokens, speedup, runs, note=""):
        speed = f"{speedup:8.2f}x" if speedup is not None else f"{'':9s}"
        print(f"{name:46s} {prompts:>7d} {seconds:9.2f}{note:1s} {new_tokens / seconds:10.1f} {speed}   {runs}")

    header = f"{'method':46s} {'prompts':>7s} {'seconds':>10s} {'new tok/s':>10s} {'speed-up':>9s}   all runs (s)"
    runs_of = lambda name: ", ".join(f"{t:.2f}" for t in times[name])
    print(f"\nAll {n} prompts ({total_new} new tokens); speed-up over the book's "
          f"{'estimated' if estimated else 'measured'} time:")
    print(header)
    report = {}
    for name in [OURS] + ([TRANSFORMERS] if args.with_transformers else []):
        row(name, n, best[name], total_new, book_estimated_seconds / best[name], runs_of(name))
        report[name] = {"seconds": best[name], "new_tokens_per_s": total_new / best[name],
                        "speedup_vs_book": book_estimated_seconds / best[name], "all_seconds": times[name]}
    row(BOOK + (", estimated" if estimated else ""), n, book_estimated_seconds, total_new, 1.0,
        f"estimated from {k} of {n} prompts" if estimated else f"{book_subset_seconds:.2f}", "*" if estimated else "")
    report[BOOK] = {"seconds": book_estimated_seconds, "new_tokens_per_s": total_new / book_estimated_seconds,
                    "speedup_vs_book": 1.0, "estimated": estimated}
    if estimated:
        print(f"* estimate: {book_subset_seconds:.2f} s measured on {k} of {n} prompts x {cost_all} / {cost_subset} "
              f"token positions ({cost_all / cost_subset:.2f}x); {COST_MODEL}")
    print(f"  book's loop: {min(rates):.0f}-{max(rates):.0f} token positions/s over its {k} prompts "
          f"(mean {cost_subset / book_subset_seconds:.0f}); a constant rate is what the cost model assumes")

    if estimated:
        print(f"\nThe book's {k} prompts only ({subset_new} new tokens), all measured:")
        print(header)
        row(OURS + f" (batching {k})", k, ours_subset_seconds, subset_new,
            book_subset_seconds / ours_subset_seconds, runs_of(OURS + " subset"))
        row(BOOK, k, book_subset_seconds, subset_new, 1.0, ", ".join(f"{t:.2f}" for t in book_times))

    print(f"\ngreedy outputs identical to the book's: {identical} of {k} prompts (ours batching all {n})"
          + (f", {identical_subset_run} of {k} (ours batching the {k})" if estimated else ""))
    if args.with_transformers:
        print(f"model.generate outputs identical to the book's: "
              f"{sum(outputs[TRANSFORMERS].sequences[i] == b for i, b in zip(subset, book))} of {k}")
    load_after = machine_load()
    print(f"load average after: {load_after}  (shared machine: timings are noisy)")
    summary = {
        "model_size": args.model_size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "source": source,
        "n_prompts": n,
        "lengths": args.lengths,
        "max_new_tokens": args.max_new_tokens if args.lengths == "fixed" else None,
        "budgets": {"min": min(budgets), "mean": statistics.mean(budgets), "max": max(budgets), "total": total_new},
        "book_prompts": k,
        "book_subset_indices": subset,
        "book_subset_new_tokens": subset_new,
        "book_cost_model": COST_MODEL,
        "book_cost_positions": {"all": cost_all, "subset": cost_subset},
        "book_measured_subset_seconds": book_subset_seconds,
        "book_prompt_seconds": book_times,
        "book_estimated_seconds": book_estimated_seconds,
        "book_estimated": estimated,
        "ours_seconds": ours_seconds,
        "ours_subset_seconds": ours_subset_seconds,
        "speedup_estimated": book_estimated_seconds / ours_seconds,
        "speedup_subset": book_subset_seconds / ours_subset_seconds,
        "identical_greedy_outputs": identical,
        "identical_greedy_outputs_subset_run": identical_subset_run,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "results": report,
    }
    if args.with_transformers:
        summary["transformers_seconds"] = best[TRANSFORMERS]
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
