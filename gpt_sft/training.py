"""Instruction fine-tuning with Accelerate: the book's chapter 7 recipe, end to end.

``accelerate launch scripts/train.py`` with no arguments runs the book's recipe (gpt2-medium, the
book's data set, Alpaca prompts, batch 8, AdamW lr 5e-5 / weight decay 0.1, 2 epochs, seed 123,
evaluation of 5 train and 5 validation batches every 5 steps, a greedy sample after each epoch).
Every option is a field of :class:`TrainConfig`, settable by ``--kebab-case`` flag or YAML.

Shape: :func:`setup` (accelerator, model, data) -> :func:`fit` (the loop, checkpoints, resume)
-> :func:`finish` (final checkpoint folder, plot, model card, test-set responses, push).

Loss: every optimizer step averages the cross-entropy over all target tokens of all micro-batches
of that step on all processes (a token-level mean), so gradient accumulation and data parallelism
give the loss and the update of one large batch. With batch 8 on one process this is exactly the
book's per-batch ``cross_entropy``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from .atomic_io import atomic_directory, reporting_disk_full, write_json_atomic
from .command_errors import report_errors
from .config_cli import config_to_dict, parse_config

BOOK_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "c_proj", "c_fc", "lm_head"]
STATE_FILE = "trainer_state.json"


def _f(default, help: str, **extra):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Instruction fine-tuning of GPT-2 (the book's chapter 7 recipe by default)."""

    # --- model
    model: str = _f("gpt2-medium (355M)", "Preset name (124M, gpt2-medium, ...), Hub id, local HF GPT-2 folder, "
                    "OpenAI checkpoint folder, book .pth, our checkpoint folder, or 'scratch' for a fresh random model")
    model_format: str = _f("hf", "Where a preset's weights come from: 'hf' (Hugging Face Hub) or 'openai' (OpenAI's "
                           "TensorFlow checkpoints, the book's route; needs gpt-sft[tf]); folders and files are "
                           "recognised by their contents", choices=["hf", "openai"])
    n_layers: int = _f(12, "--model scratch: number of transformer blocks")
    emb_dim: int = _f(768, "--model scratch: embedding width")
    n_heads: int = _f(12, "--model scratch: attention heads")
    context_length: int = _f(1024, "--model scratch: context length")
    drop_rate: float = _f(0.0, "Dropout rate (the book uses 0.0 in chapter 7)")
    tie_word_embeddings: bool | None = _f(None, "Tie the output head to the token embedding. Default: a gpt-sft "
                                          "checkpoint keeps its own choice; anything else is untied, as in the book")
    # --- data
    data: str = _f(BOOK_DATA_URL, "Instruction data: URL, .json/.jsonl file or Hub data set name")
    prompt_style: str = _f("alpaca", "Prompt style: alpaca, phi3 or a registered one")
    mask_prompt: bool = _f(False, "Exclude the prompt tokens from the loss (exercise 7.2)")
    allowed_max_length: int | None = _f(None, "Longest training sequence in tokens; longer examples are truncated. "
                                        "Default: the model's context length (1024 for GPT-2, the book's value)")
    drop_overlong: bool = _f(False, "Drop over-long examples instead of truncating them (counted either way)")
    train_fraction: float = _f(0.85, "Fraction of the data for training (file order, like the book)")
    test_fraction: float = _f(0.10, "Fraction for the test split; the rest is validation")
    shuffle_split: bool = _f(False, "Shuffle (seeded) before splitting instead of keeping file order")
    skip_invalid: bool = _f(False, "Skip invalid entries (counted and reported) instead of failing")
    # --- optimisation
    epochs: int = _f(2, "Number of passes over the training split")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0: no limit)")
    batch_size: int = _f(8, "Micro-batch size per process")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step")
    learning_rate: float = _f(5e-5, "AdamW learning rate")
    weight_decay: float = _f(0.1, "AdamW weight decay")
    lr_scheduler: str = _f("constant", "Learning-rate schedule after warm-up", choices=["constant", "linear", "cosine"])
    warmup_steps: int = _f(0, "Linear warm-up steps")
    max_grad_norm: float = _f(0.0, "Clip the gradient norm to this value (0: no clipping, like the book)")
    seed: int = _f(123, "Random seed (model init, data order, dropout)")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory")
    # --- speed (the first three keep the book's loss and update, up to float round-off)
    targets_only_logits: bool = _f(True, "Apply the output layer only at positions that have a target (the loss "
                                   "ignores the rest); --no-targets-only-logits computes logits everywhere, like the book")
    padding_free: bool = _f(True, "Skip the padding after each example's last target in every layer (attention "
                            "stays per example; only with --targets-only-logits)")
    share_prompt_prefix: bool = _f(True, "Compute the tokens that every example of a batch starts with (the prompt "
                                   "template's preamble) once per batch, not once per example: same losses and "
                                   "gradients (only with --padding-free; not with dropout)")
    fused_optimizer: bool = _f(True, "Fused AdamW kernel (one pass over the parameters) instead of torch's default "
                               "multi-tensor AdamW that the book uses")
    mixed_precision: str | None = _f(None, "Autocast to bf16 or fp16 through Accelerate (changes the numbers; a GPU "
                                     "win, slow on CPUs without bf16 instructions). Default: what `accelerate launch "
                                     "--mixed_precision` / accelerate config say, else no", choices=["no", "bf16", "fp16"])
    tf32: bool = _f(False, "Allow TensorFloat-32 matmuls on NVIDIA GPUs (changes the numbers slightly)")
    cpu_threads: int = _f(0, "Threads per process when training on the CPU (0: this machine's cores divided among "
                          "its processes; `accelerate launch` alone would pin every process to 1 thread)")
    compile: bool = _f(False, "torch.compile each transformer block in place (regional compilation, dynamic "
                       "shapes); pays a compilation at the start")
    # --- evaluation and logging
    eval_every: int = _f(5, "Evaluate train/val loss every N optimizer steps (step 0 included)")
    eval_batches: int = _f(5, "Batches used for each train and val loss estimate")
    sample_every_epoch: bool = _f(True, "Print a greedy 50-token sample for the first validation prompt per epoch")
    log_with: str | None = _f(None, "Accelerate tracker, e.g. 'tensorboard' (written under the output dir)")
    # --- LoRA
    lora_rank: int = _f(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: float | None = _f(None, "peft lora_alpha; default 16 * rank, which equals the book's alpha=16 "
                                  "scaling (the book scales by alpha, peft by alpha / rank)")
    lora_dropout: float = _f(0.0, "LoRA dropout")
    lora_target_modules: list[str] = _f(LORA_ALL_LINEAR, "Modules that get LoRA adapters (default: every Linear)")
    merge_lora: bool = _f(True, "Merge LoRA into the weights when saving (else save the adapter)")
    # --- output
    output_dir: str = _f("outputs/gpt2-medium-sft", "Where the checkpoint folder and everything else goes")
    save_every: int = _f(0, "Save a resumable training checkpoint every N optimizer steps (0: only on Ctrl-C)")
    keep_checkpoints: int = _f(2, "How many periodic checkpoints to keep")
    resume_from_checkpoint: str | None = _f(None, "A checkpoint folder, or 'latest' in <output-dir>/checkpoints")
    overwrite: bool = _f(False, "Replace an earlier run in --output-dir (its checkpoint, responses, reports and "
                         "training checkpoints); without it a non-empty --output-dir is refused unless resuming")
    generate: bool = _f(True, "Generate test-set responses at the end (--no-generate skips it)")
    max_new_tokens: int = _f(256, "New tokens per test-set response")
    push_to_hub: str | None = _f(None, "Hub repo id to upload the final folder to (token from HF login/env)")
    hub_private: bool = _f(False, "Create the Hub repo as private")

    def __post_init__(self):
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        positive = ("epochs", "batch_size", "gradient_accumulation_steps", "n_layers",
                    "emb_dim", "n_heads", "context_length", "max_new_tokens", "eval_batches")
        for name in positive + (("allowed_max_length",) if self.allowed_max_length is not None else ()):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_every", "warmup_steps", "lora_rank", "eval_every", "cpu_threads",
                     "keep_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "drop_rate", "lora_dropout",
                     "train_fraction", "test_fraction") + (("lora_alpha",) if self.lora_alpha is not None else ()):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{flag(name)} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ValueError(f"--max-grad-norm must be >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        for name in ("drop_rate", "lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0.0 < self.train_fraction <= 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"--train-fraction must be in (0, 1] and --test-fraction in [0, 1), got "
                             f"{self.train_fraction} and {self.test_fraction}")
        if self.train_fraction + self.test_fraction > 1.0 + 1e-9:
            raise ValueError(f"--train-fraction {self.train_fraction} and --test-fraction {self.test_fraction} add up "
                             "to more than 1")
        if self.model == "scratch" and self.emb_dim % self.n_heads:
            raise ValueError(f"--emb-dim {self.emb_dim} is not divisible by --n-heads {self.n_heads}: every head "
                             f"gets emb_dim / n_heads dimensions (e.g. --n-heads {math.gcd(self.emb_dim, self.n_heads)})")
        if self.model == "scratch" and self.allowed_max_length is not None and self.allowed_max_length > self.context_length:
            raise ValueError(too_long_message(self.allowed_max_length, self.context_length))

    def forward_options(self) -> dict:
        """Keyword arguments of the model's loss forward that these speed switches select. Each switch
        builds on the one before: padding-free needs targets-only logits, a shared prefix padding-free."""
        padding_free = self.padding_free and self.targets_only_logits
        # LoRA dropout would otherwise be shared by the rows of a shared prefix
        share = self.share_prompt_prefix and padding_free and not (self.lora_rank and self.lora_dropout > 0)
        return {"loss_only": self.targets_only_logits, "padding_free": padding_free, "share_prefix": share}


