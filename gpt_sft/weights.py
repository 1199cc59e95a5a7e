"""Pretrained GPT-2 weights -> :class:`~gpt_sft.modeling_gpt.GPTForCausalLM`.

One entry point, :func:`load_pretrained`, for every place GPT-2 weights come from:

=====================================  ==============================================================
``source``                             what is loaded
=====================================  ==============================================================
preset (``"124M"``, ``"gpt2-medium"``,  Hugging Face Hub repo ``openai-community/gpt2*`` (default), or
``"gpt2-small (124M)"`` ...)           with ``format="openai"`` OpenAI's original TensorFlow
                                       checkpoint, downloaded like the book does
Hub id ``"owner/name"``                ``config.json`` + ``model.safetensors`` (GPT-2 or gpt_sft)
local Hugging Face GPT-2 folder        ``config.json`` (``model_type: gpt2``) + safetensors
local OpenAI checkpoint folder         ``hparams.json`` + ``model.ckpt.*`` (needs ``gpt-sft[tf]``)
``.pth`` / ``.safetensors`` file       a ``state_dict`` in the book's names (``tok_emb``,
                                       ``trf_blocks.N.att.W_query`` ...), HF GPT-2's or ours
local gpt_sft checkpoint folder        ``config.json`` with ``model_type: gpt_sft``
=====================================  ==============================================================

The name maps are three small pure functions, each returning a state dict in our names:
:func:`convert_hf_gpt2_state_dict` (Conv1D ``[in, out]`` weights are transposed and ``c_attn`` is
split into ``q_proj``/``k_proj``/``v_proj``), :func:`convert_openai_tf_checkpoint` (TF variable names
-> HF names, leading 1 squeezed, then as HF) and :func:`convert_book_state_dict` (renames only: the
book's layers are ``nn.Linear`` already). Loading is strict: a missing, unexpected or wrongly shaped
tensor is a :class:`WeightLoadingError` naming the file and the keys.

By default the output head gets a *copy* of the token embedding (``tie_word_embeddings=False``, the
book's choice; fine-tuning then updates both); ``tie_word_embeddings=True`` shares them as Hugging
Face GPT-2 does. Nothing is unpickled: ``.pth``/``.bin`` files are read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .checkpoint_code import warn_if_outdated
from .configuration_gpt import GPT2_PRESETS, GPTConfig, resolve_preset_name
from .download import DownloadError, download_file, hub_offline_reason
from .modeling_gpt import GPTForCausalLM

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
"""Where the book downloads OpenAI's checkpoints from; override with ``base_url=`` or
the environment variable ``GPT_SFT_OPENAI_BASE_URL``."""

OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
"""The files of one OpenAI GPT-2 size folder (all of them, as the book downloads them)."""

OPENAI_SIZES = {
    "gpt2-small (124M)": "124M",
    "gpt2-medium (355M)": "355M",
    "gpt2-large (774M)": "774M",
    "gpt2-xl (1558M)": "1558M",
}
HUB_REPOS = {
    "gpt2-small (124M)": "openai-community/gpt2",
    "gpt2-medium (355M)": "openai-community/gpt2-medium",
    "gpt2-large (774M)": "openai-community/gpt2-large",
    "gpt2-xl (1558M)": "openai-community/gpt2-xl",
}

FORMATS = ("hf", "openai", "book", "gpt_sft")

ACCEPTED_SOURCES = (
    "Accepted sources: a GPT-2 preset name ('gpt2-small (124M)', '124M', 'gpt2', 'gpt2-medium', '355M', "
    "'774M', '1558M'; format='hf' (default, Hugging Face Hub) or format='openai' (OpenAI's TF checkpoint)); "
    "a Hugging Face Hub id 'owner/name'; a local Hugging Face GPT-2 folder (config.json + model.safetensors); "
    "a local OpenAI checkpoint folder (hparams.json + model.ckpt.index); a .pth or .safetensors state_dict "
    "in the book's names; or a gpt_sft checkpoint folder (config.json with model_type 'gpt_sft')."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


class WeightLoadingError(ValueError):
    """Weights could not be loaded: unknown source, unreadable file, missing/unexpected keys, bad shapes."""


class ModelNotFoundError(WeightLoadingError, FileNotFoundError):
    """The model source looks like a local path, and nothing is there."""


# --------------------------------------------------------------------------------------------------
# Name maps: source naming -> ours. Each returns a new dict of contiguous tensors owning their memory.
# --------------------------------------------------------------------------------------------------


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


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use e.g. torch.float32, 'bfloat16' or 'float16'")
    return value


def _finish(
    model: GPTForCausalLM, dtype: torch.dtype | str | None, device: torch.device | str | None
) -> GPTForCausalLM:
    dtype = _parse_dtype(dtype)
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
    return _finish(model, dtype, device)


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def _last_line(err: BaseException) -> str:
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
                f"{_last_line(err)})"
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


def _read_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise WeightLoadingError(f"{path}: not a readable safetensors file ({err})") from None
    return _torch_load(path)


def _hf_weight_files(folder: Path) -> list[Path]:
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


def _check_hf_gpt2_config(hf_config: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """GPTConfig fields from a Hugging Face GPT-2 ``config.json``; refuse variants our model cannot compute."""
    act = hf_config.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise WeightLoadingError(
            f"{path}: activation_function {act!r} is not GPT-2's tanh GELU; gpt_sft cannot run it"
        )
    if not hf_config.get("scale_attn_weights", True) or hf_config.get("scale_attn_by_inverse_layer_idx", False):
        raise WeightLoadingError(f"{path}: non-standard attention scaling is not supported by gpt_sft")
    kwargs: dict[str, Any] = {
        "vocab_size": hf_config.get("vocab_size", 50257),
        "n_positions": hf_config.get("n_positions", 1024),
        "n_embd": hf_config.get("n_embd", 768),
        "n_layer": hf_config.get("n_layer", 12),
        "n_head": hf_config.get("n_head", 12),
        "n_inner": hf_config.get("n_inner"),
        "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-5),
        "qkv_bias": True,
    }
    for field in ("bos_token_id", "eos_token_id"):
        if hf_config.get(field) is not None:
            kwargs[field] = hf_config[field]
    return kwargs


def load_hf_gpt2_folder(folder: str | os.PathLike, **options: Any) -> GPTForCausalLM:
    """Load a Hugging Face GPT-2 folder (``config.json`` with ``model_type: gpt2`` + weights).

    ``options`` are :func:`load_pretrained`'s ``tie_word_embeddings``, ``drop_rate``, ``dtype``, ``device``.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    hf_config = json.loads(config_path.read_text())
    if hf_config.get("model_type") != "gpt2":
        raise WeightLoadingError(f"{config_path}: model_type is {hf_config.get('model_type')!r}, expected 'gpt2'")
    config_kwargs = _check_hf_gpt2_config(hf_config, config_path)
    files = _hf_weight_files(folder)
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update(_read_state_dict_file(file))
    source = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} shards)"
    state_dict = convert_hf_gpt2_state_dict(raw, source=source)
    return build_model(config_kwargs, state_dict, source=source, **_build_options(options))


