"""Training with Accelerate: CLI/YAML config, accumulation, resume, interruption, LoRA, outputs, push."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (TINY_TRAIN, distributed_run, run_processes, score_stand_in, start_until_checkpoint,
                      tiny_train_config)
from safetensors.torch import load_file

from gpt_sft.cli.train import main, train
from gpt_sft.train.config import TrainConfig
from gpt_sft.train.state import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = TINY_TRAIN


@pytest.fixture(scope="module")
def data_file(synthetic_data_file) -> Path:
    return synthetic_data_file  # 85 train -> 10 batches of 8 per epoch, 5 val, 10 test


def run(tmp_path: Path, name: str, data_file: Path, **overrides) -> Path:
    return train(tiny_train_config(data_file, tmp_path / name, **overrides))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def assert_same_weights(a: Path, b: Path, atol: float = 0.0):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"max weight difference {worst}"


# ---------------------------------------------------------------- configuration


def test_flags_yaml_and_defaults(tmp_path):
    from gpt_sft.common.options import parse_config

    defaults = parse_config(TrainConfig, [])
    # the book's recipe
    assert (defaults.model, defaults.batch_size, defaults.learning_rate, defaults.weight_decay, defaults.epochs,
            defaults.seed, defaults.eval_every, defaults.eval_batches, defaults.prompt_style) == (
        "gpt2-medium (355M)", 8, 5e-5, 0.1, 2, 123, 5, 5, "alpaca")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 3\nbatch_size: 4\nmask_prompt: true\nlora_target_modules: [q_proj, v_proj]\n")
    cfg = parse_config(TrainConfig, ["--config", str(recipe), "--batch-size", "2", "--no-generate",
                                     "--learning-rate", "1e-4", "--push-to-hub", "me/model"])
    assert (cfg.epochs, cfg.batch_size, cfg.mask_prompt, cfg.generate, cfg.learning_rate, cfg.push_to_hub) == (
        3, 2, True, False, 1e-4, "me/model")
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("text,message", [
    ("epochz: 3\n", "unknown option 'epochz'"),
    ("epochs: three\n", "'epochs' must be int"),
    ("mask_prompt: maybe\n", "must be true or false"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_yaml_is_a_clear_error(tmp_path, capsys, text, message):
    from gpt_sft.common.options import parse_config

    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(SystemExit):
        parse_config(TrainConfig, ["--config", str(recipe)])
    err = capsys.readouterr().err
    assert message in err and str(recipe) in err


def test_help_lists_every_required_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--data", "--output-dir", "--prompt-style", "--mask-prompt", "--allowed-max-length",
                 "--epochs", "--batch-size", "--gradient-accumulation-steps", "--learning-rate", "--weight-decay",
                 "--eval-every", "--eval-batches", "--seed", "--save-every", "--resume-from-checkpoint",
                 "--lora-rank", "--lora-alpha", "--push-to-hub", "--no-generate", "--n-layers", "--emb-dim",
                 "--n-heads", "--context-length", "--gradient-checkpointing", "--lr-scheduler", "--warmup-steps",
                 "--config"):
        assert flag in text, flag


# ---------------------------------------------------------------- equivalences


def test_gradient_accumulation_equals_big_batch(tmp_path, data_file):
    big = run(tmp_path, "big", data_file, batch_size=8, max_steps=4)
    accumulated = run(tmp_path, "acc", data_file, batch_size=4, gradient_accumulation_steps=2, max_steps=4)
    small = run(tmp_path, "small", data_file, batch_size=4, max_steps=4)
    assert_same_weights(big, accumulated, atol=2e-6)
    with pytest.raises(AssertionError):  # the comparison can fail: batch 4 without accumulation differs
        assert_same_weights(big, small, atol=2e-6)


def test_speed_switches_keep_the_books_losses_and_weights(tmp_path, data_file):
    """The defaults (padding-free, shared prompt prefix, logits only at targets, fused AdamW) against all off
    (logits everywhere, padded batches, torch's default AdamW: the book's computation): the same
    evaluation losses and final weights up to float round-off."""
    common = dict(max_steps=6, eval_every=2, mask_prompt=True, tie_word_embeddings=False, learning_rate=1e-3)
    fast = run(tmp_path, "fast", data_file, **common)
    book = run(tmp_path, "book", data_file, **common, padding_free=False, targets_only_logits=False,
               fused_optimizer=False, share_prompt_prefix=False)
    histories = [json.loads((p / "metrics.json").read_text())["history"] for p in (fast, book)]
    assert histories[0]["step"] == histories[1]["step"] == [0, 2, 4]
    for key in ("train_loss", "val_loss"):
        assert histories[0][key] == pytest.approx(histories[1][key], abs=1e-5)
    assert_same_weights(fast, book, atol=1e-5)
    # ... and the weights moved: the comparison is not between two untouched models
    start = TrainConfig(**{**TINY_ARGS, "data": str(data_file), "tie_word_embeddings": False})
    from gpt_sft.train.loop import build_model

    initial = build_model(start).state_dict()
    assert max((weights(fast)[k] - initial[k]).abs().max().item() for k in initial) > 1e-3


def test_compile_trains_the_same_and_saves_plain_weights(tmp_path, data_file):
    """--compile (regional torch.compile through Accelerate): the same losses and weights, and a
    checkpoint whose names carry no compile wrapper (``_orig_mod``), loadable as usual."""
    common = dict(max_steps=3, eval_every=2, learning_rate=1e-3)
    compiled = run(tmp_path, "compiled", data_file, compile=True, **common)
    plain = run(tmp_path, "plain", data_file, **common)
    assert not any("_orig_mod" in k for k in weights(compiled))
    assert_same_weights(compiled, plain, atol=1e-5)
    metrics = [json.loads((p / "metrics.json").read_text())["history"] for p in (compiled, plain)]
    assert metrics[0]["val_loss"] == pytest.approx(metrics[1]["val_loss"], abs=1e-5)


def test_merged_evaluation_equals_batch_by_batch():
    """Padding-free evaluation runs all batches in one forward pass; each batch's loss is unchanged."""
    from gpt_sft import GPTConfig, GPTForCausalLM
    from gpt_sft.data.collator import InstructionDataCollator
    from gpt_sft.train.loss import BOOK, LossPaths, batch_loss, batch_losses

    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_embd=32, n_layer=2, n_head=2)).eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for size, longest in ((8, 30), (8, 12), (3, 21)):  # different widths and a short last batch
        examples = [{"input_ids": torch.randint(0, 50256, (int(n),), generator=g).tolist(), "prompt_length": 4}
                    for n in torch.randint(5, longest + 1, (size,), generator=g)]
        batches.append(InstructionDataCollator(mask_prompt=True)(examples))
    with torch.no_grad():
        one_by_one = [batch_loss(model, b["input_ids"][:, :-1], b["labels"][:, 1:], BOOK) for b in batches]
        merged = batch_losses(model, batches, LossPaths(padding_free=True, share_prefix=False))
        separate = batch_losses(model, batches, LossPaths(padding_free=False, share_prefix=False))
    assert torch.allclose(torch.stack(merged), torch.stack(one_by_one), atol=1e-5)
    assert torch.allclose(torch.stack(separate), torch.stack(one_by_one), atol=1e-5)
    assert len({round(x.item(), 4) for x in merged}) == 3  # three different batch losses, not one mean


