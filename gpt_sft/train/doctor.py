"""Can a device be trusted for training? A few training steps on it against a float64 CPU reference.

The same weights and the same batch (synthetic instructions, formatted, tokenized and collated as training does:
prompt masking and padding give -100 targets) go through the training loss (:func:`batch_loss`), a backward pass
and an AdamW step, ``steps`` times, once on a float64 copy on the CPU and once on the device in each precision
checked: the device's default one (CUDA: bf16 autocast where supported, else fp16; CPU and MPS: fp32) and fp32
(TF32 off). Per step: the loss's and the gradient norm's relative differences; after the steps: the relative
difference of the weights' total update. Before the first step, forward hooks on every module compare each
module's output with the reference's: the first module (in the order outputs complete, so a child before its
parent) whose inputs agree with the reference but whose output does not is named -- where the device goes wrong;
after the first backward pass, the first parameter (in backward order) whose gradient diverges is named too.

A device passes when every figure is within its precision's tolerance (:data:`.tolerances.TOLERANCES`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from torch import nn

from ..data.collator import InstructionDataCollator, to_book_batch
from ..data.prompts import get_prompt_style
from ..data.synthetic import make_synthetic_instructions
from ..model.configuration_gpt import GPTConfig
from ..model.modeling_gpt import GPTForCausalLM
from ..model.tokenizer import END_OF_TEXT, get_tokenizer
from .loss import batch_loss
from .tolerances import TOLERANCES, UPDATE_TOLERANCES

LEARNING_RATE, WEIGHT_DECAY = 5e-5, 0.1  # gpt-sft train's AdamW defaults
GRADIENT_FLOOR = 1e-3  # see gradient_errors
FP16_LOSS_SCALE = 2.0 ** 12  # a static loss scale: fp16 gradients of a few steps must not underflow


@dataclass
class Check:
    """One row of the table: what was compared, the figure, its bound and whether it is within it."""

    precision: str
    name: str
    figure: float
    bound: float
    detail: str = ""

    @property
    def passed(self) -> bool:
        return math.isfinite(self.figure) and self.figure <= self.bound


@dataclass
class Report:
    device: str
    checks: list[Check] = field(default_factory=list)
    first_divergence: dict[str, str | None] = field(default_factory=dict)  # precision -> module name or None
    first_gradient_divergence: dict[str, str | None] = field(default_factory=dict)  # precision -> parameter or None
    versions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def trusted(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.precision} {c.name} {c.figure:.3g} > {c.bound:.3g}" + (f" ({c.detail})" if c.detail else "")
                for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "trusted": self.trusted, "failures": self.failures(),
                "checks": [{"precision": c.precision, "check": c.name, "figure": c.figure, "bound": c.bound,
                            "pass": c.passed, "detail": c.detail} for c in self.checks],
                "first_divergence": self.first_divergence, "first_gradient_divergence": self.first_gradient_divergence,
                "versions": self.versions, "notes": self.notes}

    def table(self) -> str:
        rows = [("precision", "check", "relative difference", "bound", "result", "device vs float64 reference")]
        rows += [(c.precision, c.name, f"{c.figure:.3g}", f"{c.bound:.3g}", "pass" if c.passed else "FAIL", c.detail)
                 for c in self.checks]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:])


def device_available(device: str) -> str | None:
    """Why ``device`` cannot be used here, or ``None``."""
    kind, index = torch.device(device).type, torch.device(device).index
    if kind == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available on this machine (torch " + torch.__version__ + ")"
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        return f"this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0"
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        return "MPS is not available on this machine"
    if kind not in ("cpu", "cuda", "mps"):
        return f"unknown device {device!r}: use cpu, cuda or mps"
    return None


def default_precision(device: torch.device) -> str:
    """The precision training runs in on ``device``: bf16 autocast on a CUDA GPU that has it, else fp16; fp32
    on the CPU and on MPS (gpt-sft train's default there)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def fresh_model(n_layer: int = 4, n_embd: int = 768, n_head: int = 12, seed: int = 0) -> GPTForCausalLM:
    """GPT-2's shape (vocabulary, context, width) with few layers, seeded."""
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, drop_rate=0.0)
    return GPTForCausalLM(config).float().eval()


