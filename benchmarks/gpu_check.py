#!/usr/bin/env python
"""The GPU check in one call: the book's chapter 7 recipe timed beside its peers, Exercise 7.3's size, the 110
test responses, and peak memory per size, each measured side by side with book mode in the same run, written as
JSON and Markdown.

It runs the benchmarks (``training.py`` twice, ``generation.py``, ``memory.py``) as subprocesses, each
with its own time limit so that one slow part cannot take the others' time, and merges what they
report into ``gpu-check.json`` and ``gpu-check.md`` in ``--out`` (``$OUT`` on the device machine):

* training: the book's whole recipe (2 epochs, measured) at ``--size`` (the book's gpt2-medium) for book mode
  (fp32), our defaults, transformers' ``GPT2LMHeadModel`` in a plain loop, TRL's ``SFTTrainer`` (fp32 and bf16),
  and our defaults with bf16, TF32 and ``torch.compile``: wall time, tokens/s, peak memory, final validation
  loss, MFU, the speed-up over book mode and over TRL (at the same precision), the loss check against book
  mode and the parity line (every method scores the same validation targets with the same initial loss);
* Exercise 7.3's size: 52,800 entries (the book's 1,100 x 48), batch 4, max length 512, our defaults with
  bf16 at ``--size``: the epoch extrapolated from 30 measured steps;
* generation: the 110 test responses, our batched KV-cache path against ``model.generate`` and the
  book's loop;
* memory: peak memory of a training step, full fine-tuning and LoRA, at 355M, 774M and 1558M.

``--dry-run`` runs the same steps on a tiny model on the CPU in seconds (the part that can be tested
without a GPU). It leaves out what tests/test_benchmark.py runs in its own process, at no extra process's cost:
TRL's method, the validation loss with the parity line, and Exercise 7.3's size (its table row included). No figure is ever filled in that a step did not measure: a step that fails or runs out
of time is reported as such, with the end of its output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def steps(args: argparse.Namespace, out: Path) -> list[tuple[str, list[str], int]]:
    """``(name, command, seconds allowed)`` of each measurement."""
    py = [sys.executable]
    if args.dry_run:
        return [
            ("training", py + ["benchmarks/training.py", "--model-size", "tiny", "--steps", "2", "--warmup", "1",
                               "--eval-every", "2", "--eval-batches", "1", "--methods", "book", "gpt-sft",
                               "--device", "cpu", "--threads", "1", "--no-generation", "--data-repeats", "1",
                               "--no-validation-loss", "--json", str(out / "training.json")], 300),
            ("generation", py + ["benchmarks/generation.py", "--model-size", "tiny", "--n-prompts", "4",
                                 "--book-prompts", "1", "--repeats", "1", "--with-transformers", "--device", "cpu",
                                 "--threads", "1", "--json", str(out / "generation.json")], 300),
            ("memory", py + ["benchmarks/memory.py", "--sizes", "tiny", "--device", "cpu", "--threads", "1",
                             "--json", str(out / "memory.json")], 300),
        ]
    # Time on an H100/H200, from FLOPs: an epoch of the recipe at 355M is ~0.12 PFLOP of training (935 entries x
    # 57 tokens x 6 x 355M) and ~0.1 PFLOP of evaluation (24 x 10 batches): ~10 s in fp32 (~25-40 TFLOP/s at these
    # small shapes), ~4 s in bf16, so 2 epochs of the 6 fp32-class and 2 bf16 methods ~140 s, plus ~5 s to build
    # each model, ~60 s to compile and ~15 s to start: ~250 s. Exercise 7.3's fraction (33 steps of 4 entries,
    # ~7 evaluations, 52,800 entries prepared) ~30 s. With generation and memory, ~7 min in all.
    return [
        ("training", py + ["benchmarks/training.py", "--model-size", args.size, "--full-epoch", "--epochs", "2",
                           "--methods", "book", "gpt-sft", "hf", "trl", "bf16", "trl-bf16", "tf32", "compile",
                           "--device", "cuda", "--no-generation", "--json", str(out / "training.json")], 300),
        ("exercise-7-3", py + ["benchmarks/training.py", "--model-size", args.size, "--exercise-7-3", "--methods",
                               "bf16", "--steps", "30", "--warmup", "3", "--device", "cuda",
                               "--json", str(out / "exercise-7-3.json")], 60),
        ("generation", py + ["benchmarks/generation.py", "--model-size", args.size, "--with-transformers",
                             "--device", "cuda", "--json", str(out / "generation.json")], 90),
        ("memory", py + ["benchmarks/memory.py", "--sizes", "355M", "774M", "1558M", "--device", "cuda",
                         "--json", str(out / "memory.json")], 120),
    ]


def run_step(name: str, command: list[str], limit: int, out: Path) -> dict:
    """Run one measurement; its JSON, or why there is none."""
    start = time.perf_counter()
    print(f"== {name}: {' '.join(command[1:])} (at most {limit} s)", flush=True)
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        status = "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
        tail = (result.stdout + result.stderr)[-3000:]
    except subprocess.TimeoutExpired as err:
        status, tail = f"did not finish in {limit} s", str(err.stdout or "")[-3000:]
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(tail, encoding="utf-8")
    data_file = out / f"{name}.json"
    data = json.loads(data_file.read_text()) if status == "ok" and data_file.is_file() else None
    print(f"   {status} in {seconds:.1f} s", flush=True)
    return {"status": status, "seconds": seconds, "data": data, "output_tail": None if data else tail}


def hardware() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        return f"CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}"
    except ImportError:  # pragma: no cover - torch is always there
        return platform.platform()


def _fmt(value, digits: int = 2, unit: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def table(report: dict) -> str:
    """The Markdown table: every figure with its hardware, time and ratios against book mode and TRL."""
    hw = report["hardware"]
    lines = [f"# GPU check ({'dry run, ' if report['dry_run'] else ''}{hw})", "",
             "| figure | hardware | time | vs book mode (same run) | vs TRL (same run, same precision) | notes |",
             "|---|---|---:|---:|---:|---|"]
    steps = report["steps"]

    def failed(name: str) -> None:
        if name in steps:
            lines.append(f"| {name} | {hw} | – | – | – | {steps[name]['status']} |")

    if steps["training"]["data"]:
        t = steps["training"]["data"]
        checks = t.get("loss_checks", {})
        parity = t.get("parity") or {}
        kind = "measured" if t.get("full_epoch") and t.get("epochs") == 2 else "2 x one epoch"
        for name, r in t["training"].items():
            two = 2 * (r.get("epoch_seconds_measured") or r["epoch_seconds_estimated"]) / 60  # as training.py
            check = checks.get(name)
            note = (f"{_fmt(r.get('tokens_per_s'), 0)} tokens/s, peak {_fmt(r.get('peak_memory_mb'), 0)} MB, "
                    f"final val loss {_fmt(r.get('final_validation_loss'), 4)}, {_fmt(r['seconds_per_step'], 4)} s/step, "
                    f"MFU {_fmt(r.get('mfu'), 3)}")
            if check is not None:
                note += ", losses " + ("equal book mode" if check.get("passed") else "DIFFER from book mode")
            if name in parity.get("losses", {}):
                note += ", parity " + ("passed" if parity.get("passed") else "FAILED")
            lines.append(f"| training {t['model_size']}, 2 epochs ({kind}): {name} | {hw} | {_fmt(two, 3)} min | "
                         f"{_fmt(r.get('epoch_speedup_vs_book'), 2, 'x')} | {_fmt(r.get('epoch_speedup_vs_trl'), 2, 'x')} "
                         f"| {note} |")
    else:
        failed("training")
    exercise = steps.get("exercise-7-3", {})
    if exercise.get("data"):
        e = exercise["data"]
        x = e["exercise_7_3"]
        for name, r in e["training"].items():
            lines.append(f"| Exercise 7.3's size, {e['model_size']}, 1 epoch (extrapolated from {x['measured_steps']} "
                         f"measured steps): {name} | {hw} | {_fmt(x['epoch_minutes_extrapolated'][name], 1)} min | – | – | "
                         f"{x['entries']:,} entries (the book's x {x['repeat']}), batch {x['batch_size']}, max length "
                         f"{x['max_length']}, {x['steps_per_epoch']:,} steps/epoch, {_fmt(r['seconds_per_step'], 4)} "
                         f"s/step, {_fmt(r.get('tokens_per_s'), 0)} tokens/s, peak {_fmt(r.get('peak_memory_mb'), 0)} MB |")
    else:
        failed("exercise-7-3")
    if steps["generation"]["data"]:
        g = steps["generation"]["data"]
        for name, r in g["results"].items():
            lines.append(f"| {g['n_prompts']} test responses, {g['model_size']}: {name} | {hw} | {_fmt(r['seconds'])} s | "
                         f"{_fmt(r['speedup_vs_book'], 2, 'x')} | – | {_fmt(r['new_tokens_per_s'], 0)} new tokens/s"
                         f"{' (book estimated)' if r.get('estimated') else ''} |")
    else:
        failed("generation")
    if steps["memory"]["data"]:
        for row in steps["memory"]["data"]["rows"]:
            lines.append(f"| peak memory {row['size']} {row['method']} | {hw} | {_fmt(row.get('seconds_per_step'), 3)} s/step "
                         f"| – | – | {_fmt(row.get('peak_step_mb'), 0)} MB peak, {row.get('status', '')} |")
    else:
        failed("memory")
    if steps["training"]["data"] and steps["training"]["data"].get("book_reference"):
        lines += ["", f"For reference, {steps['training']['data']['book_reference']}."]
    if exercise.get("data"):
        lines += ["", f"For reference, {exercise['data']['exercise_7_3']['reference']}."]
    lines += ["", f"Total: {report['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"),
                        help="folder for gpu-check.json, gpu-check.md and each step's JSON and log (default: $OUT)")
    parser.add_argument("--size", default="355M", help="model size of the training and generation figures")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU: checks the script, no figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = {"dry_run": args.dry_run, "hardware": hardware(), "size": "tiny" if args.dry_run else args.size,
              "steps": {}}
    for name, command, limit in steps(args, args.out):
        report["steps"][name] = run_step(name, command, limit, args.out)
    report["seconds"] = time.perf_counter() - start
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    markdown = table(report)
    (args.out / "gpu-check.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0 if all(s["status"] == "ok" for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
