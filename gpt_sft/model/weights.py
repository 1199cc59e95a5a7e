"""Weight files and the strict rules for turning them into a :class:`GPTForCausalLM`.

Readers for state-dict files (``torch.load(weights_only=True)``, never unpickling objects) and for
safetensors; the shape check that compares a checkpoint's ``config.json`` with its weight files'
headers before anything is allocated; and :func:`build_model`, which makes a model of exactly the
given tensors: a missing, unexpected or wrongly shaped tensor is a :class:`WeightLoadingError` naming
the file and the keys.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .configuration_gpt import GPT2_PRESETS, GPTConfig
from .modeling_gpt import GPTForCausalLM

class WeightLoadingError(ValueError):
    """Weights could not be loaded: unknown source, unreadable file, missing/unexpected keys, bad shapes."""


class ModelNotFoundError(WeightLoadingError, FileNotFoundError):
    """The model source looks like a local path, and nothing is there."""



# --------------------------------------------------------------------------------------------------
# Config inference and strict building
# --------------------------------------------------------------------------------------------------


def infer_config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, n_head: int | None = None, source: str = "state dict"
) -> dict[str, Any]:
    """GPTConfig fields read off a state dict in our names.

    Width, vocabulary and context come from the embeddings, depth from the block indices, ``n_inner``
    from ``c_fc`` and ``qkv_bias`` from whether ``q_proj.bias`` is present. The head count is not
    visible in the tensors: it is ``n_head`` if given, else the one of the GPT-2 preset with the same
    width and depth.

    Raises:
        WeightLoadingError: no embeddings, or ``n_head`` not given and no preset matches.
    """
    try:
        vocab_size, n_embd = state_dict["transformer.wte.weight"].shape
        n_positions = state_dict["transformer.wpe.weight"].shape[0]
    except KeyError as err:
        raise WeightLoadingError(f"{source}: cannot infer the model size: missing {err.args[0]}") from None
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    n_layer = max(layers) + 1 if layers else 0
    c_fc = state_dict.get("transformer.h.0.mlp.c_fc.weight")
    n_inner = int(c_fc.shape[0]) if c_fc is not None else None
    if n_head is None:
        matches = [
            (name, p["n_head"])
            for name, p in GPT2_PRESETS.items()
            if p["n_embd"] == n_embd and p["n_layer"] == n_layer
        ]
        if len(matches) != 1:
            raise WeightLoadingError(
                f"{source}: cannot infer the number of attention heads of a model with n_embd={n_embd}, "
                f"n_layer={n_layer} (it matches {'no' if not matches else 'more than one'} GPT-2 preset); "
                "pass it, e.g. load_pretrained(path, n_head=12)"
            )
        n_head = matches[0][1]
    return {
        "vocab_size": int(vocab_size),
        "n_positions": int(n_positions),
        "n_embd": int(n_embd),
        "n_layer": int(n_layer),
        "n_head": int(n_head),
        "n_inner": None if n_inner in (None, 4 * n_embd) else n_inner,
        "qkv_bias": "transformer.h.0.attn.q_proj.bias" in state_dict,
    }


_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16"}


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bfloat16"``, ``"bf16"``... -> the dtype; ``None``/``"auto"`` -> ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    name = str(dtype).lower().removeprefix("torch.")
    value = getattr(torch, _DTYPE_ALIASES.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. torch.float32, 'bfloat16' or 'float16'")
    return value


def finish_model(
    model: GPTForCausalLM, dtype: torch.dtype | str | None, device: torch.device | str | None
) -> GPTForCausalLM:
    dtype = parse_dtype(dtype)
    if dtype is not None:
        model.to(dtype)
        model.config.dtype = dtype
    if device is not None:
        model.to(device)
    return model.eval()


def build_model(
    config_kwargs: Mapping[str, Any],
    state_dict: dict[str, torch.Tensor],
    *,
    source: str,
    tie_word_embeddings: bool = False,
    drop_rate: float | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> GPTForCausalLM:
    """A :class:`GPTForCausalLM` with ``config_kwargs`` and exactly the tensors of ``state_dict`` (our names).

    ``lm_head.weight`` may be absent (a tied source): it then becomes a copy of ``wte``
    (``tie_word_embeddings=False``) or ``wte`` itself (``True``). Tying a source whose output head
    differs from its embedding is refused, since it would silently change the model.

    Raises:
        WeightLoadingError: missing or unexpected keys, or a shape that does not fit the config.
    """
    state_dict = dict(state_dict)  # the caller's dict is left as it was
    kwargs = dict(config_kwargs)
    kwargs["tie_word_embeddings"] = bool(tie_word_embeddings)
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    config = GPTConfig(**kwargs)
    with torch.device("meta"):  # no random init of weights that are about to be replaced
        model = GPTForCausalLM(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    wte = state_dict.get("transformer.wte.weight")
    head = state_dict.get("lm_head.weight")
    if wte is not None:
        if tie_word_embeddings:
            if head is not None and (head.shape != wte.shape or not torch.equal(head, wte)):
                raise WeightLoadingError(
                    f"{source}: its output head (lm_head.weight) differs from its token embedding, so it "
                    "cannot be loaded with tie_word_embeddings=True without changing the model; "
                    "use tie_word_embeddings=False"
                )
            state_dict.pop("lm_head.weight", None)
        elif head is None:
            state_dict["lm_head.weight"] = wte.clone()
    if tie_word_embeddings:
        expected.pop("lm_head.weight")

    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing keys: {', '.join(missing[:10])}"
                + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")
            )
        if unexpected:
            parts.append(
                f"unexpected keys: {', '.join(unexpected[:10])}"
                + (f" ... ({len(unexpected)} in all)" if len(unexpected) > 10 else "")
            )
        raise WeightLoadingError(
            f"{source} does not fit the model (names shown in gpt_sft's naming): " + "; ".join(parts)
        )
    wrong = [
        f"{k}: {tuple(v.shape)} in the file, {expected[k]} expected"
        for k, v in state_dict.items()
        if tuple(v.shape) != expected[k]
    ]
    if wrong:
        raise WeightLoadingError(f"{source}: shape mismatch: " + "; ".join(wrong[:10]))
    dtypes = {v.dtype for v in state_dict.values()}
    if len(dtypes) > 1:  # mixed storage dtypes: unify before assigning
        target = torch.float32 if torch.float32 in dtypes else next(iter(dtypes))
        state_dict = {k: v.to(target) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=not tie_word_embeddings, assign=True)
    if tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    model.config.dtype = next(iter(state_dict.values())).dtype
    return finish_model(model, dtype, device)



# --------------------------------------------------------------------------------------------------
# Readers and checks
# --------------------------------------------------------------------------------------------------


def last_line(err: BaseException) -> str:
    lines = [
        line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith("Check the doc")
    ]
    return lines[-1] if lines else err.__class__.__name__


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load(weights_only=True)`` of a state dict, with our errors."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:  # not a pickle weights_only can parse at all
            raise WeightLoadingError(
                f"{path}: not a readable PyTorch state dict (torch.load(weights_only=True) failed: "
                f"{last_line(err)})"
            ) from None
        raise WeightLoadingError(
            f"{path}: refused to load: it contains a Python object ({found.group(1)}) besides tensors, "
            "and gpt_sft reads state dicts only with torch.load(weights_only=True), which never runs code "
            "from the file. "
            "Save a plain model.state_dict() (or use .safetensors) instead."
        ) from None
    except Exception as err:  # corrupt or not a torch file
        raise WeightLoadingError(
            f"{path}: not a readable PyTorch state dict ({err.__class__.__name__}: {err})"
        ) from None
    if (
        isinstance(obj, Mapping) and "model_state_dict" in obj
    ):  # the book's ch05 {"model_state_dict", "optimizer_..."}
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightLoadingError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    return dict(obj)


def read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadingError(f"{path}: not a readable safetensors file ({err})") from None
    return _torch_load(path)


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder: one safetensors, its shards, or a .bin."""
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        return [legacy]
    raise WeightLoadingError(
        f"{folder}: no model.safetensors (or model.safetensors.index.json, pytorch_model.bin) in it"
    )


