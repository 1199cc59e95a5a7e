"""SimPO (Meng et al. 2024) as a stage: the loss and its figures against the formula, -log sigmoid(-gamma) where
chosen equals rejected, accumulation and two processes equal one large batch, exact resuming after Ctrl-C, and a
real run that learns the synthetic preferences."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import distributed_run, run_processes, start_until_checkpoint, step_gradients, tiny_stage_run
from safetensors.torch import load_file

from gpt_sft.cli.main import main as gpt_sft_main
from gpt_sft.cli.train import train
from gpt_sft.data.collator import IGNORE_INDEX
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from gpt_sft.data.synthetic import make_synthetic_preferences
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.train.loss import BOOK, LossPaths
from gpt_sft.train.simpo import SimPOConfig, SimPOLoss

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TQDM_DISABLE": "1"}
ROUND_OFF = 3e-5  # weights after a few AdamW steps at lr 1e-3 that differ by float round-off only


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(make_synthetic_preferences(120, seed=2)))
    return path  # 102 train pairs -> 12 batches of 8, 6 validation, 12 test


def simpo(tmp_path: Path, name: str, model: Path, data: Path, **overrides) -> Path:
    args = dict(model=str(model), data=str(data), output_dir=str(tmp_path / name), batch_size=8, eval_batches=2,
                eval_every=2, generate=False, sample_every_epoch=False, learning_rate=1e-3, max_steps=4)
    return train(SimPOConfig(**{**args, **overrides}))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def max_difference(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def pair_batch(pairs_file: Path, count: int, same: bool = False) -> dict:
    """``count`` pairs collated; ``same``: each pair's rejected side replaced by its chosen side."""
    dataset, _ = load_preference_data(str(pairs_file))
    pairs, _ = tokenize_preferences(dataset.select(range(count)), "alpaca", 1024)
    examples = [dict(pairs[i]) for i in range(count)]
    if same:
        for e in examples:
            e["rejected_input_ids"], e["rejected_prompt_length"] = e["chosen_input_ids"], e["chosen_prompt_length"]
    return PreferenceCollator()(examples)


