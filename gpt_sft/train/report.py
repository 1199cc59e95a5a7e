"""What a training run reports: its metrics, the hardware it ran on, and the book's loss plot."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.ticker import EngFormatter, MaxNLocator  # noqa: E402

from .state import TrainerState  # noqa: E402


def plot_losses(state: TrainerState, steps_per_epoch: int, path_stem: Path) -> list[Path]:
    """The book's ``plot_losses``: train/val loss against epochs, tokens seen on a second x axis."""
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
    return save_figure(fig, path_stem, dpi=150)


def save_figure(fig, path_stem: Path, dpi: int) -> list[Path]:
    """``fig`` as ``<stem>.pdf`` and ``<stem>.png``, then closed."""
    fig.tight_layout()
    paths = [path_stem.with_suffix(".pdf"), path_stem.with_suffix(".png")]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def hardware_description(accelerator) -> str:
    if torch.cuda.is_available():
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(0)}"
    return (f"{accelerator.num_processes} process(es) on CPU ({platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores)")


def training_metrics(state: TrainerState, steps_per_epoch: int, accelerator, trainable: int, data_stats: dict) -> dict:
    """``metrics.json``: losses before and after, progress, time, hardware and what the data held."""
    return {
        "initial_train_loss": state.initial_train_loss, "initial_val_loss": state.initial_val_loss,
        "final_train_loss": state.train_losses[-1] if state.train_losses else None,
        "final_val_loss": state.val_losses[-1] if state.val_losses else None,
        "global_step": state.global_step, "epochs_trained": round(state.global_step / steps_per_epoch, 2),
        "tokens_seen": state.tokens_seen,
        "train_minutes": state.train_seconds / 60, "hardware": hardware_description(accelerator),
        "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "trainable_parameters": trainable,
        "data": data_stats,
        "history": {"step": state.eval_steps, "train_loss": state.train_losses, "val_loss": state.val_losses,
                    "tokens_seen": state.track_tokens_seen},
    }
