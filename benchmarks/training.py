#!/usr/bin/env python
"""Speed of the book's chapter 7 training recipe: gpt-sft against the book, transformers and TRL, side by side.

One run measures, on the book's data with the book's batch size (8) and optimizer (AdamW, lr 5e-5,
weight decay 0.1), each method from the same random initial weights of ``--model-size`` (made once,
loaded by every method; random weights are fine for speed):

(a) **Training** -- the first ``--warmup + --steps`` batches of an epoch (seeded shuffled order of the
    train split, collated by :class:`gpt_sft.data.collator.InstructionDataCollator`, Alpaca style), with the
    book's evaluation cadence (after every ``--eval-every`` = 5th step, the loss of ``--eval-batches`` =
    5 train and 5 validation batches). Reported per method: seconds per training step, seconds per
    evaluation, tokens/s (padded input tokens, the book's ``tokens_seen``), achieved TFLOP/s of *useful*
    work (model FLOPs of the real tokens, the same for every method; MFU against the device's peak on a
    GPU or with ``--peak-tflops``), peak memory, the validation loss (the book's ``calc_loss_loader`` over
    the whole validation split) before and after training, and an **epoch time** = steps/epoch x s/step +
    evaluations/epoch x s/evaluation (or measured outright with ``--full-epoch``; ``--epochs 2`` measures
    the book's whole recipe), with speed-ups against the book, transformers and TRL. Methods (``--methods``):

    * ``book`` -- ours with every speed switch off: logits at every position, the book's
      ``cross_entropy(logits.flatten(0, 1), targets.flatten())``, padded batches, torch's default AdamW;
    * ``gpt-sft`` -- ours with the trainer's defaults (:meth:`gpt_sft.train.config.TrainConfig.loss_paths`
      and ``fused_optimizer``): what ``scripts/train.py`` runs;
    * ``hf`` -- ``transformers.GPT2LMHeadModel`` in a plain loop (``model(input_ids, labels).loss``, SDPA
      attention, torch's default AdamW), untied output head like the book (``--hf-tied`` for HF's default):
      the stand-in for the book's implementation;
    * ``trl`` -- TRL's ``SFTTrainer`` on ``GPT2LMHeadModel`` with its fastest documented settings that keep
      the recipe (padding-free, fp32; ``trl_sft.py`` says which and why); ``trl-bf16`` with bf16, its default;
    * one switch at a time on top of ``book`` (``--ablation`` adds the first four): ``targets-only``
      (output layer only at target positions), ``padding-free`` (that plus no compute for padding),
      ``shared-prefix`` (that plus the prompt template's common preamble computed once per batch),
      ``fused`` (fused AdamW); and on top of ``gpt-sft``: ``bf16`` (autocast), ``compile``
      (the trainer's ``--compile``, compilation excluded from the step times but reported), ``tf32`` (GPU).

    Every ``ours`` method must give the book's loss: on the first batch at init and after every step (same
    weights, same batches) the differences to ``book`` are printed and checked (``--loss-tolerance``;
    not for bf16/tf32, which change the numbers by design). Every method, TRL's own data path included,
    must score the same validation targets (their count and id sum) with the same initial validation loss
    (computed in fp32): the **parity** line, checked with the same tolerance.
(b) **Data preparation** -- entries/s of :func:`gpt_sft.data.tokenize_dataset` on the train split against
    the book's one-``encode``-per-entry loop.
(c) **Generation** of the test responses (``benchmarks/generation.py``; ``--no-generation`` skips).

``--exercise-7-3`` times a fraction of an epoch at Exercise 7.3's size: 52,800 entries, the book's 1,100
repeated 48 times (its length distribution; nothing invented), batch 4, max length 512 (default method
``gpt-sft``), and extrapolates the epoch from the measured steps (no validation loss, no part (b)).

    python benchmarks/training.py                                  # 124M, 10 timed steps, the table
    python benchmarks/training.py --methods book gpt-sft hf trl     # the peers
    python benchmarks/training.py --model-size 355M --full-epoch --epochs 2 --ablation --json bench.json
    python benchmarks/training.py --exercise-7-3 --steps 5         # Exercise 7.3's size, extrapolated
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

from common import DEFAULT_DATA, REPO_ROOT, MemoryMeter, load_entries, machine_load, trim_heap  # noqa: E402
from training_data import (EXERCISE_7_3, EXERCISE_7_3_REFERENCE, BenchData, parity, prepare_data,  # noqa: E402
                           validation_loss)
from training_methods import (ABLATION, DEFAULT_METHODS, Method, build, initial_weights, loss_fn,  # noqa: E402
                              method_table, our_config, peak_tflops, sync, useful_flops)

from gpt_sft.train.loop import compile_blocks  # noqa: E402
from gpt_sft.train.loss import batch_losses  # noqa: E402

if importlib.util.find_spec("gpt_sft") is None:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

# The book's figures (chapter 7, "Training completed in ... minutes", gpt2-medium, 2 epochs) for reference.
BOOK_REFERENCE = ("the book (2 epochs incl. evaluation): gpt2-medium 0.86 min on an A100, 1.83 min on an L4, "
                  "15.78 min on an M3 CPU; gpt2-small 0.39 min on an A100")


def to_device(batches: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) for k, v in b.items()} for b in batches]


def run_method(method: Method, args, data: BenchData, device: torch.device, initial: dict) -> dict:
    """Train on ``data.train`` with the book's evaluation cadence; time steps and evaluations apart."""
    trim_heap()
    memory = MemoryMeter(device)
    memory.start()
    model, _ = build(method, args.model_size, initial, device, args.hf_tied)
    n_params = sum(p.numel() for p in model.parameters())
    compute = loss_fn(method)
    train, val = to_device(data.train, device), to_device(data.val, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if method.autocast == "bf16"
                else contextlib.nullcontext())

    def split_loss(model_autocast) -> dict | None:
        if not args.validation_loss:
            return None
        model.eval()
        with model_autocast:
            result = validation_loss(to_device(data.validation, device), lambda b: compute(model, b))
        model.train()
        return result

    at_init = split_loss(contextlib.nullcontext())  # fp32, before TF32 or compilation: the parity line
    torch.backends.cuda.matmul.allow_tf32 = method.tf32
    if method.compile:  # the trainer's --compile
        compile_blocks(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True if method.fused else None)

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
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = compute(model, batch)
        loss.backward()
        optimizer.step()
        value = loss.item()  # synchronises, as the book's loop does when it logs
        sync(device)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        losses.append(value)
        if step >= args.warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
        if step % args.eval_every == 0:
            start = time.perf_counter()
            eval_losses.append(evaluate())
            sync(device)
            if step >= args.warmup or step == len(train) - 1:
                eval_times.append(time.perf_counter() - start)
    measured = time.perf_counter() - epoch_start
    if not eval_times:  # no evaluation fell into the timed steps
        start = time.perf_counter()
        evaluate()
        sync(device)
        eval_times.append(time.perf_counter() - start)
    final = split_loss(autocast)
    peak = memory.stop()
    torch.backends.cuda.matmul.allow_tf32 = False
    return {  # the model and optimizer go with this frame; the next method trims the heap first
        "parameters": n_params, "step_seconds": times, "cpu_step_seconds": cpu_times, "evaluation_seconds": eval_times,
        "measured_seconds": measured, "peak_bytes": peak, "compile_seconds": compile_seconds or None,
        "losses": losses, "eval_losses": eval_losses, "first_batch_loss_at_init": first_loss,
        "validation_at_init": at_init, "validation_final": final, "optimizer_steps": len(train),
        "collate_seconds_per_batch": data.collate_seconds_per_batch,
    }


