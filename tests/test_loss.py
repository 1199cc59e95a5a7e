"""The training loss (gpt_sft.train.loss): every shortcut gives the book's loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.data.collator import IGNORE_INDEX
from gpt_sft.train.loop import enable_activation_checkpointing
from gpt_sft.train import loss as L
from gpt_sft.train.loss import BOOK, LossPaths, batch_loss, per_target_losses

TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
TARGETS_ONLY = LossPaths(targets_only=True, padding_free=False, share_prefix=False)
PADDING_FREE = LossPaths(targets_only=True, padding_free=True, share_prefix=False)
SHARED = LossPaths(targets_only=True, padding_free=True, share_prefix=True)


def tiny_model(seed: int = 0, **overrides) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(GPTConfig(**{**TINY, **overrides})).eval()


def book_loss(model, inputs, targets):
    """The book's calc_loss_batch: cross_entropy(logits.flatten(0, 1), targets.flatten())."""
    return F.cross_entropy(model(inputs).logits.flatten(0, 1), targets.flatten())


def test_every_path_is_the_book_loss_and_the_accumulation_form():
    model = tiny_model()
    x = torch.randint(0, 50257, (3, 12))
    targets = x[:, 1:].clone()
    targets[0, 6:] = IGNORE_INDEX
    targets[2, :3] = IGNORE_INDEX
    n = int((targets != IGNORE_INDEX).sum())
    with torch.no_grad():
        book = book_loss(model, x[:, :-1], targets)
        for paths in (BOOK, TARGETS_ONLY, PADDING_FREE, SHARED):
            assert torch.allclose(batch_loss(model, x[:, :-1], targets, paths), book, atol=1e-6), paths
            half = batch_loss(model, x[:, :-1], targets, paths, num_items_in_batch=2 * n)
            assert torch.allclose(half, book / 2, atol=1e-6), paths
        empty = torch.full_like(targets, IGNORE_INDEX)
        assert batch_loss(model, x[:, :-1], empty, BOOK).item() == 0.0, "no targets: 0, not NaN"


def test_targets_only_gradients_equal_full_logits():
    x = torch.randint(0, 50257, (2, 10))
    targets = x[:, 1:].clone()
    targets[0, :4] = IGNORE_INDEX
    grads = []
    for paths in (BOOK, TARGETS_ONLY):
        model = tiny_model(seed=2).train()
        batch_loss(model, x[:, :-1], targets, paths).backward()
        grads.append(torch.cat([model.lm_head.weight.grad.flatten(), model.transformer.wte.weight.grad.flatten()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def right_padded_batch(seed: int = 0):
    """Book-style (inputs, targets): rows of different lengths, padded with 50256 on the right and
    -100 after each row's end-of-text target; row 1 has a masked prompt, row 3 no target at all."""
    g = torch.Generator().manual_seed(seed)
    lengths, T = [9, 4, 12, 6], 12
    inputs = torch.full((len(lengths), T), 50256)
    targets = torch.full((len(lengths), T), IGNORE_INDEX)
    for row, n in enumerate(lengths):
        tokens = torch.randint(0, 50256, (n,), generator=g)
        inputs[row, :n] = tokens
        targets[row, : n - 1], targets[row, n - 1] = tokens[1:], 50256
    targets[1, :2] = IGNORE_INDEX  # masked prompt: positions 0-1 are context only
    targets[3] = IGNORE_INDEX  # nothing to learn in this row
    return inputs, targets


def losses_and_grads(model, inputs, targets, paths, **kwargs):
    loss = batch_loss(model, inputs, targets, paths, **kwargs)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("extra", [{}, {"gradient_checkpointing": True}, {"num_items_in_batch": 50}])
def test_padding_free_equals_the_padded_loss_and_gradients(extra):
    inputs, targets = right_padded_batch()
    kwargs = {k: v for k, v in extra.items() if k != "gradient_checkpointing"}
    results = []
    for paths in (BOOK, PADDING_FREE):
        model = tiny_model(seed=3).train()
        if extra.get("gradient_checkpointing"):
            enable_activation_checkpointing(model)
        results.append(losses_and_grads(model, inputs, targets, paths, **kwargs))
    (padded, g_padded), (free, g_free) = results
    assert torch.allclose(padded, free, atol=1e-6), (padded, free)
    worst = max((g_padded[n] - g_free[n]).abs().max().item() for n in g_padded)
    assert worst < 1e-6, worst


def test_padding_free_keeps_examples_isolated():
    """A row's loss does not depend on the other rows: the batch loss is the target-weighted mean of
    the rows' losses computed one at a time."""
    inputs, targets = right_padded_batch(seed=1)
    model = tiny_model(seed=4)
    with torch.no_grad():
        batch = batch_loss(model, inputs, targets, PADDING_FREE)
        sums, count = 0.0, 0
        for row in range(3):  # row 3 has no target
            n = int((targets[row] != IGNORE_INDEX).sum())
            sums += batch_loss(model, inputs[row : row + 1], targets[row : row + 1], PADDING_FREE) * n
            count += n
    assert torch.allclose(batch, sums / count, atol=1e-6)


def test_padding_free_with_dropout_and_lora_trains():
    from peft import LoraConfig, get_peft_model

    inputs, targets = right_padded_batch(seed=2)
    model = get_peft_model(tiny_model(seed=5, drop_rate=0.1).train(),
                           LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "c_fc"]))
    loss = batch_loss(model, inputs, targets, SHARED)
    loss.backward()
    assert torch.isfinite(loss)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]  # lora_A gets 0 while B is still 0
    assert len(lora_b) == 2 * model.config.n_layer and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


