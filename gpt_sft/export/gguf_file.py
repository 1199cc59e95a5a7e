"""Export to GGUF, llama.cpp's file format (also Ollama's and LM Studio's), with llama.cpp's own writer.

The file is written by the ``gguf`` package from PyPI, which llama.cpp maintains: we only decide what
goes in. llama.cpp's ``gpt2`` architecture is exactly the book's model: pre-LayerNorm blocks with a
fused ``attn_qkv`` (our q/k/v stacked), GELU, learned positions, and an ``output`` head that is
written only when it is untied (llama.cpp reuses ``token_embd`` otherwise). Tensors are given as
``[out, in]`` arrays, ``nn.Linear``'s layout, which the writer stores as ggml expects.

The tokenizer travels inside the file: OpenAI's 50,257 byte-level BPE tokens and 50,000 merges with
llama.cpp's ``gpt-2`` pre-tokenizer, ``<|endoftext|>`` as a control token that ends generation, no
BOS added (GPT-2 never had one), and the prompt style's chat template for chat endpoints (for a checkpoint
trained on conversations, the multi-turn template of its recipe's layout).

Types: ``f32`` keeps every weight; ``f16`` halves the matrices; ``q8_0`` stores them in 8-bit blocks of
32. Norms, biases and the position embedding stay f32, as llama.cpp's converter keeps them; a matrix
whose rows are not a multiple of 32 cannot be q8_0 and is written f16 (counted in the result).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
import torch

from ..common.atomic_io import atomic_file
from ..data.chat_template import chat_template
from ..data.conversation_format import ConversationLayout, conversation_chat_template
from ..data.prompts import PromptStyle
from ..model.tokenizer import END_OF_TEXT_ID, bpe_files
from .formats import GGUF_TYPES

_FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
               "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
_Q8_BLOCK = 32


@dataclass
class GGUFResult:
    """What :func:`write_gguf` wrote: the file, its size, the type of each tensor, and the matrices that
    could not take the requested type."""

    path: Path
    size_bytes: int
    tensor_types: dict[str, str] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


def gpt2_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """GPT-2's tokens in id order (byte-level strings, as in ``encoder.json``), their GGUF token types
    (``<|endoftext|>`` is a control token), and the merges in rank order (``vocab.bpe``)."""
    encoder_json, vocab_bpe = bpe_files()
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    tokens = [""] * len(encoder)
    for text, index in encoder.items():
        tokens[index] = text
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    types[END_OF_TEXT_ID] = int(gguf.TokenType.CONTROL)
    lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines[1:] if line.strip()]  # line 0 is "#version: 0.2"
    return tokens, types, merges


def _gguf_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """``(GGUF name, tensor)`` for every weight of a plain ``GPTForCausalLM`` (LoRA merged first)."""
    cfg = model.config
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    t = "transformer."
    out = [("token_embd.weight", sd[f"{t}wte.weight"]), ("position_embd.weight", sd[f"{t}wpe.weight"]),
           ("output_norm.weight", sd[f"{t}ln_f.weight"]), ("output_norm.bias", sd[f"{t}ln_f.bias"])]
    if not cfg.tie_word_embeddings:
        out.append(("output.weight", sd["lm_head.weight"]))
    for i in range(cfg.n_layer):
        p, b = f"{t}h.{i}.", f"blk.{i}."
        weights = [sd[f"{p}attn.{x}_proj.weight"] for x in "qkv"]
        biases = [sd.get(f"{p}attn.{x}_proj.bias") for x in "qkv"]
        if any(bias is None for bias in biases):  # qkv_bias=False: a zero bias is the same function
            biases = [torch.zeros(cfg.n_embd) for _ in range(3)]
        out += [
            (f"{b}attn_norm.weight", sd[f"{p}ln_1.weight"]), (f"{b}attn_norm.bias", sd[f"{p}ln_1.bias"]),
            (f"{b}attn_qkv.weight", torch.cat(weights, dim=0)),  # (3d, d)
            (f"{b}attn_qkv.bias", torch.cat(biases)),
            (f"{b}attn_output.weight", sd[f"{p}attn.c_proj.weight"]),
            (f"{b}attn_output.bias", sd[f"{p}attn.c_proj.bias"]),
            (f"{b}ffn_norm.weight", sd[f"{p}ln_2.weight"]), (f"{b}ffn_norm.bias", sd[f"{p}ln_2.bias"]),
            (f"{b}ffn_up.weight", sd[f"{p}mlp.c_fc.weight"]), (f"{b}ffn_up.bias", sd[f"{p}mlp.c_fc.bias"]),
            (f"{b}ffn_down.weight", sd[f"{p}mlp.c_proj.weight"]), (f"{b}ffn_down.bias", sd[f"{p}mlp.c_proj.bias"]),
        ]
    return out


def _encode(name: str, tensor: torch.Tensor, gguf_type: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType, bool]:
    """The array to write, its ggml type, and whether the matrix fell back from q8_0 to f16."""
    array = tensor.numpy()
    if array.ndim < 2 or gguf_type == "f32" or name == "position_embd.weight":
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32, False
    if gguf_type == "q8_0":
        if array.shape[-1] % _Q8_BLOCK == 0:
            return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0, False
        return array.astype(np.float16), gguf.GGMLQuantizationType.F16, True
    return array.astype(np.float16), gguf.GGMLQuantizationType.F16, False


def write_gguf(model, path: str | os.PathLike, *, gguf_type: str = "f16", style: PromptStyle | None = None,
               conversation_layout: ConversationLayout | None = None, name: str = "gpt-sft",
               progress: Callable[[str], None] | None = None) -> GGUFResult:
    """Write ``model`` (a plain ``GPTForCausalLM``) to the GGUF file ``path``, through a temporary file
    renamed into place when complete.

    Args:
        gguf_type: ``f32``, ``f16`` or ``q8_0``.
        style: The prompt style: its chat template goes into ``tokenizer.chat_template``.
        conversation_layout: For a model trained on conversations: the multi-turn template of this layout goes
            there instead (:func:`gpt_sft.data.conversation_format.conversation_chat_template`), the one its
            checkpoint's tokenizer has.
        name: ``general.name``.
        progress: Called with a short status line while writing.
    """
    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"--gguf-type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    cfg = model.config
    path = Path(path)
    result = GGUFResult(path=path, size_bytes=0)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(tmp, "gpt2")
        writer.add_name(name)
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_epsilon)
        writer.add_file_type(_FILE_TYPES[gguf_type])
        tokens, types, merges = gpt2_vocabulary()
        if len(tokens) != cfg.vocab_size:
            raise ValueError(f"the model's vocabulary has {cfg.vocab_size} ids, GPT-2's tokenizer {len(tokens)}: "
                             "a GGUF file needs one token per id")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(END_OF_TEXT_ID)
        writer.add_eos_token_id(END_OF_TEXT_ID)
        writer.add_pad_token_id(END_OF_TEXT_ID)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        if conversation_layout is not None:
            writer.add_chat_template(conversation_chat_template(conversation_layout))
        elif style is not None:
            try:
                writer.add_chat_template(chat_template(style))
            except ValueError:
                pass  # a style that is a function has no template; completions still work
        if gguf_type == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for tensor_name, tensor in _gguf_tensors(model):
            array, qtype, fell_back = _encode(tensor_name, tensor, gguf_type)
            if fell_back:
                result.fallbacks.append(tensor_name)
            writer.add_tensor(tensor_name, array, raw_dtype=qtype)
            result.tensor_types[tensor_name] = qtype.name
        if progress:
            progress(f"writing {len(result.tensor_types)} tensors ({gguf_type}) to {path}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    result.size_bytes = path.stat().st_size
    return result


__all__ = ["GGUFResult", "GGUF_TYPES", "gpt2_vocabulary", "write_gguf"]
