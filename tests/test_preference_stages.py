"""The reference-free preference stages, ORPO (Hong et al. 2024) and SimPO (Meng et al. 2024).

Each stage's loss and figures on a fixed batch equal the paper's formula, computed here from a plain forward pass,
and its known point (chosen = rejected): ORPO's odds-ratio term is ln 2, SimPO's loss is -log sigmoid(-gamma). What
every preference stage must do the same way is one test, run for each (DPO included where tests/test_dpo.py does not
already run it): gradient accumulation and two processes equal one large batch, Ctrl-C and resume give the
uninterrupted weights, and a real run on the demo's synthetic pairs raises held-out preference accuracy."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import max_difference, step_gradients, tiny_stage_run, weights

from gpt_sft.cli.main import main as gpt_sft_main
from gpt_sft.cli.train import train
from gpt_sft.data.collator import IGNORE_INDEX
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from gpt_sft.data.synthetic import make_synthetic_preferences
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.train.loss import BOOK, LossPaths
from gpt_sft.train.orpo import OddsRatioLoss, ORPOConfig
from gpt_sft.train.simpo import SimPOConfig, SimPOLoss
from gpt_sft.train.stages import stage_class
from gpt_sft.train.state import InterruptedRun

LN2 = math.log(2)
STAGES = ["orpo", "simpo"]


def run_stage(command: str, folder: Path, model: Path, data: Path, **overrides) -> Path:
    """``gpt-sft COMMAND`` in this process, a few steps of the tiny settings."""
    args = dict(model=str(model), data=str(data), output_dir=str(folder), batch_size=8, eval_batches=2,
                eval_every=2, generate=False, sample_every_epoch=False, learning_rate=1e-3, max_steps=4)
    return train(stage_class(command).config_type(**{**args, **overrides}))


def history(folder: Path, command: str) -> dict:
    return json.loads((folder / "metrics.json").read_text())[command]["history"]


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
    logits at the target token. Rows: the chosen sides, then the rejected ones."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"][:, :-1]).logits.double()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return [float(v) for v in (picked * mask).sum(1) / mask.sum(1)]


def stage_loss(loss_type, model, batch, *options):
    with torch.no_grad():
        return loss_type(model, *options)(batch["input_ids"][:, :-1], batch["labels"][:, 1:])


PATHS = pytest.mark.parametrize("paths", [BOOK, LossPaths(True, False, False), LossPaths()],
                                ids=["book", "targets", "fast"])


# ---------------------------------------------------------------- ORPO: the formula, its known point, its option


@PATHS
def test_orpo_loss_and_figures_equal_the_formula(pairs_file, paths):
    """NLL(chosen) + lambda * -log sigmoid(log-odds(chosen) - log-odds(rejected)), log-odds(y) = log p - log(1 - p),
    p from the mean token log-probability of the response."""
    batch, lam, n = pair_batch(pairs_file, 4), 0.3, 4
    model = tiny_model()
    lp = mean_logps(model, batch)
    expected = {"loss": 0.0, "nll": 0.0, "odds_ratio": 0.0, "margin": 0.0, "accuracy": 0.0}
    for i in range(n):
        chosen, rejected = lp[i], lp[i + n]
        odds = [v - math.log(1 - math.exp(v)) for v in (chosen, rejected)]  # log(p / (1 - p))
        margin = odds[0] - odds[1]
        term = math.log1p(math.exp(-margin))  # -log(sigmoid(margin))
        for name, value in (("loss", -chosen + lam * term), ("nll", -chosen), ("odds_ratio", term),
                            ("margin", margin), ("accuracy", float(margin > 0))):
            expected[name] += value
    loss, sums = stage_loss(OddsRatioLoss, model, batch, paths, lam)
    assert loss.item() == pytest.approx(expected["loss"] / n, abs=1e-5)
    assert sums.tolist() == pytest.approx(list(expected.values()), abs=1e-4)
    assert abs(expected["margin"]) > 1e-3, "the two sides differ: the check is not between zeros"


def test_with_chosen_equal_to_rejected_the_odds_ratio_term_is_ln2(pairs_file):
    batch, n = pair_batch(pairs_file, 4, same=True), 4
    model = tiny_model()
    nll = -sum(mean_logps(model, batch)[:n])
    loss, sums = stage_loss(OddsRatioLoss, model, batch, LossPaths(), 0.1)
    total, nll_sum, odds_ratio, margin, accuracy = sums.tolist()
    assert odds_ratio / n == pytest.approx(LN2, abs=1e-6) and margin == 0 and accuracy == 0
    assert nll_sum == pytest.approx(nll, abs=1e-4)
    assert loss.item() == pytest.approx(nll / n + 0.1 * LN2, abs=1e-5)


def test_orpo_lambda_is_checked_and_defaults_to_the_paper_s():
    assert ORPOConfig().orpo_lambda == 0.1 and ORPOConfig().model == "gpt2-medium (355M)"
    with pytest.raises(ValueError, match="--orpo-lambda must be a number >= 0, got -1"):
        ORPOConfig(orpo_lambda=-1)


# ---------------------------------------------------------------- SimPO: the formula, its known point, its options


@PATHS
def test_simpo_loss_and_figures_equal_the_formula(pairs_file, paths):
    """-log sigmoid(beta * (r_chosen - r_rejected) - gamma), r: the mean token log-probability of the response."""
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
    loss, sums = stage_loss(SimPOLoss, model, batch, paths, beta, gamma)
    assert loss.item() == pytest.approx(expected["loss"] / n, abs=1e-5)
    assert sums.tolist() == pytest.approx(list(expected.values()), abs=1e-4)
    assert abs(expected["margin"]) > 1e-3, "the two sides differ: the check is not between zeros"


@pytest.mark.parametrize("gamma", [0.0, 1.0, 1.6])
def test_with_chosen_equal_to_rejected_the_simpo_loss_is_minus_log_sigmoid_of_minus_gamma(pairs_file, gamma):
    loss, sums = stage_loss(SimPOLoss, tiny_model(), pair_batch(pairs_file, 4, same=True), LossPaths(), 2.0, gamma)
    assert loss.item() == pytest.approx(math.log1p(math.exp(gamma)), abs=1e-6)  # -log(sigmoid(-gamma))
    _, chosen, rejected, margin, accuracy = sums.tolist()
    assert chosen == rejected and margin == 0 and accuracy == 0


def test_simpo_options_are_checked_and_default_to_the_authors_recipe():
    defaults = SimPOConfig()
    assert (defaults.beta, defaults.gamma, defaults.model) == (2.0, 1.0, "outputs/gpt2-medium-sft")
    with pytest.raises(ValueError, match="--beta must be a positive number, got 0"):
        SimPOConfig(beta=0)
    with pytest.raises(ValueError, match="--gamma must be a number >= 0, got -1"):
        SimPOConfig(gamma=-1)


# ---------------------------------------------------------------- what every stage does the same way


@pytest.mark.parametrize("command", ["dpo", *STAGES])
def test_gradient_accumulation_equals_one_large_batch(command, pairs_file, tmp_path):
    """From a base (random) model: the step's gradients over 2 micro-batches of 4 pairs are those of one batch of 8,
    DPO's (its frozen reference) included. That the loop gives a step the window of micro-batches that
    ``--gradient-accumulation-steps`` asks for is one loop for every stage: tests/test_training.py runs it.

    This is also what makes two processes equal one for every pair loss: each of 2 processes takes the step on its
    4 pairs and DDP averages the 2 gradients, the sum this test shows equal to one batch of 8. The processes
    themselves (sharding the pairs, the all-reduce, one process writing) are the shared loop's, run for real by
    tests/test_dpo.py::test_two_processes_equal_one and tests/test_training.py (torchrun, 2 processes)."""
    run = tiny_stage_run(command, pairs_file, tmp_path / "run", batch_size=8)
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


@pytest.mark.parametrize("command", ["dpo", *STAGES])
def test_ctrl_c_and_resume_give_the_uninterrupted_weights(command, tiny_sft_run, pairs_file, tmp_path, monkeypatch):
    """SIGINT, as Ctrl-C sends it, reaches this process during its 5th step (the 4th saved a checkpoint): the run
    finishes the step, saves a resumable checkpoint and stops; resumed to 3 steps past it, its weights and history
    are those of a run never interrupted. (The signal is sent by the process to itself at a chosen step, so the
    test does not depend on timing; a Ctrl-C from outside a training process is tests/test_training.py's.)"""
    steps = 0
    loss_step = stage_class(command).step

    def interrupted_step(self, run, window):
        nonlocal steps
        steps += 1
        if steps == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return loss_step(self, run, window)

    common = dict(epochs=100, eval_every=3, eval_batches=1, save_every=4, drop_rate=0.1)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a worker may ignore SIGINT; a terminal not
    try:
        with monkeypatch.context() as patch:
            patch.setattr(stage_class(command), "step", interrupted_step)
            with pytest.raises(InterruptedRun):
                run_stage(command, tmp_path / "interrupted", tiny_sft_run, pairs_file, max_steps=0, **common)
    finally:
        signal.signal(signal.SIGINT, previous)
    saved = sorted(p.name for p in (tmp_path / "interrupted" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert saved == ["step-000004", "step-000005"], saved
    resumed = run_stage(command, tmp_path / "interrupted", tiny_sft_run, pairs_file, max_steps=8,
                        resume_from_checkpoint="latest", **common)
    straight = run_stage(command, tmp_path / "straight", tiny_sft_run, pairs_file, max_steps=8, **common)
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run is the uninterrupted run"
    assert history(straight, command) == history(resumed, command)
    assert max_difference(straight, tiny_sft_run) > 1e-3, "the runs trained: the comparison can fail"


READS = {"orpo": "odds-ratio term |", "simpo": "beta 2.0, gamma 1.0, no reference model"}
# Where each starts: ORPO from a fresh model of the offline demo's shape (no SFT stage: ORPO's point), at lambda 1 (the
# paper's 0.1 needs twice the steps here to show the odds ratio beside the NLL); SimPO from a tiny SFT model that has
# not learned the pairs yet. (A tiny model of width 32 learns the NLL, not the pairs, in 60 ORPO steps.)
BASE = ["--model", "scratch", "--n-layers", "2", "--emb-dim", "128", "--n-heads", "4", "--context-length", "128",
        "--tie-word-embeddings", "--orpo-lambda", "1.0"]


@pytest.mark.slow
@pytest.mark.parametrize("command", STAGES)
def test_on_synthetic_pairs_held_out_accuracy_rises(command, tmp_path, tiny_sft_run):
    """``gpt-sft COMMAND`` on the demo's synthetic pairs (right answer chosen, a wrong one rejected): held-out
    preference accuracy and the margin rise clearly, the loss falls; the folder holds the stage's plot, its card
    section and test-set responses."""
    start = {"orpo": BASE, "simpo": ["--model", str(tiny_sft_run)]}[command]
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(make_synthetic_preferences(400, seed=7)))
    out = tmp_path / command
    assert gpt_sft_main([command, *start, "--data", str(pairs), "--output-dir", str(out),
                         "--batch-size", "8", "--learning-rate", "2e-3", "--weight-decay", "0", "--epochs", "100",
                         "--max-steps", "61", "--eval-every", "30", "--eval-batches", "3", "--no-sample-every-epoch",
                         "--max-new-tokens", "4", "--cpu-threads", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())[command]
    before, after = metrics["initial"], metrics["final"]
    assert after["val_accuracy"] >= before["val_accuracy"] + 0.3 and after["val_accuracy"] >= 0.8, (before, after)
    assert after["val_margin"] > before["val_margin"] + 0.1 and after["val_loss"] < before["val_loss"] - 0.2
    assert metrics["reference"] == "none" and metrics["history"]["step"] == [0, 30, 60]
    for name in (f"{command}-plot.png", f"{command}-plot.pdf", "loss-plot.png", "test-responses.json", "recipe.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    name = stage_class(command).title
    assert f"preference-tuned with {name}" in card and f"## Preference tuning ({name})" in card and READS[command] in card
    assert f"preference accuracy | {before['train_accuracy']:.3f} → {after['train_accuracy']:.3f}" in card
