"""Tokenizing instruction entries: the prompt style's full text to ``input_ids``, with the prompt's
length for masking.

**Over-long examples**: like the book's collate function, the collator keeps at most
``allowed_max_length`` input positions and targets (``allowed_max_length + 1`` columns in Hugging
Face form), so an example is over-long when ``len(input_ids) > allowed_max_length`` (equivalently,
tokens plus the appended end-of-text > ``allowed_max_length + 1``) -- the book cuts its end-of-text
target. They are counted and logged; ``overlong="truncate"`` keeps them (the book's behaviour: they
are cut in the collator) and ``overlong="drop"`` removes them. The counts are in
:class:`TokenizationStats` (``return_stats=True``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal, overload

from datasets import Dataset

from ..model.tokenizer import END_OF_TEXT_ID, GPT2_PAT_STR, get_tokenizer
from .constants import TRAIN_ON
from .conversation_format import ConversationLayout, conversation_layout, render_pieces
from .load import dataset_origin
from .prompts import PromptStyle, get_prompt_style
from .validate import END_OF_TEXT, REQUIRED_FIELDS, InstructionDataError

logger = logging.getLogger(__name__)

_MIN_TEXTS_PER_THREAD = 256


@dataclass
class TokenizationStats:
    """What :func:`tokenize_dataset` did.

    Attributes:
        num_examples: Entries tokenized.
        num_kept: Entries in the returned data set.
        num_overlong: Entries with ``len(input_ids) > allowed_max_length`` (tokens without the
            end-of-text; they lose their end-of-text target in the collator, as in the book, or are
            dropped with ``overlong="drop"``).
        num_dropped: Over-long entries removed (``overlong="drop"``).
        num_truncated: Entries whose stored ``input_ids`` were cut to ``allowed_max_length + 1``
            tokens (``overlong="truncate"``; the collator builds the same batches from them as from
            the full ids). An entry of exactly ``allowed_max_length + 1`` tokens is over-long but
            not cut.
        longest: Longest ``len(input_ids) + 1`` seen (tokens plus the end-of-text).
        num_tokens: Total stored tokens (without end-of-text).
        allowed_max_length: The limit used (``None``: no limit).
        overlong: ``"truncate"`` or ``"drop"``.
        seconds: Wall time of the tokenization.
    """

    num_examples: int = 0
    num_kept: int = 0
    num_overlong: int = 0
    num_dropped: int = 0
    num_truncated: int = 0
    longest: int = 0
    num_tokens: int = 0
    allowed_max_length: int | None = None
    overlong: str = "truncate"
    seconds: float = 0.0

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        text = f"tokenized {self.num_examples} entries ({self.num_tokens} tokens, longest {self.longest} with end-of-text)"
        if self.num_overlong:
            action = "dropped" if self.overlong == "drop" else "kept and truncated"
            text += (
                f"; {self.num_overlong} over-long (more than allowed_max_length={self.allowed_max_length} "
                f"tokens: the end-of-text target is cut), {action}"
            )
            if self.overlong == "truncate" and self.num_dropped:
                text += f" ({self.num_dropped} dropped: a conversation whose last exchange alone is too long)"
        return text



@dataclass
class _Encoder:
    """Batch encoding of texts without special tokens, by a tiktoken or transformers tokenizer."""

    name: str
    encode: Callable[[list[str]], list[list[int]]]
    # Byte length of every token id, when the tokenizer splits text with GPT-2's regex (tiktoken
    # "gpt2"/"r50k"): then the prompt length can be read off the full text's tokens (see _prompt_length).
    token_bytes: list[int] | None = None


@functools.lru_cache(maxsize=4)
def _token_byte_lengths(tokenizer: Any) -> list[int]:
    lengths = []
    for token in range(tokenizer.n_vocab):
        try:
            lengths.append(len(tokenizer.decode_single_token_bytes(token)))
        except KeyError:  # pragma: no cover - gaps in a vocabulary
            lengths.append(-1)
    return lengths


def _batch_encoder(tokenizer: Any, num_threads: int) -> _Encoder:
    """How to encode a list of texts with ``tokenizer`` (default: GPT-2 via tiktoken)."""
    if tokenizer is None:
        tokenizer = get_tokenizer()
    if hasattr(tokenizer, "encode_ordinary"):  # tiktoken.Encoding
        # encode_ordinary == encode for text without special tokens, which we check beforehand.
        # tiktoken's encode_ordinary_batch submits one thread-pool task per text, which costs more
        # than the encoding of a short text (measured 3-4x slower than a loop); instead each thread
        # encodes one contiguous chunk (tiktoken releases the GIL while encoding).
        encode_one = tokenizer.encode_ordinary

        def encode(texts: list[str]) -> list[list[int]]:
            threads = min(num_threads, len(texts) // _MIN_TEXTS_PER_THREAD)
            if threads <= 1:
                return [encode_one(text) for text in texts]
            size = -(-len(texts) // threads)
            chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
            with ThreadPoolExecutor(len(chunks)) as pool:
                parts = pool.map(lambda chunk: [encode_one(text) for text in chunk], chunks)
                return [ids for part in parts for ids in part]

        gpt2_regex = getattr(tokenizer, "_pat_str", None) == GPT2_PAT_STR
        return _Encoder(f"tiktoken:{tokenizer.name}", encode, _token_byte_lengths(tokenizer) if gpt2_regex else None)
    if callable(tokenizer) and hasattr(tokenizer, "convert_tokens_to_ids"):  # transformers tokenizer
        def encode_hf(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

        return _Encoder(f"hf:{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}", encode_hf)
    raise TypeError(
        f"tokenizer must be a tiktoken Encoding or a transformers tokenizer, got {type(tokenizer).__name__}"
    )


_ASCII_WHITESPACE = frozenset(" \t\n\r\f\v")


def _splits_cleanly(prompt: str, response: str) -> bool:
    """Whether GPT-2 encodes ``prompt + response`` as ``encode(prompt) + encode(response)``.

    GPT-2's BPE merges only inside the pieces its regex cuts the text into, and that regex has no
    look-behind. If the prompt ends with a non-whitespace character and the response starts with
    ASCII whitespace, no piece can span the boundary (letter, number and punctuation pieces stop at
    whitespace; whitespace pieces only look ahead), so the tokens of the full text start with exactly
    the prompt's tokens. True for every entry of the built-in styles unless the instruction or input
    ends with whitespace.
    """
    if not prompt or not response:
        return True
    return not prompt[-1].isspace() and response[0] in _ASCII_WHITESPACE


def _prompt_length(full_ids: list[int], token_bytes: list[int], prompt_bytes: int) -> int | None:
    """Number of leading tokens of ``full_ids`` spelling exactly ``prompt_bytes`` bytes, else None."""
    if prompt_bytes == 0:
        return 0
    ends = list(accumulate(map(token_bytes.__getitem__, full_ids)))  # byte offset after each token
    count = bisect_left(ends, prompt_bytes)
    return count + 1 if count < len(ends) and ends[count] == prompt_bytes else None


def _encode_parts(encoder: _Encoder, prompts: list[str], texts: list[str]) -> tuple[list[list[int]], list[int]]:
    """The tokens of each ``texts[j]`` (which starts with ``prompts[j]``) and how many of them are the prompt's."""
    n = len(texts)
    full_ids = encoder.encode(texts)  # the book: tokenizer.encode(full_text)
    # The book: len(tokenizer.encode(prompt)). With GPT-2's regex and a clean boundary that is the
    # number of leading tokens of the full text covering the prompt's bytes (no second encoding).
    prompt_lengths: list[int | None] = [None] * n
    if encoder.token_bytes is not None:
        for j, prompt in enumerate(prompts):
            if _splits_cleanly(prompt, texts[j][len(prompt):]):
                prompt_lengths[j] = _prompt_length(full_ids[j], encoder.token_bytes, len(prompt.encode("utf-8")))
    todo = [j for j in range(n) if prompt_lengths[j] is None]
    if todo:
        for j, ids in zip(todo, encoder.encode([prompts[j] for j in todo])):
            prompt_lengths[j] = len(ids)
    return full_ids, prompt_lengths


