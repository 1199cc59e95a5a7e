"""``evaluate`` metric modules shipped with gpt-sft, loadable offline by path.

Each sub-folder holds ``<name>/<name>.py`` with an :class:`evaluate.Metric` subclass, which is the
layout ``evaluate.load`` (0.4.x) expects for a local module: ``evaluate.load(metric_path("rouge_l"))``
copies the script into ``$HF_HOME/modules/evaluate_modules`` and imports it, without any network
access. The scripts use no relative imports (``judge_score`` reuses ``gpt_sft.judge.scoring``).

* ``judge_score``: mean/count/std of given per-entry judge scores (``None`` = unscored); it does
  not call a judge (see :mod:`gpt_sft.judge`).
* ``exact_match``: normalised exact match of prediction vs reference.
* ``rouge_l``: ROUGE-L F1 (``rouge_score`` package).
"""

from __future__ import annotations

from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("judge_score", "exact_match", "rouge_l")

__all__ = ["METRICS_DIR", "METRIC_NAMES", "metric_path", "load_metric"]


def metric_path(name: str) -> str:
    """The folder of the packaged metric ``name``, for ``evaluate.load(metric_path(name))``."""
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown gpt-sft metric {name!r}; choose one of {METRIC_NAMES}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs):
    """``evaluate.load`` of the packaged metric ``name`` (local files only, no Hub access)."""
    return evaluate.load(metric_path(name), **kwargs)
