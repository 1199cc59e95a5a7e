"""The bounds ``gpt-sft doctor`` holds a device to: torch-free, so that its options parse without torch."""

from __future__ import annotations

# Relative error bounds (norm-wise, ||x - ref|| / ||ref|| against the float64 reference) per precision. fp32's unit
# round-off is 6e-8; a few layers, a softmax and a 50257-way cross-entropy grow that to ~1e-6 (measured: the CPU's
# table in README.md), so 1e-4 leaves two orders of magnitude for other hardware's summation orders and still catches
# any wrong kernel, which is off by far more. bf16 keeps 8 significant bits (round-off 4e-3) and fp16 11 (5e-4);
# autocast rounds every matrix product's inputs, so a few layers give ~1e-2 in bf16 and ~2e-3 in fp16: 5e-2 and 1e-2
# sit above that and far below a real fault (the Mac whose loss is 19.9 where the CPU's is 3.8 is off by 4).
TOLERANCES = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
# The weights' update gets a bound 100 times looser: AdamW's first steps move every weight by about
# lr * sign(gradient), so a gradient element within round-off of 0 may flip its step (the CPU's fp32 update differs
# by ~1e-4); a wrong update is off by ~1.
UPDATE_TOLERANCE_FACTOR = 100

__all__ = ["TOLERANCES", "UPDATE_TOLERANCE_FACTOR"]
