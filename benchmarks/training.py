#!/usr/bin/env python
"""Speed of the book's chapter 7 training recipe: gpt-sft against the book and transformers, side by side.

One run measures, on the book's data with the book's batch size (8) and optimizer (AdamW, lr 5e-5,
weight decay 0.1), each method on a freshly and identically seeded random model of ``--model-size``
(random weights are fine for speed):

(a) **Training** -- the first ``--warmup + --steps`` batches of an epoch (seeded shuffled order of the
    train split, collated by :class:`gpt_sft.data.collator.InstructionDataCollator`, Alpaca style), with the
    book's evaluation cadence (after every ``--eval-every`` = 5th step, the loss of ``--eval-batches`` =
    5 train and 5 validation batches). Reported per method: seconds per training step, seconds per
    evaluation, tokens/s (padded input tokens, the book's ``tokens_seen``), achieved TFLOP/s of *useful*
    work (model FLOPs of the real tokens, the same for every method; MFU against the device's peak on a
    GPU or with ``--peak-tflops``), peak memory, and an **epoch time** = steps/epoch x s/step +
    evaluations/epoch x s/evaluation (or measured outright with ``--full-epoch``), with speed-ups against
    the book and transformers. Methods (``--methods``):

    * ``book`` -- ours with every speed switch off: logits at every position, the book's
      ``cross_entropy(logits.flatten(0, 1), targets.flatten())``, padded batches, torch's default AdamW;
    * ``gpt-sft`` -- ours with the trainer's defaults (:meth:`gpt_sft.train.config.TrainConfig.loss_paths`
      and ``fused_optimizer``): what ``scripts/train.py`` runs;
    * ``hf`` -- ``transformers.GPT2LMHeadModel`` in a plain loop (``model(input_ids, labels).loss``, SDPA
      attention, torch's default AdamW), untied output head like the book (``--hf-tied`` for HF's default):
      the stand-in for the book's implementation;
    * one switch at a time on top of ``book`` (``--ablation`` adds the first four): ``targets-only``
      (output layer only at target positions), ``padding-free`` (that plus no compute for padding),
      ``shared-prefix`` (that plus the prompt template's common preamble computed once per batch),
      ``fused`` (fused AdamW); and on top of ``gpt-sft``: ``bf16`` (autocast), ``compile``
      (the trainer's ``--compile``, compilation excluded from the step times but reported), ``tf32`` (GPU).

    Every ``ours`` method must give the book's loss: on the first batch at init and after every step (same
    weights, same batches) the differences to ``book`` are printed and checked (``--loss-tolerance``;
    not for bf16/tf32, which change the numbers by design).
(b) **Data preparation** -- entries/s of :func:`gpt_sft.data.tokenize_dataset` on the train split against
    the book's one-``encode``-per-entry loop.
(c) **Generation** of the test responses (``benchmarks/generation.py``; ``--no-generation`` skips).

    python benchmarks/training.py                                  # 124M, 10 timed steps, the table
    python benchmarks/training.py --model-size 355M --full-epoch --ablation --json bench.json
    python benchmarks/training.py --model-size tiny --steps 2 --no-generation   # smoke (seconds)

Timings on a shared CPU are noisy: methods run one after another, so a neighbour's load hits one and
not another. The load average and process CPU time per step are printed; rerun (``--methods`` also sets
the order) when wall and CPU times disagree. Peak memory: ``torch.cuda.max_memory_allocated`` on a GPU;
on the CPU the process RSS sampled every few ms above the RSS before the model was built.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

import datasets  # noqa: E402
from common import DEFAULT_DATA, REPO_ROOT, MemoryMeter, gpt_config, load_entries, machine_load, trim_heap  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gpt_sft import GPTForCausalLM  # noqa: E402
from gpt_sft.data.collator import InstructionDataCollator  # noqa: E402
from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.prompts import format_text  # noqa: E402
from gpt_sft.data.split import split_dataset  # noqa: E402
from gpt_sft.data.tokenize import tokenize_dataset  # noqa: E402
from gpt_sft.model.tokenizer import get_tokenizer  # noqa: E402
from gpt_sft.train.config import TrainConfig  # noqa: E402
from gpt_sft.train.loop import compile_blocks  # noqa: E402
from gpt_sft.train.loss import BOOK, LossPaths, batch_loss, batch_losses, positions_up_to_last_target  # noqa: E402
if importlib.util.find_spec("gpt_sft") is None:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1025}
# The book's figures (chapter 7, "Training completed in ... minutes", gpt2-medium, 2 epochs) for reference.
BOOK_REFERENCE = ("the book (2 epochs incl. evaluation): gpt2-medium 0.86 min on an A100, 1.83 min on an L4, "
                  "15.78 min on an M3 CPU; gpt2-small 0.39 min on an A100")
# Dense peak TFLOP/s by (device name fragment, precision); MFU uses the precision the method computes in.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM; the PCIe card is ~25% lower
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of running the training step; ``impl`` "ours" (GPTForCausalLM) or "hf" (GPT2LMHeadModel)."""

    name: str
    impl: str = "ours"
    paths: LossPaths = BOOK
    fused: bool = False
    autocast: str | None = None  # "bf16"
    compile: bool = False
    tf32: bool = False

    @property
    def exact(self) -> bool:
        """Whether it must reproduce the book's loss (float round-off only)."""
        return self.impl == "ours" and self.autocast is None and not self.tf32

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast else ("tf32" if self.tf32 else "fp32")


