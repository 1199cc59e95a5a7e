"""The model card of an exported model (stock GPT-2 folder, GGUF, Ollama): what it is, how it was
trained (from the source checkpoint's ``training_args.json`` and ``metrics.json``, when it has them)
and the prompt format to use with it."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCardData

from ..data.prompts import PromptStyle
from .card import hub_base_model

_EXAMPLE = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast."}


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def training_summary(source: Path) -> list[str]:
    """Markdown table rows describing the source run, from its ``training_args.json``/``metrics.json``."""
    args, metrics = _read_json(source / "training_args.json"), _read_json(source / "metrics.json")
    if not args:
        return ["The source folder records no training run (no `training_args.json`)."]
    method = "full fine-tuning"
    if args.get("lora_rank"):
        method = f"LoRA r={args['lora_rank']} on {', '.join(args.get('lora_target_modules') or [])}, merged"
    rows = [
        ("base model", args.get("model")), ("data", args.get("data")), ("prompt style", args.get("prompt_style")),
        ("method", method), ("epochs", metrics.get("epochs_trained", args.get("epochs"))),
        ("optimizer steps", metrics.get("global_step")), ("batch size", args.get("batch_size")),
        ("learning rate", args.get("learning_rate")), ("weight decay", args.get("weight_decay")),
        ("masked prompt", args.get("mask_prompt")), ("final train loss", metrics.get("final_train_loss")),
        ("final validation loss", metrics.get("final_val_loss")),
    ]
    judge = metrics.get("judge")
    if judge:
        rows.append(("judge score", f"{judge.get('average_score')} ({judge.get('judge_model')}, "
                                    f"{judge.get('num_scored')} of {judge.get('num_entries')} scored)"))
    lines = ["| | |", "|---|---|"]
    for name, value in rows:
        if value is not None:
            shown = f"{value:.3f}" if isinstance(value, float) and name.endswith("loss") else value
            lines.append(f"| {name} | {shown} |")
    return lines


def _base_model(source: Path) -> str | None:
    model = _read_json(source / "training_args.json").get("model")
    if not isinstance(model, str):
        return None
    return hub_base_model(model)


def render_export_card(name: str, source: Path, style: PromptStyle, kind: str, usage: str) -> str:
    """The card: Hub metadata, what ``kind`` of export this is, the training summary, the prompt format
    (an example rendered with the style) and ``usage`` (Markdown with the commands for this format)."""
    base = _base_model(source)
    data = ModelCardData(language="en", license="mit", library_name="transformers", pipeline_tag="text-generation",
                         base_model=base, tags=["gpt2", "gpt-sft", "instruction-tuning", "sft", "llms-from-scratch"])
    prompt = style.format_prompt(_EXAMPLE)
    header = style.format_response({**_EXAMPLE, "output": ""})
    return "\n".join([
        "---", data.to_yaml(), "---", "", f"# {name}", "",
        f"{name} is {kind}. It was exported by `gpt-sft export` from the gpt-sft checkpoint `{source.name}` "
        "(instruction fine-tuning as in chapter 7 of *Build a Large Language Model From Scratch*, Sebastian Raschka).",
        "", "## How it was trained", "", *training_summary(source), "",
        "## Prompt format", "",
        f"The model continues prompts in the `{style.name}` format and was trained to answer after the "
        f"response header {header!r}, ending with `<|endoftext|>`. One instruction per prompt, with an "
        "optional input; the format is single-turn (no history). For example:", "",
        "```text", prompt + header + "...", "```", "",
        "The tokenizer's chat template renders it from one user message (the instruction); the input is the "
        "message's `input` key, or a system message before it.", "",
        "## Use", "", usage, "",
    ])


__all__ = ["render_export_card", "training_summary"]