def summarize(method: Method, raw: dict, args, data: BenchData, device: torch.device) -> dict:
    """A method's figures from its raw measurements (``run_method`` or ``trl_sft.run_trl``)."""
    config = our_config(args.model_size)
    times, eval_times = raw["step_seconds"], raw["evaluation_seconds"]
    timed = data.train[args.warmup:]
    step_s = sum(times) / len(times)
    eval_s = sum(eval_times) / len(eval_times)
    steps_per_epoch = data.train_batches_per_epoch
    evals_per_epoch = math.ceil(steps_per_epoch / args.eval_every)
    tokens = sum(b["input_ids"].shape[0] * (b["input_ids"].shape[1] - 1) for b in timed)
    flops = sum(useful_flops(b, config) for b in timed) / len(timed)
    peak = peak_tflops(device, method.precision, args.peak_tflops)
    result = {
        "method": dataclasses.asdict(method), "parameters": raw["parameters"],
        "seconds_per_step": step_s, "step_seconds": times,
        "cpu_seconds_per_step": sum(raw["cpu_step_seconds"]) / len(raw["cpu_step_seconds"]),
        "seconds_per_evaluation": eval_s, "evaluation_seconds": eval_times,
        "tokens_per_s": tokens / sum(times), "timed_tokens": tokens,
        "useful_tflops_per_s": flops / step_s / 1e12, "mfu": flops / step_s / 1e12 / peak if peak else None,
        "peak_tflops": peak, "peak_memory_mb": raw["peak_bytes"] / 2**20, "compile_seconds": raw["compile_seconds"],
        "epoch_seconds_estimated": steps_per_epoch * step_s + evals_per_epoch * eval_s,
        "epoch_seconds_measured": raw["measured_seconds"] / args.epochs if args.full_epoch else None,
        "wall_seconds": raw["measured_seconds"], "optimizer_steps": raw["optimizer_steps"],
        "losses": raw["losses"], "eval_losses": raw["eval_losses"],
        "first_batch_loss_at_init": raw["first_batch_loss_at_init"],
        "validation_at_init": raw["validation_at_init"], "validation_final": raw["validation_final"],
        "final_validation_loss": raw["validation_final"]["loss"] if raw["validation_final"] else None,
        "collate_seconds_per_batch": raw["collate_seconds_per_batch"], "setup_seconds": raw.get("setup_seconds"),
    }
    if raw["optimizer_steps"] != len(data.train):
        raise SystemExit(f"{method.name}: {raw['optimizer_steps']} optimizer steps, not {len(data.train)}")
    return result