def _join_exchanges(chunks: list[list[int]], prompt_lengths: list[int], train_on: str) -> tuple[list[int], list[int]]:
    """One conversation's tokens, its exchanges joined by end-of-text (id 50256; the collator appends the last), and
    its loss mask: 1 for each token that is a target. An exchange's target is its response (the style's answer
    header, the answer, the end-of-text after it), as ``mask_prompt`` makes it for one turn."""
    ids: list[int] = []
    mask: list[int] = []
    for k, (chunk, prompt_length) in enumerate(zip(chunks, prompt_lengths)):
        if k:  # the end-of-text closing the previous answer
            ids.append(END_OF_TEXT_ID)
            mask.append(int(train_on != "last"))
        trained = train_on == "assistant" or (train_on == "last" and k == len(chunks) - 1)
        start = 0 if train_on == "all" else prompt_length if trained else len(chunk)
        ids += chunk
        mask += [0] * start + [1] * (len(chunk) - start)
    return ids, mask


def _conversation_batches(encoder: _Encoder, layout: ConversationLayout, limit: int | None, overlong: str,
                          train_on: str, stats: TokenizationStats, source: str) -> Callable:
    """The batch function of :func:`tokenize_dataset` for a ``messages`` column: ``(new columns, kept rows)``. An
    over-long conversation loses whole exchanges from the start (its system message stays) until it fits; one that
    does not fit even with its last exchange alone is dropped (never cut inside a turn), as is every over-long one
    with ``overlong="drop"``."""

    def encode(conversations: list[list[tuple[str, str]]]) -> list[tuple[list[int], list[int]]]:
        pieces = [piece for conversation in conversations for piece in conversation]
        full_ids, prompt_lengths = _encode_parts(encoder, [p for p, _ in pieces], [p + r for p, r in pieces])
        joined, at = [], 0
        for conversation in conversations:
            end = at + len(conversation)
            joined.append(_join_exchanges(full_ids[at:end], prompt_lengths[at:end], train_on))
            at = end
        return joined

    def shortened(messages: list[dict]) -> tuple[list[int], list[int]] | None:
        for first in range(1, len(render_pieces(messages, layout))):
            ids, mask = encode([render_pieces(messages, layout, first)])[0]
            if len(ids) <= limit:
                return ids, mask
        return None

    def tokenize(batch: dict[str, list[Any]], indices: list[int]) -> tuple[dict[str, list[Any]], list[int]]:
        for j, messages in enumerate(batch["messages"]):
            if any(END_OF_TEXT in message["content"] for message in messages):
                raise InstructionDataError(source, f"a message contains '{END_OF_TEXT}', GPT-2's end-of-text/padding "
                                                   "token; remove it (load_instruction_data rejects such entries)",
                                           indices[j])
        encoded = encode([render_pieces(messages, layout) for messages in batch["messages"]])
        keep, out = [], {"input_ids": [], "prompt_length": [], "loss_mask": []}
        for j, (ids, mask) in enumerate(encoded):
            stats.longest = max(stats.longest, len(ids) + 1)
            if limit is not None and len(ids) > limit:
                stats.num_overlong += 1
                fitted = None if overlong == "drop" else shortened(batch["messages"][j])
                if fitted is None:
                    stats.num_dropped += 1
                    continue
                (ids, mask), stats.num_truncated = fitted, stats.num_truncated + 1
            stats.num_tokens += len(ids)
            keep.append(j)
            out["input_ids"].append(ids)
            out["loss_mask"].append(mask)
            out["prompt_length"].append(mask.index(1) if 1 in mask else len(ids))  # the tokens before the first target
        return out, keep

    return tokenize


