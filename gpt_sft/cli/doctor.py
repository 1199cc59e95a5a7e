"""``gpt-sft doctor``: can this device be trusted for training?

A few training steps (forward, backward, AdamW) on the device, in its default precision and in fp32, against a
float64 copy on the CPU with the same weights and batch: the loss's and gradient norm's differences per step, the
weights' update, and the first module whose output diverges. Exit status 0: trusted; 1: not (the failing checks are
named); 2: a usage error (such as a ``--device`` this machine does not have).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..common.options import option, parse_config
from ..train.tolerances import TOLERANCES
from .errors import report_errors

# The model and the checks (torch, transformers: seconds to import) are imported inside the functions that use them,
# after the options parse: `gpt-sft doctor --help` and an option error answer without them.


@dataclass
class DoctorConfig:
    """Check that a device computes training steps as a float64 CPU reference does."""

    device: str = option("auto", "Device to check: auto (CUDA, else MPS, else the CPU), cpu, cuda, cuda:1 or mps")
    model: str | None = option(None, "Checkpoint folder to check with; default: a fresh, seeded model of GPT-2's "
                               "shape with --layers layers")
    layers: int = option(2, "Layers of the fresh model (without --model)")
    steps: int = option(3, "Training steps (forward, backward, AdamW step) compared")
    batch_size: int = option(4, "Synthetic instructions in the batch (padded and prompt-masked as training does)")
    seed: int = option(0, "Seed of the fresh model and of the batch")
    fp32_tolerance: float = option(TOLERANCES["fp32"], "Relative error bound in fp32")
    bf16_tolerance: float = option(TOLERANCES["bf16"], "Relative error bound in bf16 autocast (CUDA)")
    fp16_tolerance: float = option(TOLERANCES["fp16"], "Relative error bound in fp16 autocast (CUDA without bf16)")
    json: str | None = option(None, "Also write the checks, the verdict and the versions to this JSON file")

    def __post_init__(self) -> None:
        kind, _, index = self.device.partition(":")
        if kind not in ("auto", "cpu", "cuda", "mps") or index and not (kind == "cuda" and index.isdigit()):
            raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        for name in ("layers", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("fp32", "bf16", "fp16"):
            if not getattr(self, f"{name}_tolerance") > 0:
                raise ValueError(f"--{name}-tolerance must be positive, got {getattr(self, f'{name}_tolerance')}")


def doctor(cfg: DoctorConfig) -> int:
    """Run the checks, print the table; 0 when the device can be trusted, 1 when not, 2 without the device."""
    import torch

    from ..common.atomic_io import write_json_atomic
    from ..model.loading import resolve_device
    from ..train.doctor import device_available, fresh_model, run_doctor
    from ..export.checkpoint import plain_model

    device = str(resolve_device(cfg.device))
    missing = device_available(device)
    if missing:
        print(f"error: --device {cfg.device}: {missing}", file=sys.stderr)
        return 2
    model = plain_model(cfg.model) if cfg.model else fresh_model(n_layer=cfg.layers, seed=cfg.seed)
    what = cfg.model or f"a fresh {cfg.layers}-layer GPT-2-shaped model (seed {cfg.seed})"
    steps = f"{cfg.steps} step{'s' if cfg.steps > 1 else ''}"
    print(f"gpt-sft doctor: {device} against a float64 CPU reference, {what}, {steps}", file=sys.stderr)
    report = run_doctor(model, torch.device(device), steps=cfg.steps, batch_size=cfg.batch_size, seed=cfg.seed,
                        tolerances={"fp32": cfg.fp32_tolerance, "bf16": cfg.bf16_tolerance,
                                    "fp16": cfg.fp16_tolerance})
    print(report.table())
    print()
    for precision, name in report.first_divergence.items():
        print(f"first diverging module ({precision}): {name or 'none'}")
    for precision, name in report.first_gradient_divergence.items():
        print(f"first diverging gradient ({precision}, backward order): {name or 'none'}")
    for note in report.notes:
        print(note)
    print("versions: " + ", ".join(f"{key} {value}" for key, value in report.versions.items()))
    if cfg.json:
        write_json_atomic(cfg.json, report.to_dict())
    if report.trusted:
        print(f"trusted: {device} computes training steps as the float64 reference does, within the bounds")
        return 0
    print(f"NOT trusted for training: {'; '.join(report.failures())}")
    return 1


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft doctor``."""
    return doctor(parse_config(DoctorConfig, argv, prog="gpt-sft doctor"))