def method_table() -> dict[str, Method]:
    default = TrainConfig()
    ours = Method("gpt-sft (trainer defaults)", paths=default.loss_paths(), fused=default.fused_optimizer)
    return {
        "book": Method("book mode (ours, switches off)"),
        "gpt-sft": ours,
        "hf": Method("transformers GPT2LMHeadModel", impl="hf"),
        "targets-only": Method("book + targets-only logits", paths=LossPaths(padding_free=False, share_prefix=False)),
        "padding-free": Method("book + targets-only + padding-free", paths=LossPaths(share_prefix=False)),
        "shared-prefix": Method("book + targets-only + padding-free + prefix", paths=LossPaths()),
        "fused": Method("book + fused AdamW", fused=True),
        "bf16": dataclasses.replace(ours, name="gpt-sft + bf16 autocast", autocast="bf16"),
        "compile": dataclasses.replace(ours, name="gpt-sft + torch.compile", compile=True),
        "tf32": dataclasses.replace(ours, name="gpt-sft + TF32", tf32=True),
    }


DEFAULT_METHODS = ["book", "gpt-sft", "hf"]
ABLATION = ["targets-only", "padding-free", "shared-prefix", "fused"]


# ------------------------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class BenchData:
    train: list[dict]  # the timed epoch's batches, in order
    val: list[dict]  # the first validation batches (the book evaluates the same ones every time)
    train_batches_per_epoch: int
    report: dict  # data preparation timings


