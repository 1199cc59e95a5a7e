"""Name maps from every GPT-2 naming to ours: three small pure functions, each returning a state dict
in :class:`GPTForCausalLM`'s names.

:func:`convert_hf_gpt2_state_dict` (Conv1D ``[in, out]`` weights are transposed and ``c_attn`` is
split into ``q_proj``/``k_proj``/``v_proj``), :func:`convert_openai_tf_checkpoint` (TF variable names
-> HF names, leading 1 squeezed, then as HF) and :func:`convert_book_state_dict` (renames only: the
book's layers are ``nn.Linear`` already). Each returns a new dict of contiguous tensors that own
their memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .weights import WeightLoadingError



def _own(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy that shares memory with nothing (split views must not alias each other)."""
    return tensor.clone(memory_format=torch.contiguous_format)


def _unexpected(keys: list[str], source: str, naming: str) -> WeightLoadingError:
    shown = ", ".join(sorted(keys)[:10]) + (f" ... ({len(keys)} in all)" if len(keys) > 10 else "")
    return WeightLoadingError(f"{source}: unexpected keys for {naming} weights: {shown}")


_HF_BLOCK = re.compile(r"^h\.(\d+)\.(.+)$")
_HF_IGNORED = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # old causal-mask buffers, not weights


def convert_hf_gpt2_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Hugging Face ``GPT2LMHeadModel``/``GPT2Model`` names -> ours.

    Keys may carry the ``transformer.`` prefix or not (the Hub's ``openai-community/gpt2`` has none).
    Conv1D weights (``c_attn``, ``c_proj``, ``c_fc``) are stored ``[in, out]`` and are transposed to
    ``nn.Linear``'s ``[out, in]``; ``c_attn`` is split into ``q_proj``, ``k_proj``, ``v_proj`` along its
    output axis. ``lm_head.weight`` is kept if present (an untied model); when absent the caller copies
    or ties ``wte``. The old ``attn.bias``/``attn.masked_bias`` mask buffers are dropped.

    Raises:
        WeightLoadingError: a key that is not a GPT-2 weight (named with ``source``).
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        name = key[len("transformer.") :] if key.startswith("transformer.") else key
        if _HF_IGNORED.match(name):
            continue
        if name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            out[f"transformer.{name}"] = _own(value)
            continue
        if key == "lm_head.weight":
            out[key] = _own(value)
            continue
        match = _HF_BLOCK.match(name)
        if match is None:
            unexpected.append(key)
            continue
        prefix, rest = f"transformer.h.{match.group(1)}.", match.group(2)
        if rest in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            out[prefix + rest] = _own(value)
        elif rest == "attn.c_attn.weight":  # [d, 3d] -> three [d, d] in [out, in]
            for part, chunk in zip(("q", "k", "v"), value.t().chunk(3, dim=0), strict=True):
                out[f"{prefix}attn.{part}_proj.weight"] = _own(chunk)
        elif rest == "attn.c_attn.bias":
            for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=-1), strict=True):
                out[f"{prefix}attn.{part}_proj.bias"] = _own(chunk)
        elif rest in ("attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"):
            if value.dim() != 2:
                raise WeightLoadingError(f"{source}: {key} should be 2-D, got shape {tuple(value.shape)}")
            out[prefix + rest] = _own(value.t())
        elif rest in ("attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"):
            out[prefix + rest] = _own(value)
        else:
            unexpected.append(key)
    if unexpected:
        raise _unexpected(unexpected, source, "Hugging Face GPT-2")
    return out


_OPENAI_BLOCK = re.compile(r"^model/h(\d+)/(ln_1|ln_2|attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/(g|b|w)$")
_OPENAI_TOP = {
    "model/wte": "wte.weight",
    "model/wpe": "wpe.weight",
    "model/ln_f/g": "ln_f.weight",
    "model/ln_f/b": "ln_f.bias",
}


