"""Training stages as classes (issue 24): every stage is one class in the registry, run by the shared setup and loop;
every training option takes effect in every stage or is refused in one line. (One loader builder, one prompt-style
resolver and no private name imported across modules are rules of tests/test_architecture.py.)

The option tests build each stage's run with the shared setup on a tiny random model (``--model scratch``) and the
same synthetic pairs (SFT reads them as instructions), then show each option's effect against a run without it:
a setup, one step or a short fit, not whole trainings, except one full run per stage for what happens after the
loop (an unmerged adapter, test-set responses, an export)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_stage_run, tiny_train_config
from datasets import Dataset

from gpt_sft.cli.main import COMMANDS
from gpt_sft.cli.train import main as train_main
from gpt_sft.data.synthetic import make_synthetic_preferences
from gpt_sft.data.tokenize import tokenize_dataset
from gpt_sft.data.validate import InstructionDataError
from gpt_sft.model.tokenizer import get_tokenizer
from gpt_sft.train import loop
from gpt_sft.train.config import TrainConfig
from gpt_sft.train.loop import make_accelerator
from gpt_sft.train.loss import BOOK, base_model
from gpt_sft.train.stage import Stage
from gpt_sft.train.stages import STAGES, stage_class

COMMANDS_UNDER_TEST = list(STAGES)  # train, dpo, orpo, simpo


@pytest.fixture
def global_torch_state():
    """What a run sets for the whole process (threads, TF32 flags), put back after the test."""
    threads = torch.get_num_threads()
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state whose mixed precision cannot change once set: cleared before and
    after a test that sets it, so that no later run of this worker inherits bf16."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def config(command: str, data: Path, output_dir: Path, **overrides):
    return tiny_train_config(data, output_dir, config_type=stage_class(command).config_type, **overrides)


make_run = tiny_stage_run


def rows_per_example(run) -> int:
    return 2 if run.stage.unit == "pairs" else 1  # a pair is a chosen and a rejected row


def first_batch(run) -> dict:
    return next(iter(run.data.train))


def block_calls(run) -> dict:
    """Training-mode passes into the MLP of the policy's first block, and the dtype of its output. Counted on entry:
    the backward pass's recomputation stops once it has what the backward needs, inside the MLP."""
    seen = {"calls": 0, "dtype": None}
    mlp = base_model(run.model).transformer.h[0].mlp
    forward = mlp.forward

    def counting(x):
        seen["calls"] += mlp.training
        out = forward(x)
        seen["dtype"] = out.dtype
        return out

    mlp.forward = counting
    return seen


def one_step(run) -> float:
    run.model.train()
    loss, _ = run.stage.step(run, [first_batch(run)])
    return loss


# ---------------------------------------------------------------- the registry


def test_every_stage_is_one_class_in_the_registry_with_its_command():
    for command in STAGES:
        stage = stage_class(command)
        assert issubclass(stage, Stage) and stage.command == command
        assert dataclasses.is_dataclass(stage.config_type) and issubclass(stage.config_type, TrainConfig)
        assert COMMANDS[command][1] == "train", "every stage runs through the one training command"
    assert stage_class("train").config_type is TrainConfig
    # a stage's config holds only its own fields beside the training options
    own = {command: {f.name for f in dataclasses.fields(stage_class(command).config_type)}
           - {f.name for f in dataclasses.fields(TrainConfig)} for command in STAGES}
    assert own == {"train": set(), "dpo": {"beta", "logprob_reduction", "precompute_reference"},
                   "orpo": {"orpo_lambda"}, "simpo": {"beta", "gamma"}}


def test_a_refused_option_is_one_line_naming_the_flag_and_sets_nothing(pairs_file, tmp_path, global_torch_state):
    class Picky(stage_class("simpo")):
        refused = {"tf32": "the test says so"}

    cfg = config("simpo", pairs_file, tmp_path / "x", tf32=True)
    with pytest.raises(ValueError, match=r"^--tf32 True: not with gpt-sft simpo \(the test says so\)$"):
        loop.setup(cfg, make_accelerator(cfg), Picky)
    assert not torch.backends.cuda.matmul.allow_tf32, "refused before anything was set"
    cfg = config("simpo", pairs_file, tmp_path / "y")
    assert loop.setup(cfg, make_accelerator(cfg), Picky).stage.command == "simpo"  # the default value: accepted


# ---------------------------------------------------------------- every option, in every stage

