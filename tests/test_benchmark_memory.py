"""Tests of benchmarks/memory.py (peak memory of a training step, full fine-tuning and LoRA)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "memory.py"
RANK = 16


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def tiny_counts(r: int = RANK) -> tuple[int, int]:
    """(all parameters, LoRA parameters for rank r on every Linear) of the tiny model, from its config."""
    from gpt_sft import GPTConfig

    c = GPTConfig(n_embd=64, n_layer=2, n_head=4, n_positions=1025)
    d, inner, V, P, L = c.n_embd, c.n_inner or 4 * c.n_embd, c.vocab_size, c.n_positions, c.n_layer
    qkv_bias = d if c.qkv_bias else 0
    block = 2 * 2 * d + 3 * (d * d + qkv_bias) + (d * d + d) + (d * inner + inner) + (inner * d + d)
    total = V * d + P * d + L * block + 2 * d + d * V  # wte, wpe, blocks, ln_f, untied lm_head (no bias)
    # LoRA adds A (r x i) and B (o x r) to each Linear: q, k, v, attn c_proj, c_fc, mlp c_proj, lm_head
    linears = L * [(d, d)] * 4 + L * [(d, inner), (inner, d)] + [(d, V)]
    lora = sum(r * (i + o) for i, o in linears)
    return total, lora


def test_tiny_full_and_lora_measured(gpu_check_dry_run):
    """``memory.py --sizes tiny`` (on the CPU, one thread), as the GPU check's dry run ran it: each measurement in
    a worker process of its own."""
    assert (gpu_check_dry_run / "exit-status").read_text() == "0", (gpu_check_dry_run / "output.log").read_text()
    summary = json.loads((gpu_check_dry_run / "memory.json").read_text())

    rows = summary["rows"]
    assert [(r["size"], r["method"]) for r in rows] == [("tiny", "full"), ("tiny", f"LoRA r={RANK}")]
    assert all(r["status"] == "ok" for r in rows), [r["status"] for r in rows]
    full, lora = rows
    total, lora_params = tiny_counts()
    assert full["trainable_params"] == full["total_params"] == total
    assert lora["trainable_params"] == lora_params == 842_000
    assert lora["total_params"] == total + lora_params  # peft adds the adapters to the frozen model
    assert lora["trainable_params"] < full["trainable_params"] / 5
    for r in rows:
        assert r["weights_mb"] > 0 and r["peak_step_mb"] > 0
        assert r["peak_step_mb"] >= r["weights_mb"]  # the step holds the weights and more
        assert r["seconds_per_step"] > 0 and len(r["step_seconds"]) == 2 and len(r["losses"]) == 2
        assert all(loss == loss and 5 < loss < 20 for loss in r["losses"])  # finite, ~ln(50257) at init
    # full fine-tuning keeps gradients and Adam state of every weight: at least 3 more copies
    assert full["peak_step_mb"] - full["weights_mb"] > 2 * total * 4 / 2**20

    assert summary["batch_size"] == 8 and summary["batch_shape"][0] == 8
    assert "longest" in summary["batch"] and "worst case" in summary["batch"]
    assert summary["example_lengths"] == sorted(summary["example_lengths"], reverse=True)
    assert summary["batch_shape"][1] == summary["example_lengths"][0] + 1  # + the appended end-of-text
    for key in ("torch", "device", "cpu_count", "total_ram_gb"):
        assert key in summary["machine"], key


def test_does_not_fit_rows_start_no_worker(bench, monkeypatch, tmp_path, capsys):
    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started for a size that does not fit")

    monkeypatch.setattr(bench, "run_worker", no_worker)
    out = tmp_path / "m.json"
    summary = bench.main(["--sizes", "tiny", "124M", "--max-memory-gb", "0.001", "--json", str(out)])
    rows = summary["rows"]
    assert [(r["size"], r["method"]) for r in rows] == [
        ("tiny", "full"), ("tiny", f"LoRA r={RANK}"), ("124M", "full"), ("124M", f"LoRA r={RANK}")]
    for r in rows:
        assert r["status"].startswith("does not fit: needs ~") and "GB available" in r["status"]
        assert r["peak_step_mb"] is None and r["weights_mb"] is None
    # the parameter counts are still reported (counted on the meta device)
    assert rows[0]["trainable_params"] == tiny_counts()[0]
    assert rows[1]["trainable_params"] == tiny_counts()[1]
    assert rows[2]["total_params"] > 100e6  # 124M with the untied head: 163M
    assert "does not fit" in capsys.readouterr().out
    assert json.loads(out.read_text()) == summary


def test_dead_worker_is_a_failed_row(bench, monkeypatch):
    monkeypatch.setattr(bench, "run_worker", lambda spec, timeout: {"error": bench._reason(-9, "")})
    summary = bench.main(["--sizes", "tiny", "--methods", "full"])
    (row,) = summary["rows"]
    assert row["status"] == "failed: killed by SIGKILL (out of memory?)"
    assert row["peak_step_mb"] is None


def test_worker_error_is_reported(bench, tmp_path):
    # a real subprocess whose worker raises (no batch file): an error, not a crash of the parent
    spec = {"size": "tiny", "method": "full", "lora_rank": RANK, "device": "cpu", "steps": 1, "seed": 0,
            "threads": 1, "batch_path": str(tmp_path / "missing.pt")}
    result = bench.run_worker(spec, timeout=120)
    assert "error" in result and "missing.pt" in result["error"]
    assert bench._reason(1, "Traceback...\nMemoryError: boom\n") == "exit code 1: MemoryError: boom"