def test_speed_switches_and_fused_optimizer():
    from gpt_sft.train.loop import make_optimizer

    # each switch builds on the one before it; LoRA dropout turns the shared prefix off
    from gpt_sft.train.loss import BOOK, LossPaths

    assert TrainConfig().loss_paths() == LossPaths(targets_only=True, padding_free=True, share_prefix=True)
    assert TrainConfig(targets_only_logits=False).loss_paths() == BOOK
    assert TrainConfig(padding_free=False).loss_paths().share_prefix is False
    assert TrainConfig(lora_rank=4, lora_dropout=0.1).loss_paths().share_prefix is False
    params = [torch.nn.Parameter(torch.ones(3))]
    assert make_optimizer(TrainConfig(), params).defaults["fused"] is True
    assert not make_optimizer(TrainConfig(fused_optimizer=False), params).defaults["fused"]


def test_cpu_threads_default_shares_the_cores_among_local_processes(monkeypatch):
    import psutil

    from gpt_sft.train.loop import cpu_threads

    assert cpu_threads(TrainConfig(cpu_threads=3)) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = min(psutil.cpu_count(logical=False) or os.cpu_count(), len(os.sched_getaffinity(0)))
    assert cpu_threads(TrainConfig()) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads(TrainConfig()) == max(1, cores // 2)
    with pytest.raises(ValueError, match="--cpu-threads must be >= 0"):
        TrainConfig(cpu_threads=-1)


@pytest.mark.parametrize("stop", [7, 10], ids=["mid-epoch", "at-the-epochs-last-step"])
def test_resume_equals_uninterrupted_across_an_epoch(tmp_path, data_file, stop):
    """10 steps per epoch; stop at step 7, or at step 10, the epoch's last (its checkpoint records every batch of the
    epoch done: Accelerate 1.1, asked to skip them all, gave None batches and the resume failed), resume to step 13
    (in epoch 2), with dropout on."""
    common = dict(batch_size=8, max_steps=13, epochs=2, drop_rate=0.1, save_every=stop, eval_every=3)
    straight = run(tmp_path, "straight", data_file, **common)
    run(tmp_path, "resumed", data_file, **{**common, "max_steps": stop})
    ckpt = tmp_path / "resumed" / "checkpoints" / f"step-{stop:06d}"
    assert (ckpt / "trainer_state.json").is_file()
    resumed = run(tmp_path, "resumed", data_file, **common, resume_from_checkpoint="latest")
    assert_same_weights(straight, resumed)
    a = json.loads((straight / "metrics.json").read_text())["history"]
    b = json.loads((resumed / "metrics.json").read_text())["history"]
    assert a == b, "the loss history of the resumed run equals the uninterrupted one"


def test_a_cut_checkpoint_is_named_and_a_lost_random_state_is_said(tmp_path, data_file, capsys):
    """A truncated optimizer.bin was "Invalid argument" with no file named; a truncated random_states_0.pkl was
    passed over silently, and the resumed run differed from the uninterrupted one."""
    common = dict(batch_size=8, max_steps=4, save_every=2, eval_every=0, drop_rate=0.1)
    run(tmp_path, "run", data_file, **{**common, "max_steps": 2})
    for name in ("rng", "optimizer"):
        shutil.copytree(tmp_path / "run", tmp_path / name)
    cut = {"rng": "random_states_0.pkl", "optimizer": "optimizer.bin"}
    for name, file in cut.items():
        path = tmp_path / name / "checkpoints" / "step-000002" / file
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    capsys.readouterr()
    run(tmp_path, "rng", data_file, **common, resume_from_checkpoint="latest")
    err = capsys.readouterr().err
    assert "random_states_0.pkl cannot be read" in err and "not be identical to an uninterrupted run" in err
    with pytest.raises(ValueError, match=r"--resume-from-checkpoint .*step-000002: the checkpoint cannot be read"):
        run(tmp_path, "optimizer", data_file, **common, resume_from_checkpoint="latest")


# ---------------------------------------------------------------- robustness


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path, data_file):
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"Loss became (nan|inf).*last good checkpoint: .*step-000001"):
        run(tmp_path, "nan", data_file, learning_rate=1e12, save_every=1, max_steps=20, eval_every=0)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts and all(not n.startswith(".") for n in ckpts)
    state = json.loads((out / "checkpoints" / ckpts[-1] / "trainer_state.json").read_text())
    assert state["global_step"] >= 1
    assert not (out / "config.json").exists(), "no final checkpoint from a diverged run"


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run(tmp_path, data_file):
    out = tmp_path / "interrupted"
    args = [sys.executable, str(REPO / "scripts" / "train.py"), "--model", "scratch", "--n-layers", "1",
            "--emb-dim", "32", "--n-heads", "2", "--context-length", "64", "--data", str(data_file),
            "--output-dir", str(out), "--epochs", "200", "--eval-every", "0", "--no-generate",
            "--no-sample-every-epoch", "--save-every", "5", "--tie-word-embeddings", "--mask-prompt"]
    proc = start_until_checkpoint(args, out / "checkpoints" / "step-000005", {**os.environ, "TQDM_DISABLE": "1"})
    proc.send_signal(signal.SIGINT)
    try:
        log, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # show where it is stuck: the trainer dumps its stacks on SIGUSR1
        proc.send_signal(signal.SIGUSR1)
        time.sleep(3)
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"the trainer did not stop within 120 s of SIGINT; its output ends:\n{log[-6000:]}")
    assert proc.returncode == 130, log[-2000:]
    assert "Interrupted: saved a resumable checkpoint" in log
    steps = [int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert max(steps) >= 5
    assert not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir()), "no half-written checkpoint"
    state = json.loads((out / "checkpoints" / f"step-{max(steps):06d}" / "trainer_state.json").read_text())
    target = state["global_step"] + 3
    resumed = run(tmp_path, "interrupted", data_file, epochs=200, eval_every=0, save_every=5,
                  resume_from_checkpoint="latest", max_steps=target)
    straight = run(tmp_path, "straight", data_file, epochs=200, eval_every=0, max_steps=target)
    assert_same_weights(straight, resumed)


