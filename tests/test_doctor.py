"""``gpt-sft doctor``: a CPU passes against its float64 reference, with real figures; a wrong activation patched into
one layer of the checked copy fails it and is named, as is a kernel wrong only in backward; a wrong optimizer step fails
the update check; a checkpoint is checked; a missing device is a usage error."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from gpt_sft.cli.main import main
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.train import doctor as doctor_module
from gpt_sft.train.tolerances import TOLERANCES

FAST = ["--steps", "2", "--batch-size", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny saved checkpoint of GPT-2's vocabulary: three layers, 32 wide."""
    torch.manual_seed(0)
    model = GPTForCausalLM(GPTConfig(n_layer=3, n_embd=32, n_head=2, n_positions=256, drop_rate=0.0))
    folder = tmp_path_factory.mktemp("doctor") / "tiny"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def passing_run(checkpoint, tmp_path_factory):
    """The CPU checked with the checkpoint, the table also written as JSON."""
    out = tmp_path_factory.mktemp("doctor-json") / "doctor.json"
    status = main(["doctor", "--device", "cpu", "--model", str(checkpoint), "--json", str(out), *FAST])
    return status, json.loads(out.read_text())


def test_the_cpu_passes_with_real_figures(passing_run):
    status, report = passing_run
    assert status == 0 and report["trusted"] and report["failures"] == []
    checks = {check["check"]: check for check in report["checks"]}
    assert {c["precision"] for c in report["checks"]} == {"fp32"}  # the CPU's default precision is fp32
    # The reference really is float64: fp32 differs from it, by round-off only.
    losses = [checks[f"step {step} loss"]["figure"] for step in (1, 2)]
    assert all(0 < figure < TOLERANCES["fp32"] for figure in losses), losses
    assert 0 < checks["step 1 gradient norm"]["figure"] < TOLERANCES["fp32"]
    assert 0 < checks["weight update after 2 steps"]["figure"] < checks["weight update after 2 steps"]["bound"]
    assert 0 < checks["module outputs (step 1)"]["figure"] < TOLERANCES["fp32"]
    assert 0 < checks["parameter gradients (step 1)"]["figure"] < TOLERANCES["fp32"]
    assert report["first_divergence"] == {"fp32": None} and report["first_gradient_divergence"] == {"fp32": None}
    assert report["versions"]["torch"] == torch.__version__ and report["versions"]["driver"] == "n/a"


def test_the_json_holds_the_table(passing_run, capsys, checkpoint):
    _, report = passing_run
    assert set(report) >= {"device", "trusted", "checks", "first_divergence", "versions"}
    assert all(set(check) == {"precision", "check", "figure", "bound", "pass", "detail"} for check in report["checks"])
    # loss and gradient norm per step, the update, the module outputs, the parameter gradients
    assert len(report["checks"]) == 2 * 2 + 3


def with_wrong_activation(monkeypatch, layer: int) -> None:
    """The device's copy gets ReLU instead of GELU in one block's MLP (the float64 reference keeps GELU)."""
    copy_for_device = doctor_module.device_copy

    def broken_copy(model, device):
        checked = copy_for_device(model, device)
        mlp = checked.transformer.h[layer].mlp
        mlp.forward = lambda x: mlp.c_proj(F.relu(mlp.c_fc(x)))
        return checked

    monkeypatch.setattr(doctor_module, "device_copy", broken_copy)


@pytest.mark.parametrize("layer", [1, 2])
def test_a_wrong_activation_fails_and_is_named(monkeypatch, capsys, checkpoint, tmp_path, layer):
    with_wrong_activation(monkeypatch, layer)
    out = tmp_path / "doctor.json"
    status = main(["doctor", "--device", "cpu", "--model", str(checkpoint), "--json", str(out), "--steps", "1",
                   "--batch-size", "3"])  # a module's output diverges in the first step's forward pass
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert status == 1 and not report["trusted"]
    assert report["first_divergence"] == {"fp32": f"transformer.h.{layer}.mlp"}
    assert f"first diverging module (fp32): transformer.h.{layer}.mlp" in printed
    assert "NOT trusted for training" in printed and f"first diverging: transformer.h.{layer}.mlp" in printed
    assert not {c["check"]: c for c in report["checks"]}["step 1 loss"]["pass"]  # and the loss shows it


class WrongBackward(torch.autograd.Function):
    """The identity whose backward pass scales the gradient by 1.5: a kernel wrong only in backward."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * 1.5


def test_a_wrong_backward_pass_is_named_by_its_parameter(monkeypatch, checkpoint, tmp_path):
    copy_for_device = doctor_module.device_copy

    def broken_copy(model, device):
        checked = copy_for_device(model, device)
        c_fc = checked.transformer.h[1].mlp.c_fc
        forward = c_fc.forward
        c_fc.forward = lambda x: WrongBackward.apply(forward(x))
        return checked

    monkeypatch.setattr(doctor_module, "device_copy", broken_copy)
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--device", "cpu", "--model", str(checkpoint), "--json", str(out), "--steps", "1",
                 "--batch-size", "3"]) == 1
    report = json.loads(out.read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert checks["module outputs (step 1)"]["pass"] and checks["step 1 loss"]["pass"]  # the forward pass is right
    assert not checks["parameter gradients (step 1)"]["pass"] and not checks["step 1 gradient norm"]["pass"]
    # backward reaches c_proj's parameters before the wrong op, c_fc's after it
    assert report["first_gradient_divergence"] == {"fp32": "transformer.h.1.mlp.c_fc.bias"}


def test_a_missing_device_is_a_usage_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["doctor", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda: CUDA is not available")


def test_an_unknown_device_is_an_option_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["doctor", "--device", "tpu"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: --device must be auto, cpu, cuda, cuda:N or mps, got 'tpu'")


def test_a_wrong_optimizer_step_fails_the_update_check(monkeypatch, checkpoint, tmp_path):
    """Every step of the device's AdamW moves each weight one learning rate further than it should: the first step's
    loss, module outputs and gradients are right, the update is not."""
    copy_for_device = doctor_module.device_copy
    handles = []

    def overshoot(optimizer, args, kwargs):
        with torch.no_grad():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.add_(param.grad.sign(), alpha=-group["lr"])

    def broken_copy(model, device):  # the reference has stepped by now: only the device's optimizer overshoots
        handles.append(register_optimizer_step_post_hook(overshoot))
        return copy_for_device(model, device)

    monkeypatch.setattr(doctor_module, "device_copy", broken_copy)
    out = tmp_path / "doctor.json"
    try:
        status = main(["doctor", "--device", "cpu", "--model", str(checkpoint), "--json", str(out), "--steps", "1",
                       "--batch-size", "3"])
    finally:
        for handle in handles:
            handle.remove()
    checks = {c["check"]: c for c in json.loads(out.read_text())["checks"]}
    assert status == 1
    assert [name for name, check in checks.items() if not check["pass"]] == ["weight update after 1 step"]
    assert checks["weight update after 1 step"]["figure"] > 0.5
