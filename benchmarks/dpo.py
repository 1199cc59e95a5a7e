#!/usr/bin/env python
"""Time per DPO step against an SFT step, side by side in one run, on a random model of ``--model-size``.

Each method runs the same optimizer (AdamW, fused where the trainer fuses it) with batch 8, on the
book's data: SFT on the first batches of ``instruction-data.json`` (8 examples a step), DPO on the
first batches of ``instruction-data-with-preference.json`` (8 pairs a step: 16 sequences, chosen and
rejected, Alpaca prompts masked). The DPO variants differ in where the reference log-probs come from:

* ``dpo-frozen`` -- a frozen copy of the model, one no-grad forward pass per step (the default);
* ``dpo-precomputed`` -- computed once before training (``--precompute-reference``): the step is
  the policy only;
* ``dpo-lora`` -- LoRA rank ``--lora-rank`` on every Linear; the reference is the model with its
  adapters off (no copy).

Reported per method: seconds per step (mean of ``--steps`` after ``--warmup``), sequences and tokens
per step, and the ratio to the SFT step. Random weights are fine for speed.

    python benchmarks/dpo.py                       # 124M, the table
    python benchmarks/dpo.py --model-size tiny --steps 1 --warmup 0    # smoke (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, gpt_config, machine_load  # noqa: E402

from gpt_sft.data.collator import InstructionDataCollator  # noqa: E402
from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences  # noqa: E402
from gpt_sft.data.synthetic import make_synthetic_instructions, make_synthetic_preferences  # noqa: E402
from gpt_sft.data.tokenize import tokenize_dataset  # noqa: E402
from gpt_sft.model.modeling_gpt import GPTForCausalLM  # noqa: E402
from gpt_sft.train.config import TrainConfig  # noqa: E402
from gpt_sft.train.dpo_loss import PreferenceLoss, sequence_logprobs  # noqa: E402
from gpt_sft.train.lora import apply_lora  # noqa: E402
from gpt_sft.train.loss import TrainingLoss  # noqa: E402

SHARED = REPO_ROOT.parent / "shared" / "data"
TINY = dict(n_embd=64, n_layer=2, n_head=2, n_positions=1024)
METHODS = ("sft", "dpo-frozen", "dpo-precomputed", "dpo-lora")


def batches(kind: str, count: int, batch_size: int) -> tuple[list[dict], str]:
    """The first ``count`` batches of the book's SFT or preference data (synthetic where absent)."""
    need = count * batch_size
    if kind == "sft":
        path = SHARED / "instruction-data.json"
        data = load_instruction_data(str(path)) if path.is_file() else make_synthetic_instructions(need)
        tokens = tokenize_dataset(load_instruction_data(data) if isinstance(data, list) else data, style="alpaca",
                                  keep_columns=False).select(range(need))
        collate = InstructionDataCollator(allowed_max_length=1024)
        rows = [{"input_ids": r["input_ids"]} for r in tokens]
    else:
        path = SHARED / "instruction-data-with-preference.json"
        source = str(path) if path.is_file() else make_synthetic_preferences(need)
        dataset, _ = load_preference_data(source)
        tokens, _ = tokenize_preferences(dataset.select(range(need)), "alpaca", 1024)
        collate = PreferenceCollator(allowed_max_length=1024)
        rows = list(tokens)
    where = str(path) if path.is_file() else "synthetic"
    return [collate(rows[i:i + batch_size]) for i in range(0, need, batch_size)], where


def make_model(args, seed: int = 123) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(gpt_config(args.model_size, TINY)).train()


def time_method(method: str, args, sft_batches, dpo_batches) -> dict:
    model = make_model(args)
    paths = TrainConfig().loss_paths()
    reference, loss_module = None, None
    if method == "sft":
        loss_module = TrainingLoss(model, paths)
    else:
        if method == "dpo-lora":
            model = apply_lora(model, TrainConfig(lora_rank=args.lora_rank, lora_alpha=None))
        elif method == "dpo-frozen":
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        loss_module = PreferenceLoss(model, paths, beta=0.1, reduction="mean")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-6, weight_decay=0.01, fused=True)
    data = sft_batches if method == "sft" else dpo_batches
    precomputed = []
    if method == "dpo-precomputed":  # once, before training: not part of the step
        with torch.no_grad():
            model.eval()
            precomputed = [sequence_logprobs(model, b["input_ids"][:, :-1], b["labels"][:, 1:]) for b in data]
            model.train()
    times, losses = [], []
    for i, batch in enumerate(data[: args.warmup + args.steps]):
        start = time.perf_counter()
        inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
        if method == "sft":
            loss = loss_module(inputs, targets)
        else:
            with torch.no_grad():
                if method == "dpo-precomputed":
                    ref = precomputed[i]
                elif method == "dpo-lora":
                    model.eval()
                    with model.disable_adapter():
                        ref = sequence_logprobs(model, inputs, targets)
                    model.train()
                else:
                    ref = sequence_logprobs(reference, inputs, targets)
            loss, _ = loss_module(inputs, targets, ref)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    used = data[args.warmup: args.warmup + args.steps]
    return {"method": method, "seconds_per_step": sum(times) / len(times),
            "sequences_per_step": sum(b["input_ids"].shape[0] for b in used) / len(used),
            "tokens_per_step": sum(b["input_ids"][:, :-1].numel() for b in used) / len(used),
            "trainable": sum(p.numel() for p in params), "first_loss": losses[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-size", default="124M", help="GPT-2 preset (124M, 355M, ...) or tiny")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    count = args.warmup + args.steps
    sft_batches, sft_source = batches("sft", count, args.batch_size)
    dpo_batches, dpo_source = batches("dpo", count, args.batch_size)
    print(f"model {args.model_size} (random), batch {args.batch_size}, {args.steps} timed steps after "
          f"{args.warmup}; {torch.get_num_threads()} threads on {platform.processor() or platform.machine()}; "
          f"load {machine_load()}\nSFT data: {sft_source}\nDPO data: {dpo_source}")
    results = []
    for method in args.methods.split(","):
        results.append(time_method(method.strip(), args, sft_batches, dpo_batches))
        r = results[-1]
        # Before any update the policy is its reference: every DPO variant's first loss is ln 2.
        check = "" if r["method"] == "sft" else (" PASSED" if abs(r["first_loss"] - math.log(2)) < 1e-5 else " FAILED")
        print(f"  {r['method']:<16} {r['seconds_per_step']:7.3f} s/step  {r['sequences_per_step']:4.0f} seq "
              f"{r['tokens_per_step']:7.0f} tok/step  {r['trainable']:,} trainable  first loss "
              f"{r['first_loss']:.6f}{check}", flush=True)
    sft = next((r for r in results if r["method"] == "sft"), None)
    if sft:
        print("ratio to the SFT step: " + ", ".join(f"{r['method']} {r['seconds_per_step'] / sft['seconds_per_step']:.2f}x"
                                                     for r in results if r is not sft))
    print(f"load after: {machine_load()}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
