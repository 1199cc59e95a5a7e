"""The book's ``custom_collate_fn`` as a Hugging Face style data collator.

The book (chapter 7) builds each batch like this: append one end-of-text token (50256) to every
token list, pad with 50256 to the longest list in the batch plus one, take
``inputs = padded[:-1]`` and ``targets = padded[1:]``, replace every 50256 in ``targets`` except the
first by -100 (so the model still learns to stop), optionally (exercise 7.2) mask the prompt with
``targets[:prompt_length - 1] = -100``, then truncate to ``allowed_max_length``.

:class:`InstructionDataCollator` builds the same batch in Hugging Face form: ``input_ids`` is the
whole padded matrix (one column longer than the book's ``inputs``) and ``labels`` is aligned with
it (the model shifts), masked the same way, so that::

    batch["input_ids"][:, :-1] == book_inputs        batch["labels"][:, 1:] == book_targets

and ``model(**batch).loss`` equals the book's
``cross_entropy(model(book_inputs).logits.flatten(0, 1), book_targets.flatten())``.

Truncation, exactly the book's. The book cuts its ``inputs`` and ``targets`` each to
``allowed_max_length`` (``L``) positions after masking; in Hugging Face form that is ``L + 1``
columns of ``input_ids`` and ``labels``, so that :func:`to_book_batch` of a batch equals the book's
truncated ``(inputs, targets)`` for over-long examples too. An example is over-long when it has more
than ``L`` tokens (without the appended end-of-text): the book then cuts its end-of-text target
(``len == L`` keeps it, ``len == L + 1`` loses it).

This module knows nothing of training or generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..model.tokenizer import END_OF_TEXT_ID

IGNORE_INDEX = -100  # the label of a position without a loss (PyTorch's cross-entropy default)

__all__ = ["IGNORE_INDEX", "InstructionDataCollator", "to_book_batch"]


@dataclass
class InstructionDataCollator:
    """Pad, shift-ready label and mask a batch of tokenized instruction examples.

    The batch has at most ``allowed_max_length + 1`` columns: the model sees ``input_ids[:, :-1]``,
    at most ``allowed_max_length`` tokens -- the book's inputs; gpt-sft's trainer feeds the model the
    shifted form (``model(input_ids=batch['input_ids'][:, :-1], shift_labels=batch['labels'][:, 1:])``).
    If you feed HF-form ``input_ids`` with ``labels`` straight to a model whose context is exactly
    ``L``, use ``allowed_max_length = L - 1``.

    Args:
        pad_token_id: The end-of-text token, appended once to every example and used as padding
            (GPT-2: 50256).
        ignore_index: Label of positions without a loss (-100, PyTorch's default).
        allowed_max_length: The book's ``allowed_max_length``: keep at most this many input positions
            and targets, i.e. ``allowed_max_length + 1`` columns of ``input_ids``/``labels``, cut
            after masking; ``None`` keeps everything. Default 1024, GPT-2's context.
        mask_prompt: Exclude the prompt tokens from the loss (exercise 7.2); needs ``prompt_length``
            in every example (:func:`gpt_sft.data.tokenize_dataset` adds it; ``transformers.Trainer``
            drops it unless ``remove_unused_columns=False``).
        pad_to_multiple_of: Round the padded length up to a multiple of this (the extra columns are
            padding with label ``ignore_index``), before truncation.
        return_attention_mask: Also return ``attention_mask`` (1 for the tokens and the appended
            end-of-text, 0 for padding). Off by default: with right padding and causal attention no
            real token attends to padding, so the loss is the same without it.

    Examples are dicts with ``input_ids`` (list, tensor or array; without end-of-text) and optionally
    ``prompt_length``, or plain token lists. Returns CPU ``torch.long`` tensors. A conversation
    (:func:`gpt_sft.data.tokenize_dataset` of ``messages`` data) also has ``loss_mask``, 1 for each token that is a
    target: its labels follow it (``mask_prompt`` does not apply), and the appended end-of-text is a target.

    The book's worked example:

    >>> collate = InstructionDataCollator()
    >>> batch = collate([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    >>> batch["input_ids"]
    tensor([[    0,     1,     2,     3,     4, 50256],
            [    5,     6, 50256, 50256, 50256, 50256],
            [    7,     8,     9, 50256, 50256, 50256]])
    >>> batch["labels"]
    tensor([[    0,     1,     2,     3,     4, 50256],
            [    5,     6, 50256,  -100,  -100,  -100],
            [    7,     8,     9, 50256,  -100,  -100]])
    >>> inputs, targets = to_book_batch(batch)   # the book's (inputs, targets)
    >>> targets
    tensor([[    1,     2,     3,     4, 50256],
            [    6, 50256,  -100,  -100,  -100],
            [    8,     9, 50256,  -100,  -100]])

    Prompt masking (``targets[:prompt_length - 1] = -100`` in the book's shifted form):

    >>> InstructionDataCollator(mask_prompt=True)([{"input_ids": [0, 1, 2, 3, 4], "prompt_length": 3}])["labels"]
    tensor([[ -100,  -100,  -100,     3,     4, 50256]])

    Truncation, as the book's ``allowed_max_length``: an example with more than
    ``allowed_max_length`` tokens loses its end-of-text target:

    >>> to_book_batch(InstructionDataCollator(allowed_max_length=3)([[1, 2, 3, 4], [5, 6, 7]]))
    (tensor([[1, 2, 3],
            [5, 6, 7]]), tensor([[    2,     3,     4],
            [    6,     7, 50256]]))
    """

    pad_token_id: int = END_OF_TEXT_ID
    ignore_index: int = IGNORE_INDEX
    allowed_max_length: int | None = 1024
    mask_prompt: bool = False
    pad_to_multiple_of: int | None = None
    return_attention_mask: bool = False

    def __post_init__(self) -> None:
        if self.allowed_max_length is not None and self.allowed_max_length < 1:
            raise ValueError(f"allowed_max_length must be at least 1 (or None), got {self.allowed_max_length}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive, got {self.pad_to_multiple_of}")

    def __call__(self, examples: Sequence[Mapping[str, Any] | Sequence[int]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch")
        sequences, prompt_lengths, loss_masks = [], [], []
        for i, example in enumerate(examples):
            if isinstance(example, Mapping):
                ids = example["input_ids"]
                prompt_length = example.get("prompt_length")
                loss_masks.append(example.get("loss_mask"))
            else:
                ids, prompt_length = example, None
                loss_masks.append(None)
            if self.mask_prompt and prompt_length is None and loss_masks[-1] is None:
                raise ValueError(
                    f"mask_prompt=True needs 'prompt_length' in every example (example {i} has none); "
                    "gpt_sft.data.tokenize_dataset adds it (with transformers.Trainer, pass "
                    "remove_unused_columns=False so that the column reaches the collator)"
                )
            sequences.append(torch.as_tensor(ids, dtype=torch.long).reshape(-1))
            prompt_lengths.append(prompt_length)

        lengths = [len(s) + 1 for s in sequences]  # + the appended end-of-text
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = seq  # column len(seq) stays pad_token_id: the end-of-text

        labels = input_ids.clone()
        # The book: in targets = padded[1:], every pad token except the first becomes ignore_index.
        targets = labels[:, 1:]  # a view
        is_pad = targets == self.pad_token_id
        later_pad = is_pad & (is_pad.cumsum(dim=1) > 1)
        targets[later_pad] = self.ignore_index
        if self.mask_prompt:
            # The book: targets[:prompt_length - 1] = ignore_index  <=>  labels[:prompt_length] (labels[0]
            # is never a target). A prompt length of 0 masks nothing.
            for row, prompt_length in enumerate(prompt_lengths):
                if loss_masks[row] is None and int(prompt_length) > 0:
                    labels[row, : int(prompt_length)] = self.ignore_index
        for row, loss_mask in enumerate(loss_masks):
            if loss_mask is not None:
                # A conversation has an end-of-text after every answer, which the rule above would ignore as
                # padding: its tokens keep the labels its loss mask gives them, and the appended end-of-text,
                # which closes the last answer, stays a target.
                seq = sequences[row]
                keep = torch.as_tensor(loss_mask, dtype=torch.bool).reshape(-1)
                labels[row, : len(seq)] = torch.where(keep, seq, torch.full_like(seq, self.ignore_index))
                labels[row, len(seq)] = self.pad_token_id

        batch = {"input_ids": input_ids, "labels": labels}
        if self.return_attention_mask:
            positions = torch.arange(width)[None, :]
            batch["attention_mask"] = (positions < torch.tensor(lengths)[:, None]).long()
        # The book: inputs[:L] and targets[:L] of padded[:-1] / padded[1:]  <=>  columns [:L + 1] here.
        if self.allowed_max_length is not None and width > self.allowed_max_length + 1:
            keep = self.allowed_max_length + 1
            batch = {key: value[:, :keep].contiguous() for key, value in batch.items()}
        return batch


def to_book_batch(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's ``(inputs, targets)`` from a Hugging Face form batch: shift by one position.

    ``inputs = input_ids[:, :-1]``, ``targets = labels[:, 1:]``; then
    ``cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten())`` is the model's loss.
    """
    return batch["input_ids"][:, :-1], batch["labels"][:, 1:]
