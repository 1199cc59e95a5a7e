"""Loading a model: one entry point, :func:`load_pretrained`, for every place GPT-2 weights come from.

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
local LoRA adapter folder              ``adapter_config.json`` + ``base/`` (``--no-merge-lora``,
                                       :mod:`.adapters`): the base with the adapter merged in
=====================================  ==============================================================

Loading is strict (:mod:`gpt_sft.model.weights`). By default the output head gets a *copy* of the
token embedding (``tie_word_embeddings=False``, the book's choice; fine-tuning then updates both);
``tie_word_embeddings=True`` shares them as Hugging Face GPT-2 does. :func:`load_model` adds the
models gpt-sft can generate with but not train (any causal LM; one that runs its own code only when
the caller trusts it) and :func:`load_tokenizer` their tokenizers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..common.download import hub_cache_only, hub_offline_reason

from .adapters import adapter_base, base_is_local, is_adapter_folder, merge_adapter, verified_adapter_base
from .checkpoint_code import warn_if_outdated
from .configuration_gpt import GPTConfig, resolve_preset_name
from .convert import convert_hf_gpt2_state_dict, convert_openai_tf_checkpoint, convert_state_dict
from .modeling_gpt import GPTForCausalLM
from .sources import HUB_REPOS, download_hub_model, download_openai_checkpoint, read_openai_tf_checkpoint
from .tokenizer import get_tokenizer
from .weights import (WeightLoadingError, ModelNotFoundError, finish_model, hf_weight_files, last_line, parse_dtype,
                      read_state_dict_file, build_model, check_weights_fit_config, infer_config_from_state_dict,
                      stored_tensor_shapes)

FORMATS = ("hf", "openai", "book", "gpt_sft")

ACCEPTED_SOURCES = (
    "Accepted sources: a GPT-2 preset name ('gpt2-small (124M)', '124M', 'gpt2', 'gpt2-medium', '355M', "
    "'774M', '1558M'; format='hf' (default, Hugging Face Hub) or format='openai' (OpenAI's TF checkpoint)); "
    "a Hugging Face Hub id 'owner/name'; a local Hugging Face GPT-2 folder (config.json + model.safetensors); "
    "a local OpenAI checkpoint folder (hparams.json + model.ckpt.index); a .pth or .safetensors state_dict "
    "in the book's names; a gpt_sft checkpoint folder (config.json with model_type 'gpt_sft'); or a gpt_sft LoRA "
    "adapter folder (adapter_config.json with its base model in base/)."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


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
    files = hf_weight_files(folder)
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update(read_state_dict_file(file))
    source = str(files[0]) if len(files) == 1 else f"{folder} ({len(files)} shards)"
    state_dict = convert_hf_gpt2_state_dict(raw, source=source)
    return build_model(config_kwargs, state_dict, source=source, **_build_options(options))


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
    state_dict = convert_state_dict(read_state_dict_file(path), source=str(path))
    config_kwargs = infer_config_from_state_dict(state_dict, n_head=n_head, source=str(path))
    return build_model(config_kwargs, state_dict, source=str(path), **_build_options(options))


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
    dtype = parse_dtype(options.get("dtype"))
    if dtype is not None:
        overrides["dtype"] = dtype
    try:
        config = GPTConfig.from_pretrained(str(folder))
    except (ValueError, TypeError, OSError) as err:
        raise WeightLoadingError(f"{folder / 'config.json'}: not a valid gpt_sft config ({last_line(err)})") from None
    check_weights_fit_config(folder, config)
    warn_if_outdated(folder)
    if "drop_rate" in overrides:  # a given config object takes no keyword overrides in from_pretrained
        config.drop_rate = overrides.pop("drop_rate")
    model, info = GPTForCausalLM.from_pretrained(str(folder), config=config, output_loading_info=True, **overrides)
    problems = [f"{kind}: {', '.join(map(str, keys))}" for kind, keys in info.items() if keys and kind != "error_msgs"]
    if problems:  # the header check above should have caught these; never run a half-loaded model
        raise WeightLoadingError(f"{folder}: weights did not load exactly ({'; '.join(problems)})")
    return finish_model(_tie(model, tie, folder), options.get("dtype"), options.get("device"))


def load_adapter_folder(folder: str | os.PathLike, **options: Any) -> GPTForCausalLM:
    """Load a LoRA adapter folder (:mod:`.adapters`): its base model with the installed code, the adapter
    applied by peft and merged in -- a plain ``GPTForCausalLM`` that computes what the trained LoRA model did. The
    base is checked against the SHA-256 the folder recorded, and named when it is not the folder's own ``base/``."""
    folder = Path(folder)
    base = load_pretrained(verified_adapter_base(folder), drop_rate=options.get("drop_rate"), device=options.get("device"))
    model = _tie(merge_adapter(base, folder), options.get("tie_word_embeddings"), folder)
    return finish_model(model, options.get("dtype"), options.get("device"))


