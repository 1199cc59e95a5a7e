"""The collator against a reference of the book's batching (DESIGN part 1), token for token, and the loss
against the book's."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch

import gpt_sft.data.collator as collator_module
from gpt_sft.data.collator import InstructionDataCollator, to_book_batch
from gpt_sft.data.prompts import format_text
from gpt_sft.model.tokenizer import get_tokenizer


EOT, IGNORE = 50256, -100


def reference_batch(token_lists, prompt_lengths=None, allowed_max_length=None):
    """The book's batching as DESIGN part 1 states it, one row at a time (an independent reference
    for the collator's vectorised version): append one end-of-text (50256) to every token list, pad
    with 50256 to the longest list + 1, take ``inputs = row[:-1]`` and ``targets = row[1:]``, turn
    every 50256 in ``targets`` except the first into -100, with prompt lengths (exercise 7.2) set
    ``targets[:prompt_length - 1]`` to -100, then cut both to ``allowed_max_length``."""
    width = max(len(tokens) for tokens in token_lists) + 1
    rows_in, rows_out = [], []
    for row, tokens in enumerate(token_lists):
        padded = list(tokens) + [EOT] * (width - len(tokens))
        inputs, targets = padded[:-1], padded[1:]
        end_positions = [j for j, token in enumerate(targets) if token == EOT]
        for j in end_positions[1:]:
            targets[j] = IGNORE
        if prompt_lengths is not None:
            masked = targets[: prompt_lengths[row] - 1]
            targets[: prompt_lengths[row] - 1] = [IGNORE] * len(masked)
        if allowed_max_length is not None:
            inputs, targets = inputs[:allowed_max_length], targets[:allowed_max_length]
        rows_in.append(inputs)
        rows_out.append(targets)
    return torch.tensor(rows_in), torch.tensor(rows_out)


def test_the_reference_reproduces_the_book_s_worked_example():
    """DESIGN part 1's worked example, so that the reference itself is checked against the book."""
    inputs, targets = reference_batch([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    _, masked = reference_batch([[0, 1, 2, 3, 4]], prompt_lengths=[3])
    assert masked.tolist() == [[-100, -100, 3, 4, 50256]]


def book_batches(entries, style, mask, batch_size=8, allowed_max_length=1024):
    """(book_inputs, book_targets, our_examples) per batch, tokenized the book's way."""
    tokenizer = get_tokenizer()
    items = []
    for entry in entries:
        prompt, full = format_text(entry, style)
        items.append((len(tokenizer.encode(prompt)), tokenizer.encode(full)))
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        inputs, targets = reference_batch([ids for _, ids in chunk], [plen for plen, _ in chunk] if mask else None,
                                          allowed_max_length)
        examples = [{"input_ids": ids, "prompt_length": plen} for plen, ids in chunk]
        yield inputs, targets, examples


@pytest.fixture(scope="module")
def book_entries(book_data_path):
    return json.loads(book_data_path.read_text())


def test_book_worked_example():
    batch = InstructionDataCollator()([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].tolist() == [
        [0, 1, 2, 3, 4, 50256],
        [5, 6, 50256, 50256, 50256, 50256],
        [7, 8, 9, 50256, 50256, 50256],
    ]
    assert batch["labels"].tolist() == [
        [0, 1, 2, 3, 4, 50256],
        [5, 6, 50256, -100, -100, -100],
        [7, 8, 9, 50256, -100, -100],
    ]
    inputs, targets = to_book_batch(batch)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    book_inputs, book_targets = reference_batch([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]])
    assert torch.equal(inputs, book_inputs) and torch.equal(targets, book_targets)
    assert batch["input_ids"].dtype == torch.long and batch["labels"].device.type == "cpu"


@pytest.mark.parametrize(
    "style, mask, limit",
    [
        ("alpaca", False, 1024),
        ("alpaca", True, 1024),
        ("phi3", False, 1024),
        ("phi3", True, 1024),
        # small L: many examples are over-long and lose their end-of-text target, as in the book
        ("alpaca", True, 64),
        ("phi3", False, 64),
    ],
    ids=lambda v: {False: "full", True: "mask_prompt"}.get(v, str(v)) if isinstance(v, bool) else str(v),
)
def test_every_batch_matches_the_book_on_all_entries(book_entries, style, mask, limit):
    collate = InstructionDataCollator(mask_prompt=mask, allowed_max_length=limit)
    n_batches = n_overlong = 0
    for book_inputs, book_targets, examples in book_batches(book_entries, style, mask, allowed_max_length=limit):
        batch = collate(examples)
        assert batch["input_ids"].shape[1] <= limit + 1
        assert torch.equal(batch["input_ids"][:, :-1], book_inputs)
        assert torch.equal(batch["labels"][:, 1:], book_targets)
        overlong = [len(e["input_ids"]) > limit for e in examples]
        n_overlong += sum(overlong)
        if not any(overlong):
            # nothing cut: the extra column only carries the last targets; it is all padding
            assert (batch["input_ids"][:, -1] == 50256).all()
        # exactly the over-long examples lose their end-of-text target
        assert ((batch["labels"][:, 1:] == 50256).any(dim=1) == ~torch.tensor(overlong)).all()
        n_batches += 1
    assert n_batches == 138
    if limit == 1024:
        assert n_overlong == 0  # no truncation on the book's data at 1024
    else:
        assert n_overlong > 10  # over-long examples at L = 64 (alpaca: the most, its prompt is long)


@pytest.mark.parametrize("mask", [False, True], ids=["full", "mask_prompt"])
@pytest.mark.parametrize("limit", [1, 2, 17, 40])
def test_truncation_equals_the_books(book_entries, mask, limit):
    """Cut at L, our batch (L + 1 columns) shifted equals the book's batch cut at L."""
    collate = InstructionDataCollator(mask_prompt=mask, allowed_max_length=limit)
    for book_inputs, book_targets, examples in book_batches(book_entries[:200], "alpaca", mask, allowed_max_length=limit):
        batch = collate(examples)
        assert batch["input_ids"].shape[1] == limit + 1
        inputs, targets = to_book_batch(batch)
        assert inputs.shape[1] == limit
        assert torch.equal(inputs, book_inputs) and torch.equal(targets, book_targets)


@pytest.mark.parametrize("mask", [False, True], ids=["full", "mask_prompt"])
@pytest.mark.parametrize("pad_to_multiple_of", [None, 4])
def test_overlong_examples_match_the_book_exactly(mask, pad_to_multiple_of):
    """L = 8, sequences of 5, 8, 9 and 12 tokens, in every combination (so with and without padding
    and truncation in the batch): the shifted batch equals the book's tensors exactly."""
    import itertools

    limit = 8
    generator = torch.Generator().manual_seed(0)
    lengths = [5, 8, 9, 12]
    sequences = [torch.randint(0, 50000, (n,), generator=generator).tolist() for n in lengths]
    prompt_lengths = [3, 8, 10, 1]  # a prompt longer than L, and one that masks nothing
    collate = InstructionDataCollator(allowed_max_length=limit, mask_prompt=mask, pad_to_multiple_of=pad_to_multiple_of)
    checked = 0
    for r in range(1, 5):
        for rows in itertools.permutations(range(4), r):
            examples = [{"input_ids": sequences[i], "prompt_length": prompt_lengths[i]} for i in rows]
            book_inputs, book_targets = reference_batch(
                [sequences[i] for i in rows], [prompt_lengths[i] for i in rows] if mask else None, limit)
            batch = collate(examples)
            inputs, targets = to_book_batch(batch)
            if pad_to_multiple_of is None or max(lengths[i] for i in rows) > limit:
                assert torch.equal(inputs, book_inputs) and torch.equal(targets, book_targets), rows
            else:  # rounded up, not cut: the book's batch plus padding columns without a loss
                n = book_inputs.shape[1]
                assert torch.equal(inputs[:, :n], book_inputs) and torch.equal(targets[:, :n], book_targets)
                assert (targets[:, n:] == -100).all() and (inputs[:, n:] == 50256).all()
            assert inputs.shape[1] <= limit
            for row, i in enumerate(rows):
                has_stop = bool((targets[row] == 50256).any())
                # len == L keeps its end-of-text target; len == L + 1 (or more) loses it
                assert has_stop == (lengths[i] <= limit), (rows, lengths[i])
            checked += 1
    assert checked == 64


def test_truncation_happens_after_masking():
    # an over-long example (more than L tokens) loses its end-of-text target; a short one keeps it
    batch = InstructionDataCollator(allowed_max_length=4)([[1, 2, 3, 4, 5], [6, 7]])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 50256, 50256, 50256]]
    assert batch["labels"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 50256, -100, -100]]
    assert to_book_batch(batch)[1].tolist() == [[2, 3, 4, 5], [7, 50256, -100, -100]]
    # exactly L tokens: nothing lost, the end-of-text is the last target
    batch = InstructionDataCollator(allowed_max_length=4)([[1, 2, 3, 4]])
    assert batch["labels"].tolist() == [[1, 2, 3, 4, 50256]]
    assert to_book_batch(batch)[1].tolist() == [[2, 3, 4, 50256]]


