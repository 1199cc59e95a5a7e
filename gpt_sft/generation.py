"""Generating responses for instruction data: fast batched decoding with a KV cache, and the book's loop.

Two generators live here:

* :func:`generate_book_style` -- the book's chapter 5/7 ``generate`` verbatim (batch 1, no cache: the
  whole, cropped context is re-run for every new token; optional top-k and temperature; stops when the
  next token is end-of-text, which is not appended). It is the reference our fast path is tested
  against, and the baseline of ``scripts/benchmark_generation.py``.
* :func:`generate_token_ids` / :func:`generate_responses` -- what users run. Prompts are sorted by
  length (longest first) and cut into batches, so a batch holds prompts of similar length and little
  padding; each batch is left-padded with 50256 and run through the model once (the "prefill", only
  the last position's logits are computed), then one token per step through a pre-allocated key/value
  cache. Positions count real tokens only, so a padded prompt sees exactly the positions it would see
  alone. A sequence that emits end-of-text (50256; not part of the response) or exhausts its token
  budget leaves the batch at once: its rows are dropped from the cache, so finished sequences stop
  costing compute. Results come back in the caller's order. The token budget is
  ``settings.max_new_tokens`` for every prompt, or one budget per prompt
  (``generate_token_ids(..., max_new_tokens=[...])``; each prompt's tokens are then the first
  ``max_new_tokens[i]`` of what a larger budget would give; the benchmark uses it to replay answers of
  known lengths).

Decoding rules (identical to the book's):

* greedy (``temperature == 0``, the default): argmax; the responses equal one-prompt-at-a-time greedy
  decoding and the book's ``generate`` (up to float round-off between padded and unpadded matrix
  products, which can only matter on exact near-ties of the two best logits);
* ``top_k``: logits below the k-th largest become ``-inf`` (ties with the k-th are kept), then
* ``temperature > 0``: sample from ``softmax(logits / temperature)``. Each prompt has its own random
  generator seeded with ``seed + i`` (``i`` = the prompt's index in the caller's list), so sampled
  responses do not depend on the batch size, the batching order or the other prompts -- and equal the
  book's ``generate`` run after ``torch.manual_seed(seed + i)`` (on CPU).

Context length. The book crops the running context to the last ``context_length`` (``C``, 1024)
tokens at every step, so it can slide past the context window. A KV cache cannot slide (positions are
baked into the cached keys). The ``n``-th new token of a ``P``-token prompt is predicted from
``P + n - 1`` tokens, so the book never crops while ``P + n - 1 <= C``. A prompt with
``P + max_new_tokens - 1 > C`` (with per-prompt budgets: its own budget) is handled by
``GenerationSettings.overflow``:

* ``"shrink"`` (default): keep the whole prompt and generate at most ``C - P + 1`` tokens for it. The
  response is then identical to the book's whenever the book's response ends (end-of-text) before it
  would have to crop, i.e. in every case where the book never slid. A prompt longer than ``C`` is cut
  as with ``"truncate"`` (the book crops it too, from the left).
* ``"truncate"``: cut the prompt from the left to its last ``C - max_new_tokens + 1`` tokens, so every
  prompt gets the full token budget (the Alpaca preamble is lost first).
* ``"error"``: raise ``ValueError``.

Every shrunk or truncated prompt is counted (:class:`GenerationOutput`) and reported once with a
:class:`PromptTruncationWarning`. The book's data set has no prompt near the limit.

Why our own decoding loop and not ``model.generate``: both are supported (``backend="cache"`` and
``backend="transformers"``); ours was measured faster on CPU. It computes only the last position's
logits at prefill, writes into a pre-allocated cache instead of concatenating a growing one at every
step, drops finished rows instead of padding them to the end, and supports per-prompt seeds. Measured
on a shared 2-core CPU, random gpt2-small, 32 book test prompts, batch 16, identical tokens: with
end-of-text stops after 0-128 tokens, 34 s against 45 s for ``model.generate``; with no early stop
(64 tokens each, ``scripts/benchmark_generation.py``) the two are within noise of each other (ours
185 vs 173 new tokens/s at batch 32), and both are ~45x faster than the book's loop (3.8 tokens/s). The
whole task -- all 110 test prompts, each with its reference response's length + 1 new tokens (1454 in all;
``scripts/benchmark_generation.py --threads 1 --book-prompts all``) -- took 29 s ours against 372 s for the
book's loop, all measured (12.7x; 1 thread; the default estimate from 8 prompts said 395 s).
``backend="transformers"`` calls ``model.generate`` with a
``GenerationConfig`` (pad and EOS 50256) and the global RNG seeded with ``seed`` per batch; its
samples therefore depend on batching.

Tokenizer: either the tiktoken ``gpt2`` encoding (:func:`gpt_sft.tokenizer.get_tokenizer`, what the
book uses) or a Hugging Face GPT-2 tokenizer; both give the same ids. As in the book's
``text_to_token_ids``, the text ``<|endoftext|>`` inside a prompt is encoded as the token 50256.

This module knows nothing of training or judging.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic_io import write_json_atomic
from .config_cli import CommandParser
from .command_errors import add_debug_flag, report_errors

END_OF_TEXT_ID = 50256  # also in gpt_sft.tokenizer; repeated so that this module imports no tokenizer files
END_OF_TEXT = "<|endoftext|>"
RAW_STYLE = "raw"  # prompts used verbatim; the response is the decoded continuation, untouched
OVERFLOW_POLICIES = ("shrink", "truncate", "error")
BACKENDS = ("cache", "transformers")
CPU_MAX_AUTO_BATCH_SIZE = 32
MAX_AUTO_BATCH_SIZE = 256

__all__ = [
    "GenerationSettings",
    "GenerationOutput",
    "PromptTruncationWarning",
    "generate_book_style",
    "generate_token_ids",
    "generate_responses",
    "add_responses",
    "auto_batch_size",
    "UntrustedCodeError",
    "load_model",
    "load_tokenizer",
    "main",
]


class PromptTruncationWarning(UserWarning):
    """Some prompts did not fit in the context window together with ``max_new_tokens``."""


@dataclasses.dataclass
class GenerationSettings:
    """How to generate.

    Attributes:
        max_new_tokens: Most new tokens per response (the book's 256).
        temperature: 0 (default) = greedy argmax; > 0 = sample from ``softmax(logits / temperature)``.
        top_k: Keep only the ``top_k`` largest logits (ties with the k-th kept) before greedy/sampling.
        seed: Sampling seed; prompt ``i`` uses a generator seeded with ``seed + i``. ``None``: drawn from
            torch's global RNG (so ``torch.manual_seed`` still makes runs reproducible).
        batch_size: Prompts per batch, or ``"auto"`` (:func:`auto_batch_size`).
        style: Prompt style of dict entries and of response extraction (``"alpaca"``, ``"phi3"``, any
            style known to :mod:`gpt_sft.prompts`), or ``"raw"``: string prompts used verbatim and the
            whole continuation returned.
        eos_token_id: Stop token (not part of the response); ``None`` never stops early (benchmarks).
        pad_token_id: Left-padding token id (its positions are masked out, so its value is irrelevant).
        context_length: Positions the model has; ``None`` reads ``n_positions``/``max_position_embeddings``
            from the model config.
        overflow: ``"shrink"``, ``"truncate"`` or ``"error"``: prompts that do not fit together with
            ``max_new_tokens`` (see the module docstring).
        backend: ``"cache"`` (our loop) or ``"transformers"`` (``model.generate``).
        progress: Show a tqdm progress bar over batches.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None
    batch_size: int | str = "auto"
    style: str = "alpaca"
    eos_token_id: int | None = END_OF_TEXT_ID
    pad_token_id: int = END_OF_TEXT_ID
    context_length: int | None = None
    overflow: str = "shrink"
    backend: str = "cache"
    progress: bool = True

    def __post_init__(self) -> None:
        if int(self.max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if float(self.temperature) < 0 or not math.isfinite(float(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and int(self.top_k) < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if isinstance(self.batch_size, str):
            if self.batch_size != "auto":
                raise ValueError(f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}")
        elif int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {OVERFLOW_POLICIES}, got {self.overflow!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.context_length is not None and int(self.context_length) < 2:
            raise ValueError(f"context_length must be >= 2, got {self.context_length}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


@dataclasses.dataclass
class GenerationOutput:
    """Token-level result of :func:`generate_token_ids`, in the caller's order.

    Attributes:
        sequences: The new token ids of each prompt (end-of-text excluded).
        prompt_ids: The prompt ids actually used (after any left truncation).
        stopped_at_eos: Whether each sequence ended with end-of-text (else it ran out of budget).
        num_shrunk: Prompts whose token budget was lowered to fit the context (``overflow="shrink"``).
        num_truncated: Prompts cut from the left to fit the context.
        seconds: Wall-clock time of the generation.
    """

    sequences: list[list[int]]
    prompt_ids: list[list[int]]
    stopped_at_eos: list[bool]
    num_shrunk: int = 0
    num_truncated: int = 0
    seconds: float = 0.0

    @property
    def num_new_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


# --------------------------------------------------------------------------------------------------
# The book's generate (reference implementation)
# --------------------------------------------------------------------------------------------------


def _logits_of(output: Any) -> torch.Tensor:
    """Logits from a model output: a tensor (the book's ``GPTModel``) or an object with ``.logits``."""
    return output if isinstance(output, torch.Tensor) else output.logits


def generate_book_style(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int = 256,
    context_size: int = 1024,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = END_OF_TEXT_ID,
) -> torch.Tensor:
    """The book's ``generate`` (chapter 5, used in chapter 7), step for step.

    For each new token: crop the context to its last ``context_size`` tokens, run the whole model on
    it without a cache, take the last position's logits; with ``top_k``, logits below the k-th largest
    become ``-inf``; with ``temperature > 0`` sample from ``softmax(logits / temperature)`` with
    torch's global RNG, else take the argmax; stop if the token is ``eos_id`` (not appended).

    Args:
        model: The book's ``GPTModel`` (returns logits) or any causal LM returning ``.logits``.
        idx: ``(1, T)`` prompt token ids (batch 1 as in the book; a larger batch works without
            ``eos_id``).
        max_new_tokens: Most tokens to append.
        context_size: The model's context length (the book passes 1024).
        temperature: 0 = greedy.
        top_k: Optional top-k filter.
        eos_id: Stop token, or ``None``.

    Returns:
        ``(1, T + n)`` tensor: the prompt followed by the ``n <= max_new_tokens`` new tokens.
    """
    if eos_id is not None and idx.shape[0] != 1:
        raise ValueError("generate_book_style stops on eos_id for batch size 1 only, as the book's generate")
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (B, <=context_size)
        with torch.no_grad():
            if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
                logits = _logits_of(model(idx_cond, use_cache=False))  # (B, T, vocab)
            else:
                logits = _logits_of(model(idx_cond))
        logits = logits[:, -1, :]  # (B, vocab)
        if top_k is not None:
            top_logits, _ = torch.topk(logits, top_k)
            min_val = top_logits[:, -1:]  # (B, 1); the book writes [:, -1], the same for batch 1
            logits = torch.where(logits < min_val, torch.tensor(float("-inf")).to(logits.device), logits)
        if temperature > 0.0:
            logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)  # (B, vocab)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        if eos_id is not None and idx_next.item() == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)  # (B, T+1)
    return idx


# --------------------------------------------------------------------------------------------------
# Tokenizers: tiktoken or Hugging Face, same ids
# --------------------------------------------------------------------------------------------------


class _Codec:
    """Encode/decode with either a tiktoken ``Encoding`` or a Hugging Face tokenizer, book-style."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.is_tiktoken = hasattr(tokenizer, "encode_ordinary") and hasattr(tokenizer, "n_vocab")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.is_tiktoken:
            # The book's text_to_token_ids: encode(text, allowed_special={"<|endoftext|>"}).
            return [self.tokenizer.encode(t, allowed_special={END_OF_TEXT}) for t in texts]
        return list(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        if self.is_tiktoken:
            return self.tokenizer.decode(list(ids))
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


# --------------------------------------------------------------------------------------------------
# A pre-allocated key/value cache
# --------------------------------------------------------------------------------------------------


def _make_cache(num_layers: int, capacity: int):
    """A transformers ``Cache`` whose layers write into buffers of ``capacity`` positions.

    transformers' ``DynamicLayer`` concatenates the whole cache with each new token (quadratic copying);
    these layers allocate ``(B, heads, capacity, head_dim)`` once and hand out views of the filled part.
    Dropping finished rows (``batch_select_indices``) and all-padding columns (``crop_left``) are
    supported.
    """
    from transformers.cache_utils import Cache, DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.length = 0

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            B, H, _, D = key_states.shape
            self.key_buffer = key_states.new_empty((B, H, capacity, D))  # (B, nh, capacity, hs)
            self.value_buffer = value_states.new_empty((B, H, capacity, value_states.shape[-1]))
            self.length = 0
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            T = key_states.shape[-2]
            end = self.length + T
            if end > self.key_buffer.shape[-2]:
                raise RuntimeError(f"KV cache overflow: {end} > capacity {self.key_buffer.shape[-2]}")
            self.key_buffer[:, :, self.length : end] = key_states
            self.value_buffer[:, :, self.length : end] = value_states
            self.length = end
            self.keys = self.key_buffer[:, :, :end]  # (B, nh, past+T, hs) view
            self.values = self.value_buffer[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized:
                self.key_buffer = self.key_buffer[indices]
                self.value_buffer = self.value_buffer[indices]
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

        def crop_left(self, n: int) -> None:
            """Forget the first ``n`` positions (all padding); a view, no copy."""
            if self.is_initialized and n > 0:
                self.key_buffer = self.key_buffer[:, :, n:]
                self.value_buffer = self.value_buffer[:, :, n:]
                self.length -= n
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

    return Cache(layers=[PreallocatedLayer() for _ in range(num_layers)])


# --------------------------------------------------------------------------------------------------
# Core batched decoding
# --------------------------------------------------------------------------------------------------


def _model_context_length(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "context_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _num_layers(model: torch.nn.Module) -> int:
    config = model.config
    for name in ("n_layer", "num_hidden_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("cannot tell the number of layers of the model (config.n_layer / num_hidden_layers)")


def _cache_keyword(model: torch.nn.Module) -> str:
    """The name under which ``model.forward`` takes its KV cache: ``cache`` (transformers >= 5.24 and
    gpt-sft's model) or ``past_key_values`` (older transformers models)."""
    forward = getattr(model, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def _available_ram() -> int | None:
    """Bytes of RAM available to new allocations (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None


def _bytes_per_sequence(model: torch.nn.Module, max_prompt_length: int, max_new_tokens: int) -> int:
    """Rough peak memory of one sequence: KV cache, prefill activations, two float32 rows of logits."""
    config = model.config
    width = getattr(config, "n_embd", None) or getattr(config, "hidden_size", 768)
    heads = getattr(config, "n_head", None) or getattr(config, "num_attention_heads", 12)
    vocab = getattr(config, "vocab_size", 50257)
    elem = next(model.parameters()).element_size()
    kv_cache = 2 * _num_layers(model) * width * (max_prompt_length + max_new_tokens) * elem
    prefill = (12 * width * max_prompt_length + heads * max_prompt_length**2) * elem
    return kv_cache + prefill + 2 * vocab * 4


def auto_batch_size(
    model: torch.nn.Module,
    max_prompt_length: int,
    max_new_tokens: int,
    num_prompts: int | None = None,
    device: torch.device | str | None = None,
) -> int:
    """A batch size for generation: as many sequences as fit a memory budget, capped.

    Memory per sequence is estimated as the key/value cache (``2 * layers * width * (prompt + new
    tokens)`` elements), the prefill activations (``~12 * width * prompt`` elements plus
    ``heads * prompt**2`` attention scores) and two float32 rows of logits.

    * CUDA: budget 60% of the currently free GPU memory, cap :data:`MAX_AUTO_BATCH_SIZE` (256);
      an out-of-memory error halves the batch and retries (``generate_token_ids``).
    * CPU and others: budget 25% of the available RAM, cap :data:`CPU_MAX_AUTO_BATCH_SIZE` (32).
      Decoding one token is bound by reading the weights, so on a CPU larger batches are nearly free
      up to a point: measured on 2 cores with gpt2-small, 8 -> 16 -> 32 sequences gave about
      65 -> 90 -> 100 new tokens/s; finished sequences leave the batch, so large batches waste little.

    Never more than ``num_prompts``, never less than 1.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    per_sequence = max(_bytes_per_sequence(model, max_prompt_length, max_new_tokens), 1)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        size = min(int(0.6 * free // per_sequence), MAX_AUTO_BATCH_SIZE)
    else:
        available = _available_ram()
        size = CPU_MAX_AUTO_BATCH_SIZE
        if available is not None:
            size = min(size, int(0.25 * available // per_sequence))
    if num_prompts is not None:
        size = min(size, num_prompts)
    return max(1, size)


def _token_budgets(
    num_prompts: int, settings: GenerationSettings, max_new_tokens: Sequence[int] | None
) -> list[int]:
    """Each prompt's requested budget: ``settings.max_new_tokens`` for all, or the per-prompt list."""
    if max_new_tokens is None:
        return [int(settings.max_new_tokens)] * num_prompts
    if isinstance(max_new_tokens, (str, bytes)) or not isinstance(max_new_tokens, Iterable):
        raise TypeError(f"max_new_tokens must be a sequence of integers (one per prompt) or None, "
                        f"got {type(max_new_tokens).__name__}")
    budgets = list(max_new_tokens)
    if len(budgets) != num_prompts:
        raise ValueError(f"max_new_tokens has {len(budgets)} budgets for {num_prompts} prompts: give one per prompt")
    for i, budget in enumerate(budgets):
        if isinstance(budget, bool) or int(budget) != budget:
            raise ValueError(f"max_new_tokens[{i}] must be an integer, got {budget!r}")
        if int(budget) < 1:
            raise ValueError(f"max_new_tokens[{i}] must be >= 1, got {budget}")
    return [int(b) for b in budgets]


def _fit_prompts(
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings,
    context_length: int | None,
    max_new_tokens: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[int], int, int]:
    """Apply the overflow policy: the ids to use, each prompt's token budget, #shrunk, #truncated.

    Each prompt's requested budget is ``settings.max_new_tokens``, or ``max_new_tokens[i]`` when a
    per-prompt list is given; the overflow policy applies to each prompt with its own budget.
    """
    requested = _token_budgets(len(prompt_ids), settings, max_new_tokens)
    used, budgets = [], []
    shrunk = truncated = 0
    for ids, max_new in zip(prompt_ids, requested):
        ids = list(ids)
        if not ids:
            raise ValueError("empty prompt: nothing to condition on (the book's generate fails on it too)")
        budget = max_new
        # The last new token is predicted from len(ids) + budget - 1 tokens: that must fit the context.
        if context_length is not None and len(ids) + max_new - 1 > context_length:
            if settings.overflow == "error":
                raise ValueError(
                    f"a prompt of {len(ids)} tokens plus max_new_tokens={max_new} exceeds the context length "
                    f"of {context_length} (overflow='error')"
                )
            if settings.overflow == "shrink" and len(ids) <= context_length:
                budget = context_length - len(ids) + 1
                shrunk += 1
            else:
                keep = context_length - max_new + 1
                if keep < 1:
                    raise ValueError(
                        f"max_new_tokens={max_new} leaves no room for the prompt in a context of {context_length}"
                    )
                ids = ids[-keep:]
                truncated += 1
        used.append(ids)
        budgets.append(budget)
    return used, budgets, shrunk, truncated


def _select_next(
    logits: torch.Tensor, settings: GenerationSettings, generators: Sequence[torch.Generator] | None
) -> torch.Tensor:
    """Next token per row from ``(b, vocab)`` logits, with the book's top-k/temperature rules. ``(b,)``."""
    if settings.top_k is not None:
        k = min(int(settings.top_k), logits.shape[-1])
        min_val = torch.topk(logits, k).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < min_val, float("-inf"))
    if settings.greedy:
        return torch.argmax(logits, dim=-1)  # (b,)
    probs = torch.softmax(logits.float() / float(settings.temperature), dim=-1)  # (b, vocab)
    assert generators is not None
    # One draw per row from its own generator, shaped (1, vocab) as in the book's batch-1 call.
    return torch.cat([torch.multinomial(probs[j : j + 1], 1, generator=g)[0] for j, g in enumerate(generators)])


@torch.inference_mode()
def _decode_batch_cache(
    model: torch.nn.Module,
    prompts: list[list[int]],
    budgets: list[int],
    settings: GenerationSettings,
    generators: list[torch.Generator] | None,
) -> tuple[list[list[int]], list[bool]]:
    """Our KV-cache loop for one batch. Returns the new ids and whether each stopped at end-of-text."""
    device = _model_device(model)
    B = len(prompts)
    lengths = [len(p) for p in prompts]
    T = max(lengths)
    input_ids = torch.full((B, T), settings.pad_token_id, dtype=torch.long)  # (B, T), left-padded
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T), 1 = real token
    for i, ids in enumerate(prompts):
        input_ids[i, T - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, T - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): real tokens count 0, 1, ...
    next_position = torch.tensor(lengths, device=device)  # (B,)
    budget_left = torch.tensor(budgets, device=device)  # (B,)
    cache = _make_cache(_num_layers(model), capacity=T + max(budgets))
    cache_keyword = _cache_keyword(model)

    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_keyword: cache},
    )
    logits = out.logits[:, -1, :]  # (B, vocab)
    active = list(range(B))  # original row of each row still in the batch
    results: list[list[int]] = [[] for _ in range(B)]
    stopped = [False] * B
    while True:
        row_generators = [generators[r] for r in active] if generators is not None else None
        next_token = _select_next(logits, settings, row_generators)  # (b,)
        tokens = next_token.tolist()
        is_eos = (
            next_token == settings.eos_token_id
            if settings.eos_token_id is not None
            else torch.zeros_like(next_token, dtype=torch.bool)
        )  # (b,)
        eos_list = is_eos.tolist()
        for j, row in enumerate(active):
            if eos_list[j]:
                stopped[row] = True
            else:
                results[row].append(tokens[j])
        budget_left = budget_left - 1
        finished = is_eos | (budget_left <= 0)  # (b,)
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)  # (b',)
            cache.batch_select_indices(keep)
            attention_mask = attention_mask[keep]
            next_token, next_position, budget_left = next_token[keep], next_position[keep], budget_left[keep]
            keep_list = keep.tolist()
            active = [active[j] for j in keep_list]
            # Columns that are padding for every remaining row: forget them (cheaper attention).
            pad_columns = int((attention_mask.cumsum(-1) == 0).all(0).sum())
            if pad_columns:
                for layer in cache.layers:
                    layer.crop_left(pad_columns)
                attention_mask = attention_mask[:, pad_columns:]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
        out = model(
            input_ids=next_token[:, None],  # (b, 1)
            attention_mask=attention_mask,  # (b, past+1)
            position_ids=next_position[:, None],  # (b, 1)
            use_cache=True,
            **{cache_keyword: cache},
        )
        logits = out.logits[:, -1, :]  # (b, vocab)
        next_position = next_position + 1
    return results, stopped


@torch.inference_mode()
def _decode_batch_transformers(
    model: torch.nn.Module,
    prompts: list[list[int]],
    budgets: list[int],
    settings: GenerationSettings,
    seed: int | None,
) -> tuple[list[list[int]], list[bool]]:
    """One batch through ``model.generate`` (transformers' own loop and ``DynamicCache``)."""
    from transformers import GenerationConfig

    device = _model_device(model)
    B, T = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((B, T), settings.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, T - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, T - len(ids) :] = 1
    config = GenerationConfig(
        max_new_tokens=max(budgets),
        do_sample=not settings.greedy,
        temperature=float(settings.temperature) if not settings.greedy else None,
        # 0 / 1.0 disable top-k / top-p: None would be filled with transformers' defaults (top_k=50).
        top_k=(int(settings.top_k) if settings.top_k is not None else 0) if not settings.greedy else None,
        top_p=1.0,
        pad_token_id=settings.pad_token_id,
        eos_token_id=settings.eos_token_id,
    )
    if seed is not None:
        torch.manual_seed(seed)
    # generate() fills unset (None) fields from model.generation_config -- including eos_token_id, which
    # would make "never stop" impossible -- so that one is swapped for ours during the call.
    saved = getattr(model, "generation_config", None)
    model.generation_config = config
    try:
        generated = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
    finally:
        model.generation_config = saved
    generated = generated[:, T:].tolist()  # (B, n)
    results, stopped = [], []
    for row, budget in zip(generated, budgets):
        tokens, hit_eos = [], False
        for t in row[:budget]:
            if settings.eos_token_id is not None and t == settings.eos_token_id:
                hit_eos = True
                break
            tokens.append(t)
        results.append(tokens)
        stopped.append(hit_eos)
    return results, stopped


def _transformers_batch(
    batch: list[int], used: list[list[int]], budgets: list[int], context_length: int | None
) -> list[int]:
    """The leading part of ``batch`` (longest prompt first) that ``model.generate`` can run together.

    ``model.generate`` gives every row the same number of steps, the batch's largest budget (rows with
    a smaller budget are cut afterwards, as rows that stopped at end-of-text are padded), and its padded
    sequence must fit the context: the first prompt's length plus the largest budget minus 1. With one
    common requested budget this batches equal budgets only (a shrunk prompt with the next ones of its
    length), as before per-prompt budgets existed.
    """
    if context_length is None:
        return batch
    longest = len(used[batch[0]])
    largest = 0
    for count, i in enumerate(batch):
        largest = max(largest, budgets[i])
        if longest + largest - 1 > context_length:
            return batch[:count]
    return batch


def generate_token_ids(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    settings: GenerationSettings | None = None,
    *,
    max_new_tokens: Sequence[int] | None = None,
) -> GenerationOutput:
    """Generate continuations of tokenized prompts, batched, in the caller's order.

    Args:
        model: A causal LM (``GPTForCausalLM`` or any transformers model accepting ``attention_mask``,
            ``position_ids``, a KV cache (``cache``, or ``past_key_values`` before transformers 5.24) and
            ``logits_to_keep``), on its device and dtype.
        prompt_ids: One list of token ids per prompt.
        settings: :class:`GenerationSettings` (defaults: greedy, 256 tokens, batch "auto").
        max_new_tokens: Optional per-prompt token budgets, one integer >= 1 per prompt, overriding
            ``settings.max_new_tokens`` prompt by prompt (``None``: every prompt gets
            ``settings.max_new_tokens``). The overflow policy applies to each prompt with its own
            budget, and ``batch_size="auto"`` is computed from the largest budget. Budgets do not
            change how prompts are ordered and batched (longest prompt first), and a sequence leaves
            its batch when its budget is spent, exactly as if it had emitted end-of-text there: with
            ``eos_token_id=None`` this replays the work of a model whose answers stop after known
            lengths (``scripts/benchmark_generation.py``). Each sequence's tokens are the first
            ``max_new_tokens[i]`` tokens it would get with any larger budget.

    Returns:
        :class:`GenerationOutput`; ``sequences[i]`` are the new ids of ``prompt_ids[i]`` without
        end-of-text.

    Raises:
        ValueError: ``max_new_tokens`` does not have one budget per prompt, or a budget is < 1; an
            empty prompt; a prompt that does not fit under ``overflow="error"``.
    """
    settings = settings or GenerationSettings()
    start = time.perf_counter()
    context_length = settings.context_length or _model_context_length(model)
    used, budgets, shrunk, truncated = _fit_prompts(prompt_ids, settings, context_length, max_new_tokens)
    requested_max = int(settings.max_new_tokens) if max_new_tokens is None else max(map(int, max_new_tokens), default=1)
    n = len(used)
    if shrunk or truncated:
        limit = f"max_new_tokens={settings.max_new_tokens}" if max_new_tokens is None else "their max_new_tokens"
        warnings.warn(
            f"{shrunk + truncated} of {n} prompts do not fit in the context of {context_length} tokens together "
            f"with {limit}: {shrunk} keep their prompt and get fewer new tokens, "
            f"{truncated} were cut from the left (overflow={settings.overflow!r})",
            PromptTruncationWarning,
            stacklevel=2,
        )
    sequences: list[list[int]] = [[] for _ in range(n)]
    stopped_at_eos = [False] * n
    if n == 0:
        return GenerationOutput(sequences, used, stopped_at_eos, shrunk, truncated, time.perf_counter() - start)

    device = _model_device(model)
    base_seed = settings.seed
    if not settings.greedy and base_seed is None:
        base_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    if settings.batch_size == "auto":
        batch_size = auto_batch_size(model, max(len(u) for u in used), requested_max, num_prompts=n, device=device)
    else:
        batch_size = int(settings.batch_size)
    # Longest first: batches of similar lengths, and any out-of-memory error shows up in the first batch.
    order = sorted(range(n), key=lambda i: (-len(used[i]), i))

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    try:
        with tqdm(total=n, desc="Generating", unit="prompt", disable=not settings.progress, leave=False) as bar:
            position = 0
            while position < n:
                batch = order[position : position + batch_size]
                if settings.backend == "transformers":
                    batch = _transformers_batch(batch, used, budgets, context_length)
                prompts = [used[i] for i in batch]
                batch_budgets = [budgets[i] for i in batch]
                try:
                    if settings.backend == "transformers":
                        seed = None if base_seed is None else base_seed + position
                        results, stops = _decode_batch_transformers(model, prompts, batch_budgets, settings, seed)
                    else:
                        generators = None
                        if not settings.greedy:
                            generators = [
                                torch.Generator(device=device).manual_seed(base_seed + i) for i in batch
                            ]
                        results, stops = _decode_batch_cache(model, prompts, batch_budgets, settings, generators)
                except torch.OutOfMemoryError:
                    if batch_size == 1 or settings.batch_size != "auto":
                        raise
                    batch_size = max(1, batch_size // 2)  # "auto" was too optimistic: retry smaller
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                for i, tokens, stop in zip(batch, results, stops):
                    sequences[i] = tokens
                    stopped_at_eos[i] = stop
                position += len(batch)
                bar.update(len(batch))
    finally:
        model.train(was_training)
    return GenerationOutput(sequences, used, stopped_at_eos, shrunk, truncated, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# Text level
# --------------------------------------------------------------------------------------------------


def _entries_to_list(entries_or_prompts: Any) -> list[Any]:
    if isinstance(entries_or_prompts, (str, Mapping)):
        return [entries_or_prompts]
    return list(entries_or_prompts)  # a list, a datasets.Dataset (rows as dicts), any iterable


def _prompt_text(item: Any, style: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        if style == RAW_STYLE:
            raise ValueError("entries (dicts) need a prompt style such as 'alpaca' or 'phi3', not 'raw'")
        from .prompts import format_prompt

        return format_prompt(item, style=style)
    raise TypeError(f"expected a prompt string or an entry dict, got {type(item).__name__}")


def _extract(generated_text: str, prompt: str, style: str) -> str:
    if style == RAW_STYLE:
        return generated_text[len(prompt) :]
    from .prompts import extract_response

    return extract_response(generated_text, prompt, style)


def generate_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    entries_or_prompts: Iterable[dict | str] | dict | str,
    settings: GenerationSettings | None = None,
    **overrides: Any,
) -> list[str]:
    """Responses to instruction entries (or to prompt strings), in their order.

    Entries (dicts with ``instruction``/``input``) are formatted with ``settings.style``
    (:func:`gpt_sft.prompts.format_prompt`); strings are used verbatim as prompts. As in the book,
    the prompt and the generated ids are decoded together and the response is extracted with the
    style's rule (:func:`gpt_sft.prompts.extract_response`; Alpaca: text after the prompt, without
    ``"### Response:"``, stripped). With ``style="raw"`` the continuation is returned unchanged.

    Args:
        model: The causal LM, on its device.
        tokenizer: tiktoken ``gpt2`` encoding or a Hugging Face GPT-2 tokenizer.
        entries_or_prompts: A list of entries or strings, a ``datasets.Dataset``, or a single one.
        settings: :class:`GenerationSettings`; keyword ``overrides`` replace its fields
            (``generate_responses(m, tok, data, max_new_tokens=64)``).
    """
    settings = dataclasses.replace(settings or GenerationSettings(), **overrides)
    items = _entries_to_list(entries_or_prompts)
    prompts = [_prompt_text(item, settings.style) for item in items]
    codec = _Codec(tokenizer)
    output = generate_token_ids(model, codec.encode_batch(prompts), settings)
    responses = []
    for used_ids, new_ids in zip(output.prompt_ids, output.sequences):
        prompt_text = codec.decode(used_ids)  # == the prompt unless it was truncated
        responses.append(_extract(codec.decode(used_ids + new_ids), prompt_text, settings.style))
    return responses


def add_responses(dataset_or_entries: Any, responses: Sequence[str], key: str = "model_response") -> Any:
    """Attach responses to their entries, like the book's ``test_data[i]["model_response"] = ...``.

    A ``datasets.Dataset`` gets a new column (replacing an existing one of that name); a list of dicts
    gives a new list of copies (the input is not modified).
    """
    responses = list(responses)
    if len(responses) != len(dataset_or_entries):
        raise ValueError(f"{len(responses)} responses for {len(dataset_or_entries)} entries")
    if hasattr(dataset_or_entries, "add_column") and hasattr(dataset_or_entries, "column_names"):
        dataset = dataset_or_entries
        if key in dataset.column_names:
            dataset = dataset.remove_columns(key)
        return dataset.add_column(key, responses)
    return [{**dict(entry), key: response} for entry, response in zip(dataset_or_entries, responses)]


# --------------------------------------------------------------------------------------------------
# Loading, writing, CLI
# --------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class UntrustedCodeError(ValueError):
    """A model folder asks to run its own Python code, and the caller did not allow it."""


def _folder_config(path: str | os.PathLike) -> dict[str, Any] | None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_file}: not a JSON config ({err})") from None
    return config if isinstance(config, dict) else None


def load_model(
    path: str | os.PathLike,
    device: str | None = "auto",
    dtype: str | None = "auto",
    *,
    trust_remote_code: bool = False,
) -> torch.nn.Module:
    """Load a causal LM for generation from a checkpoint folder (or a Hub id when online).

    A gpt-sft folder (``model_type == "gpt_sft"``) loads with the installed :class:`gpt_sft.GPTForCausalLM`
    through :func:`gpt_sft.weights.load_pretrained` (strict: every weight must fit the config), never
    with the Python files in the folder. Any other model goes through
    ``AutoModelForCausalLM.from_pretrained``; one that needs its own code (``auto_map``) is refused unless
    ``trust_remote_code=True``. ``dtype``: ``"auto"`` (the checkpoint's), ``"float32"``, ``"bfloat16"``,
    ``"float16"``.

    Raises:
        UntrustedCodeError: the folder wants to run its code and ``trust_remote_code`` is false.
    """
    torch_dtype: Any = "auto" if dtype in (None, "auto") else _DTYPES.get(str(dtype).lower())
    if torch_dtype is None:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    config = _folder_config(path)
    if config is not None and config.get("model_type") == "gpt_sft":
        from .weights import load_pretrained

        model = load_pretrained(path, dtype=None if torch_dtype == "auto" else torch_dtype)
    else:
        if config is not None and config.get("auto_map") and not trust_remote_code:
            raise UntrustedCodeError(
                f"{path}: its config.json (model_type {config.get('model_type')!r}) asks to run Python code from the "
                "folder (auto_map); gpt-sft runs a model folder's own code only with --trust-remote-code"
            )
        from transformers import AutoModelForCausalLM

        from .download import hub_cache_only, hub_offline_reason

        # Not a folder: a Hub id. Unreachable, transformers would retry for ~25 s; use the cache only.
        offline = None if Path(path).is_dir() else hub_offline_reason()
        with hub_cache_only() if offline else contextlib.nullcontext():
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
            except OSError as err:
                if offline is None:
                    raise
                from .weights import ModelNotFoundError

                raise ModelNotFoundError(f"{path}: not a local folder, and not in the Hugging Face cache; the Hub "
                                         f"cannot be reached to download it ({offline})") from err
    return model.to(_resolve_device(device)).eval()


def load_tokenizer(path: str | os.PathLike | None = None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer saved with a checkpoint folder if it has one, else the tiktoken ``gpt2`` encoding.

    Remote tokenizer code runs only with ``trust_remote_code=True``; a gpt-sft folder never needs it."""
    if path is not None and Path(path).is_dir() and any(
        (Path(path) / name).is_file() for name in ("tokenizer.json", "vocab.json")
    ):
        from transformers import AutoTokenizer

        config = _folder_config(path) or {}
        if config.get("model_type") == "gpt_sft":
            import gpt_sft  # noqa: F401 - registers the config class, so no code is read from the folder
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    from .tokenizer import get_tokenizer

    return get_tokenizer()


def _load_split(data: str, split: str) -> list[dict]:
    """Entries of ``split`` (``train``/``val``/``test``/``all``) of an instruction data file."""
    from .data import load_instruction_data, split_dataset

    dataset = load_instruction_data(str(data))
    if split != "all":
        dataset = split_dataset(dataset)["validation" if split == "val" else split]
    return [dict(row) for row in dataset]


def _build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="gpt-sft-generate",
        description="Generate responses with an instruction-tuned GPT-2: for a data split (written as the book's "
        "instruction-data-with-response.json), for one --prompt, or interactively.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder (save_pretrained) or Hub id")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data", help="instruction data JSON file (the book's format)")
    mode.add_argument("--prompt", help="one instruction: format it, generate, print the response")
    mode.add_argument("--interactive", action="store_true",
                      help="read instructions from stdin, one per line, until EOF or 'exit'")
    parser.add_argument("--input", default="", help="with --prompt: the entry's input field")
    parser.add_argument("--split", choices=("train", "val", "test", "all"), default="test",
                        help="with --data: which split (the book's 85/10/5 in file order); default test")
    parser.add_argument("--output", help="with --data: output JSON (default: ./<data name>-with-response.json)")
    parser.add_argument("--response-key", default="model_response")
    parser.add_argument("--batch-size", default="auto", help="an integer or 'auto' (default)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--seed", type=int, default=123, help="sampling seed; prompt i uses seed + i")
    parser.add_argument("--prompt-style", default="alpaca", help="alpaca (default), phi3, ...")
    parser.add_argument("--overflow", choices=OVERFLOW_POLICIES, default="shrink",
                        help="prompts too long for the context with max_new_tokens (default shrink)")
    parser.add_argument("--backend", choices=BACKENDS, default="cache")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16, float16")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(parser)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a model folder that is not a gpt-sft checkpoint to run its own Python code "
                        "(auto_map); gpt-sft checkpoints always load with the installed code")
    return parser


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``gpt-sft-generate`` (also ``scripts/generate.py``)."""
    args = _build_parser().parse_args(argv)
    batch_size: int | str = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        batch_size=batch_size,
        style=args.prompt_style,
        overflow=args.overflow,
        backend=args.backend,
        progress=not args.no_progress,
    )
    entries = _load_split(args.data, args.split) if args.data else None  # fail on bad data before loading
    model = load_model(args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)

    if entries is not None:
        output = Path(args.output) if args.output else Path.cwd() / f"{Path(args.data).stem}-with-response.json"
        responses = generate_responses(model, tokenizer, entries, settings)
        # the book: json.dump(test_data, file, indent=4)
        write_json_atomic(output, add_responses(entries, responses, key=args.response_key), indent=4)
        print(f"Wrote {len(entries)} entries with {args.response_key!r} to {output}", file=sys.stderr)
        return 0

    single = dataclasses.replace(settings, progress=False)
    if args.prompt is not None:
        print(generate_responses(model, tokenizer, [{"instruction": args.prompt, "input": args.input}], single)[0])
        return 0

    interactive_tty = sys.stdin.isatty()
    while True:
        if interactive_tty:
            print("Instruction (exit to quit)> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        instruction = line.strip()
        if instruction.lower() in ("exit", "quit"):
            break
        if not instruction:
            continue
        print(generate_responses(model, tokenizer, [{"instruction": instruction, "input": ""}], single)[0])
        print(flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
