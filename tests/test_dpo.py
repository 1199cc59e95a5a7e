"""Preference tuning with DPO: data, collator, the loss against the formula, the book's step-0 figures,
a real tuning run that learns synthetic preferences, exact resuming, accumulation, two processes,
LoRA's adapter-free reference and precomputed reference log-probs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import distributed_run, max_difference, run_processes

from gpt_sft.cli.dpo import main as dpo_main
from gpt_sft.cli.train import train
from gpt_sft.data.collator import IGNORE_INDEX
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from gpt_sft.data.synthetic import make_synthetic_preferences
from gpt_sft.data.validate import InstructionDataError
from gpt_sft.export.card import record_judge_score
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.model.tokenizer import END_OF_TEXT_ID
from gpt_sft.train.preference_config import DPOConfig
from gpt_sft.train.dpo_loop import setup_dpo
from gpt_sft.train.dpo_loss import PreferenceLoss
from gpt_sft.train.loss import BOOK, LossPaths

REPO = Path(__file__).resolve().parents[1]
LN2 = math.log(2)
ENV = {**os.environ, "TQDM_DISABLE": "1"}
ROUND_OFF = 3e-5  # weights after a few AdamW steps at lr 1e-3 that differ by float round-off only


@pytest.fixture(scope="module")
def sft_checkpoint(tiny_sft_run) -> Path:
    """The session's tiny SFT run (6 steps): the policy and reference of the mechanics tests. Read-only."""
    return tiny_sft_run


def dpo(tmp_path: Path, name: str, model: Path, data: Path, **overrides) -> Path:
    args = dict(model=str(model), data=str(data), output_dir=str(tmp_path / name), batch_size=8, eval_batches=2,
                eval_every=2, generate=False, sample_every_epoch=False, learning_rate=1e-3, max_steps=4)
    cfg = DPOConfig(**{**args, **overrides})
    return train(cfg, setup_dpo)


# ---------------------------------------------------------------- data


def test_preference_data_errors_name_the_entry_or_are_counted(tmp_path):
    good = make_synthetic_preferences(6, seed=3)
    cases = [("chosen", None, "'chosen' is null"), ("rejected", 7, "'rejected' must be a string, got a number"),
             ("chosen", "  ", "'chosen' is empty"), ("rejected", "a <|endoftext|> b", "<|endoftext|>")]
    for field, value, message in cases:
        entries = [dict(e) for e in good]
        entries[4][field] = value
        path = tmp_path / f"{field}.json"
        path.write_text(json.dumps(entries))
        with pytest.raises(InstructionDataError, match=rf"{path}: entry 4: .*{message}"):
            load_preference_data(str(path))
        dataset, stats = load_preference_data(str(path), skip_invalid=True)
        assert len(dataset) == 5 and stats.num_skipped == 1 and stats.skipped_indices == [4]
    entries = [dict(e) for e in good]
    del entries[1]["rejected"]
    entries[3]["output"] = ""  # an instruction-entry problem is counted with the preference ones
    path = tmp_path / "two.json"
    path.write_text(json.dumps(entries))
    dataset, stats = load_preference_data(str(path), skip_invalid=True)
    assert len(dataset) == 4 and stats.skipped_indices == [1, 3]
    assert stats.skipped == {"missing 'rejected'": 1, "empty 'output'": 1}


def test_the_book_s_preference_file_loads_and_splits(shared_data_dir):
    dataset, stats = load_preference_data(str(shared_data_dir / "instruction-data-with-preference.json"))
    assert stats.num_loaded == 1100 and set(dataset.column_names) >= {"chosen", "rejected", "output"}


