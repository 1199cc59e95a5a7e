"""The checks of a checkpoint's computations, on the run's own entries: the exact loss shortcuts training took
against the plain padded forward, KV-cache and batched generation against the book's loop, and an unmerged LoRA
adapter against its merge (and its base against the one it was trained on).

Each bound is float32 round-off, not a tolerance for a near miss: the shortcuts reorder sums, they never
approximate. A wrong mask, a lost row or a stale cache moves the figures by orders of magnitude more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset

from ..common.tokens import END_OF_TEXT
from ..data.collator import IGNORE_INDEX, InstructionDataCollator, to_book_batch
from ..data.conversation_format import entry_prompt
from ..data.tokenize import tokenize_dataset
from ..generate.batching import context_length_of
from ..generate.book import generate_book_style
from ..generate.decode import generate_token_ids
from ..generate.settings import GenerationSettings
from ..model.adapters import BASE_RECORD, adapter_base, base_weights_sha256
from ..model.tokenizer import get_tokenizer
from ..train.loss import LossPaths, batch_loss
from .check import AT_MOST, Check, skipped
from .subject import Subject

# The loss of a shortcut against the plain forward's, relative: float32 sums reordered (packed rows, chunked output
# layer) differ by a few units of float32's 1.2e-7 per operation; 1e-5 leaves room for deep and wide models, and a
# real fault (a target lost, padding attended) moves the loss by 1e-3 or more.
LOSS_BOUND = 1e-5
# The gradient's relative difference (all parameters as one vector): the same round-off, through the backward pass.
GRADIENT_BOUND = 1e-5
# Logits against logits, as max |difference| / max |logit| (scale-free: GPT-2's logits reach the hundreds): the same
# weights through reordered float32 sums (a merged LoRA weight, or the same code in another process).
LOGITS_BOUND = 1e-5
# Greedy tokens must be the same: a prompt whose tokens differ is a fault (round-off matters only on an exact
# near-tie of the two best logits, which a trained model's few held-out prompts do not meet).
TOKENS_BOUND = 0

PATHS = {  # each shortcut on top of the one before, as training stacks them
    "targets-only output layer": LossPaths(targets_only=True, padding_free=False, share_prefix=False),
    "padding-free": LossPaths(targets_only=True, padding_free=True, share_prefix=False),
    "shared prefix": LossPaths(targets_only=True, padding_free=True, share_prefix=True),
}
LOSS, GENERATION, LORA = "loss paths", "generation", "lora"


@dataclass(frozen=True)
class Sizes:
    """How much of the run's data a set of checks reads."""

    text_entries: int | None  # held-out entries for the tokenizer and the template (None: all of them)
    loss_batches: int  # batches of the training split for the loss paths
    batch_size: int
    gradients: bool  # also compare the gradients (a backward pass per path)
    prompts: int  # held-out prompts generated from and whose logits are compared
    new_tokens: int  # greedy tokens per prompt (at most the run's max_new_tokens)


def plain_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The book's loss from the plain padded forward: every position's logits, then the cross-entropy."""
    logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


def training_batches(subject: Subject, sizes: Sizes) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The book's ``(inputs, targets)`` of the first entries of the training split, tokenized, masked and padded as
    training did (the run's prompt style or conversation layout, its prompt masking, its length limit)."""
    entries = subject.train[: sizes.loss_batches * sizes.batch_size]
    if not entries:
        return []
    dataset = Dataset.from_list(entries)
    train_on = (subject.recipe.train_on if subject.recipe else None) or "assistant"
    limit = subject.allowed_max_length or context_length_of(subject.model)  # training's default: the context
    tokenized = tokenize_dataset(dataset, style=subject.style, allowed_max_length=limit, keep_columns=False,
                                 train_on=train_on)
    collate = InstructionDataCollator(mask_prompt=subject.mask_prompt and not subject.conversational,
                                      allowed_max_length=limit)
    rows = list(tokenized)
    return [to_book_batch(collate(rows[i: i + sizes.batch_size])) for i in range(0, len(rows), sizes.batch_size)]


