"""A reference for the book's generation loop, written from its description (DESIGN part 1): batch
one, no KV cache, the whole cropped context run again for every new token.

It is what the fast path (:mod:`.decode`) is tested against, and the baseline of
``benchmarks/generation.py``.
"""

from __future__ import annotations

import torch

from ..model.tokenizer import END_OF_TEXT_ID


def _last_logits(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """The logits of the window's last position, ``(B, vocab)``, from a model returning a tensor (the
    book's ``GPTModel``) or an output with ``.logits``."""
    if hasattr(model, "config"):
        output = model(window, use_cache=False)
    else:
        output = model(window)
    logits = output if isinstance(output, torch.Tensor) else output.logits
    return logits[:, -1, :]


def generate_book_style(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int = 256,
    context_size: int = 1024,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = END_OF_TEXT_ID,
) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to the ``(1, T)`` prompt ``idx`` the way the book does.

    Each new token is read off the model run on the last ``context_size`` tokens. ``top_k`` sets
    every logit below the k-th largest to ``-inf``; ``temperature > 0`` then draws one token from
    ``softmax(logits / temperature)`` with torch's global random generator, otherwise the argmax is
    taken. Generation ends before appending ``eos_id``. Returns ``(1, T + n)``, ``n <= max_new_tokens``.
    A batch of several rows works only with ``eos_id=None`` (the book generates one prompt at a time).
    """
    if eos_id is not None and idx.shape[0] != 1:
        raise ValueError("generate_book_style stops on eos_id for batch size 1 only, as the book's generate")
    tokens = idx
    for _ in range(max_new_tokens):
        with torch.no_grad():
            scores = _last_logits(model, tokens[:, -context_size:])  # (B, vocab)
        if top_k is not None:
            kth_best = torch.topk(scores, top_k).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        if temperature > 0.0:
            chosen = torch.multinomial(torch.softmax(scores / temperature, dim=-1), num_samples=1)  # (B, 1)
        else:
            chosen = scores.argmax(dim=-1, keepdim=True)  # (B, 1)
        if eos_id is not None and int(chosen) == eos_id:
            break
        tokens = torch.cat([tokens, chosen], dim=1)
    return tokens


__all__ = ["generate_book_style"]