# ---------------------------------------------------------------- outputs


def test_outputs_checkpoint_card_plot_and_responses(tmp_path, data_file, capsys):
    out = run(tmp_path, "full", data_file, max_steps=6, eval_every=5, generate=True, max_new_tokens=4,
              sample_every_epoch=True, epochs=1, log_with="tensorboard")
    log = capsys.readouterr()
    text = log.out + log.err
    assert "Initial losses: training loss" in text
    assert "Ep 1 (Step 000000): Train loss" in text and "Ep 1 (Step 000005)" in text
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "configuration_gpt.py", "modeling_gpt.py", "tokenizer.json",
            "generation_config.json", "training_args.json", "metrics.json", "loss-plot.pdf", "loss-plot.png",
            "README.md", "test-responses.json"} <= names
    assert not any(n.startswith(".") for n in names), "no staging folders left"
    events = list(out.rglob("events.out.tfevents.*"))
    assert events, "TensorBoard events written through Accelerate's tracker"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [0, 5]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 50256
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 6 and metrics["history"]["step"] == [0, 5]
    assert metrics["final_val_loss"] < metrics["initial_val_loss"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "pipeline_tag: text-generation" in card and "gpt-sft" in card
    assert "library_name: transformers" in card and "5e-05" not in card.split("---")[1]
    assert f"{metrics['initial_val_loss']:.3f}" in card and "lr 5e-05" in card
    responses = json.loads((out / "test-responses.json").read_text())
    assert len(responses) == 10 and all(isinstance(r["model_response"], str) for r in responses)
    args = json.loads((out / "training_args.json").read_text())
    assert args["max_steps"] == 6 and args["model"] == "scratch"

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert model.config.n_embd == 32


def test_push_to_hub_uploads_the_final_folder_without_printing_the_token(tmp_path, data_file, capsys, monkeypatch):
    """The Hub is unreachable here: a local stand-in of HfApi records the calls and copies the files."""

    import gpt_sft.export.hub

    secret = "hf_SECRETtokenTHATmustNEVERbePRINTED"
    monkeypatch.setenv("HF_TOKEN", secret)
    uploaded = tmp_path / "hub"
    calls = []

    class LocalHubStandIn:
        role = "write"

        def whoami(self):
            calls.append(("whoami",))
            return {"name": "me", "auth": {"accessToken": {"role": self.role}}}

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create_repo", repo_id, private))
            return type("RepoUrl", (), {"url": f"http://127.0.0.1/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, repo_type, commit_message, ignore_patterns):
            calls.append(("upload_folder", repo_id))
            import fnmatch

            for path in Path(folder_path).rglob("*"):
                rel = path.relative_to(folder_path).as_posix()
                if path.is_file() and not any(fnmatch.fnmatch(rel, p) for p in ignore_patterns):
                    (uploaded / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, uploaded / rel)

    monkeypatch.setattr(gpt_sft.export.hub, "HfApi", LocalHubStandIn)
    out = run(tmp_path, "push", data_file, max_steps=2, save_every=1, push_to_hub="me/tiny-sft", hub_private=True)
    assert calls == [("whoami",), ("create_repo", "me/tiny-sft", True), ("upload_folder", "me/tiny-sft")]
    files = {p.relative_to(uploaded).as_posix() for p in uploaded.rglob("*") if p.is_file()}
    assert {"README.md", "model.safetensors", "config.json", "modeling_gpt.py", "tokenizer.json"} <= files
    assert not any(f.startswith("checkpoints/") for f in files)
    assert (out / "checkpoints").is_dir()
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert all(secret not in p.read_text(errors="ignore") for p in uploaded.rglob("*") if p.is_file())

    # checked before training: a token that can only read, then the real client in offline mode (this machine)
    LocalHubStandIn.role = "read"
    with pytest.raises(ValueError, match="--push-to-hub me/tiny-sft: the token can only read"):
        run(tmp_path, "read-only", data_file, max_steps=2, push_to_hub="me/tiny-sft")
    monkeypatch.undo()
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(ValueError, match="--push-to-hub me/tiny-sft: the Hub cannot be reached") as refused:
        run(tmp_path, "offline", data_file, max_steps=2, push_to_hub="me/tiny-sft")
    assert secret not in str(refused.value)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="no Hugging Face token is set"):
        run(tmp_path, "no-token", data_file, max_steps=2, push_to_hub="me/tiny-sft")
    assert not any((tmp_path / name).exists() for name in ("read-only", "offline", "no-token")), "nothing trained"


# ---------------------------------------------------------------- LoRA


def test_lora_trains_only_adapters_and_the_merged_model_reloads(tmp_path, data_file):
    from transformers import AutoModelForCausalLM

    from gpt_sft.train.loop import build_model

    untied = {**TINY_ARGS, "tie_word_embeddings": False, "data": str(data_file)}
    peft_model = build_model(TrainConfig(**untied, lora_rank=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lm_head" in n for n in trainable) and any("c_fc" in n for n in trainable)
    assert peft_model.peft_config["default"].lora_alpha == 64  # 16 * rank: the book's scaling

    initial = {k: v.clone() for k, v in build_model(TrainConfig(**untied)).state_dict().items()}
    lora = run(tmp_path, "lora", data_file, tie_word_embeddings=False, lora_rank=4, learning_rate=1e-2,
               max_steps=4, generate=True, max_new_tokens=3)
    merged = weights(lora)
    assert merged.keys() == initial.keys()
    changed = {k for k in merged if not torch.equal(merged[k], initial[k])}
    adapted = {k for k in merged if k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                "c_proj.weight", "c_fc.weight")) or k == "lm_head.weight"}
    assert changed == adapted, "exactly the adapted Linear weights change (merged LoRA deltas)"
    model = AutoModelForCausalLM.from_pretrained(lora, trust_remote_code=True)
    out = model.generate(torch.tensor([[15496, 11]]), max_new_tokens=3, do_sample=False, pad_token_id=50256)
    assert out.shape == (1, 5)
    assert len(json.loads((lora / "test-responses.json").read_text())) == 10


def test_a_lora_target_that_matches_no_layer_is_an_error(data_file):
    from gpt_sft.train.loop import build_model

    with pytest.raises(ValueError, match=r"--lora-target-modules nope: no Linear layer .* its Linear layers: .*q_proj"):
        build_model(TrainConfig(**TINY_ARGS, data=str(data_file), lora_rank=2, lora_target_modules=["nope", "q_proj"]))


def test_lora_skips_a_tied_output_head(data_file, capsys):
    from gpt_sft.train.loop import build_model

    peft_model = build_model(TrainConfig(**TINY_ARGS, data=str(data_file), lora_rank=2))  # tied
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and not any("lm_head" in n for n in names)
    assert "lm_head is tied" in capsys.readouterr().err


# ---------------------------------------------------------------- several processes


def test_two_process_data_parallel_equals_one_process(tmp_path, data_file):
    """A real 2-process CPU run (torchrun, gloo) with batch 4 per process equals 1 process with batch 8."""
    out = tmp_path / "ddp"
    cmd = [*distributed_run(2), str(REPO / "scripts" / "train.py"), "--model", "scratch", "--n-layers", "1", "--emb-dim", "32",
           "--n-heads", "2", "--context-length", "64", "--data", str(data_file), "--output-dir", str(out),
           "--batch-size", "4", "--max-steps", "4", "--no-generate", "--no-sample-every-epoch",
           "--tie-word-embeddings", "--mask-prompt", "--eval-batches", "2"]
    result = run_processes(cmd, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 process(es) on CPU" in result.stdout + result.stderr
    single = run(tmp_path, "single", data_file, batch_size=8, max_steps=4)
    assert_same_weights(out, single, atol=5e-6)


def test_a_command_destroys_its_process_group_at_the_end():
    """Left to the interpreter's teardown, gloo's destructor can hang a finished 2-process run (seen for an hour)."""
    import torch.distributed as dist

    from gpt_sft.cli.train import end_process_group

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert dist.is_initialized()
    end_process_group()
    assert not dist.is_initialized()
    end_process_group()  # and nothing to do without one


def test_console_script_runs_the_same_cli():
    """The installed console script is the CLI (``accelerate launch scripts/train.py`` is run for real by the bf16
    test below)."""
    result = subprocess.run([str(Path(sys.executable).parent / "gpt-sft-train"), "--help"], capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--resume-from-checkpoint" in result.stdout and "--lora-rank" in result.stdout


def test_bf16_mixed_precision_through_accelerate_launch(tmp_path, data_file):
    """Mixed precision comes from Accelerate (here bf16 autocast on the CPU), not from our code."""
    out = tmp_path / "bf16"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--num_processes", "1",
           "--mixed_precision", "bf16", str(REPO / "scripts" / "train.py"), "--model", "scratch",
           "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2", "--context-length", "64", "--data", str(data_file),
           "--output-dir", str(out), "--max-steps", "2", "--eval-every", "2", "--eval-batches", "1",
           "--batch-size", "2", "--no-generate", "--no-sample-every-epoch"]  # bf16 matmuls are emulated on this CPU: few
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mixed_precision"] == "bf16" and "mixed precision: bf16" in result.stdout + result.stderr
    # accelerate launch sets OMP_NUM_THREADS=1 for a CPU run; the trainer uses the cores instead
    from gpt_sft.train.loop import cpu_threads

    assert f"{cpu_threads(TrainConfig())} threads, mixed precision" in result.stdout + result.stderr
    assert metrics["global_step"] == 2 and all(v == v for v in metrics["history"]["train_loss"])  # finite
    assert load_file(out / "model.safetensors")["transformer.wte.weight"].dtype == torch.float32  # fp32 master


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory, data_file) -> Path:
    """A 2-step run with its test-set responses, for the judge-score tests (each copies it before writing)."""
    return run(tmp_path_factory.mktemp("judged"), "judged", data_file, max_steps=2, generate=True, max_new_tokens=2)


def test_judge_score_goes_into_metrics_and_model_card(tmp_path, judged_run, capsys):
    """scripts/evaluate.py --update-checkpoint, against a local OpenAI-compatible server that stands in
    for the judge LLM (it answers "Score: 85" to every request; the real llama.cpp judge is tested in
    test_judge_server.py)."""
    out = Path(shutil.copytree(judged_run, tmp_path / "judged"))
    from gpt_sft.cli.evaluate import main as evaluate_main  # what scripts/evaluate.py runs

    capsys.readouterr()
    with score_stand_in() as url:
        status = evaluate_main(["--responses", str(out / "test-responses.json"), "--backend", "openai", "--url",
                                url, "--judge-model", "stand-in",
                                "--update-checkpoint", str(out)])  # with its progress bar, as a user sees it
    printed = capsys.readouterr()
    assert status == 0, printed.out[-2000:] + printed.err[-2000:]
    assert "Number of scores: 10 of 10" in printed.out
    judge = json.loads((out / "metrics.json").read_text())["judge"]
    assert judge["num_scored"] == 10 and judge["num_entries"] == 10 and judge["judge_model"] == "stand-in"
    # empty responses score 0 without asking, the rest 85
    responses = json.loads((out / "test-responses.json").read_text())
    empty = sum(not r["model_response"].strip() for r in responses)
    assert abs(judge["average_score"] - 85 * (10 - empty) / 10) < 1e-9
    card = (out / "README.md").read_text()
    assert f"**{judge['average_score']:.2f}**" in card and "stand-in via openai, 10 of 10 scored" in card


def test_a_partial_judge_figure_is_refused_or_marked(tmp_path, judged_run, capsys):
    """--update-checkpoint records a judge score only for the checkpoint's own full test split; --limit,
    another data file or unscored entries are refused, or with --force recorded and marked partial.
    (A stand-in server answers "Score: 85"; this is about the rule, not the judge.)"""
    out = Path(shutil.copytree(judged_run, tmp_path / "judged"))

    from gpt_sft.cli.evaluate import main as evaluate_main

    with score_stand_in() as url:
        responses = out / "test-responses.json"
        other = tmp_path / "other.json"
        other.write_text(json.dumps([{**e, "instruction": e["instruction"] + " (other)"}
                                     for e in json.loads(responses.read_text())]))
        base = ["--backend", "openai", "--url", url, "--judge-model", "stand-in", "--no-progress", "--no-metrics",
                "--no-cache", "--update-checkpoint", str(out)]
        metrics_before = (out / "metrics.json").read_text()
        for extra, why in ((["--responses", str(responses), "--limit", "5"], "--limit 5: 5 of 10 entries judged"),
                           (["--responses", str(other)], "is not its test split")):
            capsys.readouterr()
            assert evaluate_main(base + extra + ["--output", str(tmp_path / "r.json")]) == 1
            (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
            assert why in line and "--force" in line
            assert (out / "metrics.json").read_text() == metrics_before, "nothing recorded"
        assert evaluate_main(base + ["--responses", str(responses), "--limit", "5", "--force",
                                     "--output", str(tmp_path / "r.json")]) == 0
    judge = json.loads((out / "metrics.json").read_text())["judge"]
    assert judge["partial"] == ["--limit 5: 5 of 10 entries judged"] and judge["num_entries"] == 5
    card = (out / "README.md").read_text()
    assert "**Partial figure**, recorded with `--force`: --limit 5: 5 of 10 entries judged" in card