def gradient(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    """The loss's gradient with respect to each parameter (the model's own ``.grad`` untouched)."""
    return list(torch.autograd.grad(loss, list(model.parameters())))


def relative(value: torch.Tensor | list[torch.Tensor], reference: torch.Tensor | list[torch.Tensor]) -> float:
    """``||value - reference|| / ||reference||``, a list of tensors taken as one vector, in float64."""
    pairs = zip(value, reference) if isinstance(value, list) else [(value, reference)]
    diff = total = 0.0
    for a, b in pairs:
        diff += float(torch.linalg.vector_norm((a - b).double())) ** 2
        total += float(torch.linalg.vector_norm(b.double())) ** 2
    return diff ** 0.5 / max(total ** 0.5, 1e-30)


def loss_path_checks(subject: Subject, sizes: Sizes) -> list[Check]:
    """Each loss shortcut's loss (and, with ``sizes.gradients``, its gradient) against the plain padded forward's,
    on batches of the run's training split; the largest relative difference over the batches."""
    model, used = subject.model, []
    names = [(label, f"{label}: loss vs the plain padded forward") for label in PATHS]
    grad_names = [(label, f"{label}: gradients vs the plain padded forward") for label in PATHS]
    batches = training_batches(subject, sizes) if subject.train else []
    if not batches:
        reason = subject.data_error or "the run's training split is empty"
        return [skipped(LOSS, name, reason) for _, name in names + (grad_names if sizes.gradients else [])]
    worst = {label: 0.0 for label in PATHS}
    worst_grad = {label: 0.0 for label in PATHS}
    for inputs, targets in batches:
        used.append(int((targets != IGNORE_INDEX).sum()))
        with torch.set_grad_enabled(sizes.gradients):
            reference = plain_loss(model, inputs, targets)
            reference_grad = gradient(model, reference) if sizes.gradients else None
            for label, paths in PATHS.items():
                loss = batch_loss(model, inputs, targets, paths)
                worst[label] = max(worst[label], relative(loss.detach(), reference.detach()))
                if reference_grad is not None:
                    worst_grad[label] = max(worst_grad[label], relative(gradient(model, loss), reference_grad))
    detail = f"relative difference; {len(batches)} batch{'es' if len(batches) > 1 else ''} of the training split, " \
             f"{sum(used)} targets"
    checks = [Check(LOSS, name, worst[label], LOSS_BOUND, AT_MOST, detail) for label, name in names]
    if sizes.gradients:
        checks += [Check(LOSS, name, worst_grad[label], GRADIENT_BOUND, AT_MOST, detail) for label, name in grad_names]
    return checks


def held_out_prompts(subject: Subject, count: int, new_tokens: int) -> list[list[int]]:
    """The token ids of the first ``count`` held-out prompts that fit the context with ``new_tokens`` more (the book's
    loop would crop a longer one, the cache cannot), as generation writes them (tiktoken; ``<|endoftext|>`` in a
    conversation's history is the token 50256)."""
    tokenizer, context = get_tokenizer(), context_length_of(subject.model) or 1024
    prompts = []
    for entry in subject.held_out:
        ids = tokenizer.encode(entry_prompt(entry, subject.style, subject.layout), allowed_special={END_OF_TEXT})
        if len(ids) + new_tokens - 1 <= context:
            prompts.append(ids)
        if len(prompts) == count:
            break
    return prompts


def joined(*parts: str) -> str:
    """A detail made of the parts that say something."""
    return "; ".join(part for part in parts if part)


def differing(got: list[list[int]], expected: list[list[int]]) -> tuple[int, str]:
    """How many prompts' tokens differ, and where the first one does."""
    count, detail = 0, ""
    for index, (a, b) in enumerate(zip(got, expected)):
        if a != b:
            count += 1
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            detail = detail or f"prompt {index}: new token {at}: {a[at:at + 4]} vs {b[at:at + 4]}"
    return count, detail


def generation_checks(subject: Subject, sizes: Sizes) -> list[Check]:
    """Greedy tokens of the held-out prompts three ways: our KV-cache loop one prompt at a time, the same loop on
    all of them as one batch (left-padded, finished rows dropped), and the book's loop without a cache."""
    new_tokens = min(sizes.new_tokens, subject.max_new_tokens)
    prompts = held_out_prompts(subject, sizes.prompts, new_tokens) if subject.held_out else []
    cache_name = "KV cache vs no cache (the book's loop): greedy tokens (prompts differing)"
    batch_name = "batched vs one at a time: greedy tokens (prompts differing)"
    on = f"{len(prompts)} held-out prompts, {new_tokens} new tokens each"
    if not prompts:
        reason = subject.data_error or f"no held-out prompt fits the context with {new_tokens} new tokens"
        return [skipped(GENERATION, cache_name, reason), skipped(GENERATION, batch_name, reason)]
    settings = GenerationSettings(max_new_tokens=new_tokens, progress=False, batch_size=1)
    one = generate_token_ids(subject.model, prompts, settings).sequences
    batched = generate_token_ids(subject.model, prompts, GenerationSettings(
        max_new_tokens=new_tokens, progress=False, batch_size=len(prompts))).sequences
    context = context_length_of(subject.model) or 1024
    book = [generate_book_style(subject.model, torch.tensor([ids]), new_tokens, context)[0, len(ids):].tolist()
            for ids in prompts]
    (cache_count, cache_detail), (batch_count, batch_detail) = differing(one, book), differing(batched, one)
    return [Check(GENERATION, cache_name, cache_count, TOKENS_BOUND, AT_MOST, joined(on, cache_detail)),
            Check(GENERATION, batch_name, batch_count, TOKENS_BOUND, AT_MOST,
                  joined(f"one batch of {len(prompts)}", batch_detail))]


def logits_difference(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    """max |difference| / max |logit| over every position of every prompt (inf for a shape that differs)."""
    if len(got) != len(expected) or any(a.shape != b.shape for a, b in zip(got, expected)):
        return float("inf")
    diff = max(float((a.double() - b.double()).abs().max()) for a, b in zip(got, expected))
    return diff / max(max(float(b.abs().max()) for b in expected), 1e-30)


@torch.no_grad()
def prompt_logits(model: torch.nn.Module, prompts: list[list[int]]) -> list[torch.Tensor]:
    """Every position's logits of each prompt, run alone (no padding), ``(T, vocab)`` each."""
    return [model(input_ids=torch.tensor([ids])).logits[0].float() for ids in prompts]


def lora_checks(subject: Subject, sizes: Sizes) -> list[Check]:
    """An adapter folder only: ``base/``'s weights against the SHA-256 the run recorded (``adapter_base.json``), and
    the unmerged adapter (peft's LoRA layers on the base) against its merge, logits on held-out prompts."""
    if not subject.adapter:
        return []
    record = subject.folder / BASE_RECORD
    base_name = "base weights vs the SHA-256 recorded at training (files differing)"
    if not record.is_file():
        base_check = skipped(LORA, base_name, f"{record} is missing (an adapter saved before gpt-sft recorded it)")
    else:
        try:
            recorded = json.loads(record.read_text(encoding="utf-8"))["base_weights_sha256"]
            actual = base_weights_sha256(adapter_base(subject.folder))
            changed = sorted(n for n in {*recorded, *actual} if recorded.get(n) != actual.get(n))
            base_check = Check(LORA, base_name, len(changed), 0, AT_MOST,
                               f"changed since training: {', '.join(changed)} (against {BASE_RECORD}); not the base "
                               "the adapter was trained on" if changed else f"{len(recorded)} file(s) of {BASE_RECORD}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            base_check = Check(LORA, base_name, None, 0, detail=f"{record}: not readable ({err})")
    prompts = held_out_prompts(subject, sizes.prompts, 1) if subject.held_out and subject.model is not None else []
    merge_name = "unmerged adapter vs its merge: logits"
    if subject.unmerged is None:
        return [base_check, Check(LORA, merge_name, None, LOGITS_BOUND, detail=subject.load_error)]
    if not prompts:
        return [base_check, skipped(LORA, merge_name, subject.data_error or "no held-out prompt fits the context")]
    figure = logits_difference(prompt_logits(subject.unmerged, prompts), prompt_logits(subject.model, prompts))
    return [base_check, Check(LORA, merge_name, figure, LOGITS_BOUND, AT_MOST,
                              f"max |difference| / max |logit|; {len(prompts)} held-out prompts")]


__all__ = ["GENERATION", "GRADIENT_BOUND", "LOGITS_BOUND", "LORA", "LOSS", "LOSS_BOUND", "PATHS", "Sizes",
           "TOKENS_BOUND", "generation_checks", "held_out_prompts", "logits_difference", "lora_checks",
           "loss_path_checks", "plain_loss", "prompt_logits", "training_batches"]
