#!/usr/bin/env python
"""Peak memory of one training step, full fine-tuning and LoRA, at each GPT-2 size that fits.

For every ``--sizes`` entry and both methods -- full fine-tuning and LoRA (``--lora-rank``, default
16, on every Linear, exactly as ``gpt_sft.train.lora`` sets it up: ``lora_alpha = 16 * rank``, no
dropout, targets ``LORA_ALL_LINEAR``) -- a randomly initialised ``GPTForCausalLM`` (the book's
untied output head) does ``--steps`` (default 2) training steps with the trainer's defaults on one batch:
``batch_loss(model, batch["input_ids"][:, :-1], batch["labels"][:, 1:], TrainConfig().loss_paths())``
(logits at targets only, padding-free), ``backward()``, ``make_optimizer(TrainConfig(), ...).step()`` (fused
AdamW, lr 5e-5, weight decay 0.1) over the trainable parameters. Two steps,
because the first AdamW step allocates the optimizer state (m and v); the peak is over all of them.

The batch is the worst case for memory: the ``--batch-size`` (default 8) *longest* examples of the
train split of the book's data (``../shared/data/instruction-data.json``; synthetic entries from
``gpt_sft.data.synthetic`` if that file is missing -- the output says which), tokenized with the
Alpaca prompt and collated by ``InstructionDataCollator`` as the trainer does (allowed_max_length 1024).

Each (size, method) is measured in its own, fresh subprocess (this script with a hidden ``--worker``
flag, which prints one JSON line back), so no measurement inherits another's heap. Reported per row:

* trainable parameters;
* weights MB: memory right after building the model (and adding the LoRA adapters), above the
  level just before it was built;
* peak step MB: the peak during the training steps, above the same level -- weights, gradients,
  AdamW state, activations and the temporaries of the backward pass;
* s/step: wall time of the last step (the first one also allocates the optimizer state);
* status: ``ok``, ``does not fit: needs ~X GB, Y GB available`` (not run), or ``failed: ...`` (the
  worker died, e.g. killed by the kernel's OOM killer, or raised).

Memory is, on CPU, the process RSS sampled every 2 ms by a background thread with psutil (torch
allocates outside Python, so tracemalloc does not see it, and ``ru_maxrss`` is a lifetime maximum)
minus the RSS before the model was built; on CUDA, ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats`` minus ``memory_allocated`` before the model was built (what PyTorch's
allocator hands out; ``nvidia-smi`` shows more: the CUDA context and the allocator's cache).

Before starting a worker the memory it needs is estimated (full fine-tuning: parameters x 4 bytes x 4
-- weights, gradients, Adam m and v -- plus an activation allowance; LoRA: the frozen weights plus 16
bytes per adapter parameter plus the activation allowance; see ``estimate_bytes``; plus 0.5 GB for
the worker process itself) and compared with 90 % of ``--max-memory-gb``
(default: ``psutil.virtual_memory().available``, or the free GPU memory on CUDA). A size that does not
fit is not run. The estimate (``estimated_mb``, with the 0.5 GB) is in the JSON next to the measurement.

    python benchmarks/memory.py --sizes 124M 355M --json mem.json
    python benchmarks/memory.py                       # 124M 355M 774M 1558M, those that fit
    python benchmarks/memory.py --sizes tiny          # smoke (seconds)
    python benchmarks/memory.py --device cuda --sizes 124M 355M 774M 1558M
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

import datasets  # noqa: E402
import psutil  # noqa: E402
from common import DEFAULT_DATA, REPO_ROOT, MemoryMeter, gpt_config, load_entries, trim_heap  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from gpt_sft import GPTForCausalLM  # noqa: E402
from gpt_sft.data.collator import InstructionDataCollator  # noqa: E402
from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.split import split_dataset  # noqa: E402
from gpt_sft.data.tokenize import tokenize_dataset  # noqa: E402
from gpt_sft.train.config import LORA_ALL_LINEAR, TrainConfig  # noqa: E402
from gpt_sft.train.loop import make_optimizer  # noqa: E402
from gpt_sft.train.loss import batch_loss  # noqa: E402
if importlib.util.find_spec("gpt_sft") is None:  # running from a clone without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

DEFAULT_SIZES = ["124M", "355M", "774M", "1558M"]
TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1025}
ALLOWED_MAX_LENGTH = 1024  # the trainer's default
METHODS = ("full", "lora")
FIT_MARGIN = 0.9  # run a worker only if its estimate is below this fraction of the memory limit
PROCESS_OVERHEAD = 0.5 * 2**30  # the worker's own interpreter, torch and peft (not part of the figures)
RESULT_PREFIX = "@@benchmark_memory@@ "
MB, GB = 2**20, 2**30


# ------------------------------------------------------------------------------------------- helpers


def make_config(size: str):
    return gpt_config(size, TINY)


def lora_config(rank: int):
    """The trainer's LoRA set-up (gpt_sft.train.lora; the default head is untied)."""
    return LoraConfig(task_type="CAUSAL_LM", r=rank, lora_alpha=16.0 * rank, lora_dropout=0.0,
                      target_modules=list(LORA_ALL_LINEAR))


