"""The training loss: the book's cross-entropy, and the exact shortcuts that compute it with less work.

The book's loss is ``cross_entropy(logits.flatten(0, 1), targets.flatten())``: the mean over every
target of the batch that is not -100, for ``(inputs, targets)`` shifted by one position (the
collator's ``input_ids[:, :-1]`` and ``labels[:, 1:]``). Every path here gives that number and its
gradients, up to float round-off; tests hold them to it.

* **book** (no shortcut): the output layer at every position, then the loss.
* **targets only**: the output layer (``vocab x d``, the largest matrix of a small GPT) only at the
  positions that have a target.
* **padding-free**: every layer computes only the positions up to each row's last target, packed,
  with attention per row (:meth:`GPTModel.forward_unpadded`): padding costs nothing and rows stay
  isolated.
* **shared prefix**: the leading positions where every row has the same token and target (a prompt
  template's preamble, 24 tokens of the Alpaca prompt) are computed once, for row 0; every row reads
  row 0's activations and losses there, so autograd sums their gradients as if each row had computed
  them. Not while training with dropout, where rows would share masks.

With ``num_items_in_batch`` the sum is divided by that count instead (gradient accumulation and
several processes: a token-level mean over the whole optimizer step). The model file
(``modeling_gpt.py``) keeps only the plain Hugging Face ``labels`` loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.collator import IGNORE_INDEX
from ..model.tokenizer import END_OF_TEXT_ID
from .loss_paths import BOOK, LossPaths

HEAD_CHUNK = 4096  # targets per output-layer chunk for per-target losses: evaluation never holds all logits


def base_model(model: nn.Module) -> nn.Module:
    """The :class:`GPTForCausalLM` inside a peft model (its LoRA layers stay in place) or the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def divide(total: torch.Tensor, count: int | torch.Tensor) -> torch.Tensor:
    """``total / count``, a count of 0 taken as 1: a batch without targets has loss 0, not NaN."""
    if isinstance(count, torch.Tensor):
        return total / count.to(total.device).clamp(min=1)
    return total / max(int(count), 1)


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for the cross-entropy: bf16/fp16 ones in float32, float64 ones (gpt-sft doctor's reference) kept."""
    return logits if logits.dtype == torch.float64 else logits.float()


def token_loss(logits: torch.Tensor, targets: torch.Tensor,
               num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """The book's loss: cross-entropy of ``logits`` (B, T, vocab) against ``targets`` (B, T)."""
    flat = targets.flatten()  # (B*T,)
    total = F.cross_entropy(at_least_float32(logits.flatten(0, 1)), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    return divide(total, (flat != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch)


def head_losses(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the output layer at M positions: ``hidden`` (M, d), ``targets`` (M,) -> (M,),
    in chunks of :data:`HEAD_CHUNK` targets."""
    pieces = [F.cross_entropy(at_least_float32(lm_head(h)), t, reduction="none")
              for h, t in zip(hidden.split(HEAD_CHUNK), targets.split(HEAD_CHUNK))]
    return torch.cat(pieces) if pieces else hidden.new_zeros(0)


def positions_up_to_last_target(targets: torch.Tensor) -> torch.Tensor:
    """Per row of ``targets`` (B, T): its last target's position + 1, or 0 for a row without targets --
    the positions a loss needs (right padding after them is never seen by a target)."""
    has_target = targets != IGNORE_INDEX
    last = targets.shape[1] - has_target.flip(1).int().argmax(1)  # (B,)
    return torch.where(has_target.any(1), last, 0)


def shared_prefix_length(input_ids: torch.Tensor, targets: torch.Tensor, used: torch.Tensor) -> int:
    """Leading positions where every row has the same token and the same target (never past the
    shortest row's last target)."""
    same = (input_ids == input_ids[:1]).all(0) & (targets == targets[:1]).all(0)  # (T,)
    return min(int(same.int().cumprod(0).sum()), int(used.min()))


def per_target_losses(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                      paths: LossPaths = LossPaths()) -> torch.Tensor:
    """The cross-entropy of every target (not -100) of the batch, a 1-D tensor in row-major order.

    ``input_ids`` (B, T) are the book's inputs, ``targets`` (B, T) its shifted targets (right padding)."""
    gpt = base_model(model)
    targets = targets.to(input_ids.device)
    if not paths.padding_free:
        hidden = gpt.transformer(input_ids=input_ids, use_cache=False).last_hidden_state  # (B, T, d)
        keep = targets != IGNORE_INDEX
        return head_losses(gpt.lm_head, hidden[keep], targets[keep])
    B, T = targets.shape
    has_target = targets != IGNORE_INDEX
    # A row is needed up to its last target: earlier positions are context (a masked prompt), later
    # ones padding that no target sees (causal attention). At least one position per row.
    used = positions_up_to_last_target(targets).clamp(min=1)
    keep = torch.arange(T, device=targets.device)[None] < used[:, None]  # (B, T), row prefixes
    dropout = gpt.training and gpt.config.drop_rate > 0
    shared = shared_prefix_length(input_ids, targets, used) if paths.share_prefix and B > 1 and not dropout else 0
    hidden, unpadded = gpt.transformer.forward_unpadded(input_ids, None, None, keep, shared)  # (N, d)
    # The output layer once per computed target; every target of the batch then reads its loss.
    kept_targets = targets[:, :unpadded.length].flatten()[unpadded.index]  # (N,), packed order
    selected = kept_targets != IGNORE_INDEX
    losses = head_losses(gpt.lm_head, hidden[selected], kept_targets[selected])  # (U,)
    if shared:
        slot = torch.cumsum(selected.long(), 0) - 1  # packed token -> its loss (where selected)
        every_target = has_target[:, :unpadded.length].flatten().nonzero().squeeze(1)  # (M,) row-major
        losses = losses[slot[unpadded.gather[every_target]]]  # row 0's loss for the shared ones
    return losses


def batch_loss(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor, paths: LossPaths = LossPaths(),
               num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """The book's loss of one batch, by ``paths`` (or divided by ``num_items_in_batch``)."""
    targets = targets.to(input_ids.device)
    count = (targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    if paths.book:
        gpt = base_model(model)
        logits = gpt.lm_head(gpt.transformer(input_ids=input_ids, use_cache=False).last_hidden_state)
        return token_loss(logits, targets, count)
    return divide(per_target_losses(model, input_ids, targets, paths).sum(), count)


class TrainingLoss(nn.Module):
    """The model with :func:`batch_loss` as its forward: what Accelerate wraps for data parallelism,
    so that every loss path runs inside the wrapper's forward (DDP synchronises only those gradients)."""

    def __init__(self, model: nn.Module, paths: LossPaths) -> None:
        super().__init__()
        self.model = model
        self.paths = paths

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor,
                num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
        return batch_loss(self.model, input_ids, targets, self.paths, num_items_in_batch)


def batch_losses(model: nn.Module, batches: list[dict], paths: LossPaths = LossPaths()) -> list[torch.Tensor]:
    """The book's ``calc_loss_batch`` for each of ``batches`` (collator form), as 0-d float tensors.

    Padding-free, the batches run as **one** pass (rows stacked: rows never see each other and
    padding costs nothing), which keeps the matrix products large; each batch's mean is then taken
    from the per-target losses. Call under ``torch.no_grad()``."""
    if not (paths.padding_free and len(batches) > 1):
        return [batch_loss(model, b["input_ids"][:, :-1], b["labels"][:, 1:], paths).float() for b in batches]
    width = max(b["input_ids"].shape[1] for b in batches)
    inputs = torch.cat([F.pad(b["input_ids"], (0, width - b["input_ids"].shape[1]), value=END_OF_TEXT_ID)
                        for b in batches])
    labels = torch.cat([F.pad(b["labels"], (0, width - b["labels"].shape[1]), value=IGNORE_INDEX) for b in batches])
    per_target = per_target_losses(model, inputs[:, :-1], labels[:, 1:], paths)
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]  # row-major: batch by batch
    return [part.float().sum() / max(count, 1) for part, count in zip(per_target.split(counts), counts)]


__all__ = ["BOOK", "HEAD_CHUNK", "LossPaths", "TrainingLoss", "at_least_float32", "base_model", "batch_loss",
           "batch_losses", "divide", "head_losses", "per_target_losses", "positions_up_to_last_target",
           "shared_prefix_length", "token_loss"]
