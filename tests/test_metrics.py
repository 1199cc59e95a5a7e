"""The packaged ``evaluate`` metric modules load by path, offline, and compute known values.

``evaluate.load(folder)`` (evaluate 0.4.x) copies ``folder/<name>.py`` into
``$HF_HOME/modules/evaluate_modules`` and imports it; conftest points ``HF_HOME`` at a temp dir and
sets ``HF_HUB_OFFLINE``. These tests also block every outgoing socket connection while loading, to
show that no network is touched.
"""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

evaluate = pytest.importorskip("evaluate")

from gpt_sft.judge.scoring import compute_text_metrics  # noqa: E402
from gpt_sft.judge.metrics import METRIC_NAMES, metric_path  # noqa: E402


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly if anything tries to open a non-local socket connection."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "localhost", "::1") and not str(host).startswith("/"):
            raise AssertionError(f"network access attempted: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError(f"network access attempted: {a!r}")))


@pytest.fixture(scope="module")
def metrics():
    return {name: evaluate.load(metric_path(name)) for name in METRIC_NAMES}


def test_metric_paths_have_the_layout_evaluate_expects():
    for name in METRIC_NAMES:
        folder = metric_path(name)
        assert os.path.isfile(os.path.join(folder, f"{name}.py"))
    with pytest.raises(ValueError, match="unknown gpt-sft metric"):
        metric_path("bleu")


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_load_by_path_offline(name, no_network):
    module = evaluate.load(metric_path(name))
    assert isinstance(module, evaluate.Metric)
    assert module.name == name


def test_judge_score(metrics):
    m = metrics["judge_score"]
    r = m.compute(scores=[80, None, 60, 0])
    assert r["count"] == 3 and r["total"] == 4 and r["unscored"] == 1
    assert r["mean"] == pytest.approx(140 / 3)
    assert r["median"] == 60 and r["min"] == 0 and r["max"] == 80
    assert r["std"] == pytest.approx((((80 - 140 / 3) ** 2 + (60 - 140 / 3) ** 2 + (140 / 3) ** 2) / 3) ** 0.5)
    none = m.compute(scores=[None, None])
    assert none["mean"] is None and none["count"] == 0 and none["unscored"] == 2
    assert m.compute(scores=[])["total"] == 0
    assert m.compute(scores=[55])["std"] == 0.0


def test_exact_match(metrics):
    m = metrics["exact_match"]
    preds = ["The car is as fast as lightning", "  PARIS!  ", "blue", "", "a  b"]
    refs = ["The car is as fast as lightning.", "paris", "Blue sky", "", "a b"]
    assert m.compute(predictions=preds, references=refs)["exact_match"] == pytest.approx(4 / 5)
    assert m.compute(predictions=preds, references=refs, normalize=False)["exact_match"] == pytest.approx(1 / 5)
    assert m.compute(predictions=["\uff21"], references=["a"])["exact_match"] == 1.0  # NFKC full-width A


def test_rouge_l(metrics):
    m = metrics["rouge_l"]
    assert m.compute(predictions=["the cat sat"], references=["the cat sat"])["rougeL"] == 1.0
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 1, R = 1/2, F1 = 2/3
    r = m.compute(predictions=["the cat sat", "completely different"],
                  references=["the cat sat on the mat", "nothing shared"])
    assert r["rougeL"] == pytest.approx((2 / 3 + 0.0) / 2)
    # LCS ignores order breaks: "a b c d" vs "a x c y": LCS = 2, P = R = 1/2
    assert m.compute(predictions=["a b c d"], references=["a x c y"])["rougeL"] == pytest.approx(0.5)
    assert m.compute(predictions=[""], references=["x"])["rougeL"] == 0.0
    assert m.compute(predictions=["running fast"], references=["run fast"], use_stemmer=True)["rougeL"] == 1.0


def test_compute_text_metrics_on_book_format():
    entries = [
        {"instruction": "i", "input": "", "output": "The car is as fast as lightning.",
         "model_response": "the car is as fast as lightning"},
        {"instruction": "i", "input": "", "output": "the cat sat on the mat", "model_response": "the cat sat"},
        {"instruction": "i", "input": "", "output": "x", "model_response": None},
    ]
    result = compute_text_metrics(entries, "model_response")
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["rougeL"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
