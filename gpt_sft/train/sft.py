"""Supervised fine-tuning as a training stage: the book's chapter 7.

Every optimizer step averages the cross-entropy over all target tokens of all micro-batches of that step on all
processes (a token-level mean), so gradient accumulation and data parallelism give the loss and the update of one
large batch. With batch 8 on one process this is exactly the book's per-batch ``cross_entropy``. The book's
evaluation: 5 train and 5 validation batches every 5 steps, and the losses before training.
"""

from __future__ import annotations

import contextlib
import itertools

import torch

from ..data.collator import IGNORE_INDEX, InstructionDataCollator
from ..data.load import load_instruction_data
from ..data.tokenize import tokenize_dataset
from .config import TrainConfig
from .loss import TrainingLoss, batch_losses
from .stage import Stage
from .state import say


class SFTStage(Stage):
    """Instruction fine-tuning: the instruction data, the book's collator and its token-level cross-entropy."""

    command = "train"
    config_type = TrainConfig

    def load(self):
        cfg = self.cfg
        loaded = load_instruction_data(cfg.data, skip_invalid=cfg.skip_invalid, return_stats=True,
                                       data_format=cfg.data_format)
        data_format = loaded[1].data_format
        if cfg.mask_prompt and data_format != "alpaca":  # the collator would not read it: say so, never ignore it
            raise ValueError(f"{cfg.data}: --mask-prompt masks the prompt of Alpaca entries, and this data holds "
                             f"conversations ({data_format}): choose what their loss covers with --train-on "
                             "(assistant, the default, leaves out every prompt; last; all)")
        return loaded

    def tokenize(self, split):
        cfg = self.cfg
        tokenized, stats = tokenize_dataset(
            split, style=cfg.prompt_style, allowed_max_length=cfg.allowed_max_length,
            overlong="drop" if cfg.drop_overlong else "truncate", keep_columns=False, return_stats=True,
            train_on=cfg.train_on,
        )
        # a conversation's loss mask travels with it (tokenize_dataset adds it to conversations only)
        return tokenized.with_format(columns=tokenized.column_names), stats

    def collator(self):
        return InstructionDataCollator(allowed_max_length=self.cfg.allowed_max_length, mask_prompt=self.cfg.mask_prompt)

    def loss_module(self, model):
        return TrainingLoss(model, self.cfg.loss_paths())

    def step(self, run, window: list[dict]) -> tuple[float, int]:
        accelerator, world = run.accelerator, run.accelerator.num_processes
        # Token-level mean over the whole optimizer step, on all processes: (targets, the book's
        # tokens_seen = padded input tokens), summed over processes.
        counts = torch.tensor([[int((b["labels"][:, 1:] != IGNORE_INDEX).sum()), b["input_ids"][:, :-1].numel()]
                               for b in window], device=accelerator.device).sum(0)
        counts = accelerator.reduce(counts, "sum") if world > 1 else counts
        n_global, tokens = counts[0], int(counts[1])
        total = torch.zeros((), device=accelerator.device)
        for i, batch in enumerate(window):
            sync = i == len(window) - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(run.loss):
                loss = run.loss(batch["input_ids"][:, :-1], batch["labels"][:, 1:], num_items_in_batch=n_global)
                # DDP averages gradients over processes; undo that to keep the global token mean.
                accelerator.backward(loss * world)
            total += loss.detach().float()
        return (accelerator.reduce(total, "sum").item() if world > 1 else total.item()), tokens

    def evaluate_loss(self, run, loader, num_batches: int) -> float:
        """Mean per-batch loss over the first ``num_batches`` batches (the book's ``calc_loss_loader``)."""
        run.model.eval()
        with torch.no_grad(), run.accelerator.autocast():  # the precision training runs in
            losses = batch_losses(run.model, list(itertools.islice(loader, num_batches)), run.paths)
        run.model.train()
        if not losses:
            return float("nan")
        mean = torch.stack(losses).mean()
        return run.accelerator.reduce(mean, "mean").item() if run.accelerator.num_processes > 1 else mean.item()

    def initial(self, run) -> None:
        """The losses before fine-tuning (the book prints them before it trains)."""
        state = run.state
        if state.initial_train_loss is None:
            state.initial_train_loss = self.evaluate_loss(run, run.data.train, run.cfg.eval_batches)
            state.initial_val_loss = self.evaluate_loss(run, run.data.val, run.cfg.eval_batches)
            say(run.accelerator, f"Initial losses: training loss {state.initial_train_loss:.3f}, "
                                 f"validation loss {state.initial_val_loss:.3f}")

    def evaluate(self, run, step: int, step_loss: float) -> None:
        """The book's periodic evaluation: ``eval_batches`` train and validation batches, logged."""
        cfg, state = run.cfg, run.state
        train_loss = self.evaluate_loss(run, run.data.train, cfg.eval_batches)
        val_loss = self.evaluate_loss(run, run.data.val, cfg.eval_batches)
        state.train_losses.append(train_loss)
        state.val_losses.append(val_loss)
        state.track_tokens_seen.append(state.tokens_seen)
        state.eval_steps.append(step)
        say(run.accelerator, f"Ep {state.epoch + 1} (Step {step:06d}): Train loss {train_loss:.3f}, "
                             f"Val loss {val_loss:.3f}")
        run.accelerator.log({"train/loss": train_loss, "val/loss": val_loss, "train/step_loss": step_loss,
                             "tokens_seen": state.tokens_seen, "lr": run.scheduler.get_last_lr()[0]}, step=step)


__all__ = ["SFTStage"]
