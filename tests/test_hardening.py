"""What an adversarial pass broke: untrusted model folders, silently missing weights, runs lost to an
interrupt, mixed output folders, options that train backwards, errors with tracebacks, a judge that
never times out. Each test here failed before the fix it guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import http.server
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.cli import train as train_command
from gpt_sft.cli.evaluate import main as judge_main
from gpt_sft.cli.train import train
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.validate import InstructionDataError
from gpt_sft.export import run_folder
from gpt_sft.export.checkpoint import save_checkpoint
from gpt_sft.judge.backends import OpenAIJudge
from gpt_sft.judge.cache import ScoreCache
from gpt_sft.judge.errors import JudgeCacheBusyError
from gpt_sft.judge.http import JudgeConfig
from gpt_sft.model.loading import load_pretrained
from gpt_sft.model.weights import WeightLoadingError
from gpt_sft.train import loop
from gpt_sft.train.config import TrainConfig

from conftest import REPO_ROOT, TINY_TRAIN, run_generate, tiny_train_config

ENV = {**os.environ, "TQDM_DISABLE": "1"}
TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def data_file(synthetic_data_file) -> Path:
    return synthetic_data_file


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_embd=32, n_layer=2, n_head=2, n_positions=64, tie_word_embeddings=True))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny")


def config(tmp_path: Path, name: str, data: Path, **overrides) -> TrainConfig:
    return tiny_train_config(data, tmp_path / name, **overrides)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def run_script(*args, timeout=300, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env or ENV, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    """stderr without progress bars and library warnings: what a user reads as the error."""
    shown = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))  # what a terminal shows of a redrawn line
    return [line for line in shown if line.strip() and "%|" not in line
            and not line.startswith(("Loading weights", "Writing model"))]


# ---------------------------------------------------------------- 1. code from untrusted folders


def _generate(*args) -> tuple[int, str]:
    """``gpt-sft generate ARGS`` in this process (conftest.run_generate): exit status and stderr."""
    result = run_generate(*args)
    return result.returncode, result.stderr


def test_a_foreign_folder_s_code_runs_only_with_trust_remote_code(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    evil = tmp_path / "evil"
    shutil.copytree(tiny_checkpoint, evil)
    for name in ("config.json", "configuration_gpt.py"):
        path = evil / name
        path.write_text(path.read_text().replace('"gpt_sft"', '"evil_gpt"'))
    with open(evil / "modeling_gpt.py", "a") as handle:
        handle.write('\nimport pathlib; pathlib.Path("PWNED").touch()\n')
    monkeypatch.chdir(tmp_path)
    status, err = _generate("--model", evil, "--prompt", "hi")
    assert status == 1 and not (tmp_path / "PWNED").exists()
    (line,) = error_lines(err)
    assert line.startswith("error: --model") and "--trust-remote-code" in line

    _generate("--model", evil, "--prompt", "hi", "--trust-remote-code", "--max-new-tokens", "2")
    assert (tmp_path / "PWNED").exists(), "with the flag the folder's own code does run"


def test_a_gpt_sft_folder_loads_the_installed_code_never_its_copy(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_checkpoint, poisoned)
    for name in ("modeling_gpt.py", "configuration_gpt.py"):
        with open(poisoned / name, "a") as handle:
            handle.write('\nimport pathlib; pathlib.Path("PWNED").touch()\n')
    monkeypatch.chdir(tmp_path)
    status, err = _generate("--model", poisoned, "--prompt", "hi", "--max-new-tokens", "2")
    assert status == 0, err[-2000:]
    assert not (tmp_path / "PWNED").exists()


# ---------------------------------------------------------------- 2. missing weights


def _variant(source: Path, target: Path, config_edit=None, tensors_edit=None) -> Path:
    shutil.copytree(source, target)
    if config_edit:
        config = json.loads((target / "config.json").read_text())
        config_edit(config)
        (target / "config.json").write_text(json.dumps(config))
    if tensors_edit:
        tensors = load_file(target / "model.safetensors")
        tensors_edit(tensors)
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("name,config_edit,tensors_edit,message", [
    ("deeper", lambda c: c.update(n_layer=1000), None, "says n_layer=1000, but .* holds 2 transformer blocks"),
    ("absurd", lambda c: c.update(n_layer=100000), None, "says n_layer=100000"),
    ("deleted", None, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensors: transformer.h.1.mlp.c_fc.bias"),
    ("extra", None, lambda t: t.update(stowaway=torch.zeros(3)), "unexpected tensors: stowaway"),
    ("wider", lambda c: c.update(n_embd=64), None, "wrong shapes: .*config.json needs"),
])
def test_weights_that_do_not_fit_the_config_are_refused(tiny_checkpoint, tmp_path, monkeypatch, name, config_edit,
                                                        tensors_edit, message):
    folder = _variant(tiny_checkpoint, tmp_path / name, config_edit, tensors_edit)
    # refused from the file headers before the model (100000 layers of it) is built: the only model made is the
    # one-block shape template on the meta device (from_pretrained itself would build all n_layer blocks)
    init, built = GPTForCausalLM.__init__, []

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        built.append((self.config.n_layer, self.lm_head.weight.device.type))

    monkeypatch.setattr(GPTForCausalLM, "__init__", recording_init)
    with pytest.raises(WeightLoadingError, match=message):
        load_pretrained(folder)
    assert set(built) <= {(1, "meta")}, built


@pytest.mark.parametrize("edit,message", [
    ({"n_head": 0}, "n_head must be positive, got 0"),  # was a ZeroDivisionError
    ({"n_inner": -5}, "n_inner must be positive"),
    ({"layer_norm_epsilon": float("nan")}, "layer_norm_epsilon must be a small positive number, got nan"),  # loaded
])
def test_a_config_with_impossible_values_is_one_line_naming_the_field(tiny_checkpoint, tmp_path, capsys, edit, message):
    folder = _variant(tiny_checkpoint, tmp_path / "bad", lambda c: c.update(edit))
    with pytest.raises(WeightLoadingError, match=f"config.json: not a valid gpt_sft config .*{message}"):
        load_pretrained(folder)
    status, err = _generate("--model", folder, "--prompt", "hi")
    (line,) = error_lines(err)
    assert status == 1 and line.startswith("error: --model") and message in line, line


def test_generate_refuses_missing_weights_in_one_line(tiny_checkpoint, tmp_path, capsys):
    from gpt_sft.cli.generate import main as generate_main

    folder = _variant(tiny_checkpoint, tmp_path / "deleted", None, lambda t: t.pop("transformer.wpe.weight"))
    capsys.readouterr()
    assert generate_main(["--model", str(folder), "--prompt", "hi"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: --model") and "missing tensors: transformer.wpe.weight" in line


# ---------------------------------------------------------------- 3. continue from our own checkpoint


def test_train_continues_from_its_own_checkpoint_from_the_command_line(tiny_checkpoint, data_file, tmp_path):
    out = tmp_path / "second-stage"
    status = train_command.main(["--model", str(tiny_checkpoint), "--data", str(data_file), "--output-dir", str(out),
                            "--max-steps", "3", "--eval-every", "0", "--no-generate", "--no-sample-every-epoch"])
    assert status == 0
    before, after = weights(tiny_checkpoint), weights(out)
    assert "lm_head.weight" not in after, "the checkpoint's tied head stays tied"
    assert not torch.equal(before["transformer.wte.weight"], after["transformer.wte.weight"])
    assert json.loads((out / "training_args.json").read_text())["allowed_max_length"] == 64  # its context


# ---------------------------------------------------------------- 4. interrupts around the final save


@pytest.fixture(autouse=True)
def ctrl_c_as_in_a_terminal():
    """SIGINT as a terminal delivers it: a job started in the background (``.ci/run &``) inherits SIGINT
    ignored, which training rightly keeps ignored, and the Ctrl-C tests below would then test nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_the_final_save_waits_for_it(data_file, tmp_path, monkeypatch, capsys, signum, status):
    real_plot = run_folder.plot_losses

    def plot_then_signal(*args, **kwargs):  # part of the final save: the folder is half written now
        os.kill(os.getpid(), signum)
        return real_plot(*args, **kwargs)

    monkeypatch.setattr(run_folder, "plot_losses", plot_then_signal)
    out = tmp_path / "run"
    assert train_command.main(["--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2",
                          "--context-length", "64", "--data", str(data_file), "--output-dir", str(out),
                          "--max-steps", "2", "--eval-every", "1", "--eval-batches", "1", "--no-sample-every-epoch"]) == status
    printed = capsys.readouterr()
    assert "the trained model is saved in" in printed.out + printed.err
    assert load_pretrained(out).config.n_layer == 1, "the complete model is there"
    assert {"README.md", "metrics.json", "loss-plot.png", "training_args.json"} <= {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "no temporary folder left"
    assert not (out / "test-responses.json").exists()


def test_leftovers_of_a_killed_save_are_removed_by_the_next_run(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    for leftover in (out / "..final-stage.tmp-k1ll3d", out / ".final-stage", out / "checkpoints" / ".step-000004.tmp-x"):
        leftover.mkdir(parents=True)
        (leftover / "model.safetensors").write_bytes(b"half")
    train(config(tmp_path, "run", data_file, max_steps=1, eval_every=0))
    assert "removed 3 temporary folder(s) left by an interrupted save" in capsys.readouterr().out
    assert not [p.name for p in out.rglob(".*")], "no leftover is left"


def test_a_run_killed_while_publishing_its_model_gets_it_moved_in_not_deleted(tiny_sft_run, data_file, tmp_path,
                                                                               capsys):
    """The next train into the folder used to remove .final-stage -- the only copy of the killed run's model --
    as a leftover, before it refused the folder, and said nothing."""
    out = tmp_path / "run"
    stage = out / ".final-stage"
    shutil.copytree(tiny_sft_run, stage)
    out.joinpath("checkpoints").mkdir()
    for name in ("README.md", "metrics.json"):  # killed after moving these two: config.json, moved last, is staged
        os.replace(stage / name, out / name)
    with pytest.raises(ValueError, match=r"had left its model in .*\.final-stage: moved it into .*already holds files"):
        train(config(tmp_path, "run", data_file, max_steps=1, eval_every=0))
    assert not stage.exists() and weights(out).keys() == weights(tiny_sft_run).keys()
    assert all(torch.equal(weights(out)[k], v) for k, v in weights(tiny_sft_run).items())
    assert (out / "config.json").is_file() and (out / "README.md").read_text() == (tiny_sft_run / "README.md").read_text()


# ---------------------------------------------------------------- 5. Ctrl-C mid-step with dropout


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_inside_a_step_with_dropout_resumes_exactly(data_file, tmp_path, monkeypatch, presses):
    args = dict(drop_rate=0.2, max_steps=6, eval_every=2, save_every=0, tie_word_embeddings=False)
    straight = train(config(tmp_path, "straight", data_file, **args))

    real_build = loop.build_model

    def build_and_interrupt(cfg):
        model = real_build(cfg)
        calls = {"n": 0}

        def hook(module, inputs):
            if module.training:  # a training forward pass (evaluation runs in eval mode)
                calls["n"] += 1
                if calls["n"] == 4:  # inside step 3, before its backward and update
                    for _ in range(presses):
                        os.kill(os.getpid(), signal.SIGINT)

        model.transformer.h[0].register_forward_pre_hook(hook)  # every loss path runs the blocks
        return model

    monkeypatch.setattr(loop, "build_model", build_and_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "interrupted", data_file, **args))
    monkeypatch.setattr(loop, "build_model", real_build)
    (checkpoint,) = (tmp_path / "interrupted" / "checkpoints").iterdir()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # one press finishes step 3 (steps 0..3 done); two abandon it (steps 0..2 done, step 3 redone)
    assert state["global_step"] == (4 if presses == 1 else 3)
    resumed = train(config(tmp_path, "interrupted", data_file, resume_from_checkpoint="latest", **args))
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run is the uninterrupted run"
    assert (json.loads((straight / "metrics.json").read_text())["history"]
            == json.loads((resumed / "metrics.json").read_text())["history"])


# ---------------------------------------------------------------- 6. one run per output folder


def test_an_output_folder_never_mixes_two_runs(data_file, tmp_path, capsys):
    out = tmp_path / "run"
    train(config(tmp_path, "run", data_file, max_steps=1, eval_every=0, generate=True, max_new_tokens=2))
    assert (out / "test-responses.json").exists()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    status = train_command.main(["--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2",
                            "--context-length", "64", "--data", str(data_file), "--output-dir", str(out),
                            "--max-steps", "1", "--no-generate"])
    (line,) = error_lines(capsys.readouterr().err)
    assert status == 1 and "--overwrite" in line and "--resume-from-checkpoint latest" in line
    train(config(tmp_path, "run", data_file, max_steps=2, eval_every=0, overwrite=True))
    assert not (out / "test-responses.json").exists(), "the old model's responses are gone"
    assert (out / "notes.txt").read_text() == "mine", "files gpt-sft did not write are kept"
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2


def test_an_interrupted_generation_leaves_no_old_responses(data_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(config(tmp_path, "run", data_file, max_steps=1, eval_every=0, generate=True, max_new_tokens=2))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_command, "generate_test_responses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, "run", data_file, max_steps=2, eval_every=0, generate=True, overwrite=True))
    assert not (out / "test-responses.json").exists()
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 2


# ---------------------------------------------------------------- 7. options


@pytest.mark.parametrize("args,flag", [
    (["--max-grad-norm", "-1"], "--max-grad-norm"),
    (["--learning-rate", "nan"], "--learning-rate"),
    (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--drop-rate", "1.5"], "--drop-rate"),
    (["--train-fraction", "1.2"], "--train-fraction"),
    (["--train-fraction", "0.8", "--test-fraction", "0.3"], "--test-fraction"),
    (["--emb-dim", "64", "--n-heads", "3"], "--n-heads"),
    (["--context-length", "128", "--allowed-max-length", "1024"], "--allowed-max-length 128"),
    (["--lora-dropout", "-0.5"], "--lora-dropout"),
    (["--epochs", "0"], "--epochs"),
])
def test_bad_options_are_one_line_errors_naming_the_flag(capsys, args, flag):
    with pytest.raises(SystemExit) as exit_info:
        train_command.main(["--model", "scratch", *args])
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: ") and flag in line


def test_allowed_max_length_longer_than_a_checkpoint_s_context_is_refused_at_start(tiny_checkpoint, data_file, tmp_path,
                                                                                   capsys):
    status = train_command.main(["--model", str(tiny_checkpoint), "--data", str(data_file), "--output-dir",
                            str(tmp_path / "run"), "--allowed-max-length", "1024"])
    (line,) = error_lines(capsys.readouterr().err)
    assert status == 1 and "--allowed-max-length 64 or less" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- 8. one-line errors


def test_command_errors_are_one_line_with_the_flag_and_debug_shows_the_traceback(tmp_path, capsys):
    capsys.readouterr()
    assert train_command.main(["--model", "scratch", "--data", str(tmp_path / "missing.json")]) == 1
    assert error_lines(capsys.readouterr().err) == [f"error: --data {tmp_path / 'missing.json'}: file not found"]
    with pytest.raises(InstructionDataError):  # --debug: the exception reaches the interpreter, which prints it
        train_command.main(["--model", "scratch", "--data", str(tmp_path / "missing.json"), "--debug"])

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}, {"output": "d"}]))
    assert train_command.main(["--model", "scratch", "--data", str(bad)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "entry 1" in line and "--skip-invalid" in line and "skip_invalid" not in line

    # the process boundary is the point here: accelerate's launcher passes the one line and the exit code on
    script = REPO_ROOT / "scripts" / "train.py"
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run([str(accelerate), "launch", "-q", "--num_processes", "1", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", str(script), "--model", "scratch",
                             "--data", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=300, env=ENV)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert error_lines(result.stderr)[-1] == f"error: --data {tmp_path / 'missing.json'}: file not found"


# The commands of test_without_network_hub_names_fail_fast, one after another in one fresh interpreter (the Hub's
# offline switches are read at import): each command's error output follows a marker line on stderr.
OFFLINE_COMMANDS = textwrap.dedent("""
    import json, sys
    from gpt_sft.cli.main import main

    for argv in json.loads(sys.argv[1]):
        print("=== command", flush=True, file=sys.stderr)
        print(json.dumps(main(argv)), flush=True)
""")


def test_without_network_hub_names_fail_fast(tmp_path):
    env = {**ENV, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}  # a closed port
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # any of them is offline mode
        env.pop(name, None)
    (tmp_path / "outputs").mkdir()
    # Fail fast: one TCP probe of the endpoint, then the cache only -- never the Hub client's retries with
    # back-off (each logs "Retrying in ..."), which would add ~25 s. Checked by what ran, not by a clock.
    commands = [(["train", "--model", "scratch", "--data", "outputs/typo"], "--data outputs/typo: file not found"),
                (["train", "--model", "scratch", "--data", "someone/instructions"], "--data someone/instructions"),
                (["generate", "--model", "someone/model", "--prompt", "hi"], "--model someone/model")]
    result = run_script("-c", OFFLINE_COMMANDS, json.dumps([argv for argv, _ in commands]), env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [json.loads(line) for line in result.stdout.splitlines() if line.strip().isdigit()]
    outputs = result.stderr.split("=== command\n")[1:]
    assert statuses == [1, 1, 1] and len(outputs) == 3, result.stdout[-2000:] + result.stderr[-2000:]
    for (_, expected), stderr in zip(commands, outputs):
        (line,) = error_lines(stderr)
        assert line.startswith(f"error: {expected}"), line
        assert "127.0.0.1:9 cannot be reached" in line or "file not found" in line  # the probe's answer
        assert "Retrying" not in stderr, stderr[-2000:]
    assert "Retrying" not in result.stdout


@pytest.mark.parametrize("size,what,flags", [("3m", "the trained model", []),
                                             # torch's writer says only "unexpected pos N vs M" there
                                             ("16m", "the training checkpoint", ["--save-every", "1"])])
def test_disk_full_during_the_save_says_so(data_file, tmp_path, capsys, size, what, flags):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up here ({made.stderr.strip()})")
    try:
        capsys.readouterr()
        status = train_command.main(["--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2",
                                     "--context-length", "64", "--data", str(data_file), "--max-steps", "1",
                                     "--eval-every", "0", "--no-generate", "--no-sample-every-epoch", "--output-dir",
                                     str(mount / "run"), *flags])
        assert status == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert line.startswith(f"error: disk full while writing {what} to") and str(mount / "run") in line, line
        assert not [p for p in (mount / "run").iterdir()], "nothing half-written is left"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ---------------------------------------------------------------- 9. the judge


class _Server:
    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.body_length = getattr(handler, "body_length", None)

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _openai_handler(reply_text: str, drip: float = 0.0, sent: list[int] | None = None):
    """A handler answering ``reply_text``; with ``drip``, one byte every ``drip`` seconds, each byte written
    counted in ``sent``."""
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply_text}}]}).encode()
    sent = [] if sent is None else sent

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                if drip:
                    for i in range(len(body)):  # one byte at a time, never idle long enough for a read timeout
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        sent.append(i)
                        time.sleep(drip)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    Handler.body_length = len(body)
    return Handler