def prepare_data(entries: list[dict], n_batches: int, args) -> BenchData:
    """Part (b) timed, then the train batches of one epoch's seeded order and the first val batches."""
    datasets.disable_progress_bars()
    tokenizer = get_tokenizer()
    splits = split_dataset(load_instruction_data(entries, progress=False))
    train = splits["train"]

    def book_loop():
        for entry in train.to_list():
            prompt, full = format_text(entry, "alpaca")
            tokenizer.encode(full)
            len(tokenizer.encode(prompt))

    timings, tokenized = {}, None
    for name, run in (("tokenize_dataset", None), ("book loop", book_loop)):
        best = float("inf")
        for _ in range(max(1, args.data_repeats)):
            start = time.perf_counter()
            if run is None:
                tokenized = tokenize_dataset(train, tokenizer, "alpaca", allowed_max_length=args.allowed_max_length,
                                             keep_columns=False)
            else:
                run()
            best = min(best, time.perf_counter() - start)
        timings[name] = {"seconds": best, "entries_per_s": len(train) / best}
    report = {"entries": len(train), **timings,
              "speedup_vs_book_loop": timings["book loop"]["seconds"] / timings["tokenize_dataset"]["seconds"]}

    collate = InstructionDataCollator(allowed_max_length=args.allowed_max_length, mask_prompt=args.mask_prompt)
    examples = tokenized.with_format(columns=["input_ids", "prompt_length"])
    per_epoch = len(examples) // args.batch_size  # drop_last, like the book's train loader
    if n_batches > per_epoch:
        raise SystemExit(f"need {n_batches} batches of {args.batch_size} but an epoch has {per_epoch}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(args.seed)).tolist()
    bs = args.batch_size
    batches = [collate([examples[j] for j in order[i * bs:(i + 1) * bs]]) for i in range(n_batches)]
    val_examples = tokenize_dataset(splits["validation"], tokenizer, "alpaca",
                                    allowed_max_length=args.allowed_max_length, keep_columns=False)
    val_examples = val_examples.with_format(columns=["input_ids", "prompt_length"])
    n_val = min(args.eval_batches, math.ceil(len(val_examples) / bs))
    val = [collate([val_examples[j] for j in range(i * bs, min((i + 1) * bs, len(val_examples)))])
           for i in range(n_val)]
    return BenchData(batches, val, per_epoch, report)


def useful_flops(batch: dict, config) -> float:
    """Model FLOPs of a training step (forward + backward = 3 x forward) on the real tokens of ``batch``.

    Per row, the tokens up to its last target (padding after it is not useful work, a masked prompt
    is): 6 x (12 L d^2 + d V) per token for the matmuls, plus causal attention 6 L d n^2 per row."""
    used = positions_up_to_last_target(batch["labels"][:, 1:]).double()
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    return float(6 * (12 * L * d * d + d * V) * used.sum() + 6 * L * d * (used ** 2).sum())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision]
    return None


# ------------------------------------------------------------------------------------------- models


def our_config(size: str):
    return gpt_config(size, TINY)


def build(method: Method, size: str, seed: int, device: torch.device, hf_tied: bool):
    torch.manual_seed(seed)
    config = our_config(size)
    if method.impl == "ours":
        model = GPTForCausalLM(config)
    else:
        hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                               n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0, layer_norm_epsilon=config.layer_norm_epsilon,
                               tie_word_embeddings=hf_tied, attn_implementation="sdpa")
        model = GPT2LMHeadModel(hf_config)
    model = model.to(device).train()
    if method.compile:  # the trainer's --compile
        compile_blocks(model)
    return model, config


