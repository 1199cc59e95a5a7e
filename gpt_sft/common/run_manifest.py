"""Which entries of an output folder a training run wrote: ``gpt-sft-run.json``, the run's manifest.

``--overwrite`` removes what the manifest lists and nothing else; a folder without one holds no run of
ours and is refused, since a file's name ("README.md", "export/") does not say who made it. The run
records each top-level entry as it writes it (the checkpoint's files, ``checkpoints/``, plots, card,
a tracker's logs, test-set responses), and the later stages record what they add to the folder
(``export``, ``generate --output``, ``evaluate``'s report and cache, ``compare``'s plot, ``pairwise``,
``make-preferences``). ``refresh-code`` and ``evaluate --update-checkpoint`` only rewrite files the save
recorded; ``serve`` keeps its GGUF in ``~/.cache/gpt_sft``. The manifest is written atomically and lists
plain names only: one naming ``../x``, ``/x`` or ``a/b`` is refused whole when read, so no manifest, planted
or damaged, can make ``--overwrite`` remove anything outside its folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .atomic_io import write_json_atomic

MANIFEST = "gpt-sft-run.json"
_KIND = "gpt-sft run outputs"


class ManifestError(ValueError):
    """A run manifest that cannot be trusted: unreadable, or naming something that is not an entry of its folder."""


def is_plain_name(name: object) -> bool:
    """A name of one entry directly inside a folder: no separator, not ``.``/``..``, not the manifest itself."""
    return (isinstance(name, str) and name not in ("", ".", "..", MANIFEST) and "/" not in name and "\0" not in name
            and os.sep not in name and (os.altsep is None or os.altsep not in name))


def read_manifest(folder: str | os.PathLike) -> list[str] | None:
    """The entries ``folder``'s manifest lists (``None``: it has none).

    Raises:
        ManifestError: the manifest is unreadable, or one of its entries is not a plain name (the
            message names the file and the entry).
    """
    path = Path(folder) / MANIFEST
    if not os.path.lexists(path):
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not a readable run manifest ({type(err).__name__})") from None
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list):
        raise ManifestError(f"{path}: not a gpt-sft run manifest (no list of outputs)")
    for name in outputs:
        if not is_plain_name(name):
            raise ManifestError(f"{path}: lists {name!r}, which is not the name of a file or folder in {folder}")
    return outputs


def recorded_names(folder: str | os.PathLike) -> list[str]:
    """The plain names ``folder``'s manifest lists; none for a missing or unreadable one. For writers, which
    never fail a run over a bad manifest (``--overwrite`` is where one is refused, by :func:`read_manifest`)."""
    try:
        return read_manifest(folder) or []
    except ManifestError:
        return []


def record_outputs(folder: str | os.PathLike, names: Iterable[str]) -> None:
    """Add ``names`` (entries of ``folder``) to its manifest, creating it; entries no longer there are dropped."""
    folder = Path(folder)
    known = recorded_names(folder)
    new = [n for n in names if is_plain_name(n)]
    kept = sorted(n for n in {*known, *new} if n in new or os.path.lexists(folder / n))
    if kept != known:
        write_json_atomic(folder / MANIFEST, {"kind": _KIND, "outputs": kept})


def _entries(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


@contextlib.contextmanager
def recording_new_entries(folder: str | os.PathLike, record: bool = True) -> Iterator[None]:
    """Record the entries that appear in the run folder ``folder`` while the body runs (``checkpoints/``, a
    tracker's log folder, whatever name the tracker picks); only on success, and only if ``record`` (the
    main process). An entry that was there before is not claimed: gpt-sft only wrote into it."""
    folder = Path(folder)
    before = _entries(folder) if record else set()
    yield
    if record:
        new = sorted(_entries(folder) - before - {MANIFEST})
        if new:
            record_outputs(folder, new)


def record_stage_outputs(*paths: str | os.PathLike | None, run_folder: str | os.PathLike | None = None) -> None:
    """Before a later stage writes ``paths`` (an export, a judge report, its cache): record in the manifest of
    the run folder written into (``run_folder``, else each path's own folder) the entry each path is in. A path
    directly in the folder is the stage's (it replaces it whole); a folder above a path only if it is not there
    yet, so that the stage makes it (``export/``, not a folder of the user's that the stage writes into). A
    folder without a manifest is no run: nothing is recorded there (only a training run starts a manifest).
    Recorded first, so that a stage killed while writing leaves nothing of its own unrecorded."""
    claims: dict[Path, list[str]] = {}
    for path in (Path(p) for p in paths if p is not None):
        folder = Path(run_folder) if run_folder is not None else path.parent
        if not (folder / MANIFEST).is_file():
            continue
        try:
            parts = path.resolve().relative_to(folder.resolve()).parts
        except ValueError:  # written elsewhere
            continue
        if parts and (len(parts) == 1 or not os.path.lexists(folder / parts[0])):
            claims.setdefault(folder, []).append(parts[0])
    for folder, names in claims.items():  # one update per folder: none drops another's entry, not written yet
        record_outputs(folder, names)


__all__ = ["MANIFEST", "ManifestError", "is_plain_name", "read_manifest", "record_outputs", "recorded_names",
           "record_stage_outputs", "recording_new_entries"]
