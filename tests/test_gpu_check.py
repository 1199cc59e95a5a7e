"""The GPU check's CPU-runnable parts: its dry run (the same steps on a tiny model, on the CPU), its
JSON and Markdown output, failed steps reported as failed, and the wheels it carries kept in step
with the lock file. The GPU figures themselves need the device machine (not lent to this task)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_measures_every_step_and_writes_json_and_markdown(gpu_check_dry_run):
    out = gpu_check_dry_run
    assert (out / "exit-status").read_text() == "0", (out / "output.log").read_text()
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True and set(report["steps"]) == {"training", "generation", "memory"}
    assert all(step["status"] == "ok" and step["data"] for step in report["steps"].values())
    training = report["steps"]["training"]["data"]
    assert training["loss_checks"]["gpt-sft"]["passed"], "our defaults give book mode's losses"
    markdown = (out / "gpu-check.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| figure")]
    assert any(re.search(r"2 x one epoch\): book \| .* \| 1\.00x \| – \|", r) for r in rows)  # no TRL in a dry run
    assert any("one epoch): gpt-sft" in r and "losses equal book mode" in r for r in rows)
    assert sum("test responses" in r for r in rows) == 3 and sum("peak memory" in r for r in rows) == 2
    assert all(r.count("|") == 7 and "CPU" in r for r in rows), "every figure names its hardware"


def test_a_failed_step_is_reported_not_filled_in():
    gpu_check = _gpu_check_module()
    failed = {"status": "did not finish in 240 s", "seconds": 240.0, "data": None, "output_tail": "..."}
    report = {"dry_run": False, "hardware": "NVIDIA H200", "seconds": 300.0,
              "steps": {"training": failed, "exercise-7-3": dict(failed, status="did not finish in 60 s"),
                        "generation": dict(failed, status="failed (exit 1)"), "memory": failed}}
    markdown = gpu_check.table(report)
    assert "| exercise-7-3 | NVIDIA H200 | – | – | – | did not finish in 60 s |" in markdown
    assert "| training | NVIDIA H200 | – | – | – | did not finish in 240 s |" in markdown
    assert "| generation | NVIDIA H200 | – | – | – | failed (exit 1) |" in markdown


def test_the_carried_wheels_are_the_locked_versions():
    locked = {}
    for line in (REPO / "constraints" / "locked.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version.strip()
    specs = [line for line in (REPO / "benchmarks" / "gpu_wheels.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert specs
    for spec in specs:
        name, version = spec.split("==")
        assert locked[name.lower().replace("_", "-")] == version, f"{spec} differs from constraints/locked.txt"
