"""LoRA through peft, as the book's appendix E defines it (every Linear layer by default)."""

from __future__ import annotations

import copy
import sys

import torch
from peft import LoraConfig, get_peft_model

from .config import TrainConfig


def lora_alpha(cfg: TrainConfig) -> float:
    """peft's ``lora_alpha``: default ``16 * rank``, which is the book's ``alpha=16`` (the book scales
    the adapter by alpha, peft by alpha / rank)."""
    return cfg.lora_alpha if cfg.lora_alpha is not None else 16.0 * cfg.lora_rank


def apply_lora(model, cfg: TrainConfig):
    """``model`` with LoRA adapters on ``cfg.lora_target_modules``; only the adapters train."""
    targets = list(cfg.lora_target_modules)
    # peft adapts the modules whose names end with a target and passes over a target that matches none: a typo
    # would silently leave those layers without adapters
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in linear]
    if unknown:
        raise ValueError(f"--lora-target-modules {','.join(unknown)}: no Linear layer of this model is called that; "
                         f"its Linear layers: {', '.join(sorted(linear))}")
    if model.config.tie_word_embeddings and "lm_head" in targets:
        # Merging an lm_head adapter into a head tied to wte would change the input embedding too.
        targets.remove("lm_head")
        print("LoRA: lm_head is tied to the token embedding, so it gets no adapter "
              "(use --no-tie-word-embeddings, the book's choice, to adapt it)", file=sys.stderr)
    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora_rank, lora_alpha=lora_alpha(cfg),
                      lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(model, lora)


def base_without_adapters(peft_model):
    """The model LoRA was applied to, as a plain model again, without touching ``peft_model``: each
    adapted layer's ``base_layer`` back in its place and no adapter weights. Its tensors are the peft
    model's own (frozen, so still the weights before training), shared rather than copied."""
    inner = peft_model.get_base_model()
    state = {key.replace(".base_layer.", "."): tensor for key, tensor in inner.state_dict().items()
             if "lora_" not in key}
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        base = type(inner)(copy.deepcopy(inner.config))
    base.load_state_dict(state, strict=True, assign=True)
    if base.config.tie_word_embeddings:
        base.tie_weights()
    return base.eval()
