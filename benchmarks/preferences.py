#!/usr/bin/env python
"""Preference-tuning methods side by side, in one run, from the same SFT model on the same synthetic pairs.

The methods (each a ``gpt-sft`` command run in this process, into ``--work-dir/<method>``):

* ``dpo-frozen`` -- DPO, the reference a frozen copy of the SFT model (``gpt-sft dpo``);
* ``dpo-precomputed`` -- DPO, the reference's log-probs computed once before training (``--precompute-reference``);
* ``orpo-sft`` -- ORPO from the SFT model (``gpt-sft orpo``);
* ``orpo-base`` -- ORPO from the base model: the SFT model's own starting point (the offline demo starts from a
  fresh random GPT of its shape), no SFT stage;
* ``simpo`` -- SimPO (``gpt-sft simpo``).

The SFT model is the offline demo's (README, "Offline demo"): ``--sft-model`` names one, else it is trained here
first with ``scripts/recipes/demo-offline.yaml``. The pairs are the demo's synthetic ones
(``make_synthetic_preferences``: the right answer chosen, a plausible wrong one rejected), split 85/10/5 in file
order as every stage splits them.

Reported per method: the held-out figures, measured the same way for every method on the test split (never trained
on, never evaluated on during training) -- preference accuracy, the share of pairs whose chosen response gets the
higher mean token log-probability under the tuned model, and the margin, the mean of that difference (nats per
token); seconds per optimizer step (the run's training time over its steps: forward, backward, update; without the
set-up, so without the precomputed reference pass, which is reported beside it); and the peak memory above the level
before the run (CUDA: allocated; CPU: process RSS, sampled). The untuned SFT model's held-out figures come first.

    python benchmarks/preferences.py                 # the README's table
    python benchmarks/preferences.py --sft-model outputs/demo --steps 50
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, MemoryMeter, machine_load, trim_heap  # noqa: E402

from gpt_sft.cli.train import train  # noqa: E402
from gpt_sft.common.options import load_yaml_config  # noqa: E402
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences  # noqa: E402
from gpt_sft.data.recipe import checkpoint_style  # noqa: E402
from gpt_sft.data.split import split_dataset  # noqa: E402
from gpt_sft.data.synthetic import make_synthetic_instructions, make_synthetic_preferences  # noqa: E402
from gpt_sft.model.loading import load_model  # noqa: E402
from gpt_sft.train.config import TrainConfig  # noqa: E402
from gpt_sft.train.pair_loss import sequence_logprobs  # noqa: E402
from gpt_sft.train.stages import stage_class  # noqa: E402

DEMO_RECIPE = REPO_ROOT / "scripts" / "recipes" / "demo-offline.yaml"
# method -> (command, the model it starts from, its own options, what the table says of its reference)
METHODS = {
    "dpo-frozen": ("dpo", "sft", {}, "frozen copy"),
    "dpo-precomputed": ("dpo", "sft", {"precompute_reference": True}, "precomputed"),
    "orpo-sft": ("orpo", "sft", {}, "none"),
    "orpo-base": ("orpo", "base", {}, "none"),
    "simpo": ("simpo", "sft", {}, "none"),
}
# The learning rate of each method on the demo model: the README's DPO demo (1e-4) for the methods that tune the
# SFT model, the demo's SFT rate (1e-3) for ORPO from the base, which does the SFT stage's work too.
LEARNING_RATES = {"dpo-frozen": 1e-4, "dpo-precomputed": 1e-4, "orpo-sft": 1e-4, "orpo-base": 1e-3, "simpo": 1e-4}
# Architecture options a scratch-trained SFT model records, given again to build its base
ARCHITECTURE = ("model", "n_layers", "emb_dim", "n_heads", "context_length", "tie_word_embeddings", "drop_rate")


def train_demo_sft(folder: Path, steps: int | None) -> Path:
    """The offline demo's SFT model (``demo-offline.yaml`` on 700 synthetic instructions)."""
    data = folder / "demo-data.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(make_synthetic_instructions(700)))
    values = load_yaml_config(TrainConfig, DEMO_RECIPE)
    values.update(data=str(data), output_dir=str(folder / "demo"), sample_every_epoch=False, generate=False,
                  overwrite=True)
    if steps is not None:
        values["max_steps"] = steps
    return train(TrainConfig(**values))