def convert_openai_tf_checkpoint(
    variables: Mapping[str, Any], *, source: str = "TF checkpoint"
) -> dict[str, torch.Tensor]:
    """OpenAI's TensorFlow GPT-2 variables (numpy arrays or tensors) -> our names.

    ``model/h0/attn/c_attn/w`` ``[1, d, 3d]`` and the other ``.../w`` weights lose their leading 1 and are
    then exactly Hugging Face's Conv1D layout, so the renamed dict goes through
    :func:`convert_hf_gpt2_state_dict` (transpose, q/k/v split). ``g``/``b`` are LayerNorm scale/shift or
    biases. OpenAI's checkpoint has no output head: the caller copies or ties ``wte``.
    """
    hf: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, value in variables.items():
        if isinstance(value, torch.Tensor):
            tensor = value
        else:  # numpy; the HF conversion below copies it anyway
            tensor = torch.from_numpy(value if value.flags.writeable else value.copy())
        if name in _OPENAI_TOP:
            hf[_OPENAI_TOP[name]] = tensor
            continue
        match = _OPENAI_BLOCK.match(name)
        if match is None:
            unexpected.append(name)
            continue
        layer, module, kind = match.groups()
        if kind == "w":
            if tensor.dim() != 3 or tensor.shape[0] != 1:
                raise WeightLoadingError(
                    f"{source}: {name} should have shape [1, in, out], got {tuple(tensor.shape)}"
                )
            tensor = tensor[0]
        suffix = {"w": "weight", "g": "weight", "b": "bias"}[kind]
        hf[f"h.{layer}.{module.replace('/', '.')}.{suffix}"] = tensor
    if unexpected:
        raise _unexpected(unexpected, source, "OpenAI GPT-2")
    return convert_hf_gpt2_state_dict(hf, source=source)


_BOOK_BLOCK = re.compile(r"^trf_blocks\.(\d+)\.(.+)$")
_BOOK_TOP = {
    "tok_emb.weight": "transformer.wte.weight",
    "pos_emb.weight": "transformer.wpe.weight",
    "final_norm.scale": "transformer.ln_f.weight",
    "final_norm.shift": "transformer.ln_f.bias",
    "out_head.weight": "lm_head.weight",
}
_BOOK_IN_BLOCK = {
    "att.W_query.weight": "attn.q_proj.weight",
    "att.W_query.bias": "attn.q_proj.bias",
    "att.W_key.weight": "attn.k_proj.weight",
    "att.W_key.bias": "attn.k_proj.bias",
    "att.W_value.weight": "attn.v_proj.weight",
    "att.W_value.bias": "attn.v_proj.bias",
    "att.out_proj.weight": "attn.c_proj.weight",
    "att.out_proj.bias": "attn.c_proj.bias",
    "norm1.scale": "ln_1.weight",
    "norm1.shift": "ln_1.bias",
    "norm2.scale": "ln_2.weight",
    "norm2.shift": "ln_2.bias",
    "ff.layers.0.weight": "mlp.c_fc.weight",
    "ff.layers.0.bias": "mlp.c_fc.bias",
    "ff.layers.2.weight": "mlp.c_proj.weight",
    "ff.layers.2.bias": "mlp.c_proj.bias",
}


def convert_book_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """The book's ``GPTModel`` names (``tok_emb``, ``trf_blocks.N.att.W_query`` ...) -> ours.

    Renames only: the book's layers are ``nn.Linear`` (``[out, in]``) like ours. The causal-mask buffer
    ``trf_blocks.N.att.mask`` is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key in _BOOK_TOP:
            out[_BOOK_TOP[key]] = _own(value)
            continue
        match = _BOOK_BLOCK.match(key)
        if match and match.group(2) == "att.mask":
            continue
        if match and match.group(2) in _BOOK_IN_BLOCK:
            out[f"transformer.h.{match.group(1)}.{_BOOK_IN_BLOCK[match.group(2)]}"] = _own(value)
        else:
            unexpected.append(key)
    if unexpected:
        raise _unexpected(unexpected, source, "the book's GPTModel")
    return out


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Detect the naming of a bare state dict (book, Hugging Face GPT-2 or ours) and convert it to ours.

    ``_orig_mod.`` (``torch.compile``) and ``module.`` (DDP) prefixes are removed first.
    """
    cleaned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        cleaned[key] = value
    keys = set(cleaned)
    if "tok_emb.weight" in keys or any(k.startswith("trf_blocks.") for k in keys):
        return convert_book_state_dict(cleaned, source=source)
    if any(".attn.q_proj." in k for k in keys):  # already ours
        return {k: _own(v) for k, v in cleaned.items()}
    if any(k.endswith("wte.weight") or ".attn.c_attn." in k for k in keys):
        return convert_hf_gpt2_state_dict(cleaned, source=source)
    first = ", ".join(sorted(keys)[:5])
    raise WeightLoadingError(
        f"{source}: not a GPT-2 state dict in any naming this loader knows (the book's, Hugging Face GPT-2's "
        f"or gpt_sft's); first keys: {first or '(none)'}"
    )


# --------------------------------------------------------------------------------------------------
# Config inference and strict loading
