"""``gpt-sft train`` (``accelerate launch scripts/train.py``): the book's chapter 7 recipe, end to end; and every
other training stage's command (``gpt-sft dpo``, ``orpo``, ``simpo``: :data:`~gpt_sft.train.stages.STAGES`), which
differ only in the stage this runs.

Without arguments ``train`` runs the book's recipe (gpt2-medium, the book's data set, Alpaca prompts, batch
8, AdamW lr 5e-5 / weight decay 0.1, 2 epochs, seed 123, evaluation of 5 train and 5 validation
batches every 5 steps, a greedy sample after each epoch). Every option is a field of
:class:`~gpt_sft.train.config.TrainConfig`, settable by ``--kebab-case`` flag or YAML.

setup (output folder, accelerator, the stage's model and data) -> fit -> save (checkpoint, recipe, card) ->
test-set responses -> exports -> push. No interruption loses the trained model: one during training saves a
resumable checkpoint, one during the final save waits for it, one while generating test responses
leaves the saved model and says how to generate them.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..common.options import parse_config
from ..data.sources import check_local_source
from ..train.config import TrainConfig
from ..train.stages import STAGES, stage_config_type
from .errors import report_errors

# The training machinery (torch, accelerate, transformers, datasets: seconds to import) is imported inside the
# functions that run it, after the options parse: `gpt-sft train --help` and an option error answer without it.

class VerificationFailed(RuntimeError):
    """A run's model is saved, but the quick checks that end the run found a fault in it."""


def generate_test_responses(run: Any, model) -> Path | None:
    """The book's ``instruction-data-with-response.json``: greedy responses to the test split (``run``: a
    :class:`~gpt_sft.train.loop.Run`)."""
    from ..common.atomic_io import write_json_atomic
    from ..common.run_manifest import record_outputs
    from ..generate.responses import add_responses, generate_responses
    from ..generate.settings import GenerationSettings
    from ..model.tokenizer import get_tokenizer
    from ..train.state import say

    cfg, data = run.cfg, run.data
    if not (cfg.generate and data.test_entries and run.accelerator.is_main_process):
        return None
    responses_path = Path(cfg.output_dir) / "test-responses.json"
    model.eval()
    responses = generate_responses(model, get_tokenizer(), data.test_entries,
                                   GenerationSettings(max_new_tokens=cfg.max_new_tokens, style=cfg.prompt_style))
    record_outputs(cfg.output_dir, [responses_path.name])  # first: a run killed while writing them still owns them
    write_json_atomic(responses_path, add_responses(data.test_entries, responses), indent=4)
    say(run.accelerator, f"Wrote {len(responses)} test-set responses to {responses_path}")
    return responses_path