def read_openai_tf_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, int], dict[str, Any]]:
    """``(hparams, variables)`` of an OpenAI GPT-2 checkpoint folder; needs TensorFlow (``gpt-sft[tf]``).

    ``hparams`` is ``hparams.json`` (``n_vocab, n_ctx, n_embd, n_head, n_layer``); ``variables`` maps each
    TF variable name to a numpy array, read as the book does with TF's checkpoint reader
    (``tf.train.load_variable`` opens one reader per variable; one reader for all is the same, faster).
    """
    folder = Path(folder)
    hparams = json.loads((folder / "hparams.json").read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            f"Reading OpenAI's TensorFlow checkpoint in {folder} needs TensorFlow: pip install 'gpt-sft[tf]' "
            "(or load the same weights from the Hugging Face Hub: load_pretrained('124M'), format='hf')"
        ) from err
    prefix = tf.train.latest_checkpoint(str(folder)) if (folder / "checkpoint").is_file() else None
    if prefix is None:
        prefix = str(folder / "model.ckpt")
    if not Path(prefix + ".index").is_file():
        raise WeightLoadingError(f"{folder}: no TensorFlow checkpoint (expected {prefix}.index)")
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        variables = {name: reader.get_tensor(name) for name in names}
    except Exception as err:  # tf.errors.* for truncated/corrupt data files
        raise WeightLoadingError(
            f"{prefix}: cannot read the TensorFlow checkpoint ({err.__class__.__name__}: {err})"
        ) from None
    return hparams, variables