@functools.cache
def doctor_batch(batch_size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``(inputs, targets)`` of ``batch_size`` synthetic instructions, as training makes them (alpaca
    prompts, prompt tokens masked, padded with end-of-text and -100). Cached: read it, never change it."""
    tokenizer, style = get_tokenizer(), get_prompt_style("alpaca")
    examples = []
    for entry in make_synthetic_instructions(batch_size, seed=seed):
        prompt, text = style.format_text(entry)
        ids = tokenizer.encode(text, allowed_special={END_OF_TEXT})
        examples.append({"input_ids": ids, "prompt_length": len(tokenizer.encode(prompt))})
    return to_book_batch(InstructionDataCollator(mask_prompt=True)(examples))


def device_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The model the device is checked with: an fp32 copy on it (autocast lowers the precision where checked)."""
    return copy.deepcopy(model).float().to(device).eval()


def reference_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().cpu().eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float64 on the CPU (NaN for a shape mismatch).
    Moved to the CPU before the cast: MPS has no float64."""
    value = value.detach().cpu().double()
    if value.shape != reference.shape:
        return float("nan")
    diff = float(torch.linalg.vector_norm(value - reference))
    return diff / max(float(torch.linalg.vector_norm(reference)), 1e-30) if diff == diff else float("inf")


def first_tensor(value: Any) -> torch.Tensor | None:
    """A module's output as one tensor: itself, the first tensor of a tuple, or of a ``ModelOutput``."""
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else ()
    return next((t for t in map(first_tensor, items) if t is not None), None)


class ModuleRecorder:
    """Forward hooks on every named module: per call, in the order outputs complete, its floating-point inputs
    and its output (as float64 CPU tensors when recording the reference, compared with it otherwise)."""

    def __init__(self, model: nn.Module, reference: "ModuleRecorder | None" = None) -> None:
        self.reference = reference
        self.calls: list[tuple[str, list[torch.Tensor], torch.Tensor | None]] = []
        self.errors: list[tuple[str, float, float]] = []  # (name, input error, output error)
        self.handles = [module.register_forward_hook(self.hook(name), with_kwargs=True)
                        for name, module in model.named_modules() if name]

    def hook(self, name: str) -> Callable:
        def record(module, args, kwargs, output) -> None:
            inputs = [t.detach() for t in (*args, *kwargs.values())
                      if isinstance(t, torch.Tensor) and t.is_floating_point()]
            out = first_tensor(output)
            out = out.detach() if out is not None and out.is_floating_point() else None
            if self.reference is None:
                self.calls.append((name, [t.cpu().double() for t in inputs],
                                   None if out is None else out.cpu().double()))
                return
            index = len(self.errors)
            ref_name, ref_inputs, ref_out = self.reference.calls[index] if index < len(self.reference.calls) else \
                (None, [], None)
            if ref_name != name:
                self.errors.append((name, float("nan"), float("nan")))  # a different call order than the reference's
                return
            input_error = max([relative_error(t, r) for t, r in zip(inputs, ref_inputs)], default=0.0)
            output_error = relative_error(out, ref_out) if out is not None and ref_out is not None else 0.0
            self.errors.append((name, input_error, output_error))
        return record

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def first_divergence(self, tolerance: float) -> tuple[str, float] | None:
        """The first module whose inputs are within ``tolerance`` of the reference's but whose output is not (else
        the first whose output is not): ``(name, output error)``, or ``None``."""
        beyond = [(name, inp, out) for name, inp, out in self.errors if not out <= tolerance]
        own = [(name, out) for name, inp, out in beyond if inp <= tolerance]
        return own[0] if own else (beyond[0][0], beyond[0][2]) if beyond else None


def precision_context(device: torch.device, precision: str):
    if precision not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def train_steps(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, steps: int, device: torch.device,
                precision: str, recorder: Callable[[nn.Module], ModuleRecorder] | None = None,
                first_gradients: Callable[[nn.Module], None] | None = None,
                ) -> tuple[list[float], list[float], ModuleRecorder | None]:
    """``steps`` AdamW training steps on one batch: per step the loss and the gradient norm (before the step).
    ``recorder`` hooks the first forward pass; ``first_gradients`` sees the model after the first backward pass."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    inputs, targets = inputs.to(device), targets.to(device)
    scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0
    losses, norms, hooks = [], [], None
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        hooks = recorder(model) if recorder is not None and step == 0 else hooks
        with precision_context(device, precision):
            loss = batch_loss(model, inputs, targets)
        if step == 0 and hooks is not None:
            hooks.remove()
        (loss * scale).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        for grad in grads:
            grad.div_(scale)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.cpu().double()) for g in grads]))
        norms.append(float(norm))
        if step == 0 and first_gradients is not None:
            first_gradients(model)
        losses.append(float(loss.detach()))
        optimizer.step()
    return losses, norms, hooks


def gradient_errors(model: nn.Module, reference: dict[str, torch.Tensor]) -> list[tuple[str, float]]:
    """``(parameter, relative error of its gradient)`` in the order backward computes them (the reverse of the
    forward order): a layer whose backward goes wrong spoils its own gradients and every earlier layer's, so the first
    diverging parameter in this order is in it. A gradient under :data:`GRADIENT_FLOOR` of the whole one is measured
    against that share: the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift), round-off there
    is no fault."""
    floor = GRADIENT_FLOOR * math.sqrt(sum(float(torch.linalg.vector_norm(g)) ** 2 for g in reference.values()))
    errors = []
    for name, param in reversed(list(model.named_parameters())):
        if name in reference and param.grad is not None:
            ref = reference[name]
            diff = float(torch.linalg.vector_norm(param.grad.detach().cpu().double() - ref))
            errors.append((name, diff / max(float(torch.linalg.vector_norm(ref)), floor, 1e-30)))
    return errors


def update_error(before: dict[str, torch.Tensor], after: nn.Module, reference: nn.Module) -> float:
    """The relative difference of the weights' total update (all parameters as one vector)."""
    diff = total = 0.0
    ref_params = dict(reference.named_parameters())
    for name, param in after.named_parameters():
        start = before[name]
        ref_update = ref_params[name].detach() - start
        diff += float(torch.linalg.vector_norm(param.detach().cpu().double() - start - ref_update)) ** 2
        total += float(torch.linalg.vector_norm(ref_update)) ** 2
    return math.sqrt(diff) / max(math.sqrt(total), 1e-30)