def expected_tensor_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a :class:`GPTForCausalLM` of ``config`` has, with its shape, without building it:
    a one-block model on the meta device gives the block's tensors, repeated ``n_layer`` times. A tied
    output head is not stored, so ``lm_head.weight`` is absent then."""
    one_block = copy.deepcopy(config)
    one_block.n_layer = 1
    with torch.device("meta"):
        template = GPTForCausalLM(one_block).state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    block = "transformer.h.0."
    for key, tensor in template.items():
        if key.startswith(block):
            for i in range(config.n_layer):
                shapes[f"transformer.h.{i}.{key[len(block):]}"] = tuple(tensor.shape)
        else:
            shapes[key] = tuple(tensor.shape)
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def _read_tensor(files: Sequence[Path], key: str) -> torch.Tensor | None:
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            if key in handle.keys():
                return handle.get_tensor(key)
    return None


def stored_tensor_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in safetensors files, read from their headers (no tensor data)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        if file.suffix != ".safetensors":
            raise WeightLoadingError(f"{file}: gpt_sft checkpoints store their weights as .safetensors")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadingError(f"{file}: not a readable safetensors file ({err})") from None
    return shapes


def _name_keys(kind: str, keys: Sequence[str]) -> str:
    keys = sorted(keys)
    return f"{kind}: {', '.join(keys[:10])}" + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")


def check_weights_fit_config(folder: Path, config: GPTConfig) -> None:
    """Refuse a checkpoint whose ``config.json`` and weight files disagree, before any memory is
    allocated for the model: a missing, unexpected or wrongly shaped tensor is a
    :class:`WeightLoadingError` naming the keys (transformers would fill missing ones randomly)."""
    files = hf_weight_files(folder)
    where = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} weight files)"
    stored = stored_tensor_shapes(files)
    blocks = {int(m.group(1)) for key in stored if (m := re.match(r"transformer\.h\.(\d+)\.", key))}
    if len(blocks) != config.n_layer:
        raise WeightLoadingError(
            f"{folder / 'config.json'} says n_layer={config.n_layer}, but {where} holds {len(blocks)} transformer "
            "blocks: the config and the weights are not from the same model"
        )
    expected = expected_tensor_shapes(config)
    if config.tie_word_embeddings and stored.pop("lm_head.weight", None) is not None:
        # a tied head saved anyway must be the embedding again: a trained head of its own would be dropped silently
        heads = {key: _read_tensor(files, key) for key in ("lm_head.weight", "transformer.wte.weight")}
        if None not in heads.values() and not torch.equal(*heads.values()):
            raise WeightLoadingError(
                f"{folder / 'config.json'} says tie_word_embeddings: true, but {where} holds an lm_head.weight that "
                "differs from the token embedding: the config and the weights are not from the same model (set "
                "tie_word_embeddings to false if the head was trained on its own)")
    problems = []
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing:
        problems.append(_name_keys("missing tensors", missing))
    if unexpected:
        problems.append(_name_keys("unexpected tensors", unexpected))
    wrong = [f"{key} {stored[key]} (config.json needs {shape})" for key, shape in expected.items()
             if key in stored and stored[key] != shape]
    if wrong:
        problems.append(_name_keys("wrong shapes", wrong))
    if problems:
        raise WeightLoadingError(f"{where} does not fit {folder / 'config.json'}: " + "; ".join(problems))