def too_long_message(allowed_max_length: int, context_length: int) -> str:
    return (f"--allowed-max-length {allowed_max_length} is longer than the model's context of {context_length} tokens: "
            f"pass --allowed-max-length {context_length} or less (or leave it out: it defaults to the context length)")


# --------------------------------------------------------------------------------------------------
# setup


class EpochSampler(Sampler[int]):
    """Example order that depends only on ``(seed, epoch)``: a resumed run sees the same order."""

    def __init__(self, num_examples: int, shuffle: bool, seed: int):
        self.num_examples, self.shuffle, self.seed, self.epoch = num_examples, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.num_examples))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_examples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_examples


@dataclass
class TrainingData:
    train: DataLoader
    val: DataLoader
    val_entries: list[dict]
    test_entries: list[dict]
    sampler: EpochSampler
    report: str
    stats: dict = field(default_factory=dict)  # what was read, skipped, split and truncated (metrics.json)


def build_model(cfg: TrainConfig):
    """The model to fine-tune (a fresh random one for ``--model scratch``)."""
    from .configuration_gpt import GPTConfig
    from .modeling_gpt import GPTForCausalLM, enable_activation_checkpointing

    torch.manual_seed(cfg.seed)
    if cfg.model == "scratch":
        config = GPTConfig(
            n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_positions=cfg.context_length,
            drop_rate=cfg.drop_rate, tie_word_embeddings=bool(cfg.tie_word_embeddings),
        )
        model = GPTForCausalLM(config)
    else:
        from .configuration_gpt import resolve_preset_name
        from .weights import load_pretrained

        # --model-format chooses where a preset's weights come from; any other source says what it is.
        fmt = cfg.model_format if resolve_preset_name(cfg.model) is not None else None
        model = load_pretrained(cfg.model, format=fmt, tie_word_embeddings=cfg.tie_word_embeddings,
                                drop_rate=cfg.drop_rate)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.lora_rank:
        from peft import LoraConfig, get_peft_model

        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 16.0 * cfg.lora_rank
        targets = list(cfg.lora_target_modules)
        if model.config.tie_word_embeddings and "lm_head" in targets:
            # Merging an lm_head adapter into a head tied to wte would change the input embedding too.
            targets.remove("lm_head")
            print("LoRA: lm_head is tied to the token embedding, so it gets no adapter "
                  "(use --no-tie-word-embeddings, the book's choice, to adapt it)", file=sys.stderr)
        lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_rank, lora_alpha=alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets)
        model = get_peft_model(model, lora)
    if cfg.compile:
        compile_blocks(model)
    return model


