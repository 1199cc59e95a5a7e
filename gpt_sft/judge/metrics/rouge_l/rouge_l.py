"""ROUGE-L F1 of model responses against reference outputs (``rouge_score`` package)."""

from __future__ import annotations

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = """\
Mean ROUGE-L F-measure (longest common subsequence of tokens) between each prediction and its
reference, computed with Google's rouge_score package (its default tokenizer: lower-cased,
non-alphanumeric characters treated as separators). No stemming by default, as in evaluate's
"rouge". An empty prediction or reference scores 0.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): model responses.
    references (list of str): reference outputs.
    use_stemmer (bool, default False): Porter-stem tokens first.
Returns:
    rougeL (float): mean F1 in [0, 1] (0.0 for empty inputs).
Examples:
    >>> metric = evaluate.load(metric_path("rouge_l"))
    >>> metric.compute(predictions=["the cat sat"], references=["the cat sat"])
    {'rougeL': 1.0}
"""

_CITATION = """\
@inproceedings{lin-2004-rouge,
    title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
    author = "Lin, Chin-Yew",
    booktitle = "Text Summarization Branches Out",
    year = "2004",
    pages = "74--81",
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RougeL(evaluate.Metric):
    """Mean ROUGE-L F1."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer: bool = False):
        if not predictions:
            return {"rougeL": 0.0}
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
        scores = [scorer.score(r or "", p or "")["rougeL"].fmeasure
                  for p, r in zip(predictions, references, strict=True)]
        return {"rougeL": sum(scores) / len(scores)}