def test_collator_pads_both_sides_masks_prompt_and_padding_and_keeps_one_end_of_text(pairs_file):
    dataset, _ = load_preference_data(str(pairs_file))
    pairs, stats = tokenize_preferences(dataset.select(range(3)), "alpaca", 1024)
    assert stats.num_kept == 3
    batch = PreferenceCollator()([pairs[i] for i in range(3)])
    assert batch["input_ids"].shape[0] == 6  # chosen rows 0..2, rejected rows 3..5
    for row in range(6):
        side, pair = ("chosen", row) if row < 3 else ("rejected", row - 3)
        ids, prompt_length = pairs[pair][f"{side}_input_ids"], pairs[pair][f"{side}_prompt_length"]
        assert batch["input_ids"][row, :len(ids)].tolist() == ids
        labels = batch["labels"][row]
        assert (labels[:prompt_length] == IGNORE_INDEX).all(), "the prompt is masked"
        assert labels[prompt_length:len(ids)].tolist() == ids[prompt_length:], "the response is the target"
        assert labels[len(ids)] == END_OF_TEXT_ID, "the first end-of-text stays a target"
        assert (labels[len(ids) + 1:] == IGNORE_INDEX).all(), "later padding is masked"
    # chosen and rejected of a pair share the prompt and differ in the response
    assert pairs[0]["chosen_prompt_length"] == pairs[0]["rejected_prompt_length"]
    assert pairs[0]["chosen_input_ids"] != pairs[0]["rejected_input_ids"]


def test_a_prompt_that_fills_the_length_drops_the_pair_and_counts_it(pairs_file):
    dataset, _ = load_preference_data(str(pairs_file))
    dataset = dataset.select(range(8))
    full, _ = tokenize_preferences(dataset, "alpaca", 1024)
    prompts = full["chosen_prompt_length"]
    lengths = [max(len(c), len(r)) for c, r in zip(full["chosen_input_ids"], full["rejected_input_ids"])]
    diverge = [next(i for i, (c, r) in enumerate(zip(cs, rs)) if c != r)  # where the two answers part
               for cs, rs in zip(full["chosen_input_ids"], full["rejected_input_ids"])]
    limit = sorted(diverge)[3] + 1  # the four pairs that part earliest keep a difference within it
    pairs, stats = tokenize_preferences(dataset, "alpaca", limit)
    no_response = [p > limit for p in prompts]  # no response token within the limit: dropped
    same = [not n and d >= limit for n, d in zip(no_response, diverge)]  # cut before they part: the same pair
    kept = [not (n or m) for n, m in zip(no_response, same)]
    assert stats.num_dropped_no_response == sum(no_response) > 0
    assert stats.num_dropped_identical == sum(same) and stats.num_kept == sum(kept) == len(pairs) > 0
    assert stats.num_overlong == sum(k and n > limit for k, n in zip(kept, lengths)), \
        "the kept ones cut at the limit lose their end-of-text: counted as over-long"
    with pytest.raises(InstructionDataError, match="no pair is left.*--allowed-max-length"):
        tokenize_preferences(dataset, "alpaca", min(prompts) - 1)


def test_a_pair_whose_chosen_and_rejected_are_the_same_is_dropped_and_counted(pairs_file):
    dataset, _ = load_preference_data(str(pairs_file))
    rows = [dict(dataset[i]) for i in range(4)]
    rows[1]["rejected"] = rows[1]["chosen"]  # a no-op pair: trains nothing, dilutes the loss and the accuracy
    from datasets import Dataset

    pairs, stats = tokenize_preferences(Dataset.from_list(rows), "alpaca", 1024)
    assert stats.num_dropped_identical == 1 and stats.dropped_indices == [1] and stats.num_kept == len(pairs) == 3
    assert "1 dropped: chosen and rejected are the same" in str(stats) and stats.num_dropped == 1
    assert all(p["chosen_input_ids"] != p["rejected_input_ids"] for p in pairs)


# ---------------------------------------------------------------- the loss against the formula


def independent_logps(model, input_ids, labels, reduction):
    """Written from the definition: log-softmax of the plain forward's logits, the target tokens'
    log-probs summed (or averaged) over the targets that are not -100."""
    with torch.no_grad():
        logits = model(input_ids=input_ids[:, :-1]).logits.double()  # (R, T, V)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    picked = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    totals = (picked * mask).sum(1)
    return [float(v) for v in (totals if reduction == "sum" else totals / mask.sum(1))]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("paths", [BOOK, LossPaths(True, False, False), LossPaths()], ids=["book", "targets", "fast"])
