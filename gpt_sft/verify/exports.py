"""The export checks of ``gpt-sft verify`` and ``gpt-sft export --verify``: each export of a run, run by the engine
it was made for, against the checkpoint it was exported from, on the run's held-out prompts.

* ``hf-gpt2``: transformers alone (gpt_sft cannot be imported in its process): logits, tokenizer, chat template
  (:mod:`.stock_check`);
* ``gguf``: llama.cpp: tokenizer, chat template and greedy tokens of the exported file, and of the checkpoint
  converted here to the other types (:mod:`.gguf_check`);
* ``ollama``: the Modelfile's template rendered by Go's text/template (:mod:`.ollama_check`), and the GGUF checks of
  the file it names.

A run folder's exports are where ``gpt-sft train --export`` writes them, ``<run>/export/<format>``. ``quick``: fewer
prompts and tokens (:mod:`.held_out`), the exported files only, no conversions, and no process (so no ``hf-gpt2``
check: it needs transformers in a process without gpt_sft).
"""

from __future__ import annotations

from pathlib import Path

from ..train.config import EXPORT_FORMATS
from .check import Check, skipped
from .gguf_check import gguf_checks, unreadable
from .held_out import HeldOut
from .ollama_check import modelfile_parts, template_check
from .stock_check import NAMES as STOCK_NAMES, stock_checks
from .subject import Subject

EXPORT_FOLDER = "export"


def export_group(fmt: str) -> str:
    """The table's group of an export format's rows."""
    return f"export {fmt}"


def find_exports(run_dir: Path) -> dict[str, Path]:
    """``{format: folder}`` of the exports in ``run_dir/export`` (a format's folder that holds nothing is none)."""
    root = Path(run_dir) / EXPORT_FOLDER
    return {fmt: root / fmt for fmt in EXPORT_FORMATS if (root / fmt).is_dir() and any((root / fmt).iterdir())}


def export_checks(subject: Subject, *, quick: bool) -> list[Check]:
    """The checks of every export in ``<run>/export/<format>`` against the checkpoint ``gpt-sft verify`` loaded as
    ``subject`` (its model, format and held-out entries, ``--data`` and ``--prompt-style`` honoured); no exports, no
    rows. The checkpoint is converted to the other GGUF types once, for the first GGUF export."""
    exports = find_exports(subject.folder)
    if not exports:
        return []
    held = HeldOut(subject.folder, quick=quick, subject=subject)
    rows: list[Check] = []
    converted = quick
    for fmt, folder in exports.items():
        rows += _checks(folder, fmt, held, convert=not converted)
        converted = converted or fmt in ("gguf", "ollama")
    return rows


def check_export(export_dir: Path, fmt: str, checkpoint: Path, *, quick: bool) -> list[Check]:
    """The checks of one export folder of format ``fmt`` (``hf-gpt2``, ``gguf``, ``ollama``) against
    ``checkpoint``, what ``gpt-sft export --verify`` runs: those of the exported files only (no conversions of the
    checkpoint to the other GGUF types, which ``gpt-sft verify`` adds)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"not an export format: {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    return _checks(Path(export_dir), fmt, HeldOut(checkpoint, quick=quick), convert=False)


def _checks(folder: Path, fmt: str, held: HeldOut, *, convert: bool) -> list[Check]:
    group = export_group(fmt)
    if fmt == "hf-gpt2" and held.quick:  # the quick set starts no process: the export's check is one
        return [skipped(group, name, "--quick starts no process (gpt-sft verify DIR and export --verify do)")
                for name in STOCK_NAMES]
    if fmt == "hf-gpt2":
        return stock_checks(folder, held, group)
    rows = []
    if fmt == "ollama":
        modelfile = folder / "Modelfile"
        if not modelfile.is_file():
            return [unreadable(group, modelfile, FileNotFoundError("no Modelfile in the Ollama export"))]
        rows.append(template_check(modelfile, held, group))
        _, source = modelfile_parts(modelfile.read_text(encoding="utf-8"))
        path = (folder / source).resolve() if source else None
        if path is None or not path.is_file() or path.suffix != ".gguf":
            return rows + [unreadable(group, modelfile, FileNotFoundError(
                f"its FROM {source or '(none)'} is not a GGUF file in {folder}"))]
    else:
        files = sorted(folder.glob("*.gguf"))
        if len(files) != 1:
            return [unreadable(group, folder, FileNotFoundError(f"{len(files)} .gguf files, not one"))]
        path = files[0]
    return rows + gguf_checks(path, held, group, convert=convert)


__all__ = ["EXPORT_FOLDER", "check_export", "export_checks", "export_group", "find_exports"]