# Options whose path never passes through a stage, shown by the tests named (the shared train() and build_model).
SHOWN_ELSEWHERE = {
    "model": "every stage's own tests start from --model scratch and from SFT checkpoints",
    "model_format": "build_model, before any stage code: test_weights",
    "overwrite": "prepare_output_dir in train(), before the stage exists: test_hardening, test_run_ownership",
    "push_to_hub": "train() after the final save: test_training's push test",
    "verify": "train() after the final save (the demo builds, the LoRA runs, the stages' CLI runs): test_verify",
    "hub_private": "train() after the final save: test_training's push test",
    "data_format": "conversations: SFT's in test_conversations, the preference stages' pairs in "
                   "test_conversation_pairs",
    "train_on": "conversations, SFT only (the preference stages refuse any value but last): test_conversations, "
                "test_conversation_pairs",
}
# options -> shown by: the combined setup, the drop-overlong pair, compile, one step, LoRA, the short fit, the invalid
# data, the full run (below)
SETUP_OPTIONS = dict(n_layers=2, emb_dim=48, n_heads=3, context_length=96, drop_rate=0.1, tie_word_embeddings=False,
                     prompt_style="phi3", allowed_max_length=40, train_fraction=0.7, test_fraction=0.2,
                     shuffle_split=True, seed=7, batch_size=4, learning_rate=3e-4, weight_decay=0.3,
                     lr_scheduler="linear", warmup_steps=2, fused_optimizer=False, cpu_threads=3, tf32=True,
                     targets_only_logits=False, padding_free=False, share_prompt_prefix=False)
PROBED = (set(SETUP_OPTIONS) | {"mask_prompt", "drop_overlong", "compile", "gradient_checkpointing", "mixed_precision",
                                "lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules", "epochs",
                                "max_steps", "gradient_accumulation_steps", "max_grad_norm", "eval_every",
                                "eval_batches", "sample_every_epoch", "save_every", "keep_checkpoints", "log_with",
                                "resume_from_checkpoint", "output_dir", "data", "skip_invalid", "merge_lora",
                                "generate", "max_new_tokens", "export"})


def test_every_training_option_is_shown_in_every_stage_or_named_where():
    options = {f.name for f in dataclasses.fields(TrainConfig)}
    assert PROBED | set(SHOWN_ELSEWHERE) == options, "a new option needs a probe here (or a refusal in a stage)"
    assert not PROBED & set(SHOWN_ELSEWHERE)


