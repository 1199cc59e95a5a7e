#!/usr/bin/env python
"""Benchmark a training step and data preparation, side by side, in one run (issue 6).

Three ways of doing the book's chapter 7 training step on the *same* batches (the first
``--warmup + --steps`` batches of size 8 of the train split in a seeded shuffled order, collated by
:class:`gpt_sft.collator.InstructionDataCollator`, Alpaca style) with AdamW(lr 5e-5, weight decay 0.1),
each on a freshly, identically seeded random model of ``--model-size``:

* ``ours, book mode``: ``logits = model(input_ids=inputs).logits`` over every position, then the
  book's ``F.cross_entropy(logits.flatten(0, 1), targets.flatten())``;
* ``ours, optimised``: ``model(input_ids=inputs, shift_labels=targets, loss_only=True)`` -- the
  output head only at positions with a target (gpt-sft's trainer);
* ``transformers GPT2LMHeadModel``: a plain loop with ``model(input_ids=..., labels=...).loss``
  (HF form: ``labels`` aligned with ``input_ids``, -100 ignored, HF shifts; SDPA attention; HF's
  default tied output head).

``--warmup`` steps are run but not timed; then ``--steps`` steps are timed. Reported: seconds per
step, tokens/s (padded input tokens, the book's ``tokens_seen``: ``inputs.numel()`` per batch), peak
memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: peak process RSS sampled every few ms by a
thread, minus the RSS before the model was built, so it covers weights, gradients, AdamW state and
activations) and the speed-ups. The optimised loss must equal the book-mode loss (same initial
weights, first batch; then after every step, as both runs see the same updates): the absolute
differences are printed and saved.

Also (b) data preparation: entries/s of :func:`gpt_sft.data.tokenize_dataset` on the train split
(and the book's one-``encode``-per-entry loop for reference), and (c) with ``--generation``
``scripts/benchmark_generation.py`` on the same model size.

    python scripts/benchmark.py --model-size 124M --steps 5 --json bench.json
    python scripts/benchmark.py --model-size tiny --steps 2          # smoke (seconds)

Timings on a shared CPU are noisy: the methods run one after another, so a neighbour's load hits one
method and not another. The load average before and after and the process CPU time per step are
printed; rerun (``--methods`` also sets the order) when the wall times disagree with the CPU times.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.util
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("gpt_sft") is None:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "instruction-data.json"
TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1025}
IGNORE_INDEX = -100
METHODS = ("ours, book mode", "ours, optimised", "transformers GPT2LMHeadModel")


# ------------------------------------------------------------------------------------------- helpers


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def _trim_heap() -> None:
    """Give freed memory back to the OS (glibc), so that the next method's RSS baseline is honest."""
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory in MB while inside the ``with``, above the level at ``start()``.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: process RSS sampled by a thread (psutil), since
    torch allocates outside Python (tracemalloc does not see it) and ``ru_maxrss`` is a lifetime maximum.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = None
        if device.type != "cuda":
            import psutil

            self._process = psutil.Process()

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def start(self) -> None:
        """Set the baseline (call before building the model)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline = self.peak = self._rss()

            def sample():
                while not self._stop.is_set():
                    self.peak = max(self.peak, self._rss())
                    time.sleep(self.interval)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()

    def stop(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self.peak, self._rss())
        return (peak - self.baseline) / 2**20


def load_entries(data: Path | None, seed: int) -> tuple[list[dict], str]:
    from gpt_sft.data import load_instruction_data

    if data is not None and data.is_file():
        return load_instruction_data(str(data), progress=False).to_list(), str(data)
    from gpt_sft.synthetic_data import make_synthetic_instructions

    return make_synthetic_instructions(1100, seed=seed), f"synthetic (make_synthetic_instructions; {data} not found)"


def prepare_batches(entries: list[dict], n_batches: int, batch_size: int, seed: int, allowed_max_length: int,
                    repeats: int, mask_prompt: bool = False) -> tuple[list[dict], dict]:
    """The train split tokenized (timed: part (b)) and the first ``n_batches`` collated batches."""
    import datasets

    from gpt_sft.collator import InstructionDataCollator
    from gpt_sft.data import load_instruction_data, split_dataset, tokenize_dataset
    from gpt_sft.prompts import format_text
    from gpt_sft.tokenizer import get_tokenizer

    datasets.disable_progress_bars()
    tokenizer = get_tokenizer()
    train = split_dataset(load_instruction_data(entries, progress=False))["train"]

    def book_loop():
        for entry in train.to_list():
            prompt, full = format_text(entry, "alpaca")
            tokenizer.encode(full)
            len(tokenizer.encode(prompt))

    timings = {}
    tokenized = None
    for name, run in (("tokenize_dataset", None), ("book loop", book_loop)):
        best = float("inf")
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            if run is None:
                tokenized = tokenize_dataset(train, tokenizer, "alpaca", allowed_max_length=allowed_max_length,
                                             keep_columns=False)
            else:
                run()
            best = min(best, time.perf_counter() - start)
        timings[name] = {"seconds": best, "entries_per_s": len(train) / best}
    data_report = {"entries": len(train), **timings,
                   "speedup_vs_book_loop": timings["book loop"]["seconds"] / timings["tokenize_dataset"]["seconds"]}

    examples = tokenized.with_format(columns=["input_ids", "prompt_length"])
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    if n_batches * batch_size > len(order):
        raise SystemExit(f"need {n_batches} batches of {batch_size} but the train split has {len(order)} entries")
    collate = InstructionDataCollator(allowed_max_length=allowed_max_length, mask_prompt=mask_prompt)
    batches = [collate([examples[j] for j in order[i * batch_size:(i + 1) * batch_size]]) for i in range(n_batches)]
    return batches, data_report


# ------------------------------------------------------------------------------------------- models


def our_config(size: str):
    from gpt_sft import GPTConfig

    return GPTConfig(**TINY) if size == "tiny" else GPTConfig.from_preset(size)


def build(method: str, size: str, seed: int, device: torch.device):
    torch.manual_seed(seed)
    config = our_config(size)
    if method.startswith("ours"):
        from gpt_sft import GPTForCausalLM

        model = GPTForCausalLM(config)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                               n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_epsilon,
                               attn_implementation="sdpa")
        model = GPT2LMHeadModel(hf_config)
    return model.to(device).train()


def loss_fn(method: str):
    """``(model, batch) -> loss``; ``batch`` is the collator's HF form on the device."""
    if method == "ours, book mode":
        def step(model, batch):
            inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
            logits = model(input_ids=inputs).logits
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    elif method == "ours, optimised":
        def step(model, batch):
            return model(input_ids=batch["input_ids"][:, :-1], shift_labels=batch["labels"][:, 1:],
                         loss_only=True).loss
    else:
        def step(model, batch):
            return model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(method: str, args, batches: list[dict], device: torch.device) -> dict:
    _trim_heap()
    memory = PeakMemory(device)
    memory.start()
    model = build(method, args.model_size, args.seed, device)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    compute = loss_fn(method)
    on_device = [{k: v.to(device) for k, v in b.items()} for b in batches]

    first_loss = None
    if method.startswith("ours"):  # the loss of the initial weights on the first batch (loss check)
        with torch.no_grad():
            first_loss = compute(model, on_device[0]).item()

    losses, times, cpu_times = [], [], []
    for i, batch in enumerate(on_device):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = compute(model, batch)
        loss.backward()
        optimizer.step()
        value = loss.item()  # synchronises, as the book's loop does when it logs
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        losses.append(value)
        if i >= args.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    peak_mb = memory.stop()
    tokens = sum(b["input_ids"].shape[0] * (b["input_ids"].shape[1] - 1) for b in batches[args.warmup:])
    result = {"parameters": n_params, "seconds_per_step": sum(times) / len(times), "step_seconds": times,
              "cpu_seconds_per_step": sum(cpu_times) / len(cpu_times),
              "tokens_per_s": tokens / sum(times), "timed_tokens": tokens, "peak_memory_mb": peak_mb,
              "losses": losses, "first_batch_loss_at_init": first_loss}
    del model, optimizer, on_device, loss
    _trim_heap()
    return result


