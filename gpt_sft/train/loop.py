"""The training loop with Accelerate, shared by every training stage: setup -> fit.

:func:`setup` builds a run for a :class:`~gpt_sft.train.stage.Stage` (threads, TF32, seed, the stage's data, the
model, the stage's loss module, the optimizer and scheduler, Accelerate's preparation, the resumed state);
:func:`fit` runs it (epochs, gradient accumulation, evaluation, checkpoints, interruptions, resuming, a NaN loss).
The stage says what one step and one evaluation compute; nothing here knows which stage it runs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..common.options import config_to_dict
from ..common.run_manifest import recording_new_entries
from ..data.conversation_format import entry_prompt
from ..model.configuration_gpt import GPTConfig, resolve_preset_name
from ..model.loading import load_pretrained, peek_context_length
from ..model.modeling_gpt import GPTForCausalLM
from ..model.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer
from .config import TrainConfig, too_long_message
from .data import TrainingData, load_splits, make_training_data, optimizer_steps_per_epoch, tokenize_splits
from .lora import apply_lora
from .loss import LossPaths, base_model
from .stage import Stage
from .stages import stage_of_config
from .state import (STATE_FILE, Interruptions, InterruptedRun, TrainerState, TrainingDiverged, capture_rng_state,
                    resolve_resume, restore_rng_state, save_training_checkpoint, say)


@dataclass
class Run:
    """Everything a training run holds. ``loss`` is what Accelerate prepared (the data-parallel wrapper around
    the stage's loss module); ``model`` the model being trained (a peft model with LoRA); ``stage`` the
    :class:`~gpt_sft.train.stage.Stage` that says what a step and an evaluation compute."""

    cfg: TrainConfig
    accelerator: Accelerator
    loss: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    data: TrainingData
    state: TrainerState
    stage: Stage

    @property
    def reference(self) -> torch.nn.Module | None:
        """The model a stage compares the policy against, if it keeps one (DPO's frozen copy)."""
        return getattr(self.stage, "reference", None)

    @property
    def paths(self) -> LossPaths:
        return self.cfg.loss_paths()


# --------------------------------------------------------------------------------------------------
# setup


def build_model(cfg: TrainConfig):
    """The model to fine-tune (a fresh random one for ``--model scratch``), with LoRA if asked for."""
    torch.manual_seed(cfg.seed)
    if cfg.model == "scratch":
        config = GPTConfig(
            n_embd=cfg.emb_dim, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_positions=cfg.context_length,
            drop_rate=cfg.drop_rate, tie_word_embeddings=bool(cfg.tie_word_embeddings),
        )
        model = GPTForCausalLM(config)
    else:
        # --model-format chooses where a preset's weights come from; any other source says what it is.
        fmt = cfg.model_format if resolve_preset_name(cfg.model) is not None else None
        model = load_pretrained(cfg.model, format=fmt, tie_word_embeddings=cfg.tie_word_embeddings,
                                drop_rate=cfg.drop_rate)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.lora_rank:
        model = apply_lora(model, cfg)
    if cfg.compile:
        compile_blocks(model)
    return model


def enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass. transformers 5.23 renamed
    ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old name warns). Non-reentrant
    checkpointing, whatever the version's default: the reentrant kind passes no gradient through a block whose inputs
    need none (LoRA's frozen embeddings), so the adapters inside it would never learn."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_blocks(model) -> None:
    """Regional ``torch.compile``: each transformer block compiled in place (the same code for all, so
    one compilation), dynamic shapes for the varying batch lengths. Parameter names stay unchanged."""
    for block in base_model(model).transformer.h:
        block.compile(dynamic=True)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """AdamW as in the book (every parameter decayed), fused into one kernel when ``cfg.fused_optimizer``."""
    return torch.optim.AdamW(list(params), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                             fused=True if cfg.fused_optimizer else None)


def make_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    name = {"constant": "constant_with_warmup"}.get(cfg.lr_scheduler, cfg.lr_scheduler)
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=max(total_steps, 1))


def cpu_threads(cfg: TrainConfig) -> int:
    """``cfg.cpu_threads``, or the CPU cores this process may use divided among the processes on this
    machine (``accelerate launch`` sets ``OMP_NUM_THREADS=1`` unless told ``--cpu``, which would leave
    all but one core idle)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, cores // max(local, 1))


def resolve_allowed_max_length(cfg: TrainConfig, context_length: int) -> None:
    """``--allowed-max-length`` defaults to the model's context; a longer one is an error now, not at the
    first evaluation. The value is written back into ``cfg`` (and so into ``training_args.json``)."""
    if cfg.allowed_max_length is None:
        cfg.allowed_max_length = context_length
    elif cfg.allowed_max_length > context_length:
        raise ValueError(too_long_message(cfg.allowed_max_length, context_length))


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    # Several processes (torchrun / accelerate launch) without a GPU: Accelerate only uses gloo data
    # parallelism when told it runs on the CPU; otherwise every process would train alone.
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(log_with=cfg.log_with, project_dir=str(cfg.output_dir), cpu=cpu_processes or None,
                       mixed_precision=cfg.mixed_precision)


def enable_tf32() -> None:
    """TensorFloat-32 matmuls and convolutions on NVIDIA GPUs (the flags are read by CUDA kernels only)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def setup(cfg: TrainConfig, accelerator: Accelerator, stage_type: type[Stage] | None = None) -> Run:
    """The run of ``stage_type`` (default: the stage whose options ``cfg`` is): its data, the model, its loss
    module, the optimizer, the scheduler, and the resumed state if ``cfg`` resumes."""
    stage = (stage_type or stage_of_config(cfg))(cfg)
    stage.check()  # an option the stage refuses, before anything is set
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg))
    if cfg.tf32:
        enable_tf32()
    set_seed(cfg.seed)
    stage.resolve()
    loaded = load_splits(stage)  # the data first: its errors come before a long model load
    context = cfg.context_length if cfg.model == "scratch" else peek_context_length(cfg.model)
    model = None
    if context is None:  # only the model tells its context: load it before tokenizing
        model = build_model(cfg)
        context = model.config.n_positions
    resolve_allowed_max_length(cfg, context)
    tokenized, stats = tokenize_splits(stage, loaded, accelerator.num_processes)
    if model is None:
        model = build_model(cfg)
    if model.config.n_positions < cfg.allowed_max_length:  # a peeked config that disagreed with the weights
        raise ValueError(too_long_message(cfg.allowed_max_length, model.config.n_positions))
    stage.attach(model, accelerator, tokenized)
    data = make_training_data(stage, loaded, tokenized, stats)
    say(accelerator, data.report)
    if stage.describe():
        say(accelerator, stage.describe())
    return prepare_run(cfg, accelerator, model, data, stage)