def load_openai_folder(folder: str | os.PathLike, **options: Any) -> GPTForCausalLM:
    """Load an OpenAI GPT-2 checkpoint folder (``hparams.json`` + ``model.ckpt.*``), as the book does."""
    folder = Path(folder)
    hparams, variables = read_openai_tf_checkpoint(folder)
    try:
        config_kwargs = {
            "vocab_size": hparams["n_vocab"],
            "n_positions": hparams["n_ctx"],
            "n_embd": hparams["n_embd"],
            "n_head": hparams["n_head"],
            "n_layer": hparams["n_layer"],
            "qkv_bias": True,
        }
    except KeyError as err:
        raise WeightLoadingError(f"{folder / 'hparams.json'}: missing {err.args[0]!r}") from None
    source = f"{folder / 'model.ckpt'}"
    state_dict = convert_openai_tf_checkpoint(variables, source=source)
    return build_model(config_kwargs, state_dict, source=source, **_build_options(options))


def load_state_dict_file(path: str | os.PathLike, *, n_head: int | None = None, **options: Any) -> GPTForCausalLM:
    """Load a ``.pth``/``.pt``/``.bin``/``.safetensors`` state dict (book, HF GPT-2 or gpt_sft names).

    The config is inferred from the tensor shapes (see :func:`infer_config_from_state_dict`).
    """
    path = Path(path)
    state_dict = convert_state_dict(_read_state_dict_file(path), source=str(path))
    config_kwargs = infer_config_from_state_dict(state_dict, n_head=n_head, source=str(path))
    return build_model(config_kwargs, state_dict, source=str(path), **_build_options(options))


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
    files = _hf_weight_files(folder)
    where = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} weight files)"
    stored = stored_tensor_shapes(files)
    blocks = {int(m.group(1)) for key in stored if (m := re.match(r"transformer\.h\.(\d+)\.", key))}
    if len(blocks) != config.n_layer:
        raise WeightLoadingError(
            f"{folder / 'config.json'} says n_layer={config.n_layer}, but {where} holds {len(blocks)} transformer "
            "blocks: the config and the weights are not from the same model"
        )
    expected = expected_tensor_shapes(config)
    if config.tie_word_embeddings:
        stored.pop("lm_head.weight", None)  # a tied head saved anyway is the embedding again
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


def load_gpt_sft_folder(folder: str | os.PathLike, **options: Any) -> GPTForCausalLM:
    """Load one of our own checkpoints (``config.json`` with ``model_type: gpt_sft``) with the installed
    model code (never the folder's copy of it).

    The weights must fit the config exactly (:func:`check_weights_fit_config`, checked before loading).
    ``tie_word_embeddings=None`` keeps the checkpoint's choice; ``True``/``False`` ties or unties after
    loading (tying an untied checkpoint whose head differs from its embedding is refused).
    """
    folder = Path(folder)
    tie = options.get("tie_word_embeddings")
    overrides: dict[str, Any] = {}
    if options.get("drop_rate") is not None:
        overrides["drop_rate"] = options["drop_rate"]
    dtype = _parse_dtype(options.get("dtype"))
    if dtype is not None:
        overrides["dtype"] = dtype
    try:
        config = GPTConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as err:
        raise WeightLoadingError(f"{folder / 'config.json'}: not a valid gpt_sft config ({_last_line(err)})") from None
    check_weights_fit_config(folder, config)
    warn_if_outdated(folder)
    if "drop_rate" in overrides:  # a given config object takes no keyword overrides in from_pretrained
        config.drop_rate = overrides.pop("drop_rate")
    model, info = GPTForCausalLM.from_pretrained(str(folder), config=config, output_loading_info=True, **overrides)
    problems = [f"{kind}: {', '.join(map(str, keys))}" for kind, keys in info.items() if keys and kind != "error_msgs"]
    if problems:  # the header check above should have caught these; never run a half-loaded model
        raise WeightLoadingError(f"{folder}: weights did not load exactly ({'; '.join(problems)})")
    wte, head = model.transformer.wte.weight, model.lm_head.weight
    if tie is True and head is not wte:
        if not torch.equal(head, wte):
            raise WeightLoadingError(
                f"{folder}: its output head differs from its token embedding, so it cannot be loaded with "
                "tie_word_embeddings=True without changing the model"
            )
        model.lm_head.weight = wte
        model.config.tie_word_embeddings = True
    elif tie is False and head is wte:
        model.lm_head.weight = torch.nn.Parameter(wte.detach().clone())
        model.config.tie_word_embeddings = False
    return _finish(model, options.get("dtype"), options.get("device"))


def _build_options(options: Mapping[str, Any]) -> dict[str, Any]:
    tie = options.get("tie_word_embeddings")
    return {
        "tie_word_embeddings": bool(tie) if tie is not None else False,
        "drop_rate": options.get("drop_rate"),
        "dtype": options.get("dtype"),
        "device": options.get("device"),
    }