def compile_blocks(model) -> None:
    """Regional ``torch.compile``: each transformer block compiled in place (the same code for all, so
    one compilation), dynamic shapes for the varying batch lengths. Parameter names stay unchanged."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for block in base.transformer.h:
        block.compile(dynamic=True)


def load_splits(cfg: TrainConfig):
    """Load and validate the data, and split it: ``(DatasetDict, LoadStats)``."""
    from .data import load_instruction_data, split_dataset

    dataset, load_stats = load_instruction_data(cfg.data, skip_invalid=cfg.skip_invalid, return_stats=True)
    splits = split_dataset(dataset, cfg.train_fraction, cfg.test_fraction, shuffle=cfg.shuffle_split, seed=cfg.seed)
    return splits, load_stats


def build_data(cfg: TrainConfig, num_processes: int = 1, loaded=None) -> TrainingData:
    """Tokenize the splits (``loaded``: :func:`load_splits`' result, else loaded now); the book's
    loaders (train shuffled, drop_last)."""
    from .collator import InstructionDataCollator
    from .data import tokenize_dataset

    splits, load_stats = loaded if loaded is not None else load_splits(cfg)
    tokenized, stats = {}, {}
    for name in ("train", "validation"):
        tokenized[name], stats[name] = tokenize_dataset(
            splits[name], style=cfg.prompt_style, allowed_max_length=cfg.allowed_max_length,
            overlong="drop" if cfg.drop_overlong else "truncate", keep_columns=False, return_stats=True,
        )
    collator = InstructionDataCollator(allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt)
    columns = ["input_ids", "prompt_length"]
    train_set = tokenized["train"].with_format(columns=columns)
    val_set = tokenized["validation"].with_format(columns=columns)
    if len(train_set) < cfg.batch_size * num_processes:
        raise ValueError(f"{cfg.data}: {len(train_set)} training examples are fewer than one batch "
                         f"({cfg.batch_size} x {num_processes} processes)")
    sampler = EpochSampler(len(train_set), shuffle=True, seed=cfg.seed)
    # Own generators: creating a loader iterator would otherwise draw from the global torch RNG, so a
    # resumed run (which creates its iterator at a different moment) would see other dropout masks.
    train = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, collate_fn=collator,
                       generator=torch.Generator().manual_seed(cfg.seed))
    val = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False, drop_last=False, collate_fn=collator,
                     generator=torch.Generator().manual_seed(cfg.seed))
    report = (f"data: {load_stats}; split {len(splits['train'])}/{len(splits['validation'])}/{len(splits['test'])} "
              f"train/val/test; train: {stats['train']}; val: {stats['validation']}")
    summary = {
        "source": load_stats.source, "entries_read": load_stats.num_read, "entries_loaded": load_stats.num_loaded,
        "entries_skipped": load_stats.num_skipped, "skipped_by_reason": dict(load_stats.skipped),
        "split": {name: len(splits[name]) for name in ("train", "validation", "test")},
        **{f"{name}_overlong": stats[name].num_overlong for name in ("train", "validation")},
        **{f"{name}_dropped": stats[name].num_dropped for name in ("train", "validation")},
    }
    return TrainingData(train, val, [dict(e) for e in splits["validation"]], [dict(e) for e in splits["test"]],
                        sampler, report, summary)


def optimizer_steps_per_epoch(num_batches: int, cfg: TrainConfig) -> int:
    """Optimizer steps in an epoch of ``num_batches`` micro-batches (a partial last window still steps)."""
    return max(1, math.ceil(num_batches / cfg.gradient_accumulation_steps))


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW as in the book (every parameter decayed), fused into one kernel when ``cfg.fused_optimizer``."""
    params = list(params)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             fused=True if cfg.fused_optimizer else None)


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(total_steps, 1))


