"""TRL's ``SFTTrainer`` on the book's recipe, as a method of the training benchmark (``training.py --methods trl``).

The same recipe as the other methods: the same random initial weights (transformers' ``GPT2LMHeadModel``, converted
from ours), the same training entries in the same order (``train_sampling_strategy="sequential"`` over the
benchmark's seeded epoch order), batch 8, the same number of optimizer steps (``max_steps``), the book's AdamW over
every parameter (lr 5e-5, weight decay 0.1, constant rate, no warm-up, no gradient clipping: Trainer's defaults
would decay the rate linearly, clip at norm 1 and exempt biases and norms from decay), and the book's evaluation
cadence (after steps 1, 6, 11, ... the loss of the first ``--eval-batches`` train and validation batches, through
``SFTTrainer.evaluate`` on two evaluation sets).

The data is TRL's own path: a language-modeling data set of the Alpaca-formatted texts (``format_text``), which
``SFTTrainer`` tokenizes with the GPT-2 tokenizer, ends with ``<|endoftext|>`` and scores on every token -- the
book's targets: the next tokens, the first end-of-text included, padding excluded. With ``--mask-prompt`` it is a
prompt-completion data set with ``completion_only_loss`` (exercise 7.2's masking). The benchmark's parity line
checks that TRL scores the same targets as the others (their count and id sum) with the same initial loss.

TRL's fastest documented settings that keep those semantics (TRL 1.16, ``SFTConfig``):

* ``padding_free=True``: each batch is one flattened row without padding; transformers finds the examples'
  boundaries in ``position_ids`` and keeps them apart in attention. TRL documents it with FlashAttention;
  no FlashAttention package runs on the benchmark's machines (the GPU machine cannot fetch Hub kernels), so it
  runs on SDPA with a block-diagonal mask -- the parity line shows the loss is unchanged.
  ``max_length=None``, as TRL requires without packing: the benchmark stops if an entry is longer than
  ``--allowed-max-length`` (the others would truncate it).
* not ``packing``, TRL's other documented speed-up: it fills each row with several examples, so a step
  would hold more than 8 examples and an epoch fewer steps -- not the same recipe.
* ``gradient_checkpointing=False`` (SFTConfig's default is on: it saves memory and costs a second forward pass).
* fused AdamW (``adamw_torch_fused``'s kernel, here passed as the book's optimizer), and TRL's own loss: the
  output layer and the log-probabilities computed in chunks, without the full logits.
* ``trl-bf16``: bf16 mixed precision, SFTConfig's default (fp32 weights, bf16 autocast); ``trl`` is fp32 like
  book mode. Not used: Liger and Hub kernels (deprecated or unreachable offline), ``torch_compile``.

Timing: an optimizer step is the time from one ``on_step_begin`` to the next, less the evaluations in between:
it includes what TRL does per step besides the update (fetching and collating the next batch, moving it to the
device, logging the loss every step as the book's loop does); the other methods' batches are collated before
the timer starts (``collate_seconds_per_batch`` says how much that is). Building the trainer (its data
preparation included) is reported apart as ``setup_seconds``.
"""

from __future__ import annotations

import tempfile
import time

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from common import MemoryMeter, trim_heap
from gpt_sft.data.prompts import format_text
from gpt_sft.model.tokenizer import get_hf_tokenizer
from training_data import BenchData, validation_loss
from training_methods import Method, build, sync


class BookCadenceTrainer(SFTTrainer):
    """``SFTTrainer`` whose evaluations during training cover the book's batches ("train" and "validation" of
    ``eval_dataset``, not the whole validation split it also holds) and are timed."""

    cadence = ("train", "validation")

    def __init__(self, *args, device: torch.device, **kwargs):
        super().__init__(*args, **kwargs)
        self.timing_device = device
        self.evaluations: dict[int, tuple[float, float]] = {}  # global step -> (wall, cpu) seconds

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        if eval_dataset is not None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        sync(self.timing_device)
        start, cpu_start = time.perf_counter(), time.process_time()
        metrics = {}
        for name in self.cadence:
            metrics.update(super().evaluate(name, ignore_keys, f"{metric_key_prefix}_{name}"))
        sync(self.timing_device)
        self.evaluations[self.state.global_step] = (time.perf_counter() - start, time.process_time() - cpu_start)
        return metrics


class StepTimer(TrainerCallback):
    """Wall and CPU time from each step's start to the next one's (or the end); evaluation on the book's cadence."""

    def __init__(self, device: torch.device, eval_every: int):
        self.device, self.eval_every = device, eval_every
        self.begin = None
        self.iterations: list[tuple[float, float]] = []  # (wall, cpu) seconds

    def lap(self) -> None:
        sync(self.device)
        now = (time.perf_counter(), time.process_time())
        if self.begin is not None:
            self.iterations.append((now[0] - self.begin[0], now[1] - self.begin[1]))
        self.begin = now

    def on_step_begin(self, args, state, control, **kwargs):
        self.lap()

    def on_step_end(self, args, state, control, **kwargs):
        control.should_evaluate = (state.global_step - 1) % self.eval_every == 0  # the book's global_step % freq

    def on_train_end(self, args, state, control, **kwargs):
        self.lap()