# ------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", default="124M", help="tiny (CI smoke), 124M (default), 355M, ...")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="instruction data JSON (default: the book's; synthetic entries if not found)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--allowed-max-length", type=int, default=1024)
    parser.add_argument("--mask-prompt", action="store_true",
                        help="mask the prompt from the loss (exercise 7.2): fewer target positions for loss_only")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"subset of: {', '.join(repr(m) for m in METHODS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data-repeats", type=int, default=3, help="runs of the data timing (best is reported)")
    parser.add_argument("--generation", action="store_true", help="also run scripts/benchmark_generation.py")
    parser.add_argument("--generation-args", default="--n-prompts 8 --max-new-tokens 32 --repeats 1",
                        help="extra arguments for benchmark_generation.py")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    entries, source = load_entries(args.data, args.seed)
    n_batches = args.warmup + args.steps
    batches, data_report = prepare_batches(entries, n_batches, args.batch_size, args.seed,
                                           args.allowed_max_length, args.data_repeats, args.mask_prompt)
    widths = [b["input_ids"].shape[1] - 1 for b in batches]
    print(f"model: random {args.model_size}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"data: {source}; train split {data_report['entries']} entries; {n_batches} batches of {args.batch_size} "
          f"(first {args.warmup} untimed), padded input length {min(widths)}-{max(widths)}")
    print(f"load average before: {_load()}", flush=True)

    results = {}
    for method in args.methods:
        results[method] = run_method(method, args, batches, device)
        r = results[method]
        print(f"  {method}: {r['seconds_per_step']:.3f} s/step, loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}",
              flush=True)

    check = None
    if "ours, book mode" in results and "ours, optimised" in results:
        book, opt = results["ours, book mode"], results["ours, optimised"]
        first = abs(book["first_batch_loss_at_init"] - opt["first_batch_loss_at_init"])
        per_step = max(abs(a - b) for a, b in zip(book["losses"], opt["losses"]))
        check = {"first_batch_abs_diff": first, "max_abs_diff_over_steps": per_step, "passed": first < 1e-4}

    hf = results.get("transformers GPT2LMHeadModel")
    book = results.get("ours, book mode")
    print(f"\n{'method':32s} {'params':>8s} {'s/step':>8s} {'CPU s':>7s} {'tokens/s':>9s} {'peak MB':>9s} {'vs HF':>7s} "
          f"{'vs book':>8s}")
    for method, r in results.items():
        r["speedup_vs_hf"] = hf["seconds_per_step"] / r["seconds_per_step"] if hf else None
        r["speedup_vs_book_mode"] = book["seconds_per_step"] / r["seconds_per_step"] if book else None
        fmt = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
        print(f"{method:32s} {r['parameters'] / 1e6:7.1f}M {r['seconds_per_step']:8.3f} {r['cpu_seconds_per_step']:7.2f} {r['tokens_per_s']:9.0f} "
              f"{r['peak_memory_mb']:9.0f} {fmt(r['speedup_vs_hf']):>7s} {fmt(r['speedup_vs_book_mode']):>8s}")
    memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS above pre-model baseline"
    print(f"(CPU s: process CPU time per step, all threads -- well below threads x s/step means the CPU was "
          f"shared; peak MB: {memory_kind}; HF model uses its default tied output head)")
    if check:
        print(f"\nloss check: |optimised - book mode| on the first batch at init = {check['first_batch_abs_diff']:.2e}, "
              f"max over the {n_batches} training steps = {check['max_abs_diff_over_steps']:.2e} "
              f"-> {'PASSED' if check['passed'] else 'FAILED'}")
    print(f"\ndata preparation ({data_report['entries']} train entries, Alpaca): tokenize_dataset "
          f"{data_report['tokenize_dataset']['entries_per_s']:,.0f} entries/s, book loop "
          f"{data_report['book loop']['entries_per_s']:,.0f} entries/s ({data_report['speedup_vs_book_loop']:.2f}x)")
    print(f"load average after: {_load()}  (shared machine: timings are noisy)", flush=True)

    generation = None
    if args.generation:
        spec = importlib.util.spec_from_file_location("benchmark_generation", REPO_ROOT / "scripts" / "benchmark_generation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        gen_argv = ["--model-size", args.model_size, "--data", str(args.data), "--device", args.device,
                    "--seed", str(args.seed), *args.generation_args.split()]
        if args.threads:
            gen_argv += ["--threads", str(args.threads)]
        print("\ngeneration (scripts/benchmark_generation.py):", flush=True)
        generation = module.main(gen_argv)

    summary = {
        "model_size": args.model_size, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "mask_prompt": args.mask_prompt, "warmup_steps": args.warmup, "timed_steps": args.steps,
        "data": source, "padded_input_lengths": widths, "optimizer": "AdamW(lr=5e-5, weight_decay=0.1)",
        "memory_measure": memory_kind, "training": results, "loss_check": check, "data_preparation": data_report,
        "generation": generation,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    if check and not check["passed"]:
        print("loss check FAILED", file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
