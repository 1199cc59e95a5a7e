"""The preference-tuning plot: loss, rewards, reward margin and preference accuracy, train and
validation, against optimizer steps (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from .report import save_figure  # noqa: E402

# (panel title, figures drawn in it)
PANELS = (
    ("DPO loss", ("loss",)),
    ("Rewards", ("chosen_reward", "rejected_reward")),
    ("Reward margin (chosen - rejected)", ("margin",)),
    ("Preference accuracy", ("accuracy",)),
)


def plot_preference_figures(state, path_stem: Path) -> list[Path]:
    """Four panels from ``state.history`` (``train_loss``, ``val_margin``, ...) at ``state.eval_steps``,
    with the figures before tuning (``state.initial``) as the first point, at step -1 on the axis."""
    if not state.eval_steps:
        return []
    steps = ([-1] if state.initial else []) + list(state.eval_steps)
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, (title, names) in zip(axes.flat, PANELS):
        for name in names:
            for split, style in (("train", "-"), ("val", "-.")):
                key = f"{split}_{name}"
                values = ([state.initial[key]] if state.initial else []) + list(state.history.get(key, []))
                label = f"{'Training' if split == 'train' else 'Validation'} {name.replace('_', ' ')}"
                ax.plot(steps, values, linestyle=style, label=label)
        ax.set_title(title)
        ax.set_xlabel("Optimizer step (-1: before tuning)")
        ax.legend(fontsize="small")
    return save_figure(fig, path_stem, dpi=120)
