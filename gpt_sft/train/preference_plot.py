"""A preference stage's plot: its figures (loss, rewards or log-odds, margin, preference accuracy), train and
validation, against optimizer steps (PNG and PDF)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from .report import save_figure  # noqa: E402


def plot_preference_figures(state, path_stem: Path, panels) -> list[Path]:
    """One panel per ``(title, figure names)`` of ``panels``, from ``state.history`` (``train_loss``,
    ``val_margin``, ...) at ``state.eval_steps``, with the figures before tuning (``state.initial``) as the first
    point, at step -1 on the axis."""
    if not state.eval_steps:
        return []
    steps = ([-1] if state.initial else []) + list(state.eval_steps)
    columns = 2 if len(panels) > 1 else 1
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, names) in zip(axes.flat, panels):
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


__all__ = ["plot_preference_figures"]