def run(key: str, method: Method, args, data: BenchData, device: torch.device, initial: dict) -> dict:
    if method.impl != "trl":
        return run_method(method, args, data, device, initial)
    try:  # TRL only where it is asked for: the other methods run without it
        from trl_sft import run_trl
    except ImportError as err:
        raise SystemExit(f"--methods {key} needs TRL ({err}): pip install -c constraints/locked.txt -e '.[dev]'")
    return run_trl(method, args, data, device, initial)


def epoch_seconds(r: dict) -> float:
    return r["epoch_seconds_measured"] or r["epoch_seconds_estimated"]


def trl_peer(key: str, table: dict, results: dict) -> dict | None:
    """The TRL run of ``key``'s precision (fp32 or bf16), if one ran."""
    precision = table[key].precision
    if precision == "tf32":
        return None
    return results.get("trl-bf16" if precision == "bf16" else "trl")


def parse_args(argv: list[str] | None, table: dict) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", default="124M", help="tiny (CI smoke), 124M (default), 355M, 774M, 1558M")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="instruction data JSON (default: the book's; synthetic entries if not found)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--full-epoch", action="store_true",
                        help="train whole epochs (every batch, no warm-up) and report their measured time too")
    parser.add_argument("--epochs", type=int, default=1, help="with --full-epoch: how many (2: the book's recipe)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=5, help="the book's eval_freq")
    parser.add_argument("--eval-batches", type=int, default=5, help="the book's eval_iter")
    parser.add_argument("--allowed-max-length", type=int, default=1024)
    parser.add_argument("--mask-prompt", action="store_true", help="mask the prompt from the loss (exercise 7.2)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat the entries this many times before the split")
    parser.add_argument("--exercise-7-3", action="store_true",
                        help="Exercise 7.3's size: --repeat 48 (52,800 entries) --batch-size 4 --allowed-max-length "
                             "512, no validation loss; the epoch extrapolated from the measured steps")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(table), metavar="METHOD",
                        help=f"in this order, any of: {', '.join(table)} (default: {' '.join(DEFAULT_METHODS)}; "
                             "gpt-sft with --exercise-7-3)")
    parser.add_argument("--ablation", action="store_true", help=f"also: {' '.join(ABLATION)}")
    parser.add_argument("--hf-tied", action="store_true", help="transformers with its default tied output head")
    parser.add_argument("--loss-tolerance", type=float, default=1e-4,
                        help="largest allowed |loss - book mode loss| for the exact methods, and for the parity line")
    parser.add_argument("--no-validation-loss", dest="validation_loss", action="store_false",
                        help="skip the validation loss before and after training (and so the parity line)")
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
    if args.steps < 1 or args.warmup < 0 or args.eval_every < 1 or args.eval_batches < 1 or args.epochs < 1 \
            or args.repeat < 1:
        parser.error("--steps, --eval-every, --eval-batches, --epochs and --repeat must be >= 1 and --warmup >= 0")
    if args.epochs > 1 and not args.full_epoch:
        parser.error("--epochs needs --full-epoch (otherwise --steps says how many steps are timed)")
    if args.exercise_7_3:
        vars(args).update(EXERCISE_7_3, validation_loss=False, generation=False)
        args.methods = args.methods or ["gpt-sft"]
    args.methods = list(dict.fromkeys((args.methods or DEFAULT_METHODS) + (ABLATION if args.ablation else [])))
    args.time_preparation = args.repeat == 1
    if args.hf_tied and args.validation_loss:
        print("note: --hf-tied starts transformers from other weights (its head is the embedding): "
              "not in the parity line")
    return args


