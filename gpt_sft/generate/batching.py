"""Which prompts fit, with how many new tokens, in batches of what size."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence

import torch

from .settings import CPU_MAX_AUTO_BATCH_SIZE, MAX_AUTO_BATCH_SIZE, GenerationSettings


def context_length_of(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "context_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def count_layers(model: torch.nn.Module) -> int:
    config = model.config
    for name in ("n_layer", "num_hidden_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError("cannot tell the number of layers of the model (config.n_layer / num_hidden_layers)")


def cache_argument_name(model: torch.nn.Module) -> str:
    """The name under which ``model.forward`` takes its KV cache: ``cache`` (transformers >= 5.24 and
    gpt-sft's model) or ``past_key_values`` (older transformers models)."""
    forward = getattr(model, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - not introspectable
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def device_of(model: torch.nn.Module) -> torch.device:
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
    kv_cache = 2 * count_layers(model) * width * (max_prompt_length + max_new_tokens) * elem
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
    device = torch.device(device) if device is not None else device_of(model)
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


def fit_prompts(
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


