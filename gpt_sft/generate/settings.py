"""How to generate: the settings, the result, and the rules they follow.

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
"""

from __future__ import annotations

import dataclasses
import math

from ..data.conversation_format import ConversationLayout
from ..common.tokens import END_OF_TEXT, END_OF_TEXT_ID  # noqa: F401 - END_OF_TEXT: for generate.responses

RAW_STYLE = "raw"  # prompts used verbatim; the response is the decoded continuation, untouched
OVERFLOW_POLICIES = ("shrink", "truncate", "error")
BACKENDS = ("cache", "transformers")
CPU_MAX_AUTO_BATCH_SIZE = 32
MAX_AUTO_BATCH_SIZE = 256

__all__ = ["BACKENDS", "OVERFLOW_POLICIES", "RAW_STYLE", "GenerationOutput", "GenerationSettings",
           "PromptTruncationWarning"]


class PromptTruncationWarning(UserWarning):
    """Some prompts did not fit in the context window together with ``max_new_tokens``."""


MAX_SEED = 2**63 - 2**32  # torch generators take seeds below 2**64; seed + i must fit for any batch of prompts


@dataclasses.dataclass
class GenerationSettings:
    """How to generate.

    Attributes:
        max_new_tokens: Most new tokens per response (the book's 256).
        temperature: 0 (default) = greedy argmax; > 0 = sample from ``softmax(logits / temperature)``.
        top_k: Keep only the ``top_k`` largest logits (ties with the k-th kept) before greedy/sampling.
        seed: Sampling seed (default 123, the book's); prompt ``i`` uses a generator seeded with
            ``seed + i``. ``None``: drawn from torch's global RNG (``torch.manual_seed`` then decides).
        batch_size: Prompts per batch, or ``"auto"`` (:func:`auto_batch_size`).
        style: Prompt style of dict entries and of response extraction (``"alpaca"``, ``"phi3"``, any
            style known to :mod:`gpt_sft.data.prompts`), or ``"raw"``: string prompts used verbatim and the
            whole continuation returned.
        conversation_layout: How conversations (``messages`` entries) are written: the layout a checkpoint trained
            on conversations records in its recipe; ``None``: the style's
            (:func:`gpt_sft.data.conversation_format.conversation_layout`).
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
    seed: int | None = 123
    batch_size: int | str = "auto"
    style: str = "alpaca"
    conversation_layout: ConversationLayout | None = None
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
        if self.seed is not None and not 0 <= int(self.seed) < MAX_SEED:  # prompt i's generator takes seed + i
            raise ValueError(f"seed must be from 0 to {MAX_SEED - 1}, got {self.seed}")
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