# --------------------------------------------------------------------------------------------------
# the loop


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class InterruptedRun(KeyboardInterrupt):
    """Training was stopped by a signal (Ctrl-C or SIGTERM); the exit status is 128 + its number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_status = 128 + self.signum


@dataclass
class TrainerState:
    """Progress that a resumed run continues from (saved as ``trainer_state.json``)."""

    epoch: int = 0
    micro_batches_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    track_tokens_seen: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    initial_train_loss: float | None = None
    initial_val_loss: float | None = None
    train_seconds: float = 0.0


def batch_losses(model, batches: list[dict], forward_options: dict | None = None) -> list[torch.Tensor]:
    """The book's ``calc_loss_batch`` for each of ``batches`` (collator form), as 0-d float tensors.

    With ``padding_free`` the batches run as **one** forward pass (rows stacked; rows never see each
    other, padding costs nothing), which keeps the matrix products large, and each batch's mean is
    taken from the per-target losses: the same values up to float round-off, in less time.
    Call under ``torch.no_grad()``."""
    options = {"loss_only": True} if forward_options is None else dict(forward_options)
    if not (options.get("padding_free") and len(batches) > 1):
        return [model(input_ids=b["input_ids"][:, :-1], shift_labels=b["labels"][:, 1:], **options).loss.float()
                for b in batches]
    from .modeling_gpt import IGNORE_INDEX
    from .tokenizer import END_OF_TEXT_ID

    width = max(b["input_ids"].shape[1] for b in batches)
    inputs = torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1]), value=END_OF_TEXT_ID)
                        for b in batches])
    labels = torch.cat([F.pad(b["labels"], (0, width - b["labels"].shape[1]), value=IGNORE_INDEX) for b in batches])
    per_target = model(input_ids=inputs[:, :-1], shift_labels=labels[:, 1:], **options, loss_reduction="none").loss
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]  # row-major: batch by batch
    return [part.float().sum() / max(count, 1) for part, count in zip(per_target.split(counts), counts)]


def evaluate_loss(model, loader, num_batches: int, accelerator, forward_options: dict | None = None) -> float:
    """Mean per-batch loss over the first ``num_batches`` batches (the book's ``calc_loss_loader``).

    ``forward_options``: :meth:`TrainConfig.forward_options` (default: logits at targets only)."""
    model.eval()
    with torch.no_grad():
        losses = batch_losses(model, list(itertools.islice(loader, num_batches)), forward_options)
    model.train()
    if not losses:
        return float("nan")
    mean = torch.stack(losses).mean()
    return accelerator.reduce(mean, "mean").item() if accelerator.num_processes > 1 else mean.item()


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume_from_checkpoint:
        return None
    if cfg.resume_from_checkpoint == "latest":
        found = checkpoint_dirs(Path(cfg.output_dir))
        if not found:
            raise FileNotFoundError(f"--resume-from-checkpoint latest: no checkpoint in {cfg.output_dir}/checkpoints")
        return found[-1]
    path = Path(cfg.resume_from_checkpoint)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a training checkpoint (no {STATE_FILE})")
    return path


def save_training_checkpoint(accelerator, state: TrainerState, cfg: TrainConfig) -> Path:
    """Model, optimizer, scheduler, RNG states and :class:`TrainerState`, atomically, pruning old ones."""
    final = Path(cfg.output_dir) / "checkpoints" / f"step-{state.global_step:06d}"
    with reporting_disk_full("the training checkpoint", final):
        _save_training_checkpoint(accelerator, state, final)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and cfg.keep_checkpoints > 0:
        for old in checkpoint_dirs(Path(cfg.output_dir))[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _save_training_checkpoint(accelerator, state: TrainerState, final: Path) -> None:
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if accelerator.num_processes == 1:
        with atomic_directory(final) as tmp:
            accelerator.save_state(str(tmp), safe_serialization=True)
            write_json_atomic(tmp / STATE_FILE, dataclasses.asdict(state))
    else:  # every process writes its RNG state: share one staging folder, rename on the main process
        tmp = final.with_name(f".{final.name}.tmp")
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(tmp / STATE_FILE, dataclasses.asdict(state))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)


def _print(accelerator, *args, **kwargs):
    if accelerator.is_main_process:
        from tqdm.auto import tqdm

        tqdm.write(" ".join(str(a) for a in args), **kwargs)


def print_sample(accelerator, model, prompt: str, max_new_tokens: int = 50) -> None:
    """The book's ``generate_and_print_sample``: greedy continuation, newlines shown as spaces."""
    from .tokenizer import get_tokenizer

    tok = get_tokenizer()
    unwrapped = accelerator.unwrap_model(model)
    ids = torch.tensor([tok.encode(prompt)], device=accelerator.device)
    budget = unwrapped.config.n_positions - ids.shape[1]
    unwrapped.eval()
    with torch.no_grad():
        out = unwrapped.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max(1, min(max_new_tokens, budget)),
                                 do_sample=False, eos_token_id=50256, pad_token_id=50256)
    unwrapped.train()
    _print(accelerator, tok.decode(out[0].tolist()).replace("\n", " "))


