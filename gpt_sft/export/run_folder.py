"""A training run's output folder: one run per folder, written so that an interruption loses nothing.

The final save writes the checkpoint bundle (:mod:`.checkpoint`), ``training_args.json`` (the
recipe, read back by later stages), ``metrics.json``, the loss plot and the model card into a staging
folder, then moves each file into place. A LoRA run saved unmerged (``--no-merge-lora``) is a peft
adapter folder instead (:mod:`gpt_sft.model.adapters`): the LoRA weights only, and its base model in
``base/``. Responses and judge reports of an earlier model are removed first, and a folder that
already holds files is refused unless the run resumes or ``--overwrite`` replaces the run in it. The run
records every entry it writes in the folder's manifest (:mod:`gpt_sft.common.run_manifest`): ``--overwrite``
removes those and keeps the rest, and refuses a folder without one, whose files no run of ours wrote.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..common.atomic_io import reporting_disk_full
from ..common.options import config_to_dict
from ..common.run_manifest import MANIFEST, ManifestError, read_manifest, record_outputs, recorded_names
from ..data.prompts import get_prompt_style
from ..data.recipe import RECIPE_FILE, Recipe
from ..data.validate import LoadStats
from ..model.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_FOLDER, BASE_RECORD, write_base_record
from ..train.config import TrainConfig
from ..train.data import optimizer_steps_per_epoch
from ..train.lora import base_without_adapters
from ..train.loop import Run, trainable_parameters
from ..train.report import plot_losses, training_metrics
from .card import render_model_card
from .checkpoint import publish_folder, save_checkpoint

# Files an earlier model's evaluation left in an output folder: never beside a new model.
STALE_EVALUATION_FILES = ("test-responses.json", "test-responses-judge-report.json",
                          "test-responses-judge-report.json.cache.jsonl",
                          "test-responses-judge-report.json.cache.jsonl.lock")
# What only a whole model's folder holds, and what only an adapter folder holds: a save of one kind
# removes the other's, so a resumed run that changed --merge-lora leaves no mix of the two.
MODEL_ONLY = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
              "model-*-of-*.safetensors", "configuration_gpt.py", "modeling_gpt.py")
ADAPTER_ONLY = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_FOLDER, BASE_RECORD)
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


def finish_interrupted_publish(output_dir: Path) -> bool:
    """Finish moving a final save into ``output_dir`` when a run was killed while :func:`_publish` moved it: the
    stage (``.final-stage``, renamed into place whole) still holds its marker, moved last, so it is complete, and its
    order is known. Returns whether there was one; a stage without a marker is no save of ours to finish."""
    stage, last = output_dir / ".final-stage", output_dir / ".final-stage-last"
    staged_marker = any((stage / marker).is_file() for marker in ("config.json", ADAPTER_CONFIG))
    if not staged_marker and not (last / ADAPTER_CONFIG).is_file():
        return False
    record_outputs(output_dir, [p.name for folder in (stage, last) if folder.is_dir() for p in folder.iterdir()])
    if (stage / ADAPTER_CONFIG).is_file():
        _publish(stage, output_dir, adapter=True)
    elif (stage / "config.json").is_file():
        _publish(stage, output_dir, adapter=False)
    else:  # an adapter's: all but its marker moved already
        if stage.is_dir():
            publish_folder(stage, output_dir)
        publish_folder(last, output_dir)
    return True


def _shown(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" ... ({len(names)} in all)" if len(names) > 6 else "")


def prepare_output_dir(cfg: TrainConfig, resuming: bool, is_main_process: bool,
                       wait_for_everyone: Callable[[], None] = lambda: None) -> list[str]:
    """Keep an output folder to one run: a folder that already holds files is refused unless the run
    resumes or ``--overwrite`` is given, which removes what the earlier run's manifest lists and nothing
    else; a folder without a manifest holds no run of ours, and ``--overwrite`` refuses it too. Returns what
    to report (removed leftovers, the files kept). ``wait_for_everyone``: the processes' barrier, so that
    every process decides on the folder as the main one left it, and before it removes anything."""
    output_dir = Path(cfg.output_dir)
    notes = []
    if is_main_process and output_dir.is_dir():
        if finish_interrupted_publish(output_dir):
            notes.append(f"a run killed during its final save had left its model in {output_dir / '.final-stage'}: "
                         f"moved it into {output_dir}, as the save would have")
        leftovers = remove_leftovers(output_dir)
        if leftovers:
            notes.append(f"removed {len(leftovers)} temporary folder(s) left by an interrupted save in {output_dir}")
    wait_for_everyone()
    existing = sorted(p.name for p in output_dir.iterdir() if not _LEFTOVER.match(p.name)) if output_dir.is_dir() else []
    recorded = _overwritten(cfg, output_dir, existing, notes) if existing and not resuming else None
    wait_for_everyone()
    if is_main_process and recorded is not None:
        ours = [name for name in recorded if os.path.lexists(output_dir / name)]
        for name in ours:
            _remove(output_dir / name)  # a plain name (read_manifest checked): never anything outside the folder
        (output_dir / MANIFEST).unlink()
        kept = [name for name in existing if name not in ours and name != MANIFEST]
        notes.append(f"--overwrite: removed the earlier run's {len(ours)} output(s) that its {MANIFEST} lists from "
                     f"{output_dir}" + (f"; kept {len(kept)} file(s) no run wrote: {_shown(kept)}" if kept else ""))
    return notes


def _overwritten(cfg: TrainConfig, output_dir: Path, existing: list[str], notes: list[str]) -> list[str]:
    """What ``--overwrite`` removes from a folder that holds files: the entries its manifest lists. Anything
    else is refused: no --overwrite, no manifest, or one that names what is not an entry of the folder."""
    has_run = (output_dir / MANIFEST).is_file()
    if not cfg.overwrite:
        found = f"--output-dir {output_dir} already holds files ({_shown(existing)})"
        raise ValueError(
            (f"{notes[0]}; " if notes and "final save" in notes[0] else "")
            + (f"{found}: pass --overwrite to replace the run in it, --resume-from-checkpoint latest to continue it, "
               "or choose another --output-dir" if has_run else
               f"{found} and no record of a gpt-sft run ({MANIFEST}): choose another --output-dir, or remove the files "
               "yourself (--resume-from-checkpoint latest continues a run whose checkpoints are in it)"))
    try:
        recorded = read_manifest(output_dir)
    except ManifestError as err:
        raise ValueError(f"--overwrite: {err}: nothing removed; choose another --output-dir, or remove the files "
                         "yourself") from None
    if recorded is None:
        raise ValueError(f"--overwrite: {output_dir} holds files ({_shown(existing)}) but no record of a gpt-sft run "
                         f"({MANIFEST}), so nothing in it is gpt-sft's to remove: choose another --output-dir, or "
                         "remove the files yourself")
    return recorded


class _AdapterOnly:
    """A peft model as :func:`save_checkpoint` sees it: ``save_pretrained`` writes the LoRA weights only.

    peft's default (``save_embedding_layers="auto"``) also saves the whole embedding and output head
    whenever ``lm_head`` is among the target modules (``get_peft_model_state_dict``): with an untied
    head, the frozen base head's 50257 x width matrix. The base is in ``base/``, so that is never needed.
    """

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model
        self.generation_config = getattr(peft_model, "generation_config", None)

    def save_pretrained(self, directory, **kwargs) -> None:
        self.peft_model.save_pretrained(directory, save_embedding_layers=False, **kwargs)


def _publish(stage: Path, output_dir: Path, adapter: bool) -> None:
    """Move the staged run into ``output_dir``. The folder's marker (``config.json``, or an adapter's
    ``adapter_config.json``) is removed first and moved last, as :func:`publish_folder` does."""
    for pattern in (MODEL_ONLY if adapter else ADAPTER_ONLY):
        for path in output_dir.glob(pattern):
            _remove(path)
    if not adapter:
        publish_folder(stage, output_dir)
        return
    (output_dir / ADAPTER_CONFIG).unlink(missing_ok=True)
    last = output_dir / ".final-stage-last"  # a leftover name remove_leftovers knows
    last.mkdir(exist_ok=True)
    os.replace(stage / ADAPTER_CONFIG, last / ADAPTER_CONFIG)
    publish_folder(stage, output_dir)
    publish_folder(last, output_dir)


def save_run(run: Run) -> tuple[Path, object]:
    """Write the final checkpoint folder of ``run``; return it and the model as saved (LoRA merged
    when ``merge_lora``).

    Unmerged LoRA (``merge_lora=False``) saves the adapter, and beside it in ``base/`` the model LoRA was
    applied to (the weights before training, a complete gpt-sft checkpoint), which ``adapter_config.json``
    names by its absolute path (see :mod:`gpt_sft.model.adapters`)."""
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    output_dir = Path(cfg.output_dir)
    steps_per_epoch = optimizer_steps_per_epoch(len(run.data.train), cfg)
    metrics = training_metrics(state, steps_per_epoch, accelerator, trainable_parameters(run.model)[0], run.data.stats)
    run.stage.figures(run, metrics)
    adapter = bool(cfg.lora_rank) and not cfg.merge_lora
    model = run.model.merge_and_unload() if cfg.lora_rank and cfg.merge_lora else run.model
    if accelerator.is_main_process:
        recipe = Recipe.of_training(cfg, get_prompt_style(cfg.prompt_style), run.data.load_stats or LoadStats(cfg.data, 0, 0))
        # a run on conversations gets the multi-turn chat template, made from the layout its recipe records
        layout = recipe.layout() if recipe.conversational else None
        recorded = recorded_names(output_dir)
        for name in STALE_EVALUATION_FILES:
            if name in recorded:  # a file of that name the run did not write is not ours to remove
                (output_dir / name).unlink(missing_ok=True)
        if adapter:
            # peft reads a relative base path against the working directory, not the adapter folder:
            # name base/ absolutely (gpt-sft itself looks in <folder>/base first, so a moved folder loads).
            model.peft_config["default"].base_model_name_or_path = str((output_dir / BASE_FOLDER).resolve())

        def extras(tmp: Path):
            plot_losses(state, steps_per_epoch, tmp / "loss-plot")
            run.stage.plot(run, tmp)
            (tmp / "README.md").write_text(render_model_card(cfg, metrics, stage=run.stage), encoding="utf-8")
            if adapter:
                save_checkpoint(base_without_adapters(model), tmp / BASE_FOLDER, prompt_style=cfg.prompt_style,
                                conversation_layout=layout)
                write_base_record(tmp, tmp / BASE_FOLDER)

        stage = output_dir / ".final-stage"
        with reporting_disk_full("the trained model", output_dir):
            save_checkpoint(_AdapterOnly(model) if adapter else model, stage, prompt_style=cfg.prompt_style,
                            conversation_layout=layout,
                            extra_json={"training_args.json": config_to_dict(cfg), "metrics.json": metrics,
                                        RECIPE_FILE: dataclasses.asdict(recipe)},
                            write_extra=extras)
            # recorded before the files move in: a run killed while moving them still owns what it moved
            record_outputs(output_dir, [p.name for p in stage.iterdir()])
            _publish(stage, output_dir, adapter)
    accelerator.wait_for_everyone()
    return output_dir, model


__all__ = ["STALE_EVALUATION_FILES", "prepare_output_dir", "remove_leftovers", "save_run"]