def test_per_target_losses_in_row_major_order(monkeypatch):
    inputs, targets = right_padded_batch(seed=5)
    model = tiny_model(seed=6)
    monkeypatch.setattr(L, "HEAD_CHUNK", 7)  # several output-layer chunks
    with torch.no_grad():
        logits = model(inputs).logits
        expected = F.cross_entropy(logits[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX], reduction="none")
        for paths in (TARGETS_ONLY, PADDING_FREE, SHARED):
            per_target = per_target_losses(model, inputs, targets, paths)
            assert per_target.shape == expected.shape and torch.allclose(per_target, expected, atol=1e-5), paths


def shared_preamble_batch(seed: int = 0, mask_rows: tuple[int, ...] = ()):
    """Like :func:`right_padded_batch`, but every row starts with the same 10-token preamble (a prompt
    template); ``mask_rows`` get their first 6 targets masked (a masked prompt)."""
    g = torch.Generator().manual_seed(seed)
    preamble = torch.randint(0, 50256, (10,), generator=g)
    lengths, T = [17, 12, 21, 14], 21
    inputs = torch.full((len(lengths), T), 50256)
    targets = torch.full((len(lengths), T), IGNORE_INDEX)
    for row, n in enumerate(lengths):
        tokens = torch.cat([preamble, torch.randint(0, 50256, (n - 10,), generator=g)])
        inputs[row, :n] = tokens
        targets[row, : n - 1], targets[row, n - 1] = tokens[1:], 50256
    for row in mask_rows:
        targets[row, :6] = IGNORE_INDEX
    return inputs, targets


@pytest.mark.parametrize("mask_rows", [(), (0, 1, 2, 3), (2,)])
def test_shared_prefix_equals_the_padded_loss_and_gradients(mask_rows):
    inputs, targets = shared_preamble_batch(mask_rows=mask_rows)
    results = [losses_and_grads(tiny_model(seed=7).train(), inputs, targets, paths) for paths in (BOOK, SHARED)]
    (padded, g_padded), (shared, g_shared) = results
    assert torch.allclose(padded, shared, atol=1e-6), (padded, shared)
    worst = max((g_padded[n] - g_shared[n]).abs().max().item() for n in g_padded)
    assert worst < 1e-6, worst
    model = tiny_model(seed=7)
    with torch.no_grad():  # per-target losses too, in the batch's row-major order
        logits = model(inputs).logits
        expected = F.cross_entropy(logits[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX], reduction="none")
        assert torch.allclose(per_target_losses(model, inputs, targets, SHARED), expected, atol=1e-5)


def test_shared_prefix_computes_the_preamble_once():
    """9 positions are shared (the 10 preamble tokens, minus the last, whose target differs per row);
    with a row masking its start, sharing stops where the targets stop agreeing; with dropout while
    training, nothing is shared."""

    def computed_tokens(model, inputs, targets):
        seen = {}
        hook = model.transformer.ln_f.register_forward_hook(lambda m, a, out: seen.update(n=out.shape[0]))
        per_target_losses(model, inputs, targets, SHARED)
        hook.remove()
        return seen["n"]

    inputs, targets = shared_preamble_batch()
    real = int(sum(int((row != IGNORE_INDEX).nonzero().max()) + 1 for row in targets))  # 17 + 12 + 21 + 14
    model = tiny_model(seed=8)
    with torch.no_grad():
        assert real == 64
        assert computed_tokens(model, inputs, targets) == real - 3 * 9
        masked_inputs, masked_targets = shared_preamble_batch(mask_rows=(2,))
        assert computed_tokens(model, masked_inputs, masked_targets) == real  # disagree at 0
        dropout = tiny_model(seed=8, drop_rate=0.1).train()
        assert computed_tokens(dropout, inputs, targets) == real


def test_the_training_wrapper_is_the_loss_and_holds_the_model():
    inputs, targets = right_padded_batch(seed=9)
    model = tiny_model(seed=10)
    wrapper = L.TrainingLoss(model, SHARED)
    assert {n for n, _ in wrapper.named_parameters()} == {f"model.{n}" for n, _ in model.named_parameters()}
    with torch.no_grad():
        assert torch.equal(wrapper(inputs, targets), batch_loss(model, inputs, targets, SHARED))
