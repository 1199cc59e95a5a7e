"""LoRA adapter folders (a training run saved with ``--no-merge-lora``): where their base model is,
and the adapter merged into it.

Such a folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA weights
only), the tokenizer, the run's records, and ``base/``: the weights LoRA was trained on, as a complete
gpt-sft checkpoint. The adapters name gpt-sft's own modules (``q_proj``, ``c_fc``, ``lm_head`` ...), so
a stock GPT-2 cannot be their base. ``adapter_config.json`` names ``base/`` by its absolute path (peft
resolves a relative one against the working directory, not the adapter folder), for peft's
``AutoPeftModelForCausalLM``; gpt-sft looks in ``<folder>/base`` first, so a moved folder still loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from peft import PeftModel

from .weights import ModelNotFoundError, WeightLoadingError, last_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FOLDER = "base"  # the adapter's base model, beside it


def is_adapter_folder(path: str | os.PathLike) -> bool:
    """A peft adapter folder: ``adapter_config.json`` and no ``config.json`` of a whole model."""
    path = Path(path)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base_name(folder: str | os.PathLike) -> str | None:
    """``base_model_name_or_path`` of an adapter folder's ``adapter_config.json`` (``None`` if unset)."""
    config_path = Path(folder) / ADAPTER_CONFIG
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightLoadingError(f"{config_path}: not a readable adapter config ({last_line(err)})") from None
    if not isinstance(config, dict):
        raise WeightLoadingError(f"{config_path}: not a JSON object")
    return config.get("base_model_name_or_path") or None


def adapter_base(folder: str | os.PathLike) -> str:
    """Where an adapter folder's base model is: ``<folder>/base`` if it is there (it moves with the
    folder), else what ``adapter_config.json`` names.

    Raises:
        ModelNotFoundError: neither is there; the message names the folder and what is missing.
    """
    folder = Path(folder)
    local = folder / BASE_FOLDER
    if (local / "config.json").is_file():
        return str(local)
    named = adapter_base_name(folder)
    if named is None:
        raise ModelNotFoundError(f"{folder}: a LoRA adapter without its base model: no {local}/config.json, and "
                                 f"{ADAPTER_CONFIG} names no base_model_name_or_path")
    if _looks_local(named) and not Path(named).expanduser().exists():
        raise ModelNotFoundError(f"{folder}: the LoRA adapter's base model is missing: no {local}/config.json, and "
                                 f"nothing at {named} (base_model_name_or_path of {ADAPTER_CONFIG})")
    if Path(named).expanduser().resolve() == folder.resolve():
        raise WeightLoadingError(f"{folder}: {ADAPTER_CONFIG} names the adapter folder itself as its base model")
    return named


def _looks_local(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or Path(name).exists()


def base_is_local(folder: str | os.PathLike) -> bool:
    """Whether an adapter folder's base is ``base/`` or a local path (or missing): gpt-sft's adapters.
    An adapter of a model named by a Hub id may be anyone's, for a model gpt-sft does not build."""
    if (Path(folder) / BASE_FOLDER / "config.json").is_file():
        return True
    named = adapter_base_name(folder)
    return named is None or _looks_local(named)


def merge_adapter(base: torch.nn.Module, folder: str | os.PathLike) -> torch.nn.Module:
    """``base`` with the adapter of ``folder`` applied by peft and merged into its weights: a plain model
    again, with the same names, computing what the trained LoRA model did (up to float rounding)."""
    try:
        peft_model = PeftModel.from_pretrained(base, str(folder))
    except (ValueError, KeyError, RuntimeError) as err:  # target modules or shapes that the base lacks
        raise WeightLoadingError(f"{folder}: the LoRA adapter does not fit its base model ({last_line(err)})") from None
    return peft_model.merge_and_unload()


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "BASE_FOLDER", "adapter_base", "adapter_base_name",
           "base_is_local", "is_adapter_folder", "merge_adapter"]