def tiny_model(seed: int = 0) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(GPTConfig(n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()


def mean_logps(model, batch) -> list[float]:
    """Written from the definition: the mean over a row's targets (not -100) of log-softmax of the plain forward's
    logits at the target token."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"][:, :-1]).logits.double()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return [float(v) for v in (picked * mask).sum(1) / mask.sum(1)]


# ---------------------------------------------------------------- the loss against the formula


@pytest.mark.parametrize("paths", [BOOK, LossPaths(True, False, False), LossPaths()], ids=["book", "targets", "fast"])
def test_simpo_loss_and_figures_equal_the_formula(pairs_file, paths):
    batch, beta, gamma, n = pair_batch(pairs_file, 4), 2.5, 0.7, 4
    model = tiny_model()
    lp = mean_logps(model, batch)
    expected = {"loss": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0, "margin": 0.0, "accuracy": 0.0}
    for i in range(n):
        chosen, rejected = beta * lp[i], beta * lp[i + n]  # the reward: beta x the mean token log-prob
        z = chosen - rejected - gamma
        for name, value in (("loss", math.log1p(math.exp(-z))), ("chosen_reward", chosen),
                            ("rejected_reward", rejected), ("margin", chosen - rejected),
                            ("accuracy", float(chosen > rejected))):
            expected[name] += value
    with torch.no_grad():
        loss, sums = SimPOLoss(model, paths, beta, gamma)(batch["input_ids"][:, :-1], batch["labels"][:, 1:])
    assert loss.item() == pytest.approx(expected["loss"] / n, abs=1e-5)
    assert sums.tolist() == pytest.approx(list(expected.values()), abs=1e-4)
    assert abs(expected["margin"]) > 1e-3, "the two sides differ: the check is not between zeros"


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.6])
def test_with_chosen_equal_to_rejected_the_loss_is_minus_log_sigmoid_of_minus_gamma(pairs_file, gamma):
    batch = pair_batch(pairs_file, 4, same=True)
    with torch.no_grad():
        loss, sums = SimPOLoss(tiny_model(), LossPaths(), 2.0, gamma)(batch["input_ids"][:, :-1],
                                                                       batch["labels"][:, 1:])
    expected = math.log1p(math.exp(gamma))  # -log(sigmoid(-gamma))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    _, chosen, rejected, margin, accuracy = sums.tolist()
    assert chosen == rejected and margin == 0 and accuracy == 0


def test_options_are_checked_and_default_to_the_authors_recipe():
    defaults = SimPOConfig()
    assert (defaults.beta, defaults.gamma, defaults.model) == (2.0, 1.0, "outputs/gpt2-medium-sft")
    with pytest.raises(ValueError, match="--beta must be a positive number, got 0"):
        SimPOConfig(beta=0)
    with pytest.raises(ValueError, match="--gamma must be a number >= 0, got -1"):
        SimPOConfig(gamma=-1)


# ---------------------------------------------------------------- training behaviour


def test_gradient_accumulation_equals_one_large_batch(pairs_file, tmp_path):
    """The step's gradients over 2 micro-batches of 4 pairs are those of one batch of 8."""
    run = tiny_stage_run("simpo", pairs_file, tmp_path / "run", batch_size=8)
    examples = [run.data.train.dataset[i] for i in range(8)]
    collate = run.stage.collator()
    big_loss, big = step_gradients(run, [collate(examples)])
    acc_loss, accumulated = step_gradients(run, [collate(examples[:4]), collate(examples[4:])])
    _, half = step_gradients(run, [collate(examples[:4])])
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)
    worst = max((big[k] - accumulated[k]).abs().max().item() for k in big)
    scale = max(g.abs().max().item() for g in big.values())
    assert worst <= 1e-5 * scale, (worst, scale)
    assert max((big[k] - half[k]).abs().max().item() for k in big) > 1e-2 * scale, "the comparison can fail"


def test_two_processes_equal_one(tiny_sft_run, pairs_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [*distributed_run(2), str(REPO / "scripts" / "simpo.py"), "--model", str(tiny_sft_run), "--data",
           str(pairs_file), "--output-dir", str(out), "--batch-size", "4", "--max-steps", "3", "--no-generate",
           "--no-sample-every-epoch", "--eval-batches", "2", "--eval-every", "2", "--learning-rate", "1e-3"]
    result = run_processes(cmd, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on CPU" in result.stdout + result.stderr
    single = simpo(tmp_path, "single", tiny_sft_run, pairs_file, batch_size=8, max_steps=3)
    assert max_difference(out, single) <= ROUND_OFF
    # (each process evaluates its own share of the batches: the figures are the same kind, not the same numbers)
    history = [json.loads((p / "metrics.json").read_text())["simpo"]["history"] for p in (out, single)]
    assert history[0]["step"] == history[1]["step"] == [0, 2]


def test_ctrl_c_and_resume_give_the_uninterrupted_weights(tiny_sft_run, pairs_file, tmp_path):
    out = tmp_path / "interrupted"
    args = [sys.executable, str(REPO / "scripts" / "simpo.py"), "--model", str(tiny_sft_run), "--data",
            str(pairs_file), "--output-dir", str(out), "--epochs", "100", "--eval-every", "3", "--eval-batches", "1",
            "--no-generate", "--no-sample-every-epoch", "--save-every", "4", "--batch-size", "8",
            "--learning-rate", "1e-3", "--drop-rate", "0.1"]
    proc = start_until_checkpoint(args, out / "checkpoints" / "step-000004", ENV)
    proc.send_signal(signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log[-2000:]
    assert "Interrupted: saved a resumable checkpoint" in log
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]
    target = max(steps) + 3
    common = dict(epochs=100, eval_every=3, eval_batches=1, save_every=4, drop_rate=0.1, max_steps=target)
    resumed = simpo(tmp_path, "interrupted", tiny_sft_run, pairs_file, resume_from_checkpoint="latest", **common)
    straight = simpo(tmp_path, "straight", tiny_sft_run, pairs_file, **common)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run is the uninterrupted run"
    history = [json.loads((p / "metrics.json").read_text())["simpo"]["history"] for p in (straight, resumed)]
    assert history[0] == history[1]


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
def test_simpo_on_synthetic_pairs_raises_held_out_accuracy(tmp_path, tiny_sft_run):
    """``gpt-sft simpo`` on the demo's synthetic pairs (right answer chosen, a wrong one rejected) from an SFT model
    that has not learned them yet: held-out preference accuracy and the reward margin rise clearly; the folder holds
    the SimPO plot, the card's SimPO section and test-set responses."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(make_synthetic_preferences(400, seed=7)))
    out = tmp_path / "simpo"
    assert gpt_sft_main(["simpo", "--model", str(tiny_sft_run), "--data", str(pairs), "--output-dir", str(out),
                         "--batch-size", "16", "--learning-rate", "1e-3", "--weight-decay", "0", "--epochs", "100",
                         "--max-steps", "61", "--eval-every", "30", "--eval-batches", "3", "--no-sample-every-epoch",
                         "--max-new-tokens", "4", "--cpu-threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["simpo"]
    before, after = metrics["initial"], metrics["final"]
    assert after["val_accuracy"] >= before["val_accuracy"] + 0.3 and after["val_accuracy"] >= 0.8, (before, after)
    assert after["val_margin"] > before["val_margin"] + 0.3 and after["val_loss"] < before["val_loss"] - 0.2
    assert metrics["reference"] == "none" and (metrics["beta"], metrics["gamma"]) == (2.0, 1.0)
    assert metrics["sft_model"] == str(tiny_sft_run) and metrics["history"]["step"] == [0, 30, 60]
    for name in ("simpo-plot.png", "simpo-plot.pdf", "loss-plot.png", "test-responses.json", "recipe.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "preference-tuned with SimPO" in card and "## Preference tuning (SimPO)" in card
    assert "beta 2.0, gamma 1.0, no reference model" in card
    assert f"preference accuracy | {before['train_accuracy']:.3f} → {after['train_accuracy']:.3f}" in card
