"""``gpt-sft verify DIR``: does a trained checkpoint compute what our tests prove, on this machine?

Each check compares two ways to compute the same thing on the run's own data (the split its recipe records) and
holds the difference to a bound: the checkpoint as remote code in a fresh process against the installed code, its
tokenizer against tiktoken, its chat template against the training format, the exact loss shortcuts against the
plain padded forward, KV-cache and batched generation against the book's loop, an unmerged LoRA adapter against its
merge. The table is printed, written to ``DIR/verification.json`` and into the model card's "Verified" section with
the versions it ran on. Exit status 0: every check passed (a skipped one says why); 1: a check failed (named), or
the folder cannot be checked; 2: a usage error. Also :func:`verify_after_training`, the quick checks that end every
training run.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common.options import option, parse_config
from .errors import report_errors

# The checks (torch, transformers, datasets, peft: seconds to import) are imported inside the functions that run them,
# after the options parse: `gpt-sft verify --help` and an option error answer without them.


@dataclass
class VerifyConfig:
    """Check a trained checkpoint: remote code, tokenizer, chat template, loss shortcuts, generation, LoRA."""

    folder: str | None = option(None, "The checkpoint, run or unmerged LoRA adapter folder to check",
                                positional="DIR")
    quick: bool = option(False, "Only the in-process checks on a few entries (a few seconds; what every training run "
                         "ends with): no fresh process, no gradients", switch=True)
    data: str | None = option(None, "The run's data file, when it is no longer where the recipe (recipe.json) says; "
                              "split as the recipe records")
    prompt_style: str | None = option(None, "The prompt style the run was trained with, when it is code of your own "
                                      "(module:NAME), which gpt-sft never imports because a recipe names it")

    def __post_init__(self) -> None:
        if not self.folder:
            raise ValueError("name the folder to check: gpt-sft verify DIR")


def show(verification, stream=None) -> None:
    """The table, the verdict and the versions, on ``stream`` (stdout)."""
    from ..verify.report import format_table

    stream = stream or sys.stdout
    print(format_table(verification.checks), file=stream)
    print(file=stream)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in verification.versions.items()), file=stream)
    failed = "; ".join(f"{c.group}: {c.name}" + (f" ({c.detail})" if c.detail else "") for c in verification.failures)
    verdict = f"{verification.summary()} in {verification.seconds:.1f} s"
    print(verdict + (f"; failed: {failed}" if failed else ""), file=stream)


def verify(cfg: VerifyConfig) -> int:
    """Run the checks, print and write the table; 0 when none failed, 1 when one did."""
    from ..verify.report import VERIFICATION_FILE, write_verification
    from ..verify.run import verify_folder

    kind = "quick checks" if cfg.quick else "checks"
    print(f"gpt-sft verify: the {kind} of {cfg.folder}", file=sys.stderr)
    verification = verify_folder(cfg.folder, quick=cfg.quick, data=cfg.data, prompt_style=cfg.prompt_style)
    show(verification)
    written = write_verification(verification)
    card = " and its model card's Verified section" if len(written) > 1 else ""
    print(f"wrote {Path(cfg.folder) / VERIFICATION_FILE}{card}", file=sys.stderr)
    return 0 if verification.passed else 1


def verify_after_training(output_dir: str | Path, enabled: bool = True, prompt_style: str | None = None
                          ) -> bool | None:
    """The quick checks of a finished run's saved model (``gpt-sft train`` and every other stage run them after
    the save unless ``--no-verify``): printed, written to ``verification.json`` and the model card. Returns whether
    they passed (``None``: not run). A failure leaves the trained model where it is. ``prompt_style``: the run's
    ``--prompt-style`` (its own code, when the user named a module: the run may use what the user typed)."""
    if not enabled:
        return None
    from ..verify.report import write_verification
    from ..verify.run import verify_folder

    verification = verify_folder(output_dir, quick=True, prompt_style=prompt_style)
    print(f"\ngpt-sft verify --quick {output_dir}:")
    show(verification)
    write_verification(verification)
    return verification.passed


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft verify``."""
    return verify(parse_config(VerifyConfig, argv, prog="gpt-sft verify"))