def main(argv: list[str] | None = None) -> dict:
    table = method_table()
    args = parse_args(argv, table)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    entries, source = load_entries(args.data, args.seed)
    if args.full_epoch:
        args.warmup = 0
    data = prepare_data(entries, None if args.full_epoch else args.warmup + args.steps, args)
    args.steps = len(data.train) - args.warmup
    widths = [b["input_ids"].shape[1] - 1 for b in data.train]
    print(f"model: random {args.model_size}, {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    if args.repeat > 1:
        print(f"data: {data.entries:,} entries = {source}'s {len(entries):,} repeated {args.repeat} times (the same "
              f"length distribution; nothing invented), batch {args.batch_size}, max length {args.allowed_max_length}")
    print(f"data: {source}; train split {data.train_split:,} entries = "
          f"{data.train_batches_per_epoch:,} batches of {args.batch_size}/epoch; timing {len(data.train)} of them "
          f"({args.warmup} untimed), padded input length {min(widths)}-{max(widths)}; evaluation every "
          f"{args.eval_every} steps on {args.eval_batches} train + {len(data.val)} val batches")
    print(f"load average before: {machine_load()}", flush=True)

    initial = initial_weights(args.model_size, args.seed)
    results = {}
    for key in args.methods:
        method = table[key]
        results[key] = r = summarize(method, run(key, method, args, data, device, initial), args, data, device)
        final = f", validation loss {r['final_validation_loss']:.4f}" if r["validation_final"] else ""
        print(f"  {method.name}: {r['seconds_per_step']:.3f} s/step, {r['seconds_per_evaluation']:.2f} s/evaluation, "
              f"loss {r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}{final}", flush=True)
    del initial

    checks = {}
    book = results.get("book")
    if book:
        for key, r in results.items():
            if key == "book" or table[key].precision != "fp32":
                continue
            r["max_abs_loss_diff_vs_book"] = max(abs(a - b) for a, b in zip(book["losses"], r["losses"]))
            if not table[key].exact:  # another implementation: its differences are reported, not checked
                continue
            first = abs(book["first_batch_loss_at_init"] - r["first_batch_loss_at_init"])
            per_step = r["max_abs_loss_diff_vs_book"]
            evals = max(abs(a - b) for x, y in zip(book["eval_losses"], r["eval_losses"]) for a, b in zip(x, y))
            checks[key] = {"first_batch_abs_diff": first, "max_abs_diff_over_steps": per_step,
                           "max_abs_diff_evaluations": evals,
                           "passed": max(first, per_step, evals) <= args.loss_tolerance}

    hf = results.get("hf")
    steps_per_epoch = data.train_batches_per_epoch
    fmt = lambda x: f"{x:.2f}x" if x is not None else "-"  # noqa: E731
    print(f"\n{'method':44s} {'s/step':>7s} {'s/eval':>7s} {'epoch s':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'peak MB':>8s} {'val loss':>8s} {'vs book':>8s} {'vs HF':>7s} {'vs TRL':>7s}")
    for key, r in results.items():
        trl = trl_peer(key, table, results)
        r["epoch_speedup_vs_book"] = epoch_seconds(book) / epoch_seconds(r) if book else None
        r["epoch_speedup_vs_hf"] = epoch_seconds(hf) / epoch_seconds(r) if hf else None
        r["epoch_speedup_vs_trl"] = epoch_seconds(trl) / epoch_seconds(r) if trl else None
        r["step_speedup_vs_book"] = book["seconds_per_step"] / r["seconds_per_step"] if book else None
        r["step_speedup_vs_hf"] = hf["seconds_per_step"] / r["seconds_per_step"] if hf else None
        r["step_speedup_vs_trl"] = trl["seconds_per_step"] / r["seconds_per_step"] if trl else None
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        val = f"{r['final_validation_loss']:.4f}" if r["final_validation_loss"] is not None else "-"
        print(f"{table[key].name:44s} {r['seconds_per_step']:7.3f} {r['seconds_per_evaluation']:7.2f} "
              f"{epoch_seconds(r):8.1f} {r['tokens_per_s']:9.0f} {r['useful_tflops_per_s']:8.3f} {mfu:>6s} "
              f"{r['peak_memory_mb']:8.0f} {val:>8s} {fmt(r['epoch_speedup_vs_book']):>8s} "
              f"{fmt(r['epoch_speedup_vs_hf']):>7s} {fmt(r['epoch_speedup_vs_trl']):>7s}")
    kind = f"measured (--full-epoch, {args.epochs} epoch(s))" if args.full_epoch else (
        f"{'extrapolated' if args.repeat > 1 else 'estimated'} from {args.steps} measured steps: {steps_per_epoch:,} "
        f"steps x s/step + {math.ceil(steps_per_epoch / args.eval_every):,} evaluations x s/eval")
    memory_kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS above pre-model baseline"
    print(f"(epoch s: {kind}; vs book / HF / TRL: epoch-time speed-ups, TRL at the same precision; TFLOP/s: useful "
          f"model FLOPs of the real tokens per second of training step; peak MB: {memory_kind}; val loss: after "
          f"training, the whole validation split; HF output head {'tied' if args.hf_tied else 'untied, like the book'})")
    if hf and len(results) > 1:
        print("training step only (no evaluation): " + ", ".join(
            f"{table[k].name} {r['step_speedup_vs_hf']:.2f}x vs HF" for k, r in results.items() if k != "hf"))
    for key, r in results.items():
        if r["compile_seconds"]:
            print(f"{table[key].name}: compilation took {r['compile_seconds']:.1f} s (not in the step times)")
        if r["setup_seconds"] is not None:
            print(f"{table[key].name}: building the trainer (its data preparation included) took "
                  f"{r['setup_seconds']:.1f} s (not in the times); collating took {r['collate_seconds_per_batch']:.4f} "
                  f"s/batch (in its step times; ours {data.collate_seconds_per_batch:.4f} s/batch, not in ours)")
    two_epochs = {table[k].name: 2 * epoch_seconds(r) / 60 for k, r in results.items()}
    print("2 epochs (the book's recipe) at this size: " + ", ".join(f"{n} {m:.2f} min" for n, m in two_epochs.items()))
    print(f"  for reference, {EXERCISE_7_3_REFERENCE if args.exercise_7_3 else BOOK_REFERENCE}")
    exercise = None
    if args.repeat > 1:
        exercise = {"entries": data.entries, "repeat": args.repeat, "batch_size": args.batch_size,
                    "max_length": args.allowed_max_length, "measured_steps": args.steps,
                    "steps_per_epoch": steps_per_epoch, "reference": EXERCISE_7_3_REFERENCE,
                    "epoch_minutes_extrapolated": {k: epoch_seconds(r) / 60 for k, r in results.items()}}
        print(f"{data.entries:,} entries, batch {args.batch_size}, max length {args.allowed_max_length}: one epoch "
              + ", ".join(f"{table[k].name} {m:.1f} min" for k, m in exercise["epoch_minutes_extrapolated"].items())
              + f" (extrapolated from {args.steps} measured steps)")
    for key, c in checks.items():
        print(f"loss check {table[key].name}: |loss - book mode| first batch at init {c['first_batch_abs_diff']:.1e}, "
              f"max over steps {c['max_abs_diff_over_steps']:.1e}, evaluations {c['max_abs_diff_evaluations']:.1e} "
              f"-> {'PASSED' if c['passed'] else 'FAILED'}")
    for key, r in results.items():
        if "max_abs_loss_diff_vs_book" in r and not table[key].exact:
            print(f"losses of {table[key].name} against book mode (another implementation, not checked): "
                  f"max |diff| over steps {r['max_abs_loss_diff_vs_book']:.1e}")
    parity_line = parity({k: r["validation_at_init"] for k, r in results.items()
                          if r["validation_at_init"] and not (args.hf_tied and k == "hf")},
                         {k: m.name for k, m in table.items()}, args.loss_tolerance)
    prep = data.report
    if prep:
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
        "batch_size": args.batch_size, "max_length": args.allowed_max_length, "mask_prompt": args.mask_prompt,
        "warmup_steps": args.warmup, "timed_steps": args.steps, "full_epoch": args.full_epoch,
        "epochs": args.epochs, "eval_every": args.eval_every, "eval_batches": args.eval_batches,
        "steps_per_epoch": steps_per_epoch, "data": source, "entries": data.entries,
        "padded_input_lengths": widths, "optimizer": "AdamW(lr=5e-5, weight_decay=0.1)",
        "hf_tied": args.hf_tied, "memory_measure": memory_kind, "training": results, "loss_checks": checks,
        "parity": parity_line, "two_epoch_minutes": two_epochs, "exercise_7_3": exercise,
        "book_reference": BOOK_REFERENCE, "data_preparation": prep, "generation": generation,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    failed = [table[k].name for k, c in checks.items() if not c["passed"]]
    if failed:
        print(f"loss check FAILED: {', '.join(failed)}", file=sys.stderr)
    if parity_line and not parity_line["passed"]:
        print("parity FAILED: the methods do not score the same validation targets with the same initial loss "
              "(data, prompt format or masking differ)", file=sys.stderr)
    if failed or (parity_line and not parity_line["passed"]):
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
