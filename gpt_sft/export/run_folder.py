"""A training run's output folder: one run per folder, written so that an interruption loses nothing.

The final save writes the checkpoint bundle (:mod:`.checkpoint`), ``training_args.json`` (the
recipe, read back by later stages), ``metrics.json``, the loss plot and the model card into a staging
folder, then moves each file into place. Responses and judge reports of an earlier model are removed
first, and a folder that already holds a run is refused unless the run resumes or ``--overwrite``
replaces it.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from ..common.atomic_io import reporting_disk_full
from ..common.options import config_to_dict
from ..data.prompts import get_prompt_style
from ..data.recipe import RECIPE_FILE, Recipe
from ..data.validate import LoadStats
from ..train.config import TrainConfig
from ..train.data import optimizer_steps_per_epoch
from ..train.loop import Run, trainable_parameters
from ..train.report import plot_losses, training_metrics
from .card import render_model_card
from .checkpoint import publish_folder, save_checkpoint

# Files an earlier model's evaluation left in an output folder: never beside a new model.
STALE_EVALUATION_FILES = ("test-responses.json", "test-responses-judge-report.json",
                          "test-responses-judge-report.json.cache.jsonl")
# What a training run writes into its --output-dir (names and patterns); --overwrite removes these.
RUN_OUTPUTS = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
    "model-*-of-*.safetensors", "configuration_gpt.py", "modeling_gpt.py", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja", "recipe.json",
    "adapter_config.json", "adapter_model.safetensors", "training_args.json", "metrics.json", "README.md",
    "loss-plot.pdf", "loss-plot.png", "checkpoints", "gpt-sft", *STALE_EVALUATION_FILES,
)
_LEFTOVER = re.compile(r"^\.(.+\.tmp(-\w+)?|.+\.old-\d+|final-stage.*)$")  # atomic_io's temporary names


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def remove_leftovers(output_dir: Path) -> list[Path]:
    """Remove the temporary folders of an interrupted save (``.NAME.tmp-*``, ``.final-stage*``...)."""
    found = []
    for folder in (output_dir, output_dir / "checkpoints"):
        if folder.is_dir():
            found += [p for p in folder.iterdir() if _LEFTOVER.match(p.name)]
    for path in found:
        _remove(path)
    checkpoints = output_dir / "checkpoints"
    if found and checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()  # it held only the leftovers
    return found


def prepare_output_dir(cfg: TrainConfig, resuming: bool, is_main_process: bool) -> list[str]:
    """Keep an output folder to one run: a folder that already holds files is refused unless the run
    resumes or ``--overwrite`` is given, which removes the earlier run's outputs first. Returns what
    to report (removed leftovers, files kept because gpt-sft did not write them)."""
    output_dir = Path(cfg.output_dir)
    if not output_dir.is_dir():
        return []
    notes = []
    if is_main_process:
        leftovers = remove_leftovers(output_dir)
        if leftovers:
            notes.append(f"removed {len(leftovers)} temporary folder(s) left by an interrupted save in {output_dir}")
    existing = sorted(p.name for p in output_dir.iterdir() if not _LEFTOVER.match(p.name))
    if not existing or resuming:
        return notes
    if not cfg.overwrite:
        shown = ", ".join(existing[:6]) + (f" ... ({len(existing)} in all)" if len(existing) > 6 else "")
        raise ValueError(
            f"--output-dir {output_dir} already holds files ({shown}): pass --overwrite to replace the run in it, "
            "--resume-from-checkpoint latest to continue it, or choose another --output-dir"
        )
    if is_main_process:
        ours = {p for pattern in RUN_OUTPUTS for p in output_dir.glob(pattern)}
        for path in ours:
            _remove(path)
        kept = sorted(set(existing) - {p.name for p in ours})
        notes.append(f"--overwrite: removed the earlier run's {len(ours)} output(s) from {output_dir}"
                     + (f"; kept {len(kept)} file(s) gpt-sft did not write: {', '.join(kept[:6])}" if kept else ""))
    return notes


def save_run(run: Run) -> tuple[Path, object]:
    """Write the final checkpoint folder of ``run``; return it and the model as saved (LoRA merged
    when ``merge_lora``)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    output_dir = Path(cfg.output_dir)
    steps_per_epoch = optimizer_steps_per_epoch(len(run.data.train), cfg)
    metrics = training_metrics(state, steps_per_epoch, accelerator, trainable_parameters(run.model)[0], run.data.stats)
    model = run.model.merge_and_unload() if cfg.lora_rank and cfg.merge_lora else run.model
    if accelerator.is_main_process:
        for name in STALE_EVALUATION_FILES:
            (output_dir / name).unlink(missing_ok=True)

        def extras(tmp: Path):
            plot_losses(state, steps_per_epoch, tmp / "loss-plot")
            (tmp / "README.md").write_text(render_model_card(cfg, metrics), encoding="utf-8")

        stage = output_dir / ".final-stage"
        with reporting_disk_full("the trained model", output_dir):
            recipe = Recipe.of_training(cfg, get_prompt_style(cfg.prompt_style), run.data.load_stats or LoadStats(cfg.data, 0, 0))
            save_checkpoint(model, stage, prompt_style=cfg.prompt_style,
                            extra_json={"training_args.json": config_to_dict(cfg), "metrics.json": metrics,
                                        RECIPE_FILE: dataclasses.asdict(recipe)},
                            write_extra=extras)
            publish_folder(stage, output_dir)
    accelerator.wait_for_everyone()
    return output_dir, model


__all__ = ["RUN_OUTPUTS", "STALE_EVALUATION_FILES", "prepare_output_dir", "remove_leftovers", "save_run"]
