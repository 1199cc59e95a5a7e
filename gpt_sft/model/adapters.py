"""LoRA adapter folders (a training run saved with ``--no-merge-lora``): where their base model is,
and the adapter merged into it.

Such a folder holds peft's ``adapter_config.json`` and ``adapter_model.safetensors`` (the LoRA weights
only), the tokenizer, the run's records, and ``base/``: the weights LoRA was trained on, as a complete
gpt-sft checkpoint. The adapters name gpt-sft's own modules (``q_proj``, ``c_fc``, ``lm_head`` ...), so
a stock GPT-2 cannot be their base. ``adapter_config.json`` names ``base/`` by its absolute path (peft
resolves a relative one against the working directory, not the adapter folder), for peft's
``AutoPeftModelForCausalLM``; gpt-sft looks in ``<folder>/base`` first, so a moved folder still loads.

A copy without ``base/`` would load whatever now lies at that absolute path: ``adapter_base.json`` records
the SHA-256 of the base's weights at training time, and gpt-sft says which base it loads from elsewhere
and refuses one whose weights differ (peft's own loader does not check).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from peft import PeftModel

from ..common.atomic_io import write_json_atomic
from ..common.download import sha256_file
from .weights import ModelNotFoundError, WeightLoadingError, last_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FOLDER = "base"  # the adapter's base model, beside it
BASE_RECORD = "adapter_base.json"  # the SHA-256 of the base's weights: the base is known again without base/


class AdapterBaseWarning(UserWarning):
    """An adapter folder's base model is loaded from elsewhere than its own ``base/``."""


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


def base_weights_sha256(base: str | os.PathLike) -> dict[str, str]:
    """``{file name: SHA-256}`` of a base model folder's safetensors files (``sha256sum base/*.safetensors``)."""
    return {path.name: sha256_file(path) for path in sorted(Path(base).glob("*.safetensors"))}


def write_base_record(folder: str | os.PathLike, base: str | os.PathLike) -> None:
    """Record in adapter folder ``folder`` the SHA-256 of the weights of its base model ``base``."""
    write_json_atomic(Path(folder) / BASE_RECORD, {"base_weights_sha256": base_weights_sha256(base)})


def verified_adapter_base(folder: str | os.PathLike) -> str:
    """:func:`adapter_base`, checked: a base whose weights differ from those the folder recorded in
    ``adapter_base.json`` is refused, and a base loaded from elsewhere than ``<folder>/base`` is named in a
    one-line warning (an adapter saved before the record existed is loaded unchecked, as before)."""
    folder = Path(folder)
    base = adapter_base(folder)
    record_path = folder / BASE_RECORD
    recorded = None
    if record_path.is_file():
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))["base_weights_sha256"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise WeightLoadingError(f"{record_path}: not a readable base record ({last_line(err)})") from None
    own = Path(base) == folder / BASE_FOLDER
    source = base if own else f"{base} (named by {ADAPTER_CONFIG}; {folder} has no {BASE_FOLDER}/)"
    if recorded is not None and (not Path(base).is_dir() or base_weights_sha256(base) != recorded):
        raise WeightLoadingError(
            f"{source}: not the base model the LoRA adapter in {folder} was trained on: its weights' SHA-256 differ "
            f"from those recorded in {record_path}; put the training run's own {BASE_FOLDER}/ in {folder}")
    if not own:
        checked = "its weights match the recorded SHA-256" if recorded is not None else "no SHA-256 recorded to check it"
        # warn_explicit with a file name that has no source lines: the warning prints as one line
        warnings.warn_explicit(f"{folder}: loading the LoRA adapter's base model from {source}, {checked}",
                               AdapterBaseWarning, filename="gpt-sft", lineno=0)
    return base


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


__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "AdapterBaseWarning", "BASE_FOLDER", "BASE_RECORD", "adapter_base",
           "adapter_base_name", "base_is_local", "base_weights_sha256", "is_adapter_folder", "merge_adapter",
           "verified_adapter_base", "write_base_record"]
