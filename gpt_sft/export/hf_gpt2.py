"""Export to stock Hugging Face GPT-2: a ``GPT2LMHeadModel`` folder that needs no custom code.

The book's GPT *is* GPT-2 up to naming: separate q/k/v projections (GPT-2 fuses them into one
``c_attn``), ``nn.Linear`` layers (GPT-2's ``Conv1D`` stores weights ``[in, out]``) and an optional
untied head (``tie_word_embeddings=False`` keeps ``lm_head`` separate in transformers too). So the
export is a name map, the inverse of :func:`gpt_sft.model.convert.convert_hf_gpt2_state_dict`, plus
a ``GPT2Config`` of the same shape. The result loads with ``AutoModelForCausalLM.from_pretrained``
alone, and runs on every engine that runs GPT-2 (vLLM, TGI, llama.cpp's converter...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, GenerationConfig

from ..common.atomic_io import atomic_directory
from ..data.chat_template import chat_template
from ..data.conversation_format import ConversationLayout, conversation_chat_template
from ..data.prompts import PromptStyle
from ..data.recipe import Recipe
from ..model.configuration_gpt import GPTConfig
from ..model.tokenizer import END_OF_TEXT_ID, get_hf_tokenizer


def hf_gpt2_config(config: GPTConfig) -> GPT2Config:
    """The ``GPT2Config`` of the same architecture: GELU-tanh is transformers' ``gelu_new``, the
    book's single ``drop_rate`` is each of GPT-2's three dropouts."""
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
        activation_function="gelu_new", resid_pdrop=config.drop_rate, embd_pdrop=config.drop_rate,
        attn_pdrop=config.drop_rate, layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range, scale_attn_weights=True,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        bos_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID, pad_token_id=END_OF_TEXT_ID,
        architectures=["GPT2LMHeadModel"],
    )


def to_hf_gpt2_state_dict(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our names -> ``GPT2LMHeadModel``'s: q/k/v concatenated into ``c_attn``, Linear ``[out, in]``
    weights transposed into Conv1D's ``[in, out]``. Without ``qkv_bias`` GPT-2's ``c_attn`` bias is zero
    (the same function). ``lm_head.weight`` is kept only for an untied head.

    Raises:
        KeyError: a weight of ``GPTForCausalLM`` is missing (names the key).
    """
    sd = {k: v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    for name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[f"transformer.{name}"] = sd.pop(f"transformer.{name}").contiguous()
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"transformer.h.{i}."
        for norm in ("ln_1", "ln_2"):
            for kind in ("weight", "bias"):
                out[f"{theirs}{norm}.{kind}"] = sd.pop(f"{ours}{norm}.{kind}").contiguous()
        q, k, v = (sd.pop(f"{ours}attn.{p}_proj.weight") for p in "qkv")
        out[f"{theirs}attn.c_attn.weight"] = torch.cat([q, k, v], dim=0).t().contiguous()  # (d, 3d)
        biases = [sd.pop(f"{ours}attn.{p}_proj.bias", None) for p in "qkv"]
        if any(b is None for b in biases):
            biases = [torch.zeros(config.n_embd, dtype=q.dtype) for _ in range(3)]
        out[f"{theirs}attn.c_attn.bias"] = torch.cat(biases).contiguous()
        for module in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[f"{theirs}{module}.weight"] = sd.pop(f"{ours}{module}.weight").t().contiguous()
            out[f"{theirs}{module}.bias"] = sd.pop(f"{ours}{module}.bias").contiguous()
    head = sd.pop("lm_head.weight", None)
    if not config.tie_word_embeddings:
        if head is None:
            raise KeyError("lm_head.weight: an untied model needs its output head")
        out["lm_head.weight"] = head.contiguous()
    leftover = sorted(k for k in sd if not k.endswith(".attn.bias"))
    if leftover:
        raise KeyError(f"weights with no GPT-2 counterpart: {', '.join(leftover[:8])}")
    return out


def to_hf_gpt2_model(model) -> GPT2LMHeadModel:
    """A ``GPT2LMHeadModel`` with ``model``'s weights (a plain ``GPTForCausalLM``; merge LoRA first)."""
    config = hf_gpt2_config(model.config)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        hf = GPT2LMHeadModel(config)
    state = to_hf_gpt2_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.config)
    hf.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        hf.tie_weights()
    missing = [n for n, p in hf.named_parameters() if p.is_meta]
    if missing:  # pragma: no cover - the name map above covers every GPT-2 parameter
        raise KeyError(f"GPT-2 parameters not filled by the export: {', '.join(missing[:8])}")
    hf.to(dtype)
    hf.generation_config = GenerationConfig(bos_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID,
                                            pad_token_id=END_OF_TEXT_ID)
    return hf.eval()


def export_hf_gpt2(model, output_dir: str | os.PathLike, *, style: PromptStyle, card: str,
                   recipe: Recipe | None = None, conversation_layout: ConversationLayout | None = None) -> Path:
    """Write ``model`` as a stock GPT-2 folder (safetensors, ``config.json`` without ``auto_map``, the
    GPT-2 tokenizer with the prompt style's chat template -- with ``conversation_layout``, for a model trained on
    conversations, the multi-turn template of that layout --, ``generation_config.json``, ``README.md``),
    atomically: an interrupted export leaves no folder behind."""
    hf = to_hf_gpt2_model(model)
    tokenizer = get_hf_tokenizer()
    if conversation_layout is not None:
        tokenizer.chat_template = conversation_chat_template(conversation_layout)
    else:
        try:
            tokenizer.chat_template = chat_template(style)
        except ValueError:
            pass  # a style that is a function has no template; the card still shows the format
    with atomic_directory(output_dir) as tmp:
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if recipe is not None:
            recipe.write(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(output_dir)


__all__ = ["export_hf_gpt2", "hf_gpt2_config", "to_hf_gpt2_model", "to_hf_gpt2_state_dict"]
