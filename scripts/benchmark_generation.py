#!/usr/bin/env python
"""Benchmark: our batched KV-cache generation against the book's one-prompt-at-a-time ``generate``.

Both run in the same process on the same randomly initialised model (gpt2-small size, 124M, by
default; no pretrained weights are needed) and the same prompts: the first ``--n-prompts`` entries of
the book's test split in the Alpaca style (or synthetic instructions of similar length when the book's
data file is not found). A random model practically never emits end-of-text, and where it would, the
two methods would stop at different times on different prompts; so *both* are run with stopping
disabled (``eos_id=None``) and every prompt gets exactly ``--max-new-tokens`` new tokens in both: the
same work, a fair comparison. Greedy decoding, so the outputs must also be identical token for token;
the script checks and reports it.

Printed: seconds, new tokens per second, and the speed-up of ours over the book's. Optionally
(``--with-transformers``) transformers' ``model.generate`` on the same batches as a third line.
CPU timings on a shared machine are noisy: the fast methods run ``--repeats`` times (interleaved) and
their best time is reported (every time is printed too); the book's method runs once (it lasts minutes,
which averages the noise); the load average is printed before and after.

    python scripts/benchmark_generation.py                       # 32 prompts x 64 tokens, 124M
    python scripts/benchmark_generation.py --model-size tiny --n-prompts 4 --max-new-tokens 8   # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

if importlib.util.find_spec("gpt_sft") is None:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.generation import GenerationSettings, generate_book_style, generate_token_ids

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "instruction-data.json"
TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256}


def build_model(size: str, seed: int) -> GPTForCausalLM:
    """A randomly initialised model: ``tiny`` or a GPT-2 preset (``124M``, ``gpt2-medium``...)."""
    torch.manual_seed(seed)
    config = GPTConfig(**TINY) if size == "tiny" else GPTConfig.from_preset(size)
    return GPTForCausalLM(config).eval()


def load_prompts(data: Path, n: int) -> tuple[list[str], str]:
    """``n`` Alpaca-style prompts: the book's test split, or synthetic ones without the data file."""
    from gpt_sft.prompts import format_prompt

    if data.is_file():
        from gpt_sft.data import load_instruction_data, split_dataset

        test = split_dataset(load_instruction_data(str(data), progress=False))["test"]
        entries = [dict(test[i]) for i in range(min(n, len(test)))]
        source = f"book test split ({data})"
    else:
        entries = []
        source = "synthetic instructions (book data not found)"
    subjects = ["the cat", "a river", "the committee", "my neighbour", "the old library", "a comet"]
    while len(entries) < n:  # synthetic, or topping up a short test split
        i = len(entries)
        entries.append(
            {
                "instruction": f"Rewrite the following sentence about {subjects[i % len(subjects)]} "
                + "in a more formal tone" * (1 + i % 3) + ".",
                "input": f"{subjects[(i + 1) % len(subjects)].capitalize()} was seen {i} times yesterday.",
            }
        )
    return [format_prompt(e, "alpaca") for e in entries], source


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
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
    if args.threads:
        torch.set_num_threads(args.threads)

    from gpt_sft.tokenizer import get_tokenizer

    model = build_model(args.model_size, args.seed).to(args.device)
    prompts, source = load_prompts(args.data, args.n_prompts)
    tokenizer = get_tokenizer()
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    context = model.config.n_positions
    n_new = args.max_new_tokens
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    settings = GenerationSettings(
        max_new_tokens=n_new, eos_token_id=None, batch_size=batch_size, progress=False
    )  # eos_token_id=None: no early stop, exactly n_new tokens per prompt (as eos_id=None below)
    lengths = [len(p) for p in prompt_ids]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: random {args.model_size} ({n_params / 1e6:.1f}M parameters; untied output head: "
          f"{model.config.tie_word_embeddings is False}), {args.device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    print(f"prompts: {len(prompts)} from {source}, {min(lengths)}-{max(lengths)} tokens; "
          f"{n_new} new tokens each, end-of-text stopping disabled in both methods")
    print(f"load average before: {_load()}", flush=True)

    # Warm-up (first-call allocations), not timed.
    generate_token_ids(model, prompt_ids[:2], GenerationSettings(max_new_tokens=2, eos_token_id=None, progress=False))
    generate_book_style(model, torch.tensor([prompt_ids[0]], device=args.device), 2, context, eos_id=None)

    fast = {"ours (batched, KV cache)": settings}
    if args.with_transformers:
        fast["transformers model.generate (batched)"] = GenerationSettings(
            max_new_tokens=n_new, eos_token_id=None, batch_size=batch_size, progress=False, backend="transformers"
        )
    times: dict[str, list[float]] = {name: [] for name in fast}
    outputs = {}
    for _ in range(max(1, args.repeats)):
        for name, method_settings in fast.items():
            start = time.perf_counter()
            outputs[name] = generate_token_ids(model, prompt_ids, method_settings)
            times[name].append(time.perf_counter() - start)
    ours = outputs["ours (batched, KV cache)"]

    start = time.perf_counter()
    book = []
    for ids in prompt_ids:
        out = generate_book_style(model, torch.tensor([ids], device=args.device), n_new, context, eos_id=None)
        book.append(out[0, len(ids):].tolist())
    times["book generate (batch 1, no cache)"] = [time.perf_counter() - start]
    results = {name: min(values) for name, values in times.items()}

    total_new = len(prompt_ids) * n_new
    assert ours.num_new_tokens == total_new and all(len(b) == n_new for b in book)
    identical = sum(a == b for a, b in zip(ours.sequences, book))
    book_seconds = results["book generate (batch 1, no cache)"]
    print(f"\n{'method':40s} {'seconds':>9s} {'new tok/s':>10s} {'speed-up':>9s}   all runs (s)")
    report = {}
    for name, seconds in results.items():
        rate = total_new / seconds
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:40s} {seconds:9.2f} {rate:10.1f} {book_seconds / seconds:8.2f}x   {runs}")
        report[name] = {"seconds": seconds, "new_tokens_per_s": rate, "speedup_vs_book": book_seconds / seconds,
                        "all_seconds": times[name]}
    print(f"\ngreedy outputs identical to the book's: {identical} of {len(prompt_ids)} prompts")
    if args.with_transformers:
        print(f"model.generate outputs identical to the book's: "
              f"{sum(a == b for a, b in zip(outputs['transformers model.generate (batched)'].sequences, book))} "
              f"of {len(prompt_ids)}")
    print(f"load average after: {_load()}  (shared machine: timings are noisy)")
    summary = {
        "model_size": args.model_size,
        "n_prompts": len(prompt_ids),
        "max_new_tokens": n_new,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "identical_greedy_outputs": identical,
        "results": report,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