def test_the_judge_timeout_is_a_total_limit_even_for_a_dripping_body():
    sent: list[int] = []
    with _Server(_openai_handler("85", drip=0.5, sent=sent)) as server:  # the whole body would take ~35 s
        judge = OpenAIJudge(JudgeConfig(backend="openai", url=server.url, timeout=3, retries=0), environ={})
        with pytest.raises(Exception, match="not finished within 3"):
            judge.ask("q")
        assert 0 < len(sent) < server.body_length  # given up while the body was still dripping in


def _responses(tmp_path: Path, n: int = 2) -> Path:
    path = tmp_path / "responses.json"
    path.write_text(json.dumps([{"instruction": f"i{i}", "input": "", "output": "o", "model_response": "r"}
                                for i in range(n)]))
    return path


def test_a_huge_judge_reply_is_kept_as_an_excerpt(tmp_path, capsys):
    responses = _responses(tmp_path)
    with _Server(_openai_handler("85 " + "x" * 5_000_000)) as server:
        assert judge_main(["--responses", str(responses), "--backend", "openai", "--url", server.url, "--no-progress",
                           "--no-metrics", "--parse-retries", "0"]) == 0
    report = tmp_path / "responses-judge-report.json"
    assert report.stat().st_size < 100_000, "a 5 MB reply is not stored whole"
    entry = json.loads(report.read_text())["entries"][0]
    assert entry["score"] == 85 and entry["replies"][0].endswith("[cut: 5000003 characters in all]")
    cache = Path(str(report) + ".cache.jsonl")
    assert cache.stat().st_size < 100_000