class Interruptions:
    """Ctrl-C (SIGINT) and SIGTERM while training, so that no interruption loses or changes the run.

    The first signal lets the current optimizer step finish; the run then saves a resumable
    checkpoint at that step boundary and stops, and resuming from it is the same run. A second one
    stops at once: inside a step's forward and backward passes the step is abandoned (its gradients
    dropped, the random-number state put back to where the step began), and while the optimizer
    updates, evaluates or saves (a :meth:`critical` section) it waits for that to end. During
    :meth:`deferred` sections (the final save) every signal only waits. A SIGINT that was ignored
    when training started (a background job) stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator
        self.signum: int | None = None
        self.count = 0
        self._critical = 0
        self._deferred = 0
        self._pending = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "Interruptions":
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            if current is signal.SIG_IGN:
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum, self.count = signum, self.count + 1
        if self._deferred:
            _print(self.accelerator, f"\n{signal.Signals(signum).name}: finishing the final save first")
            return
        if self.count == 1:
            _print(self.accelerator, f"\n{signal.Signals(signum).name}: finishing the current step, then saving a "
                                     "resumable checkpoint (interrupt again to stop at once)")
            return
        if self._critical:
            self._pending = True
            return
        raise InterruptedRun(signum)

    @contextlib.contextmanager
    def critical(self):
        """A section that a second interruption lets finish before it stops the run."""
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if self._pending and not self._critical:
            self._pending = False
            raise InterruptedRun(self.signum)

    @contextlib.contextmanager
    def deferred(self):
        """A section that no interruption stops (the final save: it must be complete or not exist)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def agreed(self, world: int) -> bool:
        """Whether any process was asked to stop (every process then stops at the same step)."""
        if world == 1:
            return self.requested
        flag = torch.tensor([1 if self.requested else 0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "max").item())


