"""Preference tuning with DPO as a training stage: its reference model and what the step gives the loss.

The reference is the model before tuning, in one of three forms: a frozen copy; with LoRA, the policy itself with
its adapters switched off (no second copy in memory); or, with ``--precompute-reference``, its log-probs of every
pair computed once before training (by the policy, which is still the reference then), after which no reference
model exists at all. The data, the step, the evaluation, the plot and the card's table are every preference
stage's (:mod:`.preference_stage`).
"""

from __future__ import annotations

import copy

import torch
from accelerate import Accelerator

from ..data.loaders import book_loader
from ..data.preference import PreferenceCollator
from .preference_config import DPOConfig
from .dpo_loss import PreferenceLoss
from .loop import compile_blocks, setup
from .loss import base_model
from .pair_loss import sequence_logprobs
from .preference_stage import PreferenceStage, resolve_prompt_style, reward_figures
from .state import say


def reference_kind(cfg: DPOConfig) -> str:
    if cfg.precompute_reference:
        return "precomputed"
    return "LoRA adapters disabled" if cfg.lora_rank else "frozen copy"


@torch.no_grad()
def precompute_reference(model, dataset, cfg: DPOConfig, device: torch.device, autocast) -> list[list[float]]:
    """``[chosen, rejected]`` log-probs of every pair of ``dataset`` by ``model`` (the reference)."""
    collate = PreferenceCollator(allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt)
    loader = book_loader(dataset, cfg.batch_size, collate, train=False, seed=cfg.seed)
    was_training = model.training
    model.eval()
    values = []
    with autocast():
        for batch in loader:
            logps = sequence_logprobs(model, batch["input_ids"][:, :-1].to(device), batch["labels"][:, 1:].to(device),
                                      cfg.logprob_reduction, cfg.loss_paths())
            chosen, rejected = logps.float().cpu().chunk(2)
            values += [[c, r] for c, r in zip(chosen.tolist(), rejected.tolist())]
    model.train(was_training)
    return values


class DPOStage(PreferenceStage):
    """DPO: ``-logsigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))`` against the model before tuning."""

    command = "dpo"
    config_type = DPOConfig
    title = "DPO"
    figure_labels, panels = reward_figures("DPO", "Rewards")

    def __init__(self, cfg: DPOConfig) -> None:
        super().__init__(cfg)
        self.reference: torch.nn.Module | None = None  # a frozen copy (None with LoRA or precomputed log-probs)

    def attach(self, model, accelerator: Accelerator, tokenized: dict) -> None:
        """The reference: a frozen copy of the model before any update, or its log-probs added to the data now
        (before a resumed state is loaded)."""
        cfg = self.cfg
        model.to(accelerator.device)
        if not cfg.lora_rank and not cfg.precompute_reference:
            self.reference = copy.deepcopy(base_model(model)).eval().requires_grad_(False)
            if cfg.compile:  # a copied compiled block still calls the block it was copied from: compile the copy's own
                compile_blocks(self.reference)
        if cfg.precompute_reference:
            for name in ("train", "validation"):
                say(accelerator, f"Computing the reference log-probs of the {len(tokenized[name])} {name} pairs")
                values = precompute_reference(model, tokenized[name], cfg, accelerator.device, accelerator.autocast)
                tokenized[name] = tokenized[name].add_column("ref_logps", values)

    def describe(self) -> str:
        cfg = self.cfg
        return f"DPO: beta {cfg.beta}, {cfg.logprob_reduction} log-probs, reference: {reference_kind(cfg)}"

    def loss_module(self, model):
        return PreferenceLoss(model, self.cfg.loss_paths(), self.cfg.beta, self.cfg.logprob_reduction)

    @torch.no_grad()
    def extra(self, run, batch: dict) -> torch.Tensor:
        """``(2B,)`` reference log-probs of a batch: precomputed, the frozen copy's, or the policy's with its LoRA
        adapters off (in eval mode, as the reference was when precomputed)."""
        if "ref_logps" in batch:
            return batch["ref_logps"]
        cfg = self.cfg
        inputs, targets = batch["input_ids"][:, :-1], batch["labels"][:, 1:]
        if self.reference is not None:
            with run.accelerator.autocast():  # the precision the policy runs in
                return sequence_logprobs(self.reference, inputs, targets, cfg.logprob_reduction, cfg.loss_paths())
        was_training = run.model.training
        run.model.eval()
        try:
            with run.model.disable_adapter(), run.accelerator.autocast():
                return sequence_logprobs(run.model, inputs, targets, cfg.logprob_reduction, cfg.loss_paths())
        finally:
            run.model.train(was_training)

    def settings(self) -> dict:
        cfg = self.cfg
        return {"beta": cfg.beta, "logprob_reduction": cfg.logprob_reduction, "reference": reference_kind(cfg)}

    def card_intro(self, entry: dict) -> str:
        return (f"Direct preference optimisation (beta {entry['beta']}, {entry['logprob_reduction']} token log-probs, "
                f"reference: {entry['reference']}) of the SFT model above, on {self.cfg.data}; each figure\n"
                "is a mean over pairs, before → after tuning (a reward is beta × the change of a response's\n"
                "log-probability from the reference; accuracy is the share of pairs whose chosen response gets the "
                "higher reward):")


def setup_dpo(cfg: DPOConfig, accelerator: Accelerator):
    """The DPO run of ``cfg`` (what ``train(cfg, setup_dpo)`` runs; ``train(cfg)`` picks the stage itself)."""
    return setup(cfg, accelerator, DPOStage)


__all__ = ["DPOStage", "precompute_reference", "reference_kind", "resolve_prompt_style", "setup_dpo"]