def test_pad_to_multiple_of(book_entries):
    collate = InstructionDataCollator(pad_to_multiple_of=16, mask_prompt=True, return_attention_mask=True)
    for book_inputs, book_targets, examples in book_batches(book_entries[:64], "phi3", True):
        batch = collate(examples)
        width = batch["input_ids"].shape[1]
        assert width % 16 == 0 and width >= book_inputs.shape[1] + 1
        n = book_inputs.shape[1]
        assert torch.equal(batch["input_ids"][:, :n], book_inputs)
        assert torch.equal(batch["labels"][:, 1 : n + 1], book_targets)
        assert (batch["labels"][:, n + 1 :] == -100).all() and (batch["input_ids"][:, n + 1 :] == 50256).all()
    # truncation wins over rounding up
    batch = InstructionDataCollator(pad_to_multiple_of=8, allowed_max_length=5)([[1, 2], [3]])
    assert batch["input_ids"].shape == (2, 6)


def test_attention_mask_and_input_types():
    collate = InstructionDataCollator(return_attention_mask=True)
    examples = [
        {"input_ids": torch.tensor([0, 1, 2, 3, 4])},
        {"input_ids": np.array([5, 6])},
        {"input_ids": [7, 8, 9], "instruction": "ignored extra column"},
    ]
    batch = collate(examples)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert batch["input_ids"].tolist()[1] == [5, 6, 50256, 50256, 50256, 50256]