def method_label(method: str, rank: int) -> str:
    return "full" if method == "full" else f"LoRA r={rank}"


# ------------------------------------------------------------------------------------------- data


def worst_case_batch(entries: list[dict], batch_size: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The ``batch_size`` longest examples of the train split, tokenized and collated as the trainer does."""
    datasets.disable_progress_bars()
    train = split_dataset(load_instruction_data(entries, progress=False))["train"]
    tokenized = tokenize_dataset(train, style="alpaca", allowed_max_length=ALLOWED_MAX_LENGTH,
                                 overlong="truncate", keep_columns=False)
    examples = tokenized.with_format(columns=["input_ids", "prompt_length"])
    if len(examples) < batch_size:
        raise SystemExit(f"the train split has {len(examples)} examples, fewer than one batch of {batch_size}")
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    longest = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:batch_size]
    collate = InstructionDataCollator(allowed_max_length=ALLOWED_MAX_LENGTH, mask_prompt=False)
    batch = collate([examples[i] for i in longest])
    return batch, [lengths[i] for i in longest]


# ------------------------------------------------------------------------------------------- estimate


def count_parameters(size: str, lora_rank: int) -> dict[str, int]:
    """Total, LoRA-adapter and full-FT trainable parameter counts, from a model built on the meta device."""
    with torch.device("meta"):
        model = GPTForCausalLM(make_config(size))
    total = sum(p.numel() for p in model.parameters())
    adapter = 0
    for name, module in model.named_modules():  # peft matches a list of targets by module-name suffix
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_ALL_LINEAR:
            adapter += lora_rank * (module.in_features + module.out_features)
    return {"total": total, "lora": adapter}


def estimate_bytes(size: str, method: str, params: dict[str, int], batch_shape: tuple[int, int]) -> int:
    """A generous estimate of the peak memory a worker measures, plus the worker's own overhead.

    State: full fine-tuning 16 bytes per parameter (fp32 weights, gradients, Adam m and v); LoRA 4
    bytes per frozen weight plus 16 per adapter parameter. On top of it the larger of (a) the
    optimizer step's temporaries (at most about one fp32 copy of the trainable parameters; the fused AdamW needs less)
    and (b) the activation allowance -- activations are freed by the backward pass before
    ``optimizer.step()``, and the gradients of the previous step are freed (``set_to_none``) before
    the forward. Activations (fp32), all times 1.25: per block about 24 x B x T x d saved for the
    backward pass (layer norms, q/k/v, attention output, the 4d-wide MLP twice...) plus two B x heads
    x T x T attention matrices (in case SDPA takes its math path); the output head 4 x B x T x vocab
    (logits, log-softmax, their gradients), and with LoRA on ``lm_head`` 3 more (the adapter's
    logits-sized output and its gradients). On 124M with the book's data (CPU, GB = 2**30 bytes) this
    is 3.9 GB for full fine-tuning (measured 3.2) and 2.7 GB for LoRA (measured 2.4), before the 0.5 GB
    of the worker process.
    """
    config = make_config(size)
    B, T = batch_shape[0], batch_shape[1] - 1
    d, h, L, V = config.n_embd, config.n_head, config.n_layer, config.vocab_size
    head = 4 + (3 if method == "lora" else 0)
    activations = 4 * (L * (24 * B * T * d + 2 * B * h * T * T) + head * B * T * V) * 1.25
    trainable = params["total"] if method == "full" else params["lora"]
    frozen = 0 if method == "full" else params["total"]
    state = frozen * 4 + trainable * 4 * 4  # (frozen weights) + weights, gradients, Adam m and v
    state += max(trainable * 4, activations)
    return int(state + PROCESS_OVERHEAD)


def memory_limit(device: torch.device, max_memory_gb: float | None) -> tuple[int, str]:
    if max_memory_gb is not None:
        return int(max_memory_gb * GB), "--max-memory-gb"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), "free GPU memory (torch.cuda.mem_get_info)"
    return int(psutil.virtual_memory().available), "available RAM (psutil.virtual_memory().available)"


# ------------------------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    """Measure one (size, method) in this process; the parent reads the returned dict as JSON."""
    device = torch.device(spec["device"])
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    batch = torch.load(spec["batch_path"], weights_only=True)
    batch = {k: v.to(device) for k, v in batch.items()}
    inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
    if device.type == "cuda":
        torch.cuda.init()
    trim_heap()

    meter = MemoryMeter(device)
    meter.start()
    try:
        torch.manual_seed(spec["seed"])
        model = GPTForCausalLM(make_config(spec["size"]))
        if spec["method"] == "lora":
            model = get_peft_model(model, lora_config(spec["lora_rank"]))
        model = model.to(device).train()
        total = sum(p.numel() for p in model.parameters())
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        trim_heap()
        weights = meter.current()
        build_peak = meter.peak()
        defaults = TrainConfig()
        optimizer = make_optimizer(defaults, trainable)  # the trainer's: fused AdamW, lr 5e-5, wd 0.1

        meter.reset_peak()
        losses, times = [], []
        for _ in range(spec["steps"]):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, inputs, targets, defaults.loss_paths())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        peak = meter.peak()
    finally:
        meter.stop()
    return {
        "total_params": total, "trainable_params": n_trainable,
        "weights_mb": weights / MB, "peak_step_mb": peak / MB, "build_peak_mb": build_peak / MB,
        "seconds_per_step": times[-1], "step_seconds": times, "losses": losses,
        "threads": torch.get_num_threads(),
    }


def _worker_main(spec_json: str) -> None:
    try:
        result = worker(json.loads(spec_json))
    except BaseException as err:  # report it to the parent rather than a bare traceback
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}" + (" (out of memory?)" if -returncode == signal.SIGKILL else "")
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"exit code {returncode}" + (f": {last[-1].strip()[:200]}" if last else "")


def run_worker(spec: dict, timeout: float | None) -> dict:
    """Run :func:`worker` in a fresh Python process; ``{"error": ...}`` if it dies or gives no result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"error": _reason(proc.returncode, proc.stderr)}