@torch.no_grad()
def held_out(model_dir: Path, pairs, batch_size: int) -> dict:
    """Preference accuracy and mean margin of the mean token log-probs of ``pairs`` under the model in
    ``model_dir`` (LoRA merged), in its own prompt style."""
    model = load_model(str(model_dir), device="cpu", dtype="float32")
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    model.eval()
    style, _ = checkpoint_style(model_dir, None)
    tokens, _ = tokenize_preferences(pairs, style, model.config.n_positions)
    collate = PreferenceCollator(allowed_max_length=model.config.n_positions)
    differences = []
    for start in range(0, len(tokens), batch_size):
        batch = collate([tokens[i] for i in range(start, min(start + batch_size, len(tokens)))])
        chosen, rejected = sequence_logprobs(model, batch["input_ids"][:, :-1], batch["labels"][:, 1:]).chunk(2)
        differences += (chosen - rejected).tolist()
    return {"accuracy": sum(d > 0 for d in differences) / len(differences),
            "margin": sum(differences) / len(differences), "pairs": len(differences)}


def run_method(method: str, args, sft: Path, base: dict, pairs_file: Path) -> dict:
    command, start, own, reference = METHODS[method]
    model = {"model": str(sft)} if start == "sft" else base
    values = dict(data=str(pairs_file), output_dir=str(args.work_dir / method), batch_size=args.batch_size,
                  learning_rate=args.learning_rate or LEARNING_RATES[method], weight_decay=0.0, epochs=1000,
                  max_steps=args.steps, eval_every=0, eval_batches=1, generate=False, sample_every_epoch=False,
                  overwrite=True, seed=args.seed, **model, **own)
    cfg = stage_class(command).config_type(**values)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trim_heap()
    meter = MemoryMeter(device)
    meter.start()
    started = time.perf_counter()
    out = train(cfg)
    wall = time.perf_counter() - started
    peak = meter.stop()
    metrics = json.loads((out / "metrics.json").read_text())
    seconds = metrics["train_minutes"] * 60
    return {"method": method, "command": command, "starts_from": start, "reference": reference,
            "learning_rate": cfg.learning_rate, "steps": metrics["global_step"],
            "seconds_per_step": seconds / max(metrics["global_step"], 1), "setup_seconds": wall - seconds,
            "peak_memory_mb": peak / 2**20, "held_out": held_out(out, args.test_pairs, args.batch_size),
            "output_dir": str(out)}


def table(sft_row: dict, results: list[dict]) -> str:
    lines = ["| method | starts from | reference | lr | steps | held-out accuracy | held-out margin | s/step | "
             "set-up and save s | peak memory MB |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| SFT model, untuned | | | | | {sft_row['accuracy']:.3f} | {sft_row['margin']:.3f} | | | |"]
    for r in results:
        h = r["held_out"]
        lines.append(f"| {r['method']} | {r['starts_from']} | {r['reference']} | {r['learning_rate']:g} | "
                     f"{r['steps']} | {h['accuracy']:.3f} | {h['margin']:.3f} | {r['seconds_per_step']:.3f} | "
                     f"{r['setup_seconds']:.1f} | {r['peak_memory_mb']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-model", type=Path, help="the demo's SFT model (default: trained here first)")
    parser.add_argument("--demo-steps", type=int, help="train the demo SFT model for this many steps instead of the "
                        "recipe's (smoke runs)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "outputs" / "preferences-benchmark")
    parser.add_argument("--pairs", type=int, default=600, help="synthetic pairs (85/10/5 train/val/test)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per method")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, help="one rate for every method (default: each its own)")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; known: {', '.join(METHODS)}")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sft = args.sft_model or train_demo_sft(args.work_dir / "sft", args.demo_steps)
    recorded = json.loads((Path(sft) / "training_args.json").read_text())
    base = {name: recorded[name] for name in ARCHITECTURE if name in recorded}  # the SFT run's own starting point
    pairs_file = args.work_dir / "pairs.json"
    pairs_file.write_text(json.dumps(make_synthetic_preferences(args.pairs, seed=args.seed)))
    dataset, _ = load_preference_data(str(pairs_file))
    args.test_pairs = split_dataset(dataset, 0.85, 0.10)["test"]
    print(f"SFT model {sft} (base: {base.get('model')}); {args.pairs} synthetic pairs, {len(args.test_pairs)} held "
          f"out; batch {args.batch_size}, {args.steps} steps per method; {torch.get_num_threads()} threads on "
          f"{platform.processor() or platform.machine()}; load {machine_load()}", flush=True)
    sft_row = held_out(Path(sft), args.test_pairs, args.batch_size)
    results = []
    for method in methods:
        results.append(run_method(method, args, Path(sft), base, pairs_file))
        r = results[-1]
        print(f"  {method:<16} held-out accuracy {r['held_out']['accuracy']:.3f}, margin "
              f"{r['held_out']['margin']:.3f}; {r['seconds_per_step']:.3f} s/step, peak {r['peak_memory_mb']:.0f} MB",
              flush=True)
    print(table(sft_row, results))
    print(f"load after: {machine_load()}")
    if args.json:
        args.json.write_text(json.dumps({"sft_model": str(sft), "untuned": sft_row, "results": results,
                                         "args": {k: str(v) for k, v in vars(args).items() if k != "test_pairs"}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