def text_rows(entries: list[dict], mask_prompt: bool) -> list[dict]:
    """TRL's data set rows: the Alpaca text (language modeling), or prompt and completion (prompt masked)."""
    rows = []
    for entry in entries:
        prompt, full = format_text(entry, "alpaca")
        rows.append({"prompt": prompt, "completion": full[len(prompt):]} if mask_prompt else {"text": full})
    return rows


def run_trl(method: Method, args, data: BenchData, device: torch.device, initial: dict) -> dict:
    """Train with ``SFTTrainer`` on ``data``'s entries; the same raw measurements as ``training.run_method``."""
    tokenizer = get_hf_tokenizer()
    too_long = [i for i, e in enumerate(data.train_entries + data.validation_entries)
                if len(tokenizer(format_text(e, "alpaca")[1])["input_ids"]) + 1 > args.allowed_max_length]
    if too_long:
        raise SystemExit(f"trl: {len(too_long)} entries are longer than --allowed-max-length "
                         f"{args.allowed_max_length} tokens; padding-free TRL would not truncate them as the others do")
    trim_heap()
    memory = MemoryMeter(device)
    memory.start()
    model, _ = build(method, args.model_size, initial, device, hf_tied=False)  # the others' weights, always
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1, fused=True)
    bs, n_eval = args.batch_size, args.eval_batches * args.batch_size
    eval_sets = {"train": data.train_entries[:n_eval], "validation": data.validation_entries[:n_eval]}
    if args.validation_loss:
        eval_sets["validation split"] = data.validation_entries
    timer = StepTimer(device, args.eval_every)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as output_dir:
        config = SFTConfig(
            output_dir=output_dir, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
            logging_strategy="steps", logging_steps=1, use_cpu=device.type == "cpu", seed=args.seed,
            per_device_train_batch_size=bs, per_device_eval_batch_size=bs, max_steps=len(data.train),
            train_sampling_strategy="sequential",  # the benchmark's batches: whole ones, in its order
            learning_rate=5e-5, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
            padding_free=True, max_length=None, packing=False, completion_only_loss=True if args.mask_prompt else None,
            gradient_checkpointing=False, bf16=method.autocast == "bf16", fp16=False)
        start = time.perf_counter()
        trainer = BookCadenceTrainer(
            model=model, args=config, processing_class=tokenizer, optimizers=(optimizer, None), callbacks=[timer],
            train_dataset=Dataset.from_list(text_rows(data.train_entries, args.mask_prompt)),
            eval_dataset={k: Dataset.from_list(text_rows(v, args.mask_prompt)) for k, v in eval_sets.items()},
            device=device)
        trainer.remove_callback(PrinterCallback)  # the logs stay in trainer.state.log_history, not on stdout
        setup_seconds = time.perf_counter() - start

        def split_loss() -> dict | None:
            """The validation loss through TRL's own data and loss (its collated batches, its ``compute_loss``)."""
            if not args.validation_loss:
                return None
            trainer.model.eval()
            batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
                       for b in trainer.get_eval_dataloader("validation split")]
            result = validation_loss(batches, lambda b: trainer.compute_loss(trainer.model, b))
            trainer.model.train()
            return result

        at_init = split_loss()
        collate_start = time.perf_counter()
        for i in range(len(data.train)):  # TRL's collation of the same batches, for comparison with ours
            trainer.data_collator([trainer.train_dataset[j] for j in range(i * bs, (i + 1) * bs)])
        collate_seconds = (time.perf_counter() - collate_start) / len(data.train)

        start = time.perf_counter()
        trainer.train()
        sync(device)
        measured = time.perf_counter() - start
        if trainer.state.global_step != len(data.train):
            raise SystemExit(f"trl: {trainer.state.global_step} optimizer steps, not {len(data.train)}")
        history = trainer.state.log_history
        losses = [h["loss"] for h in history if "loss" in h]
        eval_losses = list(zip((h["eval_train_loss"] for h in history if "eval_train_loss" in h),
                               (h["eval_validation_loss"] for h in history if "eval_validation_loss" in h)))
        evaluations = dict(trainer.evaluations)  # those during training
        eval_times = [wall for step, (wall, _) in evaluations.items() if step > args.warmup or step == len(data.train)]
        if not eval_times:  # no evaluation fell into the timed steps
            trainer.evaluate()
            eval_times.append(trainer.evaluations[trainer.state.global_step][0])
        final = split_loss()
    peak = memory.stop()

    no_evaluation = (0.0, 0.0)
    iterations = [(wall - evaluations.get(step, no_evaluation)[0], cpu - evaluations.get(step, no_evaluation)[1])
                  for step, (wall, cpu) in enumerate(timer.iterations, start=1)]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "step_seconds": [wall for wall, _ in iterations[args.warmup:]],
        "cpu_step_seconds": [cpu for _, cpu in iterations[args.warmup:]],
        "evaluation_seconds": eval_times, "measured_seconds": measured, "peak_bytes": peak, "compile_seconds": None,
        "losses": losses, "eval_losses": eval_losses, "first_batch_loss_at_init": None,
        "validation_at_init": at_init, "validation_final": final, "optimizer_steps": trainer.state.global_step,
        "setup_seconds": setup_seconds, "collate_seconds_per_batch": collate_seconds,
    }