def loss_fn(method: Method):
    """``(model, batch) -> loss``; ``batch`` is the collator's HF form on the device."""
    if method.impl == "hf":
        return lambda model, batch: model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    if method.paths.book:  # the book's calc_loss_batch
        def step(model, batch):
            logits = model(input_ids=batch["input_ids"][:, :-1]).logits
            return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten())
        return step
    return lambda model, batch: batch_loss(model, batch["input_ids"][:, :-1], batch["labels"][:, 1:], method.paths)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_method(method: Method, args, data: BenchData, device: torch.device) -> dict:
    """Train on ``data.train`` with the book's evaluation cadence; time steps and evaluations apart."""
    trim_heap()
    if method.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    memory = MemoryMeter(device)
    memory.start()
    model, config = build(method, args.model_size, args.seed, device, args.hf_tied)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True if method.fused else None)
    compute = loss_fn(method)
    train = [{k: v.to(device) for k, v in b.items()} for b in data.train]
    val = [{k: v.to(device) for k, v in b.items()} for b in data.val]
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if method.autocast == "bf16"
                else contextlib.nullcontext())

    def evaluate() -> tuple[float, float]:
        """The book's evaluate_model: mean loss of the first eval batches of train and val (padding-free:
        the trainer's evaluation, all batches of a split in one forward pass)."""
        model.eval()
        with torch.no_grad(), autocast:
            if method.paths.padding_free:
                result = tuple(torch.stack(batch_losses(model, batches[: args.eval_batches], method.paths)).mean().item()
                               for batches in (train, val))
            else:
                result = tuple(sum(compute(model, b).item() for b in batches[: args.eval_batches])
                               / len(batches[: args.eval_batches]) for batches in (train, val))
        model.train()
        return result

    first_loss, compile_seconds = None, 0.0
    if method.compile:  # compile outside the timings: one step's worth of forward + backward on a copy
        start = time.perf_counter()
        with autocast:
            compute(model, train[0]).backward()
        model.zero_grad(set_to_none=True)
        compile_seconds = time.perf_counter() - start
    if method.impl == "ours":  # the loss of the initial weights on the first batch (loss check)
        with torch.no_grad(), autocast:
            first_loss = compute(model, train[0]).item()

    losses, times, cpu_times, eval_times, eval_losses = [], [], [], [], []
    epoch_start = time.perf_counter()
    for step, batch in enumerate(train):
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = compute(model, batch)
        loss.backward()
        optimizer.step()
        value = loss.item()  # synchronises, as the book's loop does when it logs
        _sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        losses.append(value)
        if step >= args.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
        if step % args.eval_every == 0:
            start = time.perf_counter()
            eval_losses.append(evaluate())
            _sync(device)
            if step >= args.warmup or step == len(train) - 1:
                eval_times.append(time.perf_counter() - start)
    measured_epoch = time.perf_counter() - epoch_start
    if not eval_times:  # no evaluation fell into the timed steps
        start = time.perf_counter()
        evaluate()
        _sync(device)
        eval_times.append(time.perf_counter() - start)
    peak_mb = memory.stop() / 2**20

    timed = data.train[args.warmup:]
    step_s = sum(times) / len(times)
    eval_s = sum(eval_times) / len(eval_times)
    steps_per_epoch = data.train_batches_per_epoch
    evals_per_epoch = math.ceil(steps_per_epoch / args.eval_every)
    tokens = sum(b["input_ids"].shape[0] * (b["input_ids"].shape[1] - 1) for b in timed)
    flops = sum(useful_flops(b, config) for b in timed) / len(timed)
    peak = peak_tflops(device, method.precision, args.peak_tflops)
    result = {
        "method": dataclasses.asdict(method), "parameters": n_params,
        "seconds_per_step": step_s, "step_seconds": times, "cpu_seconds_per_step": sum(cpu_times) / len(cpu_times),
        "seconds_per_evaluation": eval_s, "evaluation_seconds": eval_times,
        "tokens_per_s": tokens / sum(times), "timed_tokens": tokens,
        "useful_tflops_per_s": flops / step_s / 1e12, "mfu": flops / step_s / 1e12 / peak if peak else None,
        "peak_tflops": peak, "peak_memory_mb": peak_mb, "compile_seconds": compile_seconds or None,
        "epoch_seconds_estimated": steps_per_epoch * step_s + evals_per_epoch * eval_s,
        "epoch_seconds_measured": measured_epoch if args.full_epoch else None,
        "losses": losses, "eval_losses": eval_losses, "first_batch_loss_at_init": first_loss,
    }
    torch.backends.cuda.matmul.allow_tf32 = False
    return result  # the model and optimizer go with this frame; the next method trims the heap first


# ------------------------------------------------------------------------------------------- main


def epoch_seconds(r: dict) -> float:
    return r["epoch_seconds_measured"] or r["epoch_seconds_estimated"]


