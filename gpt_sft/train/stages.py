"""The training stages gpt-sft knows: one entry each, which gives the stage its command (``gpt-sft <command>`` and
``gpt-sft --help``), its model card (:func:`stage_of_metrics` finds the stage of a saved run) and its documentation.

A stage's module is imported only when the stage is used: ``gpt-sft --help`` reads the entries, not the classes.
"""

from __future__ import annotations

import importlib
from typing import Any

# command -> (module of gpt_sft.train, the Stage class in it, what the command does)
STAGES = {
    "train": ("sft", "SFTStage", "fine-tune a GPT-2 on instruction data (the book's chapter 7 recipe by default)"),
    "dpo": ("dpo_loop", "DPOStage",
            "preference-tune a fine-tuned model with DPO (the book's chapter 7 DPO recipe by default)"),
    "orpo": ("orpo", "ORPOStage", "instruction- and preference-tune a base or fine-tuned model in one stage with ORPO"),
    "simpo": ("simpo", "SimPOStage", "preference-tune a fine-tuned model with SimPO (no reference model)"),
}
# command -> (module of gpt_sft.train, the options dataclass in it): the stage's ``config_type``, importable without
# the stage itself, so ``gpt-sft <command> --help`` and option errors answer before torch is imported (no options
# module imports torch).
STAGE_CONFIGS = {
    "train": ("config", "TrainConfig"),
    "dpo": ("preference_config", "DPOConfig"),
    "orpo": ("preference_config", "ORPOConfig"),
    "simpo": ("preference_config", "SimPOConfig"),
}


def stage_config_type(command: str) -> type:
    """The options dataclass of ``command``'s stage (its :class:`~gpt_sft.train.stage.Stage`'s ``config_type``)."""
    if command not in STAGE_CONFIGS:
        raise ValueError(f"unknown training stage {command!r}; known: {', '.join(STAGES)}")
    module, name = STAGE_CONFIGS[command]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def stage_class(command: str):
    """The :class:`~gpt_sft.train.stage.Stage` subclass of ``command``."""
    if command not in STAGES:
        raise ValueError(f"unknown training stage {command!r}; known: {', '.join(STAGES)}")
    module, name, _ = STAGES[command]
    return getattr(importlib.import_module(f"{__package__}.{module}"), name)


def stage_of_config(cfg: Any):
    """The stage whose options ``cfg`` is (a ``DPOConfig`` -> DPO)."""
    for command in STAGES:
        stage = stage_class(command)
        if type(cfg) is stage.config_type:
            return stage
    raise TypeError(f"no training stage takes a {type(cfg).__name__}")


def stage_of_metrics(metrics: dict):
    """The stage of a saved run, from its ``metrics.json``: the stage whose entry it holds (``dpo``, ...), else SFT."""
    for command in STAGES:
        if command != "train" and isinstance(metrics.get(command), dict):
            return stage_class(command)
    return stage_class("train")


__all__ = ["STAGES", "STAGE_CONFIGS", "stage_class", "stage_config_type", "stage_of_config", "stage_of_metrics"]
