"""Judge score: summary statistics of per-entry LLM-judge scores (0-100), ``None`` meaning unscored.

This metric does not call a judge; scores come from ``gpt_sft.judge.score_responses`` (or anything
else). It reports what the book prints (``Number of scores: X of N``, ``Average score: Y``) plus
spread statistics.
"""

from __future__ import annotations

import math

import datasets
import evaluate

from gpt_sft.judge.scoring import summarize_scores

_DESCRIPTION = """\
Summary of LLM-judge scores (chapter 7.8 of "Build a Large Language Model From Scratch"): the mean
over scored entries (the book's "Average score"), how many entries were scored out of how many, and
the population standard deviation, median, min and max. An entry whose score is None (the judge's
reply could not be parsed, or the request failed) counts as unscored and is left out of the
statistics, as in the book. Empty model responses are expected to arrive already scored 0.
"""

_KWARGS_DESCRIPTION = """\
Args:
    scores (list of float or None): one judge score per entry, 0-100; None for an unscored entry.
Returns:
    mean (float or None): average over scored entries (None if none was scored).
    count (int): number of scored entries.
    total (int): number of entries.
    unscored (int): total - count.
    std (float or None): population standard deviation (ddof=0) of the scored entries.
    median, min, max (float or None).
Examples:
    >>> metric = evaluate.load(metric_path("judge_score"))
    >>> metric.compute(scores=[80, None, 60])["mean"]
    70.0
"""

_CITATION = """\
@book{raschka2024build,
  title={Build A Large Language Model (From Scratch)},
  author={Sebastian Raschka},
  publisher={Manning},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class JudgeScore(evaluate.Metric):
    """Mean and count of judge scores, ``None`` = unscored."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"scores": datasets.Value("float64")}),
        )

    def _compute(self, scores):
        # datasets stores an unscored entry (None) as NaN; the statistics are gpt-sft's judge report's own
        summary = summarize_scores([None if s is None or math.isnan(float(s)) else float(s) for s in scores])
        return {**summary, "unscored": summary["total"] - summary["count"],
                "median": None if summary["median"] is None else float(summary["median"])}
