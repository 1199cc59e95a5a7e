"""Which checks ``gpt-sft verify`` runs on a folder, and on how much of the run's data.

The full set (``gpt-sft verify DIR``): the checkpoint as remote code in a fresh process (the one process started),
the tokenizer and the chat template on every held-out entry, the loss shortcuts' losses and gradients on two
training batches, greedy generation of 8 held-out prompts, and for an unmerged LoRA adapter its base and its merge.
The quick set (``--quick``, and the end of every training run): the same checks in this process on fewer entries,
losses without gradients, and no fresh process -- a few seconds on the offline demo.
"""

from __future__ import annotations

import time
from pathlib import Path

from .check import AT_LEAST, Check, skipped
from .exports import export_checks
from .model_checks import Sizes, generation_checks, lora_checks, loss_path_checks
from .remote_code import GROUP as CHECKPOINT, NAME as REMOTE, remote_code_check
from .report import Verification
from .subject import Subject, load_subject
from .text_checks import template_check, tokenizer_check

FULL = Sizes(text_entries=None, loss_batches=2, batch_size=8, gradients=True, prompts=8, new_tokens=16)
QUICK = Sizes(text_entries=16, loss_batches=1, batch_size=4, gradients=False, prompts=2, new_tokens=8)
REMOTE_PROMPTS = 4  # held-out prompts whose logits the fresh process computes
DATA = "data"


def data_check(subject: Subject) -> Check:
    """The run's held-out entries, split again as its recipe records: a folder verify cannot read the data of checks
    nothing with it, and says so (a failure naming --data), rather than passing on skipped checks."""
    name = "held-out entries of the run's split (recipe.json)"
    if not subject.held_out:
        return Check(DATA, name, 0, 1, AT_LEAST, subject.data_error)
    source = subject.recipe.data if subject.recipe else "?"
    return Check(DATA, name, len(subject.held_out), 1, AT_LEAST,
                 f"{source}: {len(subject.held_out)} held-out, {len(subject.train)} training entries")


def model_checks(subject: Subject, sizes: Sizes) -> list[Check]:
    """The checks that run the model; each fails, naming why, when the model did not load."""
    if subject.model is None:
        return [Check(CHECKPOINT, "loads with the installed code", None, None, detail=subject.load_error)]
    return [*loss_path_checks(subject, sizes), *generation_checks(subject, sizes), *lora_checks(subject, sizes)]


def checkpoint_checks(subject: Subject, quick: bool) -> list[Check]:
    """Every check of the checkpoint itself (not of its exports), in the table's order."""
    sizes = QUICK if quick else FULL
    if quick:
        remote = skipped(CHECKPOINT, REMOTE, "--quick runs no process (gpt-sft verify DIR does)")
    else:
        remote = remote_code_check(subject, REMOTE_PROMPTS)
    entries = subject.held_out[: sizes.text_entries]
    return [data_check(subject), remote, tokenizer_check(subject, entries), template_check(subject, entries),
            *model_checks(subject, sizes)]


def verify_folder(folder: str | Path, *, quick: bool = False, data: str | None = None,
                  prompt_style: str | None = None) -> Verification:
    """Run the checks of ``folder`` (a checkpoint, a run folder or an unmerged LoRA adapter folder); ``data``: where
    the run's data is now, when not where its recipe says; ``prompt_style``: the style it was trained with, when that
    is the user's own code (a recipe names it but may not import it). Writes nothing
    (:func:`.report.write_verification`)."""
    start = time.perf_counter()
    subject = load_subject(folder, data, prompt_style)
    verification = Verification(subject.folder, quick)
    verification.checks += checkpoint_checks(subject, quick)
    verification.checks += export_checks(subject, quick=quick)
    verification.seconds = time.perf_counter() - start
    return verification


__all__ = ["FULL", "QUICK", "checkpoint_checks", "verify_folder"]
