"""The bounds ``gpt-sft doctor`` holds a device to: torch-free, so that its options parse without torch."""

from __future__ import annotations

# Relative error bounds (norm-wise, ||x - ref|| / ||ref|| against the float64 reference) per precision. fp32's unit
# round-off is 6e-8; a few layers, a softmax and a 50257-way cross-entropy grow that to ~1e-6 (measured: the CPU's
# table in README.md), so 1e-4 leaves two orders of magnitude for other hardware's summation orders and still catches
# any wrong kernel, which is off by far more. bf16 keeps 8 significant bits (round-off 4e-3) and fp16 11 (5e-4);
# autocast rounds every matrix product's inputs, so a few layers give ~1e-2 in bf16 (measured below) and, expected,
# ~2e-3 in fp16: 5e-2 and 1e-2 sit above that and far below a real fault (the Mac whose loss is 19.9 where the CPU's
# is 3.8 is off by 4).
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
# bf16 autocast on this project's CPU, a fresh 2-layer model of GPT-2's shape: module outputs 7e-3, parameter
# gradients 9e-3, losses 7e-5, the weights' update 4e-2.
#
# The weights' update has bounds of its own: AdamW's first steps move every weight by about lr * sign(gradient), so a
# gradient element within round-off of 0 may flip its step (fp32 on the CPU: 1e-4; bf16: 4e-2). A wrong update (a
# wrong step size, sign or decay) is off by ~1, beyond every bound here.
UPDATE_TOLERANCES = {"fp32": 1e-2, "bf16": 0.25, "fp16": 0.1}

__all__ = ["TOLERANCES", "UPDATE_TOLERANCES"]
