"""The data of the training benchmark (``training.py``): the book's 85/10/5 split, the seeded batch order of
each epoch, the validation split's batches, the validation loss and its parity fingerprint, and Exercise 7.3's
size (the book's entries repeated).

Every method of the benchmark trains on these batches, in this order; TRL's ``SFTTrainer``, which formats,
tokenizes and collates by itself, gets the same entries in the same order (``train_entries``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import datasets
import torch

from gpt_sft.data.collator import InstructionDataCollator
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.prompts import format_text
from gpt_sft.data.split import split_dataset
from gpt_sft.data.tokenize import tokenize_dataset
from gpt_sft.model.tokenizer import get_tokenizer

# Exercise 7.3 of the book: instruction fine-tuning on Alpaca's 52,002 entries, batch 4, max length 512. Its size is
# built from the book's own 1,100 entries repeated 48 times (52,800): the book's length distribution, nothing invented.
EXERCISE_7_3 = {"repeat": 48, "batch_size": 4, "allowed_max_length": 512}
EXERCISE_7_3_REFERENCE = "the book, Exercise 7.3 (Alpaca 52k, batch 4, max length 512): 196 min on one GPU"


@dataclasses.dataclass
class BenchData:
    train: list[dict]  # the run's batches, in order (epoch after epoch with --epochs)
    val: list[dict]  # the first validation batches (the book evaluates the same ones every time)
    validation: list[dict]  # every batch of the validation split (the validation loss); [] when not asked for
    train_entries: list[dict]  # the raw entries of ``train``, in the same order
    validation_entries: list[dict]  # the raw entries of the validation split, in order
    train_split: int  # entries in the train split
    train_batches_per_epoch: int
    entries: int  # entries before the split (the book's, times --repeat)
    collate_seconds_per_batch: float  # InstructionDataCollator's time per training batch (not in the step times)
    report: dict | None  # data preparation timings (part (b)); None where not measured


def prepare_data(entries: list[dict], n_batches: int | None, args) -> BenchData:
    """The train batches of ``n_batches`` steps (``None``: ``args.epochs`` whole epochs; a new seeded order each
    epoch), the first val batches, and --
    with ``args.validation_loss`` -- all validation batches; part (b) timed when ``args.time_preparation``.

    ``args.repeat`` > 1 repeats the entries before the split (Exercise 7.3's size); a repeated entry tokenizes
    as its original did, so the original entries are tokenized once and their rows reused."""
    datasets.disable_progress_bars()
    tokenizer = get_tokenizer()
    base = load_instruction_data(entries, progress=False)
    data = load_instruction_data(entries * args.repeat, progress=False) if args.repeat > 1 else base
    splits = split_dataset(data)
    n_train, n_test = len(splits["train"]), len(splits["test"])
    train_rows = [i % len(base) for i in range(n_train)]
    val_rows = [i % len(base) for i in range(n_train + n_test, len(data))]
    if (splits["train"][-1] != base[train_rows[-1]] or splits["validation"][0] != base[val_rows[0]]
            or len(val_rows) != len(splits["validation"])):
        raise SystemExit("split_dataset no longer splits in file order (train, test, validation): update prepare_data")

    report = time_preparation(splits["train"], tokenizer, args) if args.time_preparation else None
    tokenized = tokenize_dataset(base, tokenizer, "alpaca", allowed_max_length=args.allowed_max_length,
                                 keep_columns=False).with_format(columns=["input_ids", "prompt_length"])
    collate = InstructionDataCollator(allowed_max_length=args.allowed_max_length, mask_prompt=args.mask_prompt)
    bs = args.batch_size
    per_epoch = n_train // bs  # drop_last, like the book's train loader
    n_batches = per_epoch * args.epochs if n_batches is None else n_batches
    if n_batches > per_epoch * args.epochs:
        raise SystemExit(f"need {n_batches} batches of {bs} but {args.epochs} epoch(s) have {per_epoch * args.epochs}")
    generator = torch.Generator().manual_seed(args.seed)
    order = []
    while len(order) < n_batches * bs:  # the book's shuffled loader, one permutation per epoch
        order += torch.randperm(n_train, generator=generator).tolist()[: per_epoch * bs]
    order = order[: n_batches * bs]
    batches, start = [], time.perf_counter()
    for i in range(n_batches):
        batches.append(collate([tokenized[train_rows[j]] for j in order[i * bs:(i + 1) * bs]]))
    collate_seconds = (time.perf_counter() - start) / max(1, n_batches)

    def val_batches(count: int) -> list[dict]:
        return [collate([tokenized[val_rows[j]] for j in range(i * bs, min((i + 1) * bs, len(val_rows)))])
                for i in range(count)]

    n_val = math.ceil(len(val_rows) / bs)
    return BenchData(
        train=batches, val=val_batches(min(args.eval_batches, n_val)),
        validation=val_batches(n_val) if args.validation_loss else [],
        train_entries=[base[train_rows[j]] for j in order], validation_entries=[base[r] for r in val_rows],
        train_split=n_train, train_batches_per_epoch=per_epoch, entries=len(data), collate_seconds_per_batch=collate_seconds,
        report=report)


def time_preparation(train: datasets.Dataset, tokenizer, args) -> dict:
    """Part (b): entries/s of :func:`tokenize_dataset` against the book's one-``encode``-per-entry loop."""

    def book_loop():
        for entry in train.to_list():
            prompt, full = format_text(entry, "alpaca")
            tokenizer.encode(full)
            len(tokenizer.encode(prompt))

    def ours():
        tokenize_dataset(train, tokenizer, "alpaca", allowed_max_length=args.allowed_max_length, keep_columns=False)

    timings = {}
    for name, run in (("tokenize_dataset", ours), ("book loop", book_loop)):
        best = float("inf")
        for _ in range(max(1, args.data_repeats)):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        timings[name] = {"seconds": best, "entries_per_s": len(train) / best}
    return {"entries": len(train), **timings,
            "speedup_vs_book_loop": timings["book loop"]["seconds"] / timings["tokenize_dataset"]["seconds"]}


def targets_of(batch: dict) -> torch.Tensor:
    """The target ids of an HF-form batch (``labels`` aligned with ``input_ids``; the model shifts them)."""
    labels = batch["labels"][..., 1:]
    return labels[labels != -100]


def validation_loss(batches, batch_loss: Callable[[dict], torch.Tensor]) -> dict:
    """The loss of ``batches`` as the book's ``calc_loss_loader`` reduces it (the mean of the batches' mean
    losses), with the parity fingerprint of what was scored: the number of targets and the sum of their ids.
    Two pipelines that format, tokenize and mask alike score the same targets: equal counts and sums."""
    losses, targets, checksum = [], 0, 0
    with torch.no_grad():
        for batch in batches:
            ids = targets_of(batch)
            targets += ids.numel()
            checksum += int(ids.sum())
            losses.append(float(batch_loss(batch)))
    return {"loss": sum(losses) / len(losses), "batches": len(losses), "targets": targets, "target_id_sum": checksum}


def parity(scored: dict[str, dict], names: dict[str, str], tolerance: float) -> dict | None:
    """The parity line: every method (``scored``: its :func:`validation_loss` of the initial weights, in fp32)
    scored the same validation targets with the same loss -- the same data, prompt format and masking. Printed,
    and checked against the first method within ``tolerance``."""
    if not scored:
        return None
    reference = next(iter(scored.values()))
    fingerprint = (reference["targets"], reference["target_id_sum"])
    same_targets = all((v["targets"], v["target_id_sum"]) == fingerprint for v in scored.values())
    max_diff = max(abs(v["loss"] - reference["loss"]) for v in scored.values())
    result = {"reference": next(iter(scored)), "targets": fingerprint[0], "target_id_sum": fingerprint[1],
              "losses": {k: v["loss"] for k, v in scored.items()}, "same_targets": same_targets,
              "max_abs_diff": max_diff, "passed": same_targets and max_diff <= tolerance}
    scores = [f"{names[k]} {v['loss']:.6f}" + ("" if (v["targets"], v["target_id_sum"]) == fingerprint else
                                               f" [{v['targets']} targets, id sum {v['target_id_sum']}]")
              for k, v in scored.items()]
    print(f"parity (initial weights, fp32, the whole validation split: {reference['batches']} batches, "
          f"{fingerprint[0]} targets, id sum {fingerprint[1]}): {', '.join(scores)} -> max |diff| {max_diff:.1e} "
          f"{'PASSED' if result['passed'] else 'FAILED'}")
    return result
