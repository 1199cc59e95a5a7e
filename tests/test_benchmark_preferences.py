"""Smoke test of benchmarks/preferences.py (issue 24): every preference method from one SFT model on the same pairs,
in one run, with its held-out figures, time per step and peak memory."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_preferences_benchmark_tiny(tmp_path, tiny_sft_run, capsys):
    out = tmp_path / "preferences.json"
    for bench in load_benchmark("preferences"):
        assert bench.main(["--sft-model", str(tiny_sft_run), "--work-dir", str(tmp_path / "work"), "--pairs", "80",
                           "--steps", "2", "--batch-size", "4", "--json", str(out)]) == 0
        methods = list(bench.METHODS)
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert [r["method"] for r in results] == methods == ["dpo-frozen", "dpo-precomputed", "orpo-sft", "orpo-base",
                                                          "simpo"]
    for r in results:
        assert r["steps"] == 2 and r["seconds_per_step"] > 0 and r["peak_memory_mb"] >= 0
        assert 0 <= r["held_out"]["accuracy"] <= 1 and r["held_out"]["pairs"] == 8
        assert f"| {r['method']} |" in printed
    assert results[3]["starts_from"] == "base" and json.loads(
        (tmp_path / "work" / "orpo-base" / "training_args.json").read_text())["model"] == "scratch"
    assert results[1]["reference"] == "precomputed" and summary["untuned"]["pairs"] == 8
