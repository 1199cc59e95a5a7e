"""Smoke test of scripts/benchmark.py (training step + data preparation benchmark, issue 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gpt_sft.synthetic_data import make_synthetic_instructions

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ["ours, book mode", "ours, optimised", "transformers GPT2LMHeadModel"]


def test_benchmark_script_tiny(tmp_path):
    data = tmp_path / "synthetic.json"
    data.write_text(json.dumps(make_synthetic_instructions(120, seed=0)))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--model-size", "tiny", "--steps", "2",
         "--warmup", "1", "--data", str(data), "--data-repeats", "1", "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "loss check" in proc.stdout and "PASSED" in proc.stdout

    summary = json.loads(out.read_text())
    for key in ("model_size", "threads", "batch_size", "timed_steps", "data", "training", "loss_check",
                "data_preparation", "memory_measure"):
        assert key in summary, key
    assert summary["model_size"] == "tiny" and summary["batch_size"] == 8 and summary["timed_steps"] == 2
    assert summary["data"] == str(data)
    assert set(summary["training"]) == set(METHODS)
    for method in METHODS:
        r = summary["training"][method]
        for key in ("seconds_per_step", "tokens_per_s", "peak_memory_mb", "speedup_vs_hf", "speedup_vs_book_mode",
                    "losses", "parameters"):
            assert key in r, (method, key)
        assert r["seconds_per_step"] > 0 and r["tokens_per_s"] > 0
        assert len(r["step_seconds"]) == 2 and len(r["losses"]) == 3
    check = summary["loss_check"]
    assert check["passed"] and check["first_batch_abs_diff"] < 1e-4
    assert check["max_abs_diff_over_steps"] < 1e-4
    # the book-mode and optimised runs start from the same weights and see the same batches
    book, opt = (summary["training"][m]["losses"] for m in METHODS[:2])
    assert abs(book[0] - opt[0]) < 1e-4
    prep = summary["data_preparation"]
    assert prep["entries"] == 102 and prep["tokenize_dataset"]["entries_per_s"] > 0
