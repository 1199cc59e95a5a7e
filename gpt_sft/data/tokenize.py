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

from ..model.tokenizer import GPT2_PAT_STR, get_tokenizer
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
    missing = [name for name in REQUIRED_FIELDS if name not in dataset.column_names]
    if missing:
        raise InstructionDataError(
            source, f"missing column(s) {missing} (found {dataset.column_names}); load it with load_instruction_data"
        )
    if len(dataset) == 0:
        raise InstructionDataError(source, "the data set is empty: nothing to tokenize")
    stats = TokenizationStats(num_examples=len(dataset), allowed_max_length=allowed_max_length, overlong=overlong)
    columns = list(dataset.column_names)
    for new in ("input_ids", "prompt_length"):
        if new in columns:
            columns.remove(new)  # re-tokenizing replaces them
    limit = allowed_max_length

    def tokenize(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
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
        out = {"input_ids": ids_out, "prompt_length": plen_out}
        if keep_columns:
            for c in columns:
                values = batch[c]
                out[c] = values if len(keep) == n else [values[j] for j in keep]
        return out

    fingerprint = hashlib.sha256(
        repr((dataset._fingerprint, repr(prompt_style), encoder.name, limit, overlong, keep_columns)).encode()
    ).hexdigest()[:16]
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
        result = result.select_columns([*columns, "input_ids", "prompt_length"])
    if stats.num_overlong:
        logger.warning("%s: %s", source, stats)
    return (result, stats) if return_stats else result