def test_loss_and_rewards_equal_the_formula(pairs_file, reduction, paths):
    dataset, _ = load_preference_data(str(pairs_file))
    pairs, _ = tokenize_preferences(dataset.select(range(4)), "alpaca", 1024)
    batch = PreferenceCollator()([pairs[i] for i in range(4)])
    torch.manual_seed(0)
    policy = GPTForCausalLM(GPTConfig(n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    reference = GPTForCausalLM(GPTConfig(n_embd=32, n_layer=2, n_head=2, n_positions=128)).eval()
    beta = 0.3
    pi = independent_logps(policy, batch["input_ids"], batch["labels"], reduction)
    ref = independent_logps(reference, batch["input_ids"], batch["labels"], reduction)
    expected = {"loss": [], "chosen": [], "rejected": []}
    for i in range(4):
        z = beta * ((pi[i] - pi[i + 4]) - (ref[i] - ref[i + 4]))
        expected["loss"].append(math.log1p(math.exp(-z)))  # -log(sigmoid(z))
        expected["chosen"].append(beta * (pi[i] - ref[i]))
        expected["rejected"].append(beta * (pi[i + 4] - ref[i + 4]))
    module = PreferenceLoss(policy, paths, beta, reduction)
    with torch.no_grad():
        loss, sums = module(batch["input_ids"][:, :-1], batch["labels"][:, 1:], torch.tensor(ref))
    chosen, rejected = sum(expected["chosen"]), sum(expected["rejected"])
    assert loss.item() == pytest.approx(sum(expected["loss"]) / 4, abs=1e-5)
    assert sums.tolist() == pytest.approx([sum(expected["loss"]), chosen, rejected, chosen - rejected,
                                           sum(c > r for c, r in zip(expected["chosen"], expected["rejected"]))],
                                          abs=1e-4)
    assert abs(chosen - rejected) > 1e-3, "the two models differ: the check is not between zeros"


# ---------------------------------------------------------------- a real tuning run


@pytest.mark.slow
def test_dpo_on_synthetic_pairs_raises_held_out_accuracy_and_writes_the_run(demo_run, tmp_path):
    """The offline demo's SFT model tuned on pairs it has never seen (right answer chosen over a wrong
    one): ln 2 and zero margins before, clearly better held-out figures after; the folder has the
    plots, the card's DPO section and test-set responses."""
    sft, _ = demo_run
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(make_synthetic_preferences(300, seed=7)))
    out = dpo(tmp_path, "dpo", sft, pairs, batch_size=16, learning_rate=1e-4, max_steps=10, eval_every=5,
              eval_batches=2, generate=True, max_new_tokens=6)
    metrics = json.loads((out / "metrics.json").read_text())["dpo"]
    before, after = metrics["initial"], metrics["final"]
    for split in ("train", "val"):
        assert before[f"{split}_loss"] == pytest.approx(LN2, abs=1e-6), "the policy is the reference at step 0"
        for name in ("chosen_reward", "rejected_reward", "margin", "accuracy"):
            assert abs(before[f"{split}_{name}"]) < 1e-7
    assert after["val_accuracy"] >= 0.9, after
    assert after["val_margin"] > 0.01 and after["val_loss"] < LN2 - 0.005, after
    assert metrics["sft_model"] == str(sft) and metrics["reference"] == "frozen copy"
    assert metrics["history"]["step"] == [0, 5]
    for name in ("dpo-plot.png", "dpo-plot.pdf", "loss-plot.png", "test-responses.json", "recipe.json"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "preference-tuned with DPO" in card and "## Preference tuning (DPO)" in card
    assert "beta 0.1, mean token log-probs, reference: frozen copy" in card
    assert f"preference accuracy | 0.000 → {after['train_accuracy']:.3f}" in card
    args = json.loads((out / "training_args.json").read_text())
    assert args["beta"] == 0.1 and args["prompt_style"] == "alpaca", "the SFT recipe's style"
    assert len(json.loads((out / "test-responses.json").read_text())) == 30
    # a judge score recorded later re-renders the card as a DPO card
    report = out / "judge-report.json"
    report.write_text(json.dumps({"summary": {"mean": 42.5, "scored": 30, "n": 30}, "judge": {"model": "judge"}}))
    record_judge_score(out, report)
    card = (out / "README.md").read_text()
    assert "**42.50**" in card and "## Preference tuning (DPO)" in card


# ---------------------------------------------------------------- training behaviour


def test_two_processes_equal_one(sft_checkpoint, pairs_file, tmp_path):
    out = tmp_path / "ddp"
    cmd = [*distributed_run(2), str(REPO / "scripts" / "dpo.py"), "--model", str(sft_checkpoint), "--data", str(pairs_file),
           "--output-dir", str(out), "--batch-size", "4", "--max-steps", "3", "--no-generate",
           "--no-sample-every-epoch", "--eval-batches", "2", "--eval-every", "2", "--learning-rate", "1e-3"]
    result = run_processes(cmd, env={**ENV, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on CPU" in result.stdout + result.stderr
    single = dpo(tmp_path, "single", sft_checkpoint, pairs_file, batch_size=8, max_steps=3)
    assert max_difference(out, single) <= ROUND_OFF


def test_precomputed_reference_and_sum_reduction(sft_checkpoint, pairs_file, tmp_path):
    live = dpo(tmp_path, "live", sft_checkpoint, pairs_file)
    pre = dpo(tmp_path, "pre", sft_checkpoint, pairs_file, precompute_reference=True)
    assert max_difference(live, pre) <= 1e-5
    metrics = json.loads((pre / "metrics.json").read_text())["dpo"]
    assert metrics["reference"] == "precomputed"
    assert metrics["initial"]["val_loss"] == pytest.approx(LN2, abs=1e-5)
    summed = dpo(tmp_path, "sum", sft_checkpoint, pairs_file, logprob_reduction="sum")
    assert max_difference(live, summed) > 1e-4, "sum and mean are different objectives"


def test_lora_reference_is_the_model_without_adapters(sft_checkpoint, pairs_file, tmp_path, monkeypatch):
    import gpt_sft.train.dpo_loop as dpo_loop

    seen = {}
    real_setup = dpo_loop.setup_dpo

    def recording_setup(cfg, accelerator):
        run = real_setup(cfg, accelerator)
        seen["reference"] = run.reference
        return run

    out = tmp_path / "lora"
    cfg = DPOConfig(model=str(sft_checkpoint), data=str(pairs_file), output_dir=str(out), batch_size=8, max_steps=4,
                    eval_every=2, eval_batches=2, generate=False, sample_every_epoch=False, lora_rank=4,
                    learning_rate=1e-2)
    train(cfg, recording_setup)
    assert seen["reference"] is None, "no second copy of the model"
    metrics = json.loads((out / "metrics.json").read_text())["dpo"]
    assert metrics["reference"] == "LoRA adapters disabled"
    assert metrics["initial"]["train_loss"] == pytest.approx(LN2, abs=1e-6)
    assert metrics["final"]["train_loss"] != pytest.approx(LN2, abs=1e-4), "the adapters learned"
    assert max_difference(out, sft_checkpoint) > 1e-5, "the merged adapters changed the weights"


# ---------------------------------------------------------------- command line


@pytest.mark.parametrize("args,message", [
    (["--beta", "0"], "--beta must be a positive number"),
    (["--logprob-reduction", "max"], "--logprob-reduction"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_options_are_one_line_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        dpo_main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_without_the_main_job_s_model_the_error_says_what_to_do(tmp_path, pairs_file, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/gpt2-medium-sft here
    assert dpo_main(["--data", str(pairs_file)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --model outputs/gpt2-medium-sft: no such folder") and "scripts/train.py" in err[-1]


def test_the_command_and_yaml_share_the_training_options(tmp_path, sft_checkpoint, pairs_file):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"model: {sft_checkpoint}\ndata: {pairs_file}\nbeta: 0.5\nbatch_size: 8\nmax_steps: 1\n"
                      "eval_every: 0\nno_such_option: 1\n")
    with pytest.raises(SystemExit):
        dpo_main(["--config", str(recipe)])
    defaults = DPOConfig()
    assert (defaults.learning_rate, defaults.weight_decay, defaults.epochs, defaults.batch_size, defaults.beta,
            defaults.eval_every, defaults.eval_batches) == (5e-6, 0.01, 1, 8, 0.1, 5, 5), "the book's DPO recipe"
    assert defaults.logprob_reduction == "mean" and defaults.data.endswith("instruction-data-with-preference.json")
    recipe.write_text(recipe.read_text().replace("no_such_option: 1\n", f"output_dir: {tmp_path / 'out'}\n"
                                                 "generate: false\n"))
    assert dpo_main(["--config", str(recipe), "--beta", "0.25", "--no-sample-every-epoch"]) == 0
    assert json.loads((tmp_path / "out" / "training_args.json").read_text())["beta"] == 0.25