def prepare_run(cfg: TrainConfig, accelerator: Accelerator, model, data: TrainingData, stage: Stage) -> Run:
    """Optimizer, scheduler, Accelerate's preparation of the stage's loss module and the loaders, trackers, and the
    resumed state if ``cfg`` resumes."""
    # The book decays every parameter (AdamW(model.parameters(), weight_decay=0.1)).
    optimizer = make_optimizer(cfg, (p for p in model.parameters() if p.requires_grad))
    # before prepare(): each process will see ceil(batches / processes) of the loader's batches
    per_process = math.ceil(len(data.train) / accelerator.num_processes)
    steps = optimizer_steps_per_epoch(per_process, cfg) * cfg.epochs
    scheduler = make_scheduler(cfg, optimizer, min(steps, cfg.max_steps) if cfg.max_steps else steps)
    loss, optimizer, data.train, data.val, scheduler = accelerator.prepare(
        stage.loss_module(model), optimizer, data.train, data.val, scheduler)
    if cfg.log_with:  # a tracker's logs in the output folder (tensorboard's gpt-sft/) are the run's
        with recording_new_entries(cfg.output_dir, record=accelerator.is_main_process):
            accelerator.init_trackers("gpt-sft", config={k: str(v) for k, v in config_to_dict(cfg).items()})
    state = stage.state_type()
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    if resume is not None:
        try:
            accelerator.load_state(str(resume))
        except Exception as err:  # noqa: BLE001 - a cut or foreign file: one line naming the checkpoint
            raise ValueError(f"--resume-from-checkpoint {resume}: the checkpoint cannot be read ({type(err).__name__}: "
                             f"{err}); it may have been cut short: resume from an earlier step-* folder") from None
        warn_if_random_state_unreadable(accelerator, resume)
        state = stage.state_type(**json.loads((resume / STATE_FILE).read_text()))
        say(accelerator, f"Resumed from {resume} at epoch {state.epoch + 1}, step {state.global_step}")
    return Run(cfg, accelerator, loss, model, optimizer, scheduler, data, state, stage)


def warn_if_random_state_unreadable(accelerator: Accelerator, resume: Path) -> None:
    """Accelerate passes over a random-state file it cannot read: the run goes on, but no longer as the uninterrupted
    run would have (dropout, shuffling). Say so."""
    path = resume / f"random_states_{accelerator.process_index}.pkl"
    try:
        accelerate_load(path)
    except Exception as err:  # noqa: BLE001 - any failure to read it
        tqdm.write(f"Warning: {path} cannot be read ({type(err).__name__}): the resumed run goes on with fresh "
                   "random states, so it will not be identical to an uninterrupted run", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# the loop


def print_sample(run: Run, prompt: str, max_new_tokens: int = 50) -> None:
    """The book's ``generate_and_print_sample``: greedy continuation, newlines shown as spaces."""
    tok = get_tokenizer()
    model = run.model
    # a conversation's earlier answers end with <|endoftext|>, the token 50256 (Alpaca data never holds it)
    ids = torch.tensor([tok.encode(prompt, allowed_special={END_OF_TEXT})], device=run.accelerator.device)
    budget = base_model(model).config.n_positions - ids.shape[1]
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max(1, min(max_new_tokens, budget)), do_sample=False,
                             eos_token_id=END_OF_TEXT_ID, pad_token_id=END_OF_TEXT_ID)
    model.train()
    say(run.accelerator, tok.decode(out[0].tolist()).replace("\n", " "))