# ------------------------------------------------------------------------------------------- main


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def print_table(rows: list[dict]) -> None:
    header = (f"{'size':6s} {'method':10s} {'trainable':>10s} {'weights MB':>11s} {'peak step MB':>13s} "
              f"{'s/step':>8s}  status")
    print(header)
    print("-" * len(header))
    for r in rows:
        num = lambda key, f: f.format(r[key]) if r.get(key) is not None else "-"  # noqa: E731
        print(f"{r['size']:6s} {r['method']:10s} {_fmt_params(r.get('trainable_params')):>10s} "
              f"{num('weights_mb', '{:.0f}'):>11s} {num('peak_step_mb', '{:.0f}'):>13s} "
              f"{num('seconds_per_step', '{:.3f}'):>8s}  {r['status']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES,
                        help="GPT-2 sizes (124M 355M 774M 1558M, or any preset alias), tiny for a smoke test")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="training steps per measurement (>= 2: the first "
                        "AdamW step allocates the optimizer state)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="instruction data JSON (default: the book's; synthetic entries if not found)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in the workers")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="memory limit to compare the estimates with (default: the available RAM, or the "
                             "free GPU memory); a row whose estimate exceeds 90%% of it is not run")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker_main(args.worker)
        return {}
    if args.steps < 1 or args.batch_size < 1 or args.lora_rank < 1:
        parser.error("--steps, --batch-size and --lora-rank must be >= 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    for size in args.sizes:
        try:
            make_config(size)
        except ValueError as err:
            parser.error(str(err))

    entries, source = load_entries(args.data, args.seed)
    batch, lengths = worst_case_batch(entries, args.batch_size)
    shape = tuple(batch["input_ids"].shape)
    n_targets = int((batch["labels"][:, 1:] != -100).sum())
    machine = {
        "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
        "cpu_count": os.cpu_count(), "total_ram_gb": psutil.virtual_memory().total / GB,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch_threads": args.threads or torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine.update(gpu=props.name, gpu_memory_gb=props.total_memory / GB)
    memory_measure = ("torch.cuda.max_memory_allocated above memory_allocated before the model was built"
                      if device.type == "cuda" else
                      "process RSS sampled every 2 ms (psutil) above the RSS before the model was built")
    batch_note = (f"the {args.batch_size} longest train examples (the worst case for memory), padded input "
                  f"length {shape[1] - 1} tokens ({n_targets} targets)")
    print(f"device: {device}, torch {torch.__version__}, {machine['cpu_count']} CPUs, "
          f"{machine['total_ram_gb']:.1f} GB RAM" + (f", {machine['gpu']}" if device.type == "cuda" else ""))
    print(f"data: {source}")
    print(f"batch: {batch_note}")
    print(f"step: the trainer's defaults (logits at targets only, padding-free, fused AdamW lr 5e-5 wd 0.1), "
          f"forward + backward + optimizer, {args.steps} steps, peak over all; "
          f"each measurement in a fresh process", flush=True)

    rows = []
    with tempfile.TemporaryDirectory(prefix="gpt-sft-mem-") as tmp:
        batch_path = Path(tmp) / "batch.pt"
        torch.save(batch, batch_path)
        for size in args.sizes:
            params = count_parameters(size, args.lora_rank)
            for method in args.methods:
                label = method_label(method, args.lora_rank)
                needs = estimate_bytes(size, method, params, shape)
                limit, limit_source = memory_limit(device, args.max_memory_gb)
                row = {"size": size, "method": label, "lora_rank": args.lora_rank if method == "lora" else None,
                       "total_params": params["total"],
                       "trainable_params": params["total"] if method == "full" else params["lora"],
                       "weights_mb": None, "peak_step_mb": None, "seconds_per_step": None,
                       "estimated_mb": needs / MB, "memory_limit_gb": limit / GB, "memory_limit_source": limit_source}
                if needs > FIT_MARGIN * limit:
                    row["status"] = f"does not fit: needs ~{needs / GB:.1f} GB, {limit / GB:.1f} GB available"
                else:
                    print(f"  measuring {size} {label} ...", flush=True)
                    spec = {"size": size, "method": method, "lora_rank": args.lora_rank, "device": str(device),
                            "steps": args.steps, "seed": args.seed, "threads": args.threads,
                            "batch_path": str(batch_path)}
                    result = run_worker(spec, args.timeout)
                    if "error" in result:
                        row["status"] = f"failed: {result['error']}"
                    else:
                        row.update(result)
                        row["status"] = "ok"
                rows.append(row)

    print()
    print_table(rows)
    print(f"(weights MB: after building the model; peak step MB: peak during the steps -- weights, gradients, "
          f"AdamW state, activations; both {memory_measure}; s/step: the last step)")

    summary = {
        "machine": machine, "memory_measure": memory_measure, "data": source, "batch": batch_note,
        "batch_size": args.batch_size, "batch_shape": list(shape), "example_lengths": lengths,
        "num_targets": n_targets, "steps": args.steps, "lora_rank": args.lora_rank,
        "optimizer": "AdamW(lr=5e-5, weight_decay=0.1, fused=True)", "fit_margin": FIT_MARGIN, "rows": rows,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