# --------------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$GPT_SFT_CACHE`` or ``~/.cache/gpt_sft``: the root under which OpenAI's files are kept."""
    return Path(os.environ.get("GPT_SFT_CACHE") or Path.home() / ".cache" / "gpt_sft").expanduser()


def download_openai_checkpoint(
    size: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download OpenAI's GPT-2 ``size`` folder (``"124M"`` or a preset name) as the book does; return it.

    Files go to ``<cache_dir>/openai/<size>/`` (``cache_dir`` defaults to :func:`default_cache_dir`) and
    come from ``<base_url>/<size>/<file>``, ``base_url`` defaulting to ``$GPT_SFT_OPENAI_BASE_URL`` or
    :data:`OPENAI_BASE_URL`. Downloads resume, are atomic, and a complete file is not fetched again.

    Raises:
        DownloadError: the server cannot be reached or a file is incomplete (names the URL and how to
            pass a local folder instead).
    """
    canonical = resolve_preset_name(size)
    folder_name = OPENAI_SIZES[canonical] if canonical else size
    base = (base_url or os.environ.get("GPT_SFT_OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "openai" / folder_name
    hint = (
        f"If you have OpenAI's {folder_name} files (hparams.json, checkpoint, model.ckpt.index, "
        f"model.ckpt.data-00000-of-00001), pass their folder instead: load_pretrained('/path/to/{folder_name}'), "
        f"or copy them into {folder}. The same weights load from a local Hugging Face folder too: "
        "load_pretrained('/path/to/gpt2-folder')."
    )
    for name in OPENAI_FILES:
        download_file(f"{base}/{folder_name}/{name}", folder / name, progress=progress, local_hint=hint)
    return folder


def _http_client_errors() -> tuple[type[BaseException], ...]:
    """The base error class of huggingface_hub's HTTP client (httpx2 for hub 2.x, httpx for 1.x)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _entry_not_found() -> type[BaseException]:
    from huggingface_hub import errors as hf_errors

    return getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)


def _hub_download(repo_id: str, filename: str, **kwargs: Any) -> Path:
    """``hf_hub_download`` with an offline/unreachable Hub turned into one :class:`DownloadError`."""
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub import errors as hf_errors

    entry_not_found = _entry_not_found()
    transport_errors = _http_client_errors()
    offline = hub_offline_reason(kwargs.get("endpoint"))
    if offline is not None:  # use the local cache only, instead of ~25 s of retries
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return Path(hf_hub_download(repo_id, filename, **kwargs))
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as err:
        raise WeightLoadingError(
            f"Hugging Face Hub: {repo_id}"
            + (f" at revision {kwargs.get('revision')!r}" if kwargs.get("revision") else "")
            + " was not found (or is private/gated: log in with `hf auth login` or pass token=)"
        ) from err
    except entry_not_found:
        raise
    except (
        hf_errors.LocalEntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.HfHubHTTPError,
        *transport_errors,
        OSError,
    ) as err:
        cause = err.__cause__ or err
        url = hf_hub_url(repo_id, filename, revision=kwargs.get("revision"), endpoint=kwargs.get("endpoint"))
        why = (
            f"{offline}, and the file is not in the local cache"
            if offline is not None
            else f"the Hub could not be reached ({cause.__class__.__name__}: {_last_line(cause)})"
        )
        raise DownloadError(
            f"Could not download {url}: {why}. If you have the model files, pass their folder instead: "
            f"load_pretrained('/path/to/gpt2-folder') (a folder with config.json and model.safetensors, e.g. made "
            f"with `hf download {repo_id} --local-dir gpt2-folder` where the Hub is reachable), or OpenAI's "
            "original checkpoint folder: load_pretrained('/path/to/124M')."
        ) from err