def test_mask_prompt_needs_prompt_length_and_bad_settings():
    with pytest.raises(ValueError, match="prompt_length.*example 1"):
        InstructionDataCollator(mask_prompt=True)([{"input_ids": [1], "prompt_length": 1}, {"input_ids": [2]}])
    with pytest.raises(ValueError, match="allowed_max_length"):
        InstructionDataCollator(allowed_max_length=0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        InstructionDataCollator(pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="empty batch"):
        InstructionDataCollator()([])


def test_mask_prompt_edge_cases():
    # prompt as long as the whole text: only the end-of-text is learned; zero prompt masks nothing
    batch = InstructionDataCollator(mask_prompt=True)([{"input_ids": [1, 2, 3], "prompt_length": 3}, {"input_ids": [4, 5], "prompt_length": 0}])
    assert batch["labels"].tolist() == [[-100, -100, -100, 50256], [4, 5, 50256, -100]]


@pytest.mark.parametrize("mask", [False, True], ids=["full", "mask_prompt"])
def test_model_loss_equals_the_books_loss(book_entries, mask):
    from gpt_sft import GPTConfig, GPTForCausalLM

    torch.manual_seed(123)
    model = GPTForCausalLM(GPTConfig(n_embd=64, n_layer=2, n_head=4, n_positions=256)).eval()
    with_mask = InstructionDataCollator(mask_prompt=mask, return_attention_mask=True)
    checked = 0
    # one batch each (a forward pass over the 50257-token vocabulary is slow on a busy 2-core CPU)
    start = 8 if mask else 0
    for book_inputs, book_targets, examples in book_batches(book_entries[start : start + 8], "alpaca", mask):
        batch = with_mask(examples)
        with torch.no_grad():
            book_loss = torch.nn.functional.cross_entropy(model(book_inputs).logits.flatten(0, 1), book_targets.flatten())
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
            loss_with_attention_mask = model(**batch).loss
        torch.testing.assert_close(loss, book_loss, rtol=0, atol=1e-5)
        torch.testing.assert_close(loss_with_attention_mask, book_loss, rtol=0, atol=1e-5)
        checked += 1
    assert checked == 1


def test_collator_is_picklable_for_worker_processes():
    import pickle

    collate = InstructionDataCollator(mask_prompt=True, allowed_max_length=512)
    assert pickle.loads(pickle.dumps(collate)) == collate


def test_module_doctests():
    result = doctest.testmod(collator_module)
    assert result.attempted >= 6 and result.failed == 0