def test_two_evaluations_cannot_share_a_cache(tmp_path):
    path = tmp_path / "scores.cache.jsonl"
    first = ScoreCache(path)
    try:
        with pytest.raises(JudgeCacheBusyError, match=f"pid {os.getpid()}"):
            ScoreCache(path)
    finally:
        first.close()
    ScoreCache(path).close()  # free again once the first one is done


def test_a_password_in_the_judge_url_is_never_shown(tmp_path, capsys):
    responses = _responses(tmp_path)
    secret = "hunter2-secret"
    judge_main(["--responses", str(responses), "--backend", "openai", "--url", f"http://user:{secret}@127.0.0.1:9",
                "--no-progress", "--no-metrics", "--retries", "0", "--timeout", "2"])  # a closed port: nothing scored
    printed = capsys.readouterr()
    report = (tmp_path / "responses-judge-report.json").read_text()
    assert secret not in printed.out + printed.err + report
    assert "user:***@127.0.0.1" in printed.out and json.loads(report)["judge"]["url"] == "http://user:***@127.0.0.1:9"


@pytest.mark.parametrize("args", [["--parse-retries", "-1"], ["--limit", "-3"], ["--concurrency", "0"],
                                  ["--timeout", "-1"], ["--retries", "-2"]])
def test_judge_counts_must_be_sensible(tmp_path, capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        judge_main(["--responses", str(_responses(tmp_path)), *args])
    assert exit_info.value.code == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith("error: ") and args[0] in line


# ---------------------------------------------------------------- low, fixed while there


def test_one_bad_jsonl_line_is_skipped_and_counted_with_skip_invalid(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n{"instruction": "c", "output": "d"}\n')
    with pytest.raises(InstructionDataError, match="entry 1 .line 2.: not valid JSON"):
        load_instruction_data(path)
    dataset, stats = load_instruction_data(path, skip_invalid=True, return_stats=True)
    assert len(dataset) == 2 and stats.skipped == {"not valid JSON": 1} and stats.skipped_indices == [1]


def test_mixed_types_and_deep_nesting_name_the_problem(tmp_path):
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([{"instruction": "a", "output": "b", "extra": 1},
                                 {"instruction": "c", "output": "d", "extra": 2},
                                 {"instruction": "e", "output": "f", "extra": "three"}]))
    with pytest.raises(InstructionDataError, match="entry 2: field 'extra' does not have one type.*a string where entry 0 has a number"):
        load_instruction_data(mixed)
    for field in ("note", "instruction"):  # JSON's \ud800 escape carries a lone surrogate: no type, no entry named
        broken = tmp_path / f"surrogate-{field}.json"
        broken.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d", "%s": "x\\ud800"}]'
                          % field if field != "instruction" else
                          '[{"instruction": "a", "output": "b"}, {"instruction": "c\\ud800", "output": "d"}]')
        with pytest.raises(InstructionDataError, match=f"entry 1: field '{field}' holds text that is not valid Unicode"):
            load_instruction_data(broken)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InstructionDataError, match="nested too deeply"):
        load_instruction_data(deep)


def test_skip_counts_reach_metrics_and_the_model_card_and_files_are_readable(data_file, tmp_path):
    entries = json.loads(data_file.read_text())
    entries[3] = {"instruction": "no output"}
    entries[7] = {"instruction": "x", "output": "   "}
    data = tmp_path / "with-bad.json"
    data.write_text(json.dumps(entries))
    out = train(config(tmp_path, "run", data, max_steps=1, eval_every=0, skip_invalid=True))
    stats = json.loads((out / "metrics.json").read_text())["data"]
    assert stats["entries_read"] == 100 and stats["entries_loaded"] == 98 and stats["entries_skipped"] == 2
    assert stats["skipped_by_reason"] == {"missing 'output'": 1, "empty 'output'": 1}
    assert "98 of 100 entries used (2 invalid skipped" in (out / "README.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"