def download_hub_model(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Fetch ``config.json`` and the weights of a Hub model into the Hugging Face cache; return its folder.

    Weights: ``model.safetensors``, else its shards (``model.safetensors.index.json``), else
    ``pytorch_model.bin`` (read later with ``weights_only=True``). ``endpoint`` defaults to
    ``$HF_ENDPOINT`` read now (huggingface_hub reads it once, at import).
    """
    entry_not_found = _entry_not_found()
    kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "endpoint": endpoint or os.environ.get("HF_ENDPOINT") or None,
        "token": token,
    }
    try:
        config = _hub_download(repo_id, "config.json", **kwargs)
    except entry_not_found as err:
        raise WeightLoadingError(
            f"Hugging Face Hub: {repo_id} has no config.json; it is not a transformers model"
        ) from err
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        try:
            path = _hub_download(repo_id, name, **kwargs)
        except entry_not_found:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                _hub_download(repo_id, shard, **kwargs)
        if path.parent != config.parent:
            raise WeightLoadingError(f"Hugging Face Hub: {repo_id} changed while downloading; try again")
        return config.parent
    raise WeightLoadingError(f"Hugging Face Hub: {repo_id} has neither model.safetensors nor pytorch_model.bin")


def peek_context_length(source: str | os.PathLike) -> int | None:
    """The context length of the model ``source`` names, read without loading it (a config file, a
    safetensors header), or ``None`` when only loading it would tell (a ``.pth`` file, a Hub id)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            if (path / "config.json").is_file():
                config = json.loads((path / "config.json").read_text(encoding="utf-8"))
                return int(config.get("n_positions") or config.get("max_position_embeddings") or 1024)
            if (path / "hparams.json").is_file():
                return int(json.loads((path / "hparams.json").read_text(encoding="utf-8"))["n_ctx"])
            return None
        if path.is_file():
            if path.suffix != ".safetensors":
                return None
            shapes = stored_tensor_shapes([path])
            for key in ("transformer.wpe.weight", "wpe.weight", "pos_emb.weight"):
                if key in shapes:
                    return shapes[key][0]
            return None
    except (OSError, ValueError, KeyError, TypeError, WeightLoadingError):
        return None  # loading the model will say what is wrong
    if resolve_preset_name(text) is not None:
        return 1024  # every GPT-2 size
    return None


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def _load_folder(folder: Path, fmt: str | None, options: dict[str, Any]) -> GPTForCausalLM:
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            model_type = json.loads(config_path.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError) as err:
            raise WeightLoadingError(f"{config_path}: not a JSON config ({err})") from None
        kind = {"gpt2": "hf", "gpt_sft": "gpt_sft"}.get(model_type)
        if kind is None:
            raise WeightLoadingError(
                f"{config_path}: model_type {model_type!r} is neither 'gpt2' (Hugging Face GPT-2) nor 'gpt_sft'"
            )
        _check_format(fmt, kind, folder)
        if kind == "hf":
            return load_hf_gpt2_folder(folder, **options)
        return load_gpt_sft_folder(folder, **options)
    if (folder / "hparams.json").is_file() and any(folder.glob("*.index")):
        _check_format(fmt, "openai", folder)
        return load_openai_folder(folder, **options)
    raise WeightLoadingError(
        f"{folder}: not a model folder: expected config.json (Hugging Face GPT-2 or gpt_sft) or hparams.json "
        f"with model.ckpt.index (OpenAI). {ACCEPTED_SOURCES}"
    )


def _check_format(fmt: str | None, found: str, where: Any) -> None:
    if fmt is not None and fmt != found:
        raise WeightLoadingError(f"{where} holds {found!r} weights, but format={fmt!r} was asked for")


def load_pretrained(
    source: str | os.PathLike,
    *,
    format: str | None = None,
    tie_word_embeddings: bool | None = None,
    drop_rate: float | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    n_head: int | None = None,
    base_url: str | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    progress: bool = True,
) -> GPTForCausalLM:
    """Load GPT-2 weights from a preset, the Hub, OpenAI's checkpoint, the book's ``.pth`` or our checkpoint.

    Args:
        source: One of (a local path wins over a name):
            a preset name (``"gpt2-small (124M)"``, ``"124M"``, ``"gpt2"``, ``"gpt2-medium"``, ``"355M"``...);
            a Hub id ``"owner/name"``; a local Hugging Face GPT-2 folder; a local OpenAI checkpoint folder;
            a ``.pth``/``.safetensors`` state dict (book, HF GPT-2 or gpt_sft names); a gpt_sft checkpoint folder.
        format: For a preset: ``"hf"`` (default: Hub repo ``openai-community/gpt2*``) or ``"openai"``
            (OpenAI's TF checkpoint, downloaded as the book does; needs ``gpt-sft[tf]``). For other
            sources the kind is detected and ``format`` (``"hf"``, ``"openai"``, ``"book"``, ``"gpt_sft"``),
            if given, must agree.
        tie_word_embeddings: ``False`` (default for foreign weights, the book's choice): ``lm_head`` gets a
            copy of ``wte``. ``True``: they share one tensor. ``None`` on a gpt_sft checkpoint keeps its choice.
        drop_rate: Dropout of the loaded model (default 0.0, chapter 7; a gpt_sft checkpoint keeps its own).
        dtype: e.g. ``torch.bfloat16`` or ``"float16"``; default: the weights' own (float32 for GPT-2).
        device: Where to put the model (default CPU).
        revision: Hub branch, tag or commit.
        cache_dir: Hub: the Hugging Face cache folder; ``format="openai"``: the root under which
            ``openai/<size>/`` is kept (default ``$GPT_SFT_CACHE`` or ``~/.cache/gpt_sft``).
        n_head: Heads of a state-dict file whose size is not a GPT-2 preset (not visible in the tensors).
        base_url: OpenAI download root (default ``$GPT_SFT_OPENAI_BASE_URL`` or :data:`OPENAI_BASE_URL`).
        endpoint: Hub endpoint (default ``$HF_ENDPOINT`` or https://huggingface.co).
        token: Hub token for private repos.
        progress: Progress bars for OpenAI downloads (the Hub's are huggingface_hub's).

    Returns:
        The model, in eval mode.

    Raises:
        WeightLoadingError: unknown source, wrong format, missing/unexpected keys, shape mismatch,
            a file that is not a plain tensor state dict.
        FileNotFoundError: ``source`` looks like a path but nothing is there.
        DownloadError: the Hub or OpenAI's server cannot be reached (names the URL and the local-path route).
        ImportError: an OpenAI checkpoint without TensorFlow installed.
    """
    if format is not None and format not in FORMATS:
        raise WeightLoadingError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    options: dict[str, Any] = {
        "tie_word_embeddings": tie_word_embeddings,
        "drop_rate": drop_rate,
        "dtype": dtype,
        "device": device,
    }
    text = os.fspath(source)
    path = Path(text).expanduser()

    if path.is_dir():
        return _load_folder(path, format, options)
    if path.is_file():
        if path.suffix not in _STATE_DICT_SUFFIXES:
            raise WeightLoadingError(
                f"{path}: not a state dict file ({', '.join(_STATE_DICT_SUFFIXES)}). {ACCEPTED_SOURCES}"
            )
        if format not in (None, "book", "hf", "gpt_sft"):
            raise WeightLoadingError(f"{path} is a state dict file, but format={format!r} was asked for")
        return load_state_dict_file(path, n_head=n_head, **options)

    canonical = resolve_preset_name(text) if isinstance(source, str) else None
    if canonical is not None:
        if format in (None, "hf"):
            folder = download_hub_model(
                HUB_REPOS[canonical], revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token
            )
            return _load_folder(folder, "hf", options)
        if format == "openai":
            folder = download_openai_checkpoint(
                canonical, cache_dir=cache_dir, base_url=base_url, progress=progress
            )
            return load_openai_folder(folder, **options)
        raise WeightLoadingError(f"A preset ({text!r}) loads with format='hf' or format='openai', not {format!r}")

    looks_like_path = (
        not isinstance(source, str)
        or text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or "\\" in text
        or path.suffix in _STATE_DICT_SUFFIXES
        or (text.count("/") == 1 and Path(text.split("/")[0]).is_dir())  # outputs/typo: a folder here, not a Hub id
    )
    if _HUB_ID.match(text) and not looks_like_path:
        folder = download_hub_model(text, revision=revision, cache_dir=cache_dir, endpoint=endpoint, token=token)
        return _load_folder(folder, format, options)
    if looks_like_path:
        raise ModelNotFoundError(f"{path}: no such file or folder. {ACCEPTED_SOURCES}")
    raise WeightLoadingError(f"Unknown weights source {text!r}. {ACCEPTED_SOURCES}")


__all__ = [
    "ACCEPTED_SOURCES",
    "HUB_REPOS",
    "OPENAI_BASE_URL",
    "OPENAI_FILES",
    "OPENAI_SIZES",
    "ModelNotFoundError",
    "WeightLoadingError",
    "build_model",
    "convert_book_state_dict",
    "convert_hf_gpt2_state_dict",
    "convert_openai_tf_checkpoint",
    "convert_state_dict",
    "default_cache_dir",
    "download_hub_model",
    "download_openai_checkpoint",
    "infer_config_from_state_dict",
    "load_gpt_sft_folder",
    "load_hf_gpt2_folder",
    "load_openai_folder",
    "load_pretrained",
    "load_state_dict_file",
    "peek_context_length",
    "read_openai_tf_checkpoint",
]