def capture_rng_state() -> dict:
    """Every random-number state a training step draws from (dropout, sampling)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(cfg: TrainConfig, accelerator, model, optimizer, scheduler, data: TrainingData, state: TrainerState,
        interruptions: Interruptions | None = None):
    """Run the epochs; checkpoints on schedule and on Ctrl-C/SIGTERM; stops on a NaN loss."""
    from tqdm.auto import tqdm

    accum = cfg.gradient_accumulation_steps
    total_steps = optimizer_steps_per_epoch(len(data.train), cfg) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    world = accelerator.num_processes
    options = cfg.forward_options()

    if state.initial_train_loss is None:
        state.initial_train_loss = evaluate_loss(model, data.train, cfg.eval_batches, accelerator, options)
        state.initial_val_loss = evaluate_loss(model, data.val, cfg.eval_batches, accelerator, options)
        _print(accelerator, f"Initial losses: training loss {state.initial_train_loss:.3f}, "
                            f"validation loss {state.initial_val_loss:.3f}")

    own_interruptions = interruptions is None
    if own_interruptions:
        interruptions = Interruptions(accelerator).__enter__()
    in_step = False
    step_rng: dict | None = None
    # disable=None: shown on a terminal, hidden in logs (and with TQDM_DISABLE=1)
    bar = tqdm(total=total_steps, initial=state.global_step, desc="training",
               disable=None if accelerator.is_main_process else True,
               dynamic_ncols=True)
    last_good: Path | None = None
    started = time.perf_counter()
    window_tokens, window_start = 0, time.perf_counter()
    model.train()
    try:
        while state.epoch < cfg.epochs and not (cfg.max_steps and state.global_step >= cfg.max_steps):
            data.sampler.set_epoch(state.epoch)
            loader = data.train
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state.epoch)
            if state.micro_batches_in_epoch:
                loader = accelerator.skip_first_batches(loader, state.micro_batches_in_epoch)
            batches = iter(loader)
            while True:
                window = []
                for _ in range(accum):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    window.append(batch)
                if not window:
                    break
                in_step, step_rng = True, capture_rng_state()
                # Token-level mean over the whole optimizer step, on all processes.
                # (targets, the book's tokens_seen = padded input tokens), summed over processes
                counts = torch.tensor(
                    [[int((b["labels"][:, 1:] != -100).sum()), b["input_ids"][:, :-1].numel()] for b in window],
                    device=accelerator.device,
                ).sum(0)
                counts = accelerator.reduce(counts, "sum") if world > 1 else counts
                n_global, step_tokens = counts[0], int(counts[1])
                step_loss = torch.zeros((), device=accelerator.device)
                for i, batch in enumerate(window):
                    sync = i == len(window) - 1
                    ctx = contextlib.nullcontext() if sync else accelerator.no_sync(model)
                    with ctx:
                        out = model(input_ids=batch["input_ids"][:, :-1], shift_labels=batch["labels"][:, 1:],
                                    num_items_in_batch=n_global, **options)
                        # DDP averages gradients over processes; undo that to keep the global token mean.
                        accelerator.backward(out.loss * world)
                    step_loss += out.loss.detach().float()
                loss_value = accelerator.reduce(step_loss, "sum").item() if world > 1 else step_loss.item()
                if not math.isfinite(loss_value):
                    where = f"epoch {state.epoch + 1}, step {state.global_step}"
                    kept = f"; last good checkpoint: {last_good}" if last_good else ""
                    raise TrainingDiverged(
                        f"Loss became {loss_value} at {where}: training stopped without saving this state{kept}. "
                        "Try a lower --learning-rate, --max-grad-norm 1.0 or full precision."
                    )
                with interruptions.critical():  # the update, its evaluation and its checkpoint happen whole
                    if cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.micro_batches_in_epoch += len(window)
                    state.tokens_seen += step_tokens
                    window_tokens += step_tokens
                    step = state.global_step  # the book counts from 0
                    state.global_step += 1
                    in_step = False
                    elapsed = time.perf_counter() - window_start
                    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{window_tokens / max(elapsed, 1e-9):.0f}")
                    bar.update(1)
                    window_tokens, window_start = 0, time.perf_counter()

                    if cfg.eval_every and step % cfg.eval_every == 0:
                        train_loss = evaluate_loss(model, data.train, cfg.eval_batches, accelerator, options)
                        val_loss = evaluate_loss(model, data.val, cfg.eval_batches, accelerator, options)
                        state.train_losses.append(train_loss)
                        state.val_losses.append(val_loss)
                        state.track_tokens_seen.append(state.tokens_seen)
                        state.eval_steps.append(step)
                        _print(accelerator, f"Ep {state.epoch + 1} (Step {step:06d}): "
                                            f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                        accelerator.log({"train/loss": train_loss, "val/loss": val_loss, "train/step_loss": loss_value,
                                         "tokens_seen": state.tokens_seen, "lr": scheduler.get_last_lr()[0]}, step=step)
                    state.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    if cfg.save_every and state.global_step % cfg.save_every == 0:
                        last_good = save_training_checkpoint(accelerator, state, cfg)
                if interruptions.agreed(world):
                    raise InterruptedRun(interruptions.signum or signal.SIGINT)
                if cfg.max_steps and state.global_step >= cfg.max_steps:
                    break
            if cfg.max_steps and state.global_step >= cfg.max_steps and state.micro_batches_in_epoch < len(data.train):
                break
            if cfg.sample_every_epoch and data.val_entries:
                from .prompts import format_prompt

                print_sample(accelerator, model, format_prompt(data.val_entries[0], cfg.prompt_style))
            state.epoch += 1
            state.micro_batches_in_epoch = 0
    except KeyboardInterrupt:
        bar.close()
        if in_step:  # stopped inside a step: the checkpoint is the state from before it, to the random numbers
            optimizer.zero_grad(set_to_none=True)
            restore_rng_state(step_rng)
        with interruptions.deferred():
            path = save_training_checkpoint(accelerator, state, cfg)
        _print(accelerator, f"Interrupted: saved a resumable checkpoint to {path}; continue with "
                            f"--resume-from-checkpoint {path}")
        raise
    finally:
        bar.close()
        if own_interruptions:
            interruptions.__exit__(None, None, None)
    return state


# --------------------------------------------------------------------------------------------------
# outputs


def plot_losses(state: TrainerState, steps_per_epoch: int, path_stem: Path) -> list[Path]:
    """The book's ``plot_losses``: train/val loss against epochs, tokens seen on a second x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    if not state.train_losses:
        return []
    epochs_seen = [step / steps_per_epoch for step in state.eval_steps]
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, state.train_losses, label="Training loss")
    ax1.plot(epochs_seen, state.val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax2 = ax1.twiny()
    ax2.plot(state.track_tokens_seen, state.train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    ax2.xaxis.set_major_locator(MaxNLocator(5))
    ax2.xaxis.set_major_formatter(EngFormatter(sep=""))
    fig.tight_layout()
    paths = [path_stem.with_suffix(".pdf"), path_stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def hardware_description(accelerator) -> str:
    import platform

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return f"{accelerator.num_processes} x {name}"
    return f"{accelerator.num_processes} process(es) on CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# Files an earlier model's evaluation left in an output folder: never beside a new model.
STALE_EVALUATION_FILES = ("test-responses.json", "test-responses-judge-report.json",
                          "test-responses-judge-report.json.cache.jsonl")


def save_final(cfg: TrainConfig, accelerator, model, data: TrainingData, state: TrainerState):
    """Write the final checkpoint folder (weights, tokenizer, args, metrics, plot, card); return it and
    the model as saved (LoRA merged when ``merge_lora``). Responses and judge reports of an earlier
    model in the folder are removed first."""
    from .hub import render_model_card, save_checkpoint

    output_dir = Path(cfg.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    steps_per_epoch = optimizer_steps_per_epoch(len(data.train), cfg)
    trainable = sum(p.numel() for p in unwrapped.parameters() if p.requires_grad)
    if cfg.lora_rank and cfg.merge_lora:
        unwrapped = unwrapped.merge_and_unload()
    metrics = {
        "initial_train_loss": state.initial_train_loss, "initial_val_loss": state.initial_val_loss,
        "final_train_loss": state.train_losses[-1] if state.train_losses else None,
        "final_val_loss": state.val_losses[-1] if state.val_losses else None,
        "global_step": state.global_step, "epochs_trained": round(state.global_step / steps_per_epoch, 2),
        "tokens_seen": state.tokens_seen,
        "train_minutes": state.train_seconds / 60, "hardware": hardware_description(accelerator),
        "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "trainable_parameters": trainable,
        "data": data.stats,
        "history": {"step": state.eval_steps, "train_loss": state.train_losses, "val_loss": state.val_losses,
                    "tokens_seen": state.track_tokens_seen},
    }
    if accelerator.is_main_process:
        for name in STALE_EVALUATION_FILES:
            (output_dir / name).unlink(missing_ok=True)

        def extras(tmp: Path):
            plot_losses(state, steps_per_epoch, tmp / "loss-plot")
            (tmp / "README.md").write_text(render_model_card(cfg, metrics), encoding="utf-8")

        stage = output_dir / ".final-stage"
        with reporting_disk_full("the trained model", output_dir):
            save_checkpoint(unwrapped, stage, prompt_style=cfg.prompt_style,
                            extra_json={"training_args.json": config_to_dict(cfg), "metrics.json": metrics},
                            write_extra=extras)
            publish_folder(stage, output_dir)
    accelerator.wait_for_everyone()
    return output_dir, unwrapped


def generate_test_responses(cfg: TrainConfig, accelerator, model, data: TrainingData) -> Path | None:
    """The book's ``instruction-data-with-response.json``: greedy responses to the test split."""
    if not (cfg.generate and data.test_entries and accelerator.is_main_process):
        return None
    from .generation import GenerationSettings, add_responses, generate_responses
    from .tokenizer import get_tokenizer

    responses_path = Path(cfg.output_dir) / "test-responses.json"
    model.eval()
    responses = generate_responses(model, get_tokenizer(), data.test_entries,
                                   GenerationSettings(max_new_tokens=cfg.max_new_tokens, style=cfg.prompt_style))
    write_json_atomic(responses_path, add_responses(data.test_entries, responses), indent=4)
    _print(accelerator, f"Wrote {len(responses)} test-set responses to {responses_path}")
    return responses_path


def publish_folder(stage: Path, output_dir: Path) -> None:
    """Move the complete staged checkpoint's files into ``output_dir``, each with an atomic rename.

    ``config.json`` is removed first and moved last, so at no moment does ``output_dir`` look like a
    loadable checkpoint with a mix of old and new files.
    """
    stale = output_dir / "config.json"
    if stale.exists():
        stale.unlink()
    names = sorted(p.name for p in stage.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(stage / name, target)
    stage.rmdir()


# --------------------------------------------------------------------------------------------------
# entry point


# What a training run writes into its --output-dir (names and patterns); --overwrite removes these.
RUN_OUTPUTS = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors", "configuration_gpt.py", "modeling_gpt.py", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "adapter_config.json", "adapter_model.safetensors", "training_args.json", "metrics.json", "README.md",
    "loss-plot.pdf", "loss-plot.png", "checkpoints", "gpt-sft", *STALE_EVALUATION_FILES,
)
_LEFTOVER = re.compile(r"^\.(.+\.tmp(-\w+)?|.+\.old-\d+|final-stage.*)$")  # atomic_io's temporary names


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(output_dir: Path) -> list[Path]:
    """Remove the temporary folders of an interrupted save (``.NAME.tmp-*``, ``.final-stage*``...)."""
    found = []
    for folder in (output_dir, output_dir / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if _LEFTOVER.match(p.name)]
    for path in found:
        _remove(path)
    checkpoints = output_dir / "checkpoints"
    if found and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # it held only the leftovers
    return found


def prepare_output_dir(cfg: TrainConfig, resuming: bool, is_main_process: bool) -> list[str]:
    """Keep an output folder to one run: a folder that already holds files is refused unless the run
    resumes or ``--overwrite`` is given, which removes the earlier run's outputs first. Returns what
    to report (removed leftovers, files kept because gpt-sft did not write them)."""
    output_dir = Path(cfg.output_dir)
    if not output_dir.is_dir():
        return []
    notes = []
    if is_main_process:
        leftovers = remove_leftovers(output_dir)
        if leftovers:
            notes.append(f"removed {len(leftovers)} temporary folder(s) left by an interrupted save in {output_dir}")
    existing = sorted(p.name for p in output_dir.iterdir() if not _LEFTOVER.match(p.name))
    if not existing or resuming:
        return notes
    if not cfg.overwrite:
        shown = ", ".join(existing[:6]) + (f" ... ({len(existing)} in all)" if len(existing) > 6 else "")
        raise ValueError(
            f"--output-dir {output_dir} already holds files ({shown}): pass --overwrite to replace the run in it, "
            "--resume-from-checkpoint latest to continue it, or choose another --output-dir"
        )
    if is_main_process:
        ours = {p for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)}
        for path in ours:
            _remove(path)
        kept = sorted(set(existing) - {p.name for p in ours})
        notes.append(f"--overwrite: removed the earlier run's {len(ours)} output(s) from {output_dir}"
                     + (f"; kept {len(kept)} file(s) gpt-sft did not write: {', '.join(kept[:6])}" if kept else ""))
    return notes


def resolve_allowed_max_length(cfg: TrainConfig, context_length: int) -> None:
    """``--allowed-max-length`` defaults to the model's context; a longer one is an error now, not at the
    first evaluation. The value is written back into ``cfg`` (and so into ``training_args.json``)."""
    if cfg.allowed_max_length is None:
        cfg.allowed_max_length = context_length
    elif cfg.allowed_max_length > context_length:
        raise ValueError(too_long_message(cfg.allowed_max_length, context_length))


def setup(cfg: TrainConfig):
    """Accelerator, model, optimizer, scheduler, data, and the resumed state if any."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .weights import peek_context_length

    output_dir = Path(cfg.output_dir)
    resume = resolve_resume(cfg)
    # Several processes (torchrun / accelerate launch) without a GPU: Accelerate only uses gloo data
    # parallelism when told it runs on the CPU; otherwise every process would train alone.
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(log_with=cfg.log_with, project_dir=str(output_dir), cpu=cpu_processes or None,
                              mixed_precision=cfg.mixed_precision)
    for note in prepare_output_dir(cfg, resume is not None, accelerator.is_main_process):
        _print(accelerator, note)
    accelerator.wait_for_everyone()
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg))
    if cfg.tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(cfg.seed)
    loaded = load_splits(cfg)  # the data first: its errors come before a long model load
    context = cfg.context_length if cfg.model == "scratch" else peek_context_length(cfg.model)
    model = None
    if context is None:  # only the model tells its context: load it before tokenizing
        model = build_model(cfg)
        context = model.config.n_positions
    resolve_allowed_max_length(cfg, context)
    data = build_data(cfg, accelerator.num_processes, loaded)
    _print(accelerator, data.report)
    if model is None:
        model = build_model(cfg)
    if model.config.n_positions < cfg.allowed_max_length:  # a peeked config that disagreed with the weights
        raise ValueError(too_long_message(cfg.allowed_max_length, model.config.n_positions))
    # The book decays every parameter (AdamW(model.parameters(), weight_decay=0.1)).
    optimizer = make_optimizer(cfg, (p for p in model.parameters() if p.requires_grad))
    # before prepare(): each process will see ceil(batches / processes) of the loader's batches
    per_process = math.ceil(len(data.train) / accelerator.num_processes)
    steps = optimizer_steps_per_epoch(per_process, cfg) * cfg.epochs
    scheduler = make_scheduler(cfg, optimizer, min(steps, cfg.max_steps) if cfg.max_steps else steps)
    model, optimizer, data.train, data.val, scheduler = accelerator.prepare(model, optimizer, data.train, data.val, scheduler)
    if cfg.log_with:
        accelerator.init_trackers("gpt-sft", config={k: str(v) for k, v in config_to_dict(cfg).items()})
    state = TrainerState()
    if resume is not None:
        accelerator.load_state(str(resume))
        state = TrainerState(**json.loads((resume / STATE_FILE).read_text()))
        _print(accelerator, f"Resumed from {resume} at epoch {state.epoch + 1}, step {state.global_step}")
    return accelerator, model, optimizer, scheduler, data, state


def cpu_threads(cfg: TrainConfig) -> int:
    """``cfg.cpu_threads``, or the CPU cores this process may use divided among the processes on this
    machine (``accelerate launch`` sets ``OMP_NUM_THREADS=1`` unless told ``--cpu``, which would leave
    all but one core idle)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    import psutil

    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(local, 1))


def train(cfg: TrainConfig) -> Path:
    """Fine-tune as configured; returns the output folder.

    No interruption loses the trained model: one during training saves a resumable checkpoint, one
    during the final save waits for it to finish, one while generating test responses leaves the
    saved model and says how to generate them."""
    accelerator, model, optimizer, scheduler, data, state = setup(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    threads = f", {torch.get_num_threads()} threads" if accelerator.device.type == "cpu" else ""
    _print(accelerator, f"Training {trainable:,} of {total:,} parameters on {hardware_description(accelerator)}"
                        f"{threads}, mixed precision: {accelerator.mixed_precision}")
    with Interruptions(accelerator) as interruptions:
        state = fit(cfg, accelerator, model, optimizer, scheduler, data, state, interruptions)
        _print(accelerator, f"Training completed in {state.train_seconds / 60:.2f} minutes.")
        with interruptions.deferred():
            output_dir, final_model = save_final(cfg, accelerator, model, data, state)
        if interruptions.requested:
            _print(accelerator, f"Interrupted: the trained model is saved in {output_dir}; no test-set responses were "
                                f"generated (gpt-sft generate --model {output_dir} --data {cfg.data} --split test)")
            raise InterruptedRun(interruptions.signum)
    try:
        generate_test_responses(cfg, accelerator, final_model, data)
    except KeyboardInterrupt:
        _print(accelerator, f"Interrupted while generating test-set responses; the trained model is saved in "
                            f"{output_dir} (gpt-sft generate --model {output_dir} --data {cfg.data} --split test)")
        raise
    if cfg.push_to_hub and accelerator.is_main_process:
        from .hub import push_folder_to_hub

        url = push_folder_to_hub(output_dir, cfg.push_to_hub, private=cfg.hub_private)
        _print(accelerator, f"Pushed to {url}")
    accelerator.end_training()
    return output_dir


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft train`` / ``accelerate launch scripts/train.py``: errors are one line, Ctrl-C exits 130."""
    cfg = parse_config(TrainConfig, argv)
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack: a stuck run explains itself
        import faulthandler

        with contextlib.suppress(ValueError, OSError):  # stderr is no real file (captured): no stack dumps
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    train(cfg)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
