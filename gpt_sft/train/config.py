"""The training command's options: one typed dataclass, whose fields are the flags and the YAML keys."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..common.options import option
from ..data.conversations import DATA_FORMATS
from ..data.constants import BOOK_DATA_URL, TRAIN_ON
from .loss_paths import LossPaths

# What `--export` (and `gpt-sft export --format`) can write.
EXPORT_FORMATS = ("hf-gpt2", "gguf", "ollama")
LORA_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "c_proj", "c_fc", "lm_head"]


@dataclass
class TrainConfig:
    """Instruction fine-tuning of GPT-2 (the book's chapter 7 recipe by default)."""

    # --- model
    model: str = option("gpt2-medium (355M)", "Preset name (124M, gpt2-medium, ...), Hub id, local HF GPT-2 folder, "
                    "OpenAI checkpoint folder, book .pth, our checkpoint folder, or 'scratch' for a fresh random model")
    model_format: str = option("hf", "Where a preset's weights come from: 'hf' (Hugging Face Hub) or 'openai' (OpenAI's "
                           "TensorFlow checkpoints, the book's route; needs gpt-sft[tf]); folders and files are "
                           "recognised by their contents", choices=["hf", "openai"])
    n_layers: int = option(12, "--model scratch: number of transformer blocks")
    emb_dim: int = option(768, "--model scratch: embedding width")
    n_heads: int = option(12, "--model scratch: attention heads")
    context_length: int = option(1024, "--model scratch: context length")
    drop_rate: float = option(0.0, "Dropout rate (the book uses 0.0 in chapter 7)")
    tie_word_embeddings: bool | None = option(None, "Tie the output head to the token embedding. Default: a gpt-sft "
                                          "checkpoint keeps its own choice; anything else is untied, as in the book")
    # --- data
    data: str = option(BOOK_DATA_URL, "Instruction data: URL, .json/.jsonl file or Hub data set name; Alpaca entries "
                       "(instruction/input/output) or conversations (messages, or ShareGPT conversations)")
    data_format: str = option("auto", "What --data holds: auto (what its first entry has), alpaca, messages "
                              "(role/content) or sharegpt (from/value, converted to messages)",
                              choices=list(DATA_FORMATS))
    train_on: str = option("assistant", "Conversations: what the loss covers: every assistant turn with its "
                           "end-of-text, only the last one, or all tokens (Alpaca data uses --mask-prompt)",
                           choices=list(TRAIN_ON))
    prompt_style: str = option("alpaca", "Prompt style: alpaca, phi3 or a registered one")
    mask_prompt: bool = option(False, "Exclude the prompt tokens from the loss (exercise 7.2)")
    allowed_max_length: int | None = option(None, "Longest training sequence in tokens; longer examples are truncated. "
                                        "Default: the model's context length (1024 for GPT-2, the book's value)")
    drop_overlong: bool = option(False, "Drop over-long examples instead of truncating them (counted either way)")
    train_fraction: float = option(0.85, "Fraction of the data for training (file order, like the book)")
    test_fraction: float = option(0.10, "Fraction for the test split; the rest is validation")
    shuffle_split: bool = option(False, "Shuffle (seeded) before splitting instead of keeping file order")
    skip_invalid: bool = option(False, "Skip invalid entries (counted and reported) instead of failing")
    # --- optimisation
    epochs: int = option(2, "Number of passes over the training split")
    max_steps: int = option(0, "Stop after this many optimizer steps (0: no limit)")
    batch_size: int = option(8, "Micro-batch size per process")
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step")
    learning_rate: float = option(5e-5, "AdamW learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay")
    lr_scheduler: str = option("constant", "Learning-rate schedule after warm-up", choices=["constant", "linear", "cosine"])
    warmup_steps: int = option(0, "Linear warm-up steps")
    max_grad_norm: float = option(0.0, "Clip the gradient norm to this value (0: no clipping, like the book)")
    seed: int = option(123, "Random seed (model init, data order, dropout)")
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory")
    # --- speed (the first three keep the book's loss and update, up to float round-off)
    targets_only_logits: bool = option(True, "Apply the output layer only at positions that have a target (the loss "
                                   "ignores the rest); --no-targets-only-logits computes logits everywhere, like the book")
    padding_free: bool = option(True, "Skip the padding after each example's last target in every layer (attention "
                            "stays per example; only with --targets-only-logits)")
    share_prompt_prefix: bool = option(True, "Compute the tokens that every example of a batch starts with (the prompt "
                                   "template's preamble) once per batch, not once per example: same losses and "
                                   "gradients (only with --padding-free; not with dropout)")
    fused_optimizer: bool = option(True, "Fused AdamW kernel (one pass over the parameters) instead of torch's default "
                               "multi-tensor AdamW that the book uses")
    mixed_precision: str | None = option(None, "Autocast to bf16 or fp16 through Accelerate (changes the numbers; a GPU "
                                     "win, slow on CPUs without bf16 instructions). Default: what `accelerate launch "
                                     "--mixed_precision` / accelerate config say, else no", choices=["no", "bf16", "fp16"])
    tf32: bool = option(False, "Allow TensorFloat-32 matmuls on NVIDIA GPUs (changes the numbers slightly)")
    cpu_threads: int = option(0, "Threads per process when training on the CPU (0: this machine's cores divided among "
                          "its processes; `accelerate launch` alone would pin every process to 1 thread)")
    compile: bool = option(False, "torch.compile each transformer block in place (regional compilation, dynamic "
                       "shapes); pays a compilation at the start")
    # --- evaluation and logging
    eval_every: int = option(5, "Evaluate train/val loss every N optimizer steps (step 0 included)")
    eval_batches: int = option(5, "Batches used for each train and val loss estimate")
    sample_every_epoch: bool = option(True, "Print a greedy 50-token sample for the first validation prompt per epoch")
    log_with: str | None = option(None, "Accelerate tracker, e.g. 'tensorboard' (written under the output dir)")
    # --- LoRA
    lora_rank: int = option(0, "LoRA rank (0: full fine-tuning)")
    lora_alpha: float | None = option(None, "peft lora_alpha; default 16 * rank, which equals the book's alpha=16 "
                                  "scaling (the book scales by alpha, peft by alpha / rank)")
    lora_dropout: float = option(0.0, "LoRA dropout")
    lora_target_modules: list[str] = option(LORA_ALL_LINEAR, "Modules that get LoRA adapters (default: every Linear)")
    merge_lora: bool = option(True, "Merge LoRA into the weights when saving (else save the adapter)")
    # --- output
    output_dir: str = option("outputs/gpt2-medium-sft", "Where the checkpoint folder and everything else goes")
    save_every: int = option(0, "Save a resumable training checkpoint every N optimizer steps (0: only on Ctrl-C)")
    keep_checkpoints: int = option(2, "How many periodic checkpoints to keep")
    resume_from_checkpoint: str | None = option(None, "A checkpoint folder, or 'latest' in <output-dir>/checkpoints")
    overwrite: bool = option(False, "Replace an earlier run in --output-dir: remove what it recorded as its own in "
                             "gpt-sft-run.json (checkpoint, responses, reports, exports, training checkpoints) and keep "
                             "every other file; a folder without that record is refused. Without it a non-empty "
                             "--output-dir is refused unless resuming")
    generate: bool = option(True, "Generate test-set responses at the end (--no-generate skips it)")
    max_new_tokens: int = option(256, "New tokens per test-set response")
    verify: bool = option(True, "End with gpt-sft verify's quick checks of the saved model (a few seconds; the table "
                          "goes into the model card and verification.json; a failure exits 1 and keeps the model); "
                          "--no-verify skips them")
    export: list[str] = option([], "Also export the final model: hf-gpt2 (stock GPT-2, no remote code), gguf, ollama; "
                               "each into <output-dir>/export/<format> (as gpt-sft export does)")
    push_to_hub: str | None = option(None, "Hub repo id to upload the final folder to (token from HF login/env)")
    hub_private: bool = option(False, "Create the Hub repo as private")

    def __post_init__(self):
        def flag(name: str) -> str:
            return "--" + name.replace("_", "-")

        unknown = [f for f in self.export if f not in EXPORT_FORMATS]
        if unknown:
            raise ValueError(f"--export {','.join(unknown)}: not an export format; choose from {', '.join(EXPORT_FORMATS)}")

        positive = ("epochs", "batch_size", "gradient_accumulation_steps", "n_layers",
                    "emb_dim", "n_heads", "context_length", "max_new_tokens", "eval_batches")
        for name in positive + (("allowed_max_length",) if self.allowed_max_length is not None else ()):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "save_every", "warmup_steps", "lora_rank", "eval_every", "cpu_threads",
                     "keep_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "drop_rate", "lora_dropout",
                     "train_fraction", "test_fraction") + (("lora_alpha",) if self.lora_alpha is not None else ()):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{flag(name)} must be a finite number, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning-rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ValueError(f"--max-grad-norm must be >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        for name in ("drop_rate", "lora_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora-alpha must be positive, got {self.lora_alpha}")
        if not 0.0 < self.train_fraction <= 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"--train-fraction must be in (0, 1] and --test-fraction in [0, 1), got "
                             f"{self.train_fraction} and {self.test_fraction}")
        if self.train_fraction + self.test_fraction > 1.0 + 1e-9:
            raise ValueError(f"--train-fraction {self.train_fraction} and --test-fraction {self.test_fraction} add up "
                             "to more than 1")
        if self.model == "scratch" and self.emb_dim % self.n_heads:
            raise ValueError(f"--emb-dim {self.emb_dim} is not divisible by --n-heads {self.n_heads}: every head "
                             f"gets emb_dim / n_heads dimensions (e.g. --n-heads {math.gcd(self.emb_dim, self.n_heads)})")
        if self.model == "scratch" and self.allowed_max_length is not None and self.allowed_max_length > self.context_length:
            raise ValueError(too_long_message(self.allowed_max_length, self.context_length))

    def loss_paths(self) -> LossPaths:
        """The exact loss shortcuts these switches select. Each builds on the one before: padding-free
        needs targets-only logits, a shared prefix padding-free."""
        padding_free = self.padding_free and self.targets_only_logits
        # LoRA dropout would otherwise be shared by the rows of a shared prefix
        share = self.share_prompt_prefix and padding_free and not (self.lora_rank and self.lora_dropout > 0)
        return LossPaths(targets_only=self.targets_only_logits, padding_free=padding_free, share_prefix=share)


def too_long_message(allowed_max_length: int, context_length: int) -> str:
    return (f"--allowed-max-length {allowed_max_length} is longer than the model's context of {context_length} tokens: "
            f"pass --allowed-max-length {context_length} or less (or leave it out: it defaults to the context length)")


