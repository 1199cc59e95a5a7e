"""What a ``--data`` value names -- a URL, a local file or folder, or a Hub data set -- decided without the data
libraries, so that a training command can refuse a missing file before it imports them (seconds)."""

from __future__ import annotations

import os

from .validate import InstructionDataError

FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}  # suffix -> the datasets builder
FILE_SUFFIXES = (".json", ".jsonl", *FILE_BUILDERS)


def looks_like_path(source: str) -> bool:
    """Whether ``source`` can only be meant as a local path (never a Hub name ``owner/name``)."""
    return (
        source.lower().endswith(FILE_SUFFIXES)
        or os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or (source.count("/") == 1 and os.path.isdir(source.split("/")[0]))  # outputs/typo: not a Hub name
    )


def check_local_source(source: str) -> None:
    """Raise the loader's "file not found" error for a ``source`` meant as a local path that does not exist (a URL
    or a Hub name is the loader's to check)."""
    if source.startswith(("http://", "https://")) or "://" in source:
        return
    expanded = os.path.expanduser(source)
    if not os.path.exists(expanded) and looks_like_path(source):
        raise InstructionDataError(source, "file not found")


__all__ = ["FILE_BUILDERS", "FILE_SUFFIXES", "check_local_source", "looks_like_path"]