def main(argv: list[str] | None = None) -> dict:
    table = method_table()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="124M", help="tiny (CI smoke), 124M (default), 355M, 774M, 1558M")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="instruction data JSON (default: the book's; synthetic entries if not found)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--full-epoch", action="store_true",
                        help="train a whole epoch (every batch, no warm-up) and report its measured time too")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=5, help="the book's eval_freq")
    parser.add_argument("--eval-batches", type=int, default=5, help="the book's eval_iter")
    parser.add_argument("--allowed-max-length", type=int, default=1024)
    parser.add_argument("--mask-prompt", action="store_true", help="mask the prompt from the loss (exercise 7.2)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(table), metavar="METHOD",
                        help=f"in this order, any of: {', '.join(table)} (default: {' '.join(DEFAULT_METHODS)})")
    parser.add_argument("--ablation", action="store_true", help=f"also: {' '.join(ABLATION)}")
    parser.add_argument("--hf-tied", action="store_true", help="transformers with its default tied output head")
    parser.add_argument("--loss-tolerance", type=float, default=1e-4,
                        help="largest allowed |loss - book mode loss| for the exact methods")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for MFU (default: a table of GPUs; none for CPUs)")
    parser.add_argument("--data-repeats", type=int, default=3, help="runs of the data timing (best is reported)")
    parser.add_argument("--no-generation", dest="generation", action="store_false",
                        help="skip part (c), benchmarks/generation.py")
    parser.add_argument("--generation-args", default="",
                        help="extra arguments for benchmark_generation.py, e.g. '--n-prompts 16 --book-prompts 2'")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.eval_every < 1 or args.eval_batches < 1:
        parser.error("--steps, --eval-every and --eval-batches must be >= 1 and --warmup >= 0")
    methods = list(dict.fromkeys(args.methods + (ABLATION if args.ablation else [])))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    entries, source = load_entries(args.data, args.seed)
    if args.full_epoch:
        args.warmup, n_batches = 0, None
    else:
        n_batches = args.warmup + args.steps
    data = prepare_data(entries, n_batches or 0, args) if n_batches else None
    if data is None:  # a whole epoch: first learn its length
        probe = prepare_data(entries, 1, args)
        data = prepare_data(entries, probe.train_batches_per_epoch, args)
        args.steps = len(data.train)
    widths = [b["input_ids"].shape[1] - 1 for b in data.train]
    print(f"model: random {args.model_size}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"data: {source}; train split {data.report['entries']} entries = {data.train_batches_per_epoch} batches of "
          f"{args.batch_size}/epoch; timing {len(data.train)} of them ({args.warmup} untimed), padded input length "
          f"{min(widths)}-{max(widths)}; evaluation every {args.eval_every} steps on {args.eval_batches} train + "
          f"{len(data.val)} val batches")
    print(f"load average before: {machine_load()}", flush=True)

    results = {}
    for key in methods:
        method = table[key]
        results[key] = r = run_method(method, args, data, device)
        print(f"  {method.name}: {r['seconds_per_step']:.3f} s/step, {r['seconds_per_evaluation']:.2f} s/evaluation, "
              f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}", flush=True)

    checks = {}
    if "book" in results:
        book = results["book"]
        for key, r in results.items():
            if key == "book" or not table[key].exact:
                continue
            first = abs(book["first_batch_loss_at_init"] - r["first_batch_loss_at_init"])
            per_step = max(abs(a - b) for a, b in zip(book["losses"], r["losses"]))
            evals = max(abs(a - b) for x, y in zip(book["eval_losses"], r["eval_losses"]) for a, b in zip(x, y))
            checks[key] = {"first_batch_abs_diff": first, "max_abs_diff_over_steps": per_step,
                           "max_abs_diff_evaluations": evals,
                           "passed": max(first, per_step, evals) <= args.loss_tolerance}

    hf, book = results.get("hf"), results.get("book")
    steps_per_epoch = data.train_batches_per_epoch
    print(f"\n{'method':44s} {'s/step':>7s} {'s/eval':>7s} {'epoch s':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'peak MB':>8s} {'vs book':>8s} {'vs HF':>7s}")
    for key, r in results.items():
        r["epoch_speedup_vs_book"] = epoch_seconds(book) / epoch_seconds(r) if book else None
        r["epoch_speedup_vs_hf"] = epoch_seconds(hf) / epoch_seconds(r) if hf else None
        r["step_speedup_vs_book"] = book["seconds_per_step"] / r["seconds_per_step"] if book else None
        r["step_speedup_vs_hf"] = hf["seconds_per_step"] / r["seconds_per_step"] if hf else None
        fmt = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"{table[key].name:44s} {r['seconds_per_step']:7.3f} {r['seconds_per_evaluation']:7.2f} "
              f"{epoch_seconds(r):8.1f} {r['tokens_per_s']:9.0f} {r['useful_tflops_per_s']:8.3f} {mfu:>6s} "
              f"{r['peak_memory_mb']:8.0f} {fmt(r['epoch_speedup_vs_book']):>8s} {fmt(r['epoch_speedup_vs_hf']):>7s}")
    kind = "measured (--full-epoch)" if args.full_epoch else (
        f"estimated: {steps_per_epoch} steps x s/step + {math.ceil(steps_per_epoch / args.eval_every)} evaluations "
        f"x s/eval")
    memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS above pre-model baseline"
    print(f"(epoch s: {kind}; vs book / vs HF: epoch-time speed-ups; TFLOP/s: useful model FLOPs of the real "
          f"tokens per second of training step; peak MB: {memory_kind}; HF output head "
          f"{'tied' if args.hf_tied else 'untied, like the book'})")
    print("training step only (no evaluation): " + ", ".join(
        f"{table[k].name} {r['step_speedup_vs_hf']:.2f}x vs HF" for k, r in results.items() if hf and k != "hf"))
    for key, r in results.items():
        if r["compile_seconds"]:
            print(f"{table[key].name}: compilation took {r['compile_seconds']:.1f} s (not in the step times)")
    two_epochs = {table[k].name: 2 * epoch_seconds(r) / 60 for k, r in results.items()}
    print("2 epochs (the book's recipe) at this size: " + ", ".join(f"{n} {m:.2f} min" for n, m in two_epochs.items()))
    print(f"  for reference, {BOOK_REFERENCE}")
    for key, c in checks.items():
        print(f"loss check {table[key].name}: |loss - book mode| first batch at init {c['first_batch_abs_diff']:.1e}, "
              f"max over steps {c['max_abs_diff_over_steps']:.1e}, evaluations {c['max_abs_diff_evaluations']:.1e} "
              f"-> {'PASSED' if c['passed'] else 'FAILED'}")
    prep = data.report
    print(f"\ndata preparation ({prep['entries']} train entries, Alpaca): tokenize_dataset "
          f"{prep['tokenize_dataset']['entries_per_s']:,.0f} entries/s, book loop "
          f"{prep['book loop']['entries_per_s']:,.0f} entries/s ({prep['speedup_vs_book_loop']:.2f}x)")
    print(f"load average after: {machine_load()}  (shared machine: timings are noisy)", flush=True)

    generation = None
    if args.generation:
        spec = importlib.util.spec_from_file_location("benchmark_generation", REPO_ROOT / "benchmarks" / "generation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        gen_argv = ["--model-size", args.model_size, "--data", str(args.data), "--device", args.device,
                    "--seed", str(args.seed), *args.generation_args.split()]
        if args.threads:
            gen_argv += ["--threads", str(args.threads)]
        print("\n(c) generation (benchmarks/generation.py):", flush=True)
        generation = module.main(gen_argv)

    summary = {
        "model_size": args.model_size, "device": str(device), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "mask_prompt": args.mask_prompt, "warmup_steps": args.warmup,
        "timed_steps": len(data.train) - args.warmup, "full_epoch": args.full_epoch,
        "eval_every": args.eval_every, "eval_batches": args.eval_batches, "steps_per_epoch": steps_per_epoch,
        "data": source, "padded_input_lengths": widths, "optimizer": "AdamW(lr=5e-5, weight_decay=0.1)",
        "hf_tied": args.hf_tied, "memory_measure": memory_kind, "training": results, "loss_checks": checks,
        "two_epoch_minutes": two_epochs, "book_reference": BOOK_REFERENCE, "data_preparation": prep,
        "generation": generation,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    failed = [table[k].name for k, c in checks.items() if not c["passed"]]
    if failed:
        print(f"loss check FAILED: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