def fit(run: Run, interruptions: Interruptions) -> TrainerState:
    """Run the epochs; checkpoints on schedule and on Ctrl-C/SIGTERM; stops on a NaN loss."""
    cfg, accelerator, data, state = run.cfg, run.accelerator, run.data, run.state
    stage = run.stage
    total_steps = optimizer_steps_per_epoch(len(data.train), cfg) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    stage.initial(run)
    in_step, step_rng = False, None
    # disable=None: shown on a terminal, hidden in logs (and with TQDM_DISABLE=1)
    bar = tqdm(total=total_steps, initial=state.global_step, desc="training",
               disable=None if accelerator.is_main_process else True, dynamic_ncols=True)
    last_good: Path | None = None
    started = window_start = time.perf_counter()
    run.model.train()
    try:
        while state.epoch < cfg.epochs and not (cfg.max_steps and state.global_step >= cfg.max_steps):
            data.sampler.set_epoch(state.epoch)
            loader = data.train
            if hasattr(loader, "set_epoch"):
                loader.set_epoch(state.epoch)
            if state.micro_batches_in_epoch >= len(loader):
                # a checkpoint saved at the epoch's last step: the epoch is over (asked to skip every batch, Accelerate
                # 1.1's skip_first_batches gave None batches; newer ones give none)
                loader = []
            elif state.micro_batches_in_epoch:
                loader = accelerator.skip_first_batches(loader, state.micro_batches_in_epoch)
            batches = iter(loader)
            while window := [b for b in itertools.islice(batches, cfg.gradient_accumulation_steps)]:
                in_step, step_rng = True, capture_rng_state()
                loss, tokens = stage.step(run, window)
                if not math.isfinite(loss):
                    kept = f"; last good checkpoint: {last_good}" if last_good else ""
                    raise TrainingDiverged(
                        f"Loss became {loss} at epoch {state.epoch + 1}, step {state.global_step}: training stopped "
                        f"without saving this state{kept}. Try a lower --learning-rate, --max-grad-norm 1.0 or full "
                        "precision."
                    )
                with interruptions.critical():  # the update, its evaluation and its checkpoint happen whole
                    if cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(run.loss.parameters(), cfg.max_grad_norm)
                    run.optimizer.step()
                    run.scheduler.step()
                    run.optimizer.zero_grad(set_to_none=True)
                    state.micro_batches_in_epoch += len(window)
                    state.tokens_seen += tokens
                    step = state.global_step  # the book counts from 0
                    state.global_step += 1
                    in_step = False
                    elapsed = time.perf_counter() - window_start
                    bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
                    bar.update(1)
                    window_start = time.perf_counter()
                    if cfg.eval_every and step % cfg.eval_every == 0:
                        stage.evaluate(run, step, loss)
                    state.train_seconds += time.perf_counter() - started
                    started = time.perf_counter()
                    if cfg.save_every and state.global_step % cfg.save_every == 0:
                        last_good = save_training_checkpoint(accelerator, state, cfg.output_dir, cfg.keep_checkpoints)
                if interruptions.agreed(accelerator.num_processes):
                    raise InterruptedRun(interruptions.signum)
                if cfg.max_steps and state.global_step >= cfg.max_steps:
                    break
            if cfg.max_steps and state.global_step >= cfg.max_steps and state.micro_batches_in_epoch < len(data.train):
                break
            if cfg.sample_every_epoch and data.val_entries:
                print_sample(run, entry_prompt(data.val_entries[0], cfg.prompt_style))
            state.epoch += 1
            state.micro_batches_in_epoch = 0
    except KeyboardInterrupt:
        bar.close()
        if in_step:  # stopped inside a step: the checkpoint is the state from before it, to the random numbers
            run.optimizer.zero_grad(set_to_none=True)
            restore_rng_state(step_rng)
        with interruptions.deferred():
            path = save_training_checkpoint(accelerator, state, cfg.output_dir, cfg.keep_checkpoints)
        say(accelerator, f"Interrupted: saved a resumable checkpoint to {path}; continue with "
                         f"--resume-from-checkpoint {path}")
        raise
    finally:
        bar.close()
    return state


def trainable_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    return (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
