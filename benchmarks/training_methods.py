"""The methods the training benchmark (``training.py``) compares: what each one computes, and its model, built from
the one set of random initial weights that every method starts from."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from common import gpt_config
from gpt_sft import GPTForCausalLM
from gpt_sft.export.hf_gpt2 import to_hf_gpt2_model
from gpt_sft.train.config import TrainConfig
from gpt_sft.train.loss import BOOK, LossPaths, batch_loss, positions_up_to_last_target

TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 1025}
# Dense peak TFLOP/s by (device name fragment, precision); MFU uses the precision the method computes in.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM; the PCIe card is ~25% lower
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
}


@dataclasses.dataclass(frozen=True)
class Method:
    """One way of running the training step; ``impl`` "ours" (GPTForCausalLM), "hf" (GPT2LMHeadModel in a
    plain loop) or "trl" (GPT2LMHeadModel in TRL's SFTTrainer, ``trl_sft.py``)."""

    name: str
    impl: str = "ours"
    paths: LossPaths = BOOK
    fused: bool = False
    autocast: str | None = None  # "bf16"
    compile: bool = False
    tf32: bool = False

    @property
    def exact(self) -> bool:
        """Whether it must reproduce the book's loss (float round-off only)."""
        return self.impl == "ours" and self.autocast is None and not self.tf32

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast else ("tf32" if self.tf32 else "fp32")


def method_table() -> dict[str, Method]:
    default = TrainConfig()
    ours = Method("gpt-sft (trainer defaults)", paths=default.loss_paths(), fused=default.fused_optimizer)
    trl = Method("TRL SFTTrainer (padding-free)", impl="trl", fused=True)
    return {
        "book": Method("book mode (ours, switches off)"),
        "gpt-sft": ours,
        "hf": Method("transformers GPT2LMHeadModel", impl="hf"),
        "trl": trl,
        "targets-only": Method("book + targets-only logits", paths=LossPaths(padding_free=False, share_prefix=False)),
        "padding-free": Method("book + targets-only + padding-free", paths=LossPaths(share_prefix=False)),
        "shared-prefix": Method("book + targets-only + padding-free + prefix", paths=LossPaths()),
        "fused": Method("book + fused AdamW", fused=True),
        "bf16": dataclasses.replace(ours, name="gpt-sft + bf16 autocast", autocast="bf16"),
        "trl-bf16": dataclasses.replace(trl, name="TRL SFTTrainer + bf16 (its default)", autocast="bf16"),
        "compile": dataclasses.replace(ours, name="gpt-sft + torch.compile", compile=True),
        "tf32": dataclasses.replace(ours, name="gpt-sft + TF32", tf32=True),
    }


DEFAULT_METHODS = ["book", "gpt-sft", "hf"]
ABLATION = ["targets-only", "padding-free", "shared-prefix", "fused"]
PEERS = ["book", "gpt-sft", "hf", "trl"]


def our_config(size: str):
    return gpt_config(size, TINY)


def initial_weights(size: str, seed: int) -> dict[str, torch.Tensor]:
    """The random initial weights of every method (ours; transformers' GPT-2 gets them renamed), made once."""
    torch.manual_seed(seed)
    return GPTForCausalLM(our_config(size)).state_dict()


def build(method: Method, size: str, initial: dict[str, torch.Tensor], device: torch.device, hf_tied: bool):
    """``method``'s model with a copy of ``initial``, in training mode on ``device`` (compiled later, if at all)."""
    config = our_config(size)
    with torch.device("meta"):  # no random initialisation: the weights are loaded
        model = GPTForCausalLM(config)
    model.to_empty(device="cpu")
    model.load_state_dict(initial)
    if method.impl != "ours":  # stock transformers GPT-2, SDPA attention, untied head like the book
        model = to_hf_gpt2_model(model)
        if hf_tied:  # HF's default: the output head is the token embedding (no longer the same weights)
            model.config.tie_word_embeddings = True
            model.lm_head.weight = model.transformer.wte.weight
    return model.to(device).train(), config


def loss_fn(method: Method):
    """``(model, batch) -> loss``; ``batch`` is the collator's HF form on the device."""
    if method.impl != "ours":
        return lambda model, batch: model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    if method.paths.book:  # the book's calc_loss_batch
        def step(model, batch):
            logits = model(input_ids=batch["input_ids"][:, :-1]).logits
            return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten())
        return step
    return lambda model, batch: batch_loss(model, batch["input_ids"][:, :-1], batch["labels"][:, 1:], method.paths)


def useful_flops(batch: dict, config) -> float:
    """Model FLOPs of a training step (forward + backward = 3 x forward) on the real tokens of ``batch``.

    Per row, the tokens up to its last target (padding after it is not useful work, a masked prompt
    is): 6 x (12 L d^2 + d V) per token for the matmuls, plus causal attention 6 L d n^2 per row."""
    used = positions_up_to_last_target(batch["labels"][:, 1:]).double()
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    return float(6 * (12 * L * d * d + d * V) * used.sum() + 6 * L * d * (used ** 2).sum())


def peak_tflops(device: torch.device, precision: str, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[precision]
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