def driver_version() -> str:
    if not shutil.which("nvidia-smi"):
        return "n/a"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    return out.splitlines()[0] if out else "n/a"


def versions(device: torch.device) -> dict[str, str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = f"Apple MPS ({platform.machine()}, macOS {platform.mac_ver()[0] or '?'})"
    else:
        name = f"CPU ({platform.processor() or platform.machine()})"
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "device": name, "cuda": torch.version.cuda or "n/a",
            "driver": driver_version() if device.type == "cuda" else "n/a"}


def divergence_checks(report: Report, precision: str, tol: float, hooks: ModuleRecorder | None,
                      grad_errors: list[tuple[str, float]]) -> None:
    """The first step's module outputs and parameter gradients: the checks, and the first of each beyond ``tol``."""
    found = hooks.first_divergence(tol) if hooks is not None else None
    report.first_divergence[precision] = found[0] if found else None
    errors = hooks.errors if hooks is not None else []
    report.checks.append(Check(precision, "module outputs (step 1)",
                               found[1] if found else max((out for _, _, out in errors), default=0.0), tol,
                               f"first diverging: {found[0]}" if found else f"all {len(errors)} within"))
    grad_found = next(((name, e) for name, e in grad_errors if not e <= tol), None)
    report.first_gradient_divergence[precision] = grad_found[0] if grad_found else None
    report.checks.append(Check(precision, "parameter gradients (step 1)",
                               grad_found[1] if grad_found else max((e for _, e in grad_errors), default=0.0), tol,
                               f"first diverging in backward order: {grad_found[0]}" if grad_found
                               else f"all {len(grad_errors)} within"))


def run_doctor(model: nn.Module, device: str | torch.device, *, steps: int = 3, batch_size: int = 4,
               tolerances: dict[str, float] | None = None, seed: int = 0) -> Report:
    """Check ``device`` with ``model`` (any dtype, on any device) on one synthetic batch; see the module's text."""
    device = torch.device(device)
    tolerances = {**TOLERANCES, **(tolerances or {})}
    inputs, targets = doctor_batch(batch_size, seed)
    report = Report(device=str(device), versions=versions(device))
    if device.type == "mps":
        report.notes.append("MPS: untested by gpt-sft's CI")
    reference = reference_copy(model)
    start = {name: p.detach().clone() for name, p in reference.named_parameters()}
    ref_hooks = ModuleRecorder(reference)
    ref_grads: dict[str, torch.Tensor] = {}
    ref_losses, ref_norms, _ = train_steps(
        reference, inputs, targets, steps, torch.device("cpu"), "fp64", recorder=lambda m: ref_hooks,
        first_gradients=lambda m: ref_grads.update((n, p.grad.clone()) for n, p in m.named_parameters()
                                                   if p.grad is not None))
    precisions = list(dict.fromkeys([default_precision(device), "fp32"]))
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for precision in precisions:
            tol = tolerances[precision]
            checked = device_copy(model, device)
            grad_errors: list[tuple[str, float]] = []
            losses, norms, hooks = train_steps(
                checked, inputs, targets, steps, device, precision, recorder=lambda m: ModuleRecorder(m, ref_hooks),
                first_gradients=lambda m: grad_errors.extend(gradient_errors(m, ref_grads)))
            for step, (loss, ref) in enumerate(zip(losses, ref_losses), 1):
                report.checks.append(Check(precision, f"step {step} loss", abs(loss - ref) / max(abs(ref), 1e-30),
                                           tol, f"{loss:.8g} vs {ref:.8g}"))
            for step, (norm, ref) in enumerate(zip(norms, ref_norms), 1):
                report.checks.append(Check(precision, f"step {step} gradient norm", abs(norm - ref) / max(ref, 1e-30),
                                           tol, f"{norm:.8g} vs {ref:.8g}"))
            report.checks.append(Check(precision, f"weight update after {steps} step{'s' if steps > 1 else ''}",
                                       update_error(start, checked, reference), UPDATE_TOLERANCES[precision],
                                       f"AdamW, lr {LEARNING_RATE:g}, weight decay {WEIGHT_DECAY:g}"))
            divergence_checks(report, precision, tol, hooks, grad_errors)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return report


__all__ = ["Check", "ModuleRecorder", "Report", "default_precision", "device_available", "device_copy",
           "doctor_batch", "fresh_model", "relative_error", "run_doctor", "versions"]
