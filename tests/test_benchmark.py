"""Smoke test of benchmarks/training.py (training, evaluation and data preparation benchmark, issue 6)."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

from gpt_sft.data.synthetic import make_synthetic_instructions

METHODS = ["book", "gpt-sft", "hf", "targets-only", "padding-free", "shared-prefix", "fused"]


@pytest.fixture
def training_benchmark():
    yield from load_benchmark("training")


def test_benchmark_script_tiny(tmp_path, training_benchmark, capsys):
    data = tmp_path / "synthetic.json"
    data.write_text(json.dumps(make_synthetic_instructions(120, seed=0)))
    out = tmp_path / "bench.json"
    training_benchmark.main(["--model-size", "tiny", "--steps", "3", "--warmup", "1", "--eval-every", "2",
                             "--eval-batches", "1", "--ablation", "--data", str(data), "--data-repeats", "1",
                             "--threads", "1", "--no-generation", "--no-validation-loss",  # the peers' test has it
                             "--json", str(out)])  # sys.exit(1) on a failed check
    printed = capsys.readouterr().out
    assert printed.count("PASSED") == 5 and "FAILED" not in printed

    summary = json.loads(out.read_text())
    assert summary["model_size"] == "tiny" and summary["batch_size"] == 8 and summary["timed_steps"] == 3
    assert summary["data"] == str(data) and summary["steps_per_epoch"] == 102 // 8
    assert list(summary["training"]) == METHODS  # --methods order, then the ablation
    for key, r in summary["training"].items():
        assert r["seconds_per_step"] > 0 and r["seconds_per_evaluation"] > 0 and r["tokens_per_s"] > 0
        assert len(r["step_seconds"]) == 3 and len(r["losses"]) == 4
        assert len(r["eval_losses"]) == 2  # after steps 0 and 2
        # the epoch estimate is built from the measured pieces: 12 steps and 6 evaluations (every 2nd step)
        assert abs(r["epoch_seconds_estimated"] - (12 * r["seconds_per_step"] + 6 * r["seconds_per_evaluation"])) < 1e-9
        assert r["useful_tflops_per_s"] > 0 and r["mfu"] is None  # no peak known for a CPU
    # useful FLOPs are the same work for every method: TFLOP/s x s/step agree
    work = {k: r["useful_tflops_per_s"] * r["seconds_per_step"] for k, r in summary["training"].items()}
    assert max(work.values()) - min(work.values()) < 1e-9 * max(work.values())
    assert summary["training"]["book"]["epoch_speedup_vs_book"] == 1.0
    # every exact method reproduces the book's losses: same init, same batches, same updates
    assert set(summary["loss_checks"]) == {"gpt-sft", "targets-only", "padding-free", "shared-prefix", "fused"}
    for check in summary["loss_checks"].values():
        assert check["passed"] and check["max_abs_diff_over_steps"] < 1e-4 and check["max_abs_diff_evaluations"] < 1e-4
    book, ours = summary["training"]["book"]["losses"], summary["training"]["gpt-sft"]["losses"]
    assert book[0] != book[-1] and abs(book[-1] - ours[-1]) < 1e-4  # it trained, identically
    prep = summary["data_preparation"]
    assert prep["entries"] == 102 and prep["tokenize_dataset"]["entries_per_s"] > 0


def test_peers_score_the_same_targets_with_the_same_initial_loss(tmp_path, training_benchmark, capsys):
    """gpt-sft, transformers and TRL's SFTTrainer (its own formatting, tokenization and collation) from the same
    weights on the same entries: the parity line holds (same validation targets, same initial loss) and each
    reports wall time, tokens/s, peak memory and the final validation loss after the same optimizer steps."""
    data = tmp_path / "synthetic.json"
    data.write_text(json.dumps(make_synthetic_instructions(120, seed=0)))
    summary = training_benchmark.main(["--model-size", "tiny", "--steps", "1", "--warmup", "0", "--eval-every", "2",
                                       "--eval-batches", "1", "--methods", "gpt-sft", "hf", "trl", "--data", str(data),
                                       "--data-repeats", "1", "--threads", "1", "--no-generation"])
    assert "parity" in capsys.readouterr().out
    parity = summary["parity"]
    assert parity["passed"] and parity["same_targets"] and set(parity["losses"]) == {"gpt-sft", "hf", "trl"}
    assert parity["max_abs_diff"] < 1e-4 and parity["targets"] > 0
    scored = [r["validation_at_init"] for r in summary["training"].values()]
    assert len({(v["targets"], v["target_id_sum"]) for v in scored}) == 1, "the same targets, counted each way"
    for key, r in summary["training"].items():
        assert r["optimizer_steps"] == 1 and len(r["losses"]) == 1, key
        assert r["wall_seconds"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0, key
        assert r["final_validation_loss"] < r["validation_at_init"]["loss"], f"{key} trained"
    trl = summary["training"]["trl"]
    assert trl["epoch_speedup_vs_trl"] == 1.0 and trl["setup_seconds"] > 0 and len(trl["eval_losses"]) == 1
    assert summary["training"]["gpt-sft"]["epoch_speedup_vs_trl"] > 0
    # the same batches and updates: TRL's per-step losses are the plain loop's up to float round-off
    assert max(abs(a - b) for a, b in zip(trl["losses"], summary["training"]["hf"]["losses"])) < 1e-4


def test_exercise_7_3_size_extrapolated_from_measured_steps(training_benchmark, capsys):
    """--exercise-7-3: 52,800 entries (1,100 repeated 48 times), batch 4, max length 512, an epoch extrapolated
    from the measured steps -- and the GPU check's table row for it."""
    summary = training_benchmark.main(["--model-size", "tiny", "--exercise-7-3", "--steps", "1", "--warmup", "1",
                                       "--eval-batches", "1", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "repeated 48 times" in printed and "extrapolated from 1 measured steps" in printed
    exercise = summary["exercise_7_3"]
    assert summary["entries"] == exercise["entries"] == 52_800 and exercise["repeat"] == 48
    assert summary["batch_size"] == exercise["batch_size"] == 4 and exercise["max_length"] == 512
    assert exercise["steps_per_epoch"] == int(52_800 * 0.85) // 4 and list(summary["training"]) == ["gpt-sft"]
    assert exercise["epoch_minutes_extrapolated"]["gpt-sft"] > 0 and summary["parity"] is None
    r = summary["training"]["gpt-sft"]
    assert abs(60 * exercise["epoch_minutes_extrapolated"]["gpt-sft"] - (11_220 * r["seconds_per_step"] + 2_244 *
                                                                       r["seconds_per_evaluation"])) < 1e-6
    gpu_check = next(load_benchmark("gpu_check"))
    step = {"status": "ok", "seconds": 1.0, "data": summary, "output_tail": None}
    failed = {"status": "failed (exit 1)", "seconds": 1.0, "data": None, "output_tail": "..."}
    markdown = gpu_check.table({"dry_run": True, "hardware": "CPU", "seconds": 1.0, "steps": {
        "training": failed, "exercise-7-3": step, "generation": failed, "memory": failed}})
    assert ("| Exercise 7.3's size, tiny, 1 epoch (extrapolated from 1 measured steps): gpt-sft | CPU | "
            f"{exercise['epoch_minutes_extrapolated']['gpt-sft']:.1f} min | – | – | 52,800 entries") in markdown


def test_useful_flops_counts_real_tokens_only(training_benchmark):
    import torch

    bench = training_benchmark
    from gpt_sft import GPTConfig

    config = GPTConfig(n_embd=8, n_layer=2, n_head=2, vocab_size=100)
    labels = torch.full((2, 6), -100)
    labels[0, 1:4] = 5  # row 0: targets at shifted positions 0-2 -> 3 useful tokens
    labels[1, 3] = 5  # row 1: a masked prompt, target at shifted position 2 -> 3 useful tokens
    flops = bench.useful_flops({"labels": labels}, config)
    per_token = 6 * (12 * 2 * 8 * 8 + 8 * 100)
    assert flops == per_token * 6 + 6 * 2 * 8 * (3 ** 2 + 3 ** 2)


def test_dpo_benchmark_script_tiny(tmp_path, capsys):
    """benchmarks/dpo.py on a tiny model: every method times its steps, and every DPO variant starts at ln 2."""
    out = tmp_path / "dpo.json"
    for dpo_benchmark in load_benchmark("dpo"):
        assert dpo_benchmark.main(["--model-size", "tiny", "--steps", "1", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("PASSED") == 3 and "FAILED" not in printed
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["sft", "dpo-frozen", "dpo-precomputed", "dpo-lora"]
    assert all(r["seconds_per_step"] > 0 for r in results)
    sft, frozen = results[0], results[1]
    assert frozen["sequences_per_step"] == 2 * sft["sequences_per_step"] == 16, "8 pairs: chosen and rejected"
    assert results[3]["trainable"] < frozen["trainable"], "LoRA trains the adapters only"