@overload
def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = ...,
    style: PromptStyle | str = ...,
    *,
    allowed_max_length: int | None = ...,
    overlong: str = ...,
    keep_columns: bool = ...,
    batch_size: int = ...,
    num_threads: int | None = ...,
    return_stats: Literal[False] = ...,
    train_on: str = ...,
) -> Dataset: ...


@overload
def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = ...,
    style: PromptStyle | str = ...,
    *,
    allowed_max_length: int | None = ...,
    overlong: str = ...,
    keep_columns: bool = ...,
    batch_size: int = ...,
    num_threads: int | None = ...,
    return_stats: Literal[True],
    train_on: str = ...,
) -> tuple[Dataset, TokenizationStats]: ...


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = None,
    style: PromptStyle | str = "alpaca",
    *,
    allowed_max_length: int | None = 1024,
    overlong: str = "truncate",
    keep_columns: bool = True,
    batch_size: int = 2000,
    num_threads: int | None = None,
    return_stats: bool = False,
    train_on: str = "assistant",
) -> Dataset | tuple[Dataset, TokenizationStats]:
    """Tokenize instruction entries with a batched ``Dataset.map``.

    Adds ``input_ids`` -- the tokens of prompt + response (the book's ``encode(full_text)``, without
    the end-of-text token, which the collator appends) -- and ``prompt_length`` --
    ``len(encode(prompt))``, what the collator masks with ``mask_prompt=True`` (exercise 7.2).

    Args:
        dataset: Entries with ``instruction``, ``input``, ``output`` (see :func:`load_instruction_data`).
        tokenizer: A ``tiktoken.Encoding`` (default: :func:`gpt_sft.model.tokenizer.get_tokenizer`, GPT-2)
            or a transformers tokenizer.
        style: Prompt style name or :class:`~gpt_sft.data.prompts.PromptStyle`.
        allowed_max_length: The collator's limit, the book's ``allowed_max_length`` (default 1024);
            ``None`` for no limit. An entry is over-long when ``len(input_ids) > allowed_max_length``
            (tokens without the end-of-text): the book's collate function cuts its end-of-text
            target.
        overlong: ``"truncate"`` (the book): keep over-long entries; their ``input_ids`` are stored
            cut to ``allowed_max_length + 1`` tokens, from which the collator builds exactly the
            batches it (and the book's collate function) builds from the full sequence (the
            end-of-text target is lost).
            ``"drop"``: remove them, so every kept example is trained to stop.
        keep_columns: Keep the text columns next to the new ones.
        batch_size: Entries per ``map`` batch.
        num_threads: Threads encoding with tiktoken, each given a contiguous chunk of at least 256
            texts of a batch. Default: 1 on machines with up to 2 CPUs (measured: a second thread only
            adds GIL hand-over cost there), else the number of CPUs, at most 4.
        return_stats: Also return a :class:`TokenizationStats`.
        train_on: For conversations (a ``messages`` column, :mod:`gpt_sft.data.conversation_format`): the loss
            covers ``assistant`` every answer (the style's answer header, the answer and its end-of-text), ``last``
            only the last one, ``all`` every token. Conversations get a ``loss_mask`` column (1: a target), which
            the collator uses instead of ``mask_prompt``, and ``prompt_length``: the tokens before the first target.

    Over-long counts are logged as a warning. ``<|endoftext|>`` in the formatted text raises
    :class:`InstructionDataError` (entry index given). Results are computed in memory every time
    (no ``datasets`` cache is used).
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"allowed_max_length must be at least 1 (or None), got {allowed_max_length}")
    prompt_style = get_prompt_style(style)
    if num_threads is None:
        cpus = os.cpu_count() or 1
        num_threads = 1 if cpus <= 2 else min(4, cpus)
    encoder = _batch_encoder(tokenizer, num_threads)
    source = dataset_origin(dataset)
    if train_on not in TRAIN_ON:
        raise ValueError(f"--train-on {train_on!r}: choose from {', '.join(TRAIN_ON)}")
    conversational = "messages" in dataset.column_names and "instruction" not in dataset.column_names
    missing = [] if conversational else [name for name in REQUIRED_FIELDS if name not in dataset.column_names]
    if missing:
        raise InstructionDataError(
            source, f"missing column(s) {missing} (found {dataset.column_names}); load it with load_instruction_data"
        )
    if len(dataset) == 0:
        raise InstructionDataError(source, "the data set is empty: nothing to tokenize")
    stats = TokenizationStats(num_examples=len(dataset), allowed_max_length=allowed_max_length, overlong=overlong)
    columns = list(dataset.column_names)
    new_columns = ["input_ids", "prompt_length", *(["loss_mask"] if conversational else [])]
    for new in new_columns:
        if new in columns:
            columns.remove(new)  # re-tokenizing replaces them
    limit = allowed_max_length

    def instruction_batches(batch: dict[str, list[Any]], indices: list[int]) -> tuple[dict[str, list[Any]], list[int]]:
        n = len(indices)
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        prompts, texts = [], []
        for j, row in enumerate(rows):
            prompt, response = prompt_style.format_parts(row)
            if END_OF_TEXT in prompt or END_OF_TEXT in response:
                raise InstructionDataError(
                    source,
                    f"the {prompt_style.name!r} text of this entry contains '{END_OF_TEXT}', GPT-2's "
                    "end-of-text/padding token; remove it (load_instruction_data rejects such entries)",
                    indices[j],
                )
            prompts.append(prompt)
            texts.append(prompt + response)
        full_ids, prompt_lengths = _encode_parts(encoder, prompts, texts)
        keep: list[int] = []
        ids_out, plen_out = [], []
        for j in range(n):
            ids = full_ids[j]
            length = len(ids) + 1
            stats.longest = max(stats.longest, length)
            # The book keeps inputs[:limit] and targets[:limit]: the end-of-text target (index
            # len(ids) - 1 of targets) survives iff len(ids) <= limit.
            if limit is not None and len(ids) > limit:
                stats.num_overlong += 1
                if overlong == "drop":
                    stats.num_dropped += 1
                    continue
                # The collator keeps limit + 1 columns, all of them tokens of ids here: storing
                # ids[:limit + 1] gives the same batches (ids[:limit] would put the end-of-text in
                # column limit instead of ids[limit]).
                if len(ids) > limit + 1:
                    ids = ids[: limit + 1]
                    stats.num_truncated += 1
            stats.num_tokens += len(ids)
            keep.append(j)
            ids_out.append(ids)
            plen_out.append(prompt_lengths[j])
        return {"input_ids": ids_out, "prompt_length": plen_out}, keep

    batches = (_conversation_batches(encoder, conversation_layout(prompt_style), limit, overlong, train_on, stats,
                                     source) if conversational else instruction_batches)

    def tokenize(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        out, keep = batches(batch, indices)
        if keep_columns:
            for c in columns:
                values = batch[c]
                out[c] = values if len(keep) == len(indices) else [values[j] for j in keep]
        return out

    settings = (dataset._fingerprint, repr(prompt_style), encoder.name, limit, overlong, keep_columns)
    fingerprint = hashlib.sha256(repr(settings + ((train_on,) if conversational else ())).encode()).hexdigest()[:16]
    start = time.perf_counter()
    result = dataset.map(
        tokenize,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        remove_columns=dataset.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=fingerprint,
        desc=f"Tokenizing ({prompt_style.name})",
    )
    stats.seconds = time.perf_counter() - start
    stats.num_kept = len(result)
    if stats.num_kept == 0:
        raise InstructionDataError(
            source,
            f"all {stats.num_examples} entries are over-long (more than allowed_max_length={limit} tokens) "
            "and overlong='drop' removed them all: nothing is left; raise allowed_max_length or use "
            "overlong='truncate'",
        )
    if keep_columns:
        result = result.select_columns([*columns, *new_columns])
    if stats.num_overlong:
        logger.warning("%s: %s", source, stats)
    return (result, stats) if return_stats else result


