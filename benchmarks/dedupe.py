#!/usr/bin/env python
"""Time ``gpt-sft data dedupe`` on 52,002 entries (the size of the Alpaca data set): the book's 1,100 entries and
copies of them, each with one or two small random edits (a word's case, a punctuation mark, an article, a word
dropped), so that every entry has about 46 near-duplicates: many pairs, the hard case for memory.

    python benchmarks/dedupe.py                       # --by entry, then --by field (instruction,input,output)
    python benchmarks/dedupe.py --entries 10000 --modes entry

Runs the command in this process (``--quiet --output``: loading, the search, writing the data and the report) and
prints, for each mode, the entries, the pairs found, the entries dropped, the seconds and the peak memory (process
RSS above the level before the run).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

from common import DEFAULT_DATA, MemoryMeter, load_entries, machine_load, trim_heap  # noqa: E402

from gpt_sft.cli.data_dedupe import main as dedupe_main  # noqa: E402

ARTICLES = {"a": "the", "an": "the", "the": "a"}


def edit(text: str, rng: random.Random) -> str:
    """One small edit: a word's case, a punctuation mark removed, an article swapped, or a word dropped."""
    words = text.split(" ")
    if len(words) < 3:
        return text.upper() if rng.random() < 0.5 else text + "."
    i = rng.randrange(len(words))
    kind = rng.randrange(4)
    if kind == 0:
        words[i] = words[i].swapcase()
    elif kind == 1 and re.search(r"[^\w\s]", text):
        return re.sub(r"[^\w\s]", "", text, count=1)
    elif kind == 2 and any(w.lower() in ARTICLES for w in words):
        j = next(k for k in range(len(words)) if words[(i + k) % len(words)].lower() in ARTICLES)
        at = (i + j) % len(words)
        words[at] = ARTICLES[words[at].lower()]
    else:
        del words[i]
    return " ".join(words)


def build(entries: list[dict], size: int, seed: int) -> list[dict]:
    """``entries``, then edited copies of them in turn up to ``size``."""
    rng = random.Random(seed)
    data = [dict(entry) for entry in entries[:size]]
    while len(data) < size:
        copy = dict(entries[len(data) % len(entries)])
        for _ in range(rng.randint(1, 2)):
            key = rng.choice([k for k in ("instruction", "input", "output") if copy.get(k)])
            copy[key] = edit(copy[key], rng)
        data.append(copy)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--entries", type=int, default=52002)
    parser.add_argument("--modes", nargs="+", default=["entry", "field"], choices=["entry", "field"])
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    entries, source = load_entries(args.data)
    data = build(entries, args.entries, args.seed)
    print(f"{len(data)} entries from {source}; load average {machine_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        for mode in args.modes:
            trim_heap()
            meter = MemoryMeter(torch.device("cpu"), interval=0.05)
            meter.start()
            out = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                status = dedupe_main(["--data", str(path), "--by", mode, "--quiet", "--output", f"{tmp}/clean.json"])
            seconds = time.perf_counter() - start
            peak = meter.stop()
            report = json.loads(Path(f"{tmp}/clean.dedupe-report.json").read_text(encoding="utf-8"))
            print(f"--by {mode}: exit {status}, {out.getvalue().strip()}; kept {report['kept']}; {seconds:.1f} s; "
                  f"peak memory {peak / 2**20:.0f} MiB above the start; load average {machine_load()}")


if __name__ == "__main__":
    main()