def train(cfg: TrainConfig, setup_run: Callable[[TrainConfig, Any], Any] | None = None) -> Path:
    """Train as configured, with the stage whose options ``cfg`` is (a ``TrainConfig``: SFT, a ``DPOConfig``: DPO,
    ...); returns the output folder. ``setup_run(cfg, accelerator)`` builds the run (default:
    :func:`~gpt_sft.train.loop.setup`): everything after it is shared by every stage."""
    import torch

    from ..export.hub import check_hub_push, push_folder_to_hub
    from ..export.run_folder import prepare_output_dir, save_run
    from ..train.loop import fit, make_accelerator, setup, trainable_parameters
    from ..train.report import hardware_description
    from ..train.state import Interruptions, InterruptedRun, resolve_resume, say
    from .export import ExportConfig, export
    from .verify import verify_after_training

    setup_run = setup if setup_run is None else setup_run
    accelerator = make_accelerator(cfg)
    if cfg.push_to_hub and accelerator.is_main_process:
        check_hub_push(cfg.push_to_hub)
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    for note in prepare_output_dir(cfg, resume is not None, accelerator.is_main_process, accelerator.wait_for_everyone):
        say(accelerator, note)
    accelerator.wait_for_everyone()
    run = setup_run(cfg, accelerator)
    trainable, total = trainable_parameters(run.model)
    threads = f", {torch.get_num_threads()} threads" if accelerator.device.type == "cpu" else ""
    say(accelerator, f"Training {trainable:,} of {total:,} parameters on {hardware_description(accelerator)}"
                     f"{threads}, mixed precision: {accelerator.mixed_precision}")
    with Interruptions(accelerator) as interruptions:
        fit(run, interruptions)
        say(accelerator, f"Training completed in {run.state.train_seconds / 60:.2f} minutes.")
        with interruptions.deferred():
            output_dir, final_model = save_run(run)
        if interruptions.requested:
            say(accelerator, f"Interrupted: the trained model is saved in {output_dir}; no test-set responses were "
                             f"generated (gpt-sft generate --model {output_dir} --split test)")
            raise InterruptedRun(interruptions.signum)
    try:
        generate_test_responses(run, final_model)
    except KeyboardInterrupt:
        say(accelerator, f"Interrupted while generating test-set responses; the trained model is saved in "
                         f"{output_dir} (gpt-sft generate --model {output_dir} --split test)")
        raise
    if cfg.export and accelerator.is_main_process:
        for fmt in cfg.export:
            export(ExportConfig(model=str(output_dir), format=fmt, output=str(Path(output_dir) / "export" / fmt),
                                overwrite=True))
    verified = (verify_after_training(output_dir, cfg.verify, getattr(cfg, "prompt_style", None))
                if accelerator.is_main_process else None)
    if cfg.push_to_hub and accelerator.is_main_process and verified is False:
        say(accelerator, f"Not pushed to {cfg.push_to_hub}: the model's quick checks failed")
    elif cfg.push_to_hub and accelerator.is_main_process:
        url = push_folder_to_hub(output_dir, cfg.push_to_hub, private=cfg.hub_private)
        say(accelerator, f"Pushed to {url}")
    # The data-parallel wrapper goes first, while the process group it holds is still alive: end_training destroys
    # the group, and a wrapper freed after that destroys it again, gloo joining its threads while this thread holds
    # the GIL; a gloo thread releasing a tensor waits for the GIL, and the finished run hangs at exit (seen in the
    # 1st of 20 two-process DPO runs). accelerate holds its own references to what it prepared.
    del run
    accelerator.free_memory()
    accelerator.end_training()
    if verified is False:
        raise VerificationFailed(f"{output_dir}: the trained model is saved there, but its quick checks failed (the "
                                 f"table above, and verification.json; not pushed): gpt-sft verify {output_dir} runs "
                                 "them all")
    return output_dir


def run_training_command(command: str, argv: Sequence[str] | None) -> int:
    """Parse the options of ``command``'s stage and train with it."""
    cfg = parse_config(stage_config_type(command), argv)
    check_local_source(cfg.data)  # a mistyped path fails now, before seconds of imports
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 <pid>` prints every thread's stack: a stuck run explains itself
        with contextlib.suppress(ValueError, OSError):  # stderr is no real file (captured): no stack dumps
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        train(cfg)
    finally:
        end_process_group()
    return 0


def end_process_group() -> None:
    """Destroy a multi-process run's process group before the interpreter's teardown does: left to it, gloo's
    destructor can join a thread that waits for the GIL, and a finished run hangs at exit."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@report_errors
def main(argv: Sequence[str] | None = None, command: str = "train") -> int:
    """``gpt-sft train`` / ``accelerate launch scripts/train.py`` (and ``gpt-sft COMMAND`` of every other stage of
    :data:`~gpt_sft.train.stages.STAGES`): errors are one line, Ctrl-C exits 130."""
    if command not in STAGES:
        raise ValueError(f"unknown training stage {command!r}; known: {', '.join(STAGES)}")
    return run_training_command(command, argv)