def _tie(model: GPTForCausalLM, tie: bool | None, folder: Path) -> GPTForCausalLM:
    """``tie=True``/``False``: tie or untie the head (tying a head that differs from ``wte`` is refused)."""
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
    return model


def _build_options(options: Mapping[str, Any]) -> dict[str, Any]:
    tie = options.get("tie_word_embeddings")
    return {
        "tie_word_embeddings": bool(tie) if tie is not None else False,
        "drop_rate": options.get("drop_rate"),
        "dtype": options.get("dtype"),
        "device": options.get("device"),
    }


def peek_context_length(source: str | os.PathLike) -> int | None:
    """The context length of the model ``source`` names, read without loading it (a config file, a
    safetensors header), or ``None`` when only loading it would tell (a ``.pth`` file, a Hub id)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            if is_adapter_folder(path):
                path = Path(adapter_base(path))  # the adapter keeps its base's shape
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


def _load_folder(folder: Path, fmt: str | None, options: dict[str, Any]) -> GPTForCausalLM:
    if is_adapter_folder(folder):
        _check_format(fmt, "gpt_sft", folder)
        return load_adapter_folder(folder, **options)
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


# --------------------------------------------------------------------------------------------------
# Any causal LM, for generation and judging


class UntrustedCodeError(ValueError):
    """A model folder asks to run its own Python code, and the caller did not allow it."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None``: CUDA, else MPS, else the CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def folder_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """A model folder's ``config.json`` as a dict, or ``None`` if there is none."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightLoadingError(f"{config_file}: not a JSON config ({err})") from None
    return config if isinstance(config, dict) else None


def load_model(
    path: str | os.PathLike,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    *,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """Any causal LM to generate with, on ``device`` and in eval mode.

    gpt-sft's own sources (a gpt-sft checkpoint or LoRA adapter folder, Hugging Face GPT-2, OpenAI's
    checkpoint, the book's ``.pth``) go through :func:`load_pretrained` -- strict, with the installed
    model code, never the Python files in a folder. Any other model goes through ``AutoModelForCausalLM.from_pretrained``;
    one that needs its own code (``auto_map``) is refused unless ``trust_remote_code=True``.
    ``dtype``: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"``, ``"float16"``.

    Raises:
        UntrustedCodeError: the folder wants to run its code and ``trust_remote_code`` is false.
    """
    torch_dtype = parse_dtype(dtype)
    config = folder_config(path) if Path(path).is_dir() else None
    ours = config is not None and config.get("model_type") in ("gpt_sft", "gpt2") or Path(path).is_file()
    if ours or is_adapter_folder(path) and base_is_local(path):  # a gpt-sft LoRA adapter: merged into its base
        return load_pretrained(path, dtype=torch_dtype, device=resolve_device(device))
    if Path(path).is_dir() and config is None and not is_adapter_folder(path):
        # OpenAI's folder (hparams.json) loads there; for any other folder it says what a model folder holds
        return load_pretrained(path, dtype=torch_dtype, device=resolve_device(device))
    if config is not None and config.get("auto_map") and not trust_remote_code:
        raise UntrustedCodeError(
            f"{path}: its config.json (model_type {config.get('model_type')!r}) asks to run Python code from the "
            "folder (auto_map); gpt-sft runs a model folder's own code only with --trust-remote-code"
        )
    # Not a folder: a Hub id. Unreachable, transformers would retry for ~25 s; use the cache only.
    offline = None if Path(path).is_dir() else hub_offline_reason()
    with hub_cache_only() if offline else contextlib.nullcontext():
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype or "auto",
                                                         trust_remote_code=trust_remote_code)
        except OSError as err:
            if offline is None:
                raise
            raise ModelNotFoundError(f"{path}: not a local folder, and not in the Hugging Face cache; the Hub "
                                     f"cannot be reached to download it ({offline})") from err
    return model.to(resolve_device(device)).eval()


def load_tokenizer(path: str | os.PathLike | None = None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with a model folder if it has one, else the tiktoken ``gpt2`` encoding.

    Remote tokenizer code runs only with ``trust_remote_code=True``; a gpt-sft folder never needs it
    (its config class is registered with transformers when this package is imported)."""
    if path is not None and Path(path).is_dir() and any(
        (Path(path) / name).is_file() for name in ("tokenizer.json", "vocab.json")
    ):
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return get_tokenizer()


__all__ = ["ACCEPTED_SOURCES", "FORMATS", "UntrustedCodeError", "folder_config", "load_adapter_folder",
           "load_gpt_sft_folder", "load_hf_gpt2_folder", "load_model", "load_openai_folder", "load_pretrained",
           "load_state_dict_file", "load_tokenizer", "peek_context_length", "resolve_device"]
