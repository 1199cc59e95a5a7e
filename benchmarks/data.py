#!/usr/bin/env python
"""Measure how fast :func:`gpt_sft.data.tokenize_dataset` tokenizes instruction data (entries/s).

Tokenizes the book's 1100-entry data set and a larger one built by repeating it (52,000 entries by
default, the size of the Alpaca set of exercise 7.3), and, for reference, the book's way: one
``tokenizer.encode`` call per entry for the full text and one for the prompt, in a Python loop.

    python benchmarks/data.py                       # the book's data from ../shared/data
    python benchmarks/data.py --data my.json --sizes 1100 52000 --threads 1 2

Each figure is the best of ``--repeats`` runs (the machine may be shared); the CPU time of this
process during that run is printed too (on a busy machine wall time overstates the cost). The
tokenizer is built before timing starts.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import datasets
from datasets import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

from common import DEFAULT_DATA  # noqa: E402

from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.prompts import format_text  # noqa: E402
from gpt_sft.data.tokenize import tokenize_dataset  # noqa: E402
from gpt_sft.model.tokenizer import get_tokenizer  # noqa: E402


def _book_loop(entries: list[dict], tokenizer, style: str) -> None:
    for entry in entries:
        prompt, full = format_text(entry, style)
        tokenizer.encode(full)
        len(tokenizer.encode(prompt))


def _best_of(run, repeats: int) -> tuple[float, float]:
    """Best wall time and the CPU time of this process during that run."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best = min(best, (wall, cpu))
    return best


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="instruction data (any load_instruction_data source)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1100, 52000], help="data set sizes (repeating the data)")
    parser.add_argument("--style", default="alpaca")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="num_threads values to try")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (best is reported)")
    parser.add_argument("--no-book-loop", action="store_true", help="skip the book's per-entry loop")
    args = parser.parse_args(argv)

    datasets.disable_progress_bars()
    tokenizer = get_tokenizer()
    base = load_instruction_data(args.data).to_list()
    results = []
    print(f"data: {args.data} ({len(base)} entries), style {args.style}")
    for size in args.sizes:
        entries = (base * (size // len(base) + 1))[:size]
        dataset = Dataset.from_list(entries)
        runs = [(f"threads={threads}", functools.partial(tokenize_dataset, dataset, tokenizer, args.style, num_threads=threads))
                for threads in args.threads]
        if not args.no_book_loop:
            runs.append(("book loop", functools.partial(_book_loop, entries, tokenizer, args.style)))
        for label, run in runs:
            wall, cpu = _best_of(run, args.repeats)
            what = "book loop" if label == "book loop" else "tokenize_dataset"
            threads = 1 if label == "book loop" else int(label.split("=")[1])
            results.append({"what": what, "entries": size, "threads": threads, "seconds": wall, "cpu_seconds": cpu,
                            "entries_per_s": size / wall})
            print(f"{what:<17} {size:>7} entries  threads={threads}  {wall:7.3f} s  {size / wall:>10,.0f} entries/s"
                  f"  (CPU {cpu:6.3f} s, {size / max(cpu, 1e-9):>10,.0f} entries per CPU-second)")
    sys.stdout.flush()
    return results


if __name__ == "__main__":
    main()
