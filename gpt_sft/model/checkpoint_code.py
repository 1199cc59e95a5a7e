"""The model code that every gpt-sft checkpoint carries, and keeping it current.

``save_pretrained`` copies ``configuration_gpt.py`` and ``modeling_gpt.py`` into each checkpoint, so
that ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works without gpt-sft.
That copy is frozen at save time: a checkpoint saved before a fix keeps the bug (transformers 5.24's
cache rename made every older copy generate wrong text). ``modeling_gpt.MODEL_CODE_VERSION`` numbers
the file; :func:`warn_if_outdated` tells a user loading an older folder, and :func:`refresh_model_code`
(``gpt-sft refresh-code DIR``) replaces the copy with the installed one.

gpt-sft itself never runs a folder's copy: its loaders use the installed classes.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from . import configuration_gpt, modeling_gpt
from ..common.atomic_io import write_text_atomic

CODE_FILES = ("configuration_gpt.py", "modeling_gpt.py")
REFRESH_COMMAND = "gpt-sft refresh-code"
_VERSION_LINE = re.compile(r"^MODEL_CODE_VERSION\s*=\s*(\d+)\s*$", re.MULTILINE)


class OutdatedModelCodeWarning(UserWarning):
    """A checkpoint folder carries an older copy of gpt-sft's model code than the installed one."""


def installed_code() -> dict[str, str]:
    """``{file name: source}`` of the installed model code, the text a fresh checkpoint gets."""
    return {
        name: Path(module.__file__).read_text(encoding="utf-8")
        for name, module in zip(CODE_FILES, (configuration_gpt, modeling_gpt))
    }


def code_version(folder: str | os.PathLike) -> int | None:
    """The ``MODEL_CODE_VERSION`` of a folder's ``modeling_gpt.py``: 1 for copies written before the
    number existed, ``None`` if the folder has no copy at all."""
    path = Path(folder) / "modeling_gpt.py"
    if not path.is_file():
        return None
    found = _VERSION_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    return int(found.group(1)) if found else 1


def warn_if_outdated(folder: str | os.PathLike) -> bool:
    """Warn (one line) when ``folder`` carries older model code than the installed package; True if so."""
    version = code_version(folder)
    if version is None or version >= modeling_gpt.MODEL_CODE_VERSION:
        return False
    # warn_explicit with a file name that has no source lines: the warning prints as one line.
    warnings.warn_explicit(
        f"{folder} carries gpt-sft model code version {version}, older than the installed {modeling_gpt.MODEL_CODE_VERSION}: "
        f"loading it elsewhere with trust_remote_code runs that old code; update it with: {REFRESH_COMMAND} {folder}",
        OutdatedModelCodeWarning,
        filename="gpt-sft",
        lineno=0,
    )
    return True


def refresh_model_code(folder: str | os.PathLike) -> list[str]:
    """Replace a gpt-sft checkpoint's copies of the model code with the installed ones, in place.

    Each file is written to a temporary name and renamed over the old one, so an interruption leaves
    every file either old or new, never partly written (the new code loads the old config). Returns
    the names of the files that changed.

    Raises:
        FileNotFoundError: ``folder`` has no ``config.json``.
        ValueError: the folder is not a gpt-sft checkpoint (``model_type`` is not ``gpt_sft``).
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; not a checkpoint folder")
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{config_path}: not a JSON config ({err})") from None
    if model_type != configuration_gpt.GPTConfig.model_type:
        raise ValueError(
            f"{folder}: model_type is {model_type!r}, not {configuration_gpt.GPTConfig.model_type!r}; "
            "only gpt-sft checkpoints carry gpt-sft's model code"
        )
    changed = []
    for name, source in installed_code().items():
        target = folder / name
        if target.is_file() and target.read_text(encoding="utf-8", errors="replace") == source:
            continue
        write_text_atomic(target, source)
        changed.append(name)
    return changed


__all__ = ["CODE_FILES", "OutdatedModelCodeWarning", "REFRESH_COMMAND", "code_version", "installed_code",
           "refresh_model_code", "warn_if_outdated"]
