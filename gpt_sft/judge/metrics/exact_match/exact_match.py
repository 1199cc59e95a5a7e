"""Exact match of a model response against the reference output, after light normalisation."""

from __future__ import annotations

import re
import unicodedata

import datasets
import evaluate

_DESCRIPTION = """\
Fraction of predictions that equal their reference. By default both sides are normalised first:
Unicode NFKC, case-folded, every punctuation character (Unicode category P*) removed, and runs of
whitespace collapsed to one space with the ends stripped. So "The car is as fast as lightning." and
"the car is as fast as lightning" match; "lightning" and "a bolt of lightning" do not. Pass
normalize=False for a byte-exact comparison.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of str): model responses.
    references (list of str): reference outputs.
    normalize (bool, default True): apply the normalisation above.
Returns:
    exact_match (float): fraction in [0, 1] (0.0 for empty inputs).
Examples:
    >>> metric = evaluate.load(metric_path("exact_match"))
    >>> metric.compute(predictions=["Paris."], references=["paris"])
    {'exact_match': 1.0}
"""

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFKC, casefold, drop punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _WS.sub(" ", text).strip()


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    """Normalised exact match."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, normalize: bool = True):
        if not predictions:
            return {"exact_match": 0.0}
        prep = normalize_text if normalize else (lambda s: s)
        hits = sum(prep(p or "") == prep(r or "") for p, r in zip(predictions, references, strict=True))
        return {"exact_match": hits / len(predictions)}