def observe(run) -> dict:
    """What the combined setup options change, as seen in the run."""
    model, batch = base_model(run.model), first_batch(run)
    group = run.optimizer.param_groups[0]
    return {
        "n_layers": len(model.transformer.h), "emb_dim": model.config.n_embd, "n_heads": model.config.n_head,
        "context_length": model.config.n_positions, "drop_rate": model.config.drop_rate,
        "tie_word_embeddings": model.lm_head.weight is model.transformer.wte.weight,
        "prompt_style": get_tokenizer().decode(batch["input_ids"][0, :5].tolist()),
        # the inputs and the last target: allowed_max_length + 1 columns
        "allowed_max_length": max(b["input_ids"].shape[1] for b in run.data.train) <= 40 + 1,
        "train_fraction": run.data.stats["split"]["train"], "test_fraction": run.data.stats["split"]["test"],
        "shuffle_split": [json.dumps(e, sort_keys=True) for e in run.data.val_entries],
        "seed": (run.data.sampler.seed, float(model.transformer.wte.weight[0, 0].detach())),
        "batch_size": batch["input_ids"].shape[0] // rows_per_example(run),
        "learning_rate": group["initial_lr"], "weight_decay": group["weight_decay"],
        "lr_scheduler": run.scheduler.scheduler.lr_lambdas[0](10_000), "warmup_steps": run.scheduler.get_last_lr()[0],
        "fused_optimizer": bool(run.optimizer.defaults.get("fused")), "cpu_threads": torch.get_num_threads(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        **{name: getattr(run.loss.paths, field) for name, field in (("targets_only_logits", "targets_only"),
                                                                  ("padding_free", "padding_free"),
                                                                  ("share_prompt_prefix", "share_prefix"))},
        "mask_prompt": int(batch["labels"][0, 1]) == -100,
        "paths": run.loss.paths,
    }


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_setup_options_take_effect_in_every_stage(command, pairs_file, tmp_path, global_torch_state):
    default_mask = config(command, pairs_file, tmp_path / "d").mask_prompt
    base = observe(make_run(command, pairs_file, tmp_path / "base", cpu_threads=1))
    changed = observe(make_run(command, pairs_file, tmp_path / "changed", mask_prompt=not default_mask,
                               **SETUP_OPTIONS))
    same = [name for name in [*SETUP_OPTIONS, "mask_prompt"] if changed[name] == base[name]]
    assert not same, f"accepted and ignored by {command}: {same} ({ {n: changed[n] for n in same} })"
    # what the comparison alone could miss (one option's change can hide another's)
    assert changed["paths"] == BOOK and changed["tf32"] and changed["cpu_threads"] == 3
    assert changed["prompt_style"].startswith("<|user|>") and changed["mask_prompt"] is (not default_mask)
    assert changed["warmup_steps"] == 0.0 and changed["lr_scheduler"] == 0.0 and base["lr_scheduler"] == 1.0
    entries = [json.dumps(e, sort_keys=True) for e in json.loads(pairs_file.read_text())]
    assert set(changed["shuffle_split"]) != set(entries[84 + 24:]), "not the file-order validation split"


@pytest.fixture(scope="module")
def long_answers(tmp_path_factory) -> tuple[Path, int]:
    """Pairs of which every other one has answers of forty-odd tokens (the synthetic ones are one token), and a
    length limit that every prompt and every short pair fits in and every long pair passes: what --drop-overlong acts
    on."""
    entries = make_synthetic_preferences(120, seed=4)
    for e in entries[::2]:
        words = " ".join(e["input"].split("\n"))
        e["output"] = e["chosen"] = f"The answer is {e['chosen']}: I read the list ({words}) and counted " * 2
        e["rejected"] = f"Perhaps {e['rejected']}, though I did not count the words of the list ({words}) " * 2
    path = tmp_path_factory.mktemp("long") / "long.json"
    path.write_text(json.dumps(entries))
    prompts = tokenize_dataset(Dataset.from_list(entries).select_columns(["instruction", "input", "output"]),
                               style="alpaca")["prompt_length"]
    return path, max(prompts) + 4


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_drop_overlong_and_compile_take_effect_in_every_stage(command, long_answers, tmp_path):
    data, limit = long_answers
    cut = make_run(command, data, tmp_path / "cut", allowed_max_length=limit)
    dropped = make_run(command, data, tmp_path / "dropped", allowed_max_length=limit, drop_overlong=True,
                       compile=True, batch_size=2)
    assert cut.data.stats["train_overlong"] > 0, "the limit cuts some examples: the comparison can fail"
    assert len(dropped.data.train.dataset) == len(cut.data.train.dataset) - cut.data.stats["train_overlong"]
    assert all(block._compiled_call_impl is not None for block in base_model(dropped.model).transformer.h)
    assert all(block._compiled_call_impl is None for block in base_model(cut.model).transformer.h)
    if dropped.reference is not None:  # DPO's frozen copy runs its own blocks, not the policy's
        for block in dropped.reference.transformer.h:
            assert block._compiled_call_impl.__wrapped__.__self__ is block


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_gradient_checkpointing_and_mixed_precision_take_effect_in_every_stage(command, pairs_file, tmp_path,
                                                                                fresh_accelerate_state):
    plain = make_run(command, pairs_file, tmp_path / "plain")
    seen_plain = block_calls(plain)
    one_step(plain)
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    run = make_run(command, pairs_file, tmp_path / "run", gradient_checkpointing=True, mixed_precision="bf16")
    seen = block_calls(run)
    loss = one_step(run)
    assert seen_plain == {"calls": 1, "dtype": torch.float32}
    assert seen["calls"] == 2, "checkpointing recomputes the block in the backward pass"
    assert seen["dtype"] == torch.bfloat16, "the step runs under bf16 autocast"
    assert loss == loss and run.accelerator.mixed_precision == "bf16"


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_lora_options_take_effect_in_every_stage(command, pairs_file, tmp_path):
    run = make_run(command, pairs_file, tmp_path / "lora", lora_rank=2, lora_alpha=8, lora_dropout=0.1,
                   lora_target_modules=["q_proj", "c_fc"], gradient_checkpointing=True)
    lora = run.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, set(lora.target_modules)) == (2, 8, 0.1, {"q_proj", "c_fc"})
    one_step(run)
    named = dict(run.model.named_parameters())
    adapters = [name for name in named if "lora_B" in name]
    assert len(adapters) == 2 and all(named[n].grad is not None and named[n].grad.abs().sum() > 0 for n in adapters), \
        "every adapter learns (with activation checkpointing too)"
    assert all(p.grad is None for n, p in named.items() if "lora_" not in n), "only the adapters train"


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_loop_options_take_effect_in_every_stage(command, pairs_file, tmp_path, monkeypatch):
    """A short fit: 2 epochs of 3 batches, 2 micro-batches a step, stopped at step 3 (so in epoch 2); clipped
    gradients; evaluations at steps 0 and 2 of 1 batch each; a sample after the first epoch; a checkpoint every
    step, the newest kept; tensorboard logs; and a run that resumes from the checkpoint."""
    overrides = dict(train_fraction=0.2, epochs=2, gradient_accumulation_steps=2, max_steps=3, max_grad_norm=1e-3,
                     eval_every=2, eval_batches=1, sample_every_epoch=True, save_every=1, keep_checkpoints=1,
                     log_with="tensorboard")
    run = make_run(command, pairs_file, tmp_path / "fit", **overrides)
    clipped, samples, evaluated = [], [], []
    real_clip = run.accelerator.clip_grad_norm_
    monkeypatch.setattr(run.accelerator, "clip_grad_norm_", lambda p, norm: clipped.append(norm) or real_clip(p, norm))
    monkeypatch.setattr(loop, "print_sample", lambda run, prompt: samples.append(prompt))
    real_evaluate = run.stage.evaluate
    monkeypatch.setattr(run.stage, "evaluate",
                        lambda run, step, loss: evaluated.append(step) or real_evaluate(run, step, loss))
    with loop.Interruptions(run.accelerator) as interruptions:
        state = loop.fit(run, interruptions)
    run.accelerator.end_training()
    assert (state.global_step, state.epoch, state.micro_batches_in_epoch) == (3, 1, 2)
    assert clipped == [1e-3] * 3 and len(samples) == 1 and evaluated == [0, 2] == state.eval_steps
    assert [p.name for p in (tmp_path / "fit" / "checkpoints").iterdir()] == ["step-000003"]
    assert list((tmp_path / "fit" / "gpt-sft").rglob("events.out.tfevents.*")), "tensorboard wrote its log"
    resumed = make_run(command, pairs_file, tmp_path / "fit", resume_from_checkpoint="latest", **overrides)
    assert resumed.state.global_step == 3 and resumed.state.eval_steps == [0, 2]


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_skip_invalid_takes_effect_in_every_stage(command, tmp_path):
    entries = make_synthetic_preferences(60, seed=3)
    entries[5]["output"] = ""
    data = tmp_path / "bad.json"
    data.write_text(json.dumps(entries))
    with pytest.raises(InstructionDataError, match="entry 5"):
        make_run(command, data, tmp_path / "strict")
    run = make_run(command, data, tmp_path / "skip", skip_invalid=True)
    assert run.data.load_stats.num_skipped == 1 and run.data.stats["entries_loaded"] == 59


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_what_follows_the_loop_takes_effect_in_every_stage(command, pairs_file, tmp_path):
    """One full run per stage through the command: an unmerged LoRA adapter, test-set responses of at most 2
    tokens, an export; the card and metrics are the stage's."""
    out = tmp_path / "run"
    args = ["--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2", "--context-length", "64",
            "--data", str(pairs_file), "--output-dir", str(out), "--max-steps", "1", "--eval-every", "0",
            "--eval-batches", "1", "--no-sample-every-epoch", "--lora-rank", "2", "--no-merge-lora",
            "--max-new-tokens", "2", "--export", "hf-gpt2", "--test-fraction", "0.05"]
    assert train_main(args, command=command) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    responses = json.loads((out / "test-responses.json").read_text())
    # two new tokens (a random model's: word pieces) make at most two words
    assert len(responses) == 6 and all(len(r["model_response"].split()) <= 2 for r in responses), responses
    assert (out / "export" / "hf-gpt2" / "config.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    if command == "train":
        assert "instruction-fine-tuned" in card and not any(c in metrics for c in STAGES)
    else:
        assert metrics[command]["initial"] and f"## Preference tuning ({stage_class(command).title})" in card


# ---------------------------------------------------------------- one of each, no private imports
