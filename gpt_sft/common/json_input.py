"""Reading a JSON file a user names (a judge report, a responses file): a regular file of a sane size only, so that
``/dev/zero``, a FIFO or a mistaken multi-GB file is a one-line error instead of a read that never ends."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

JSON_INPUT_LIMIT = 1 << 30  # bytes: far above any responses or report file (the book's 1100 entries are ~0.5 MB)


def read_json_file(path: str | os.PathLike, limit: int = JSON_INPUT_LIMIT) -> Any:
    """The JSON value in ``path``; ``ValueError`` naming the file for one that is not a regular file, is larger
    than ``limit`` bytes, or is not UTF-8 JSON."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        raise ValueError(f"{path}: {err.strerror or err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file")
    if info.st_size > limit:
        raise ValueError(f"{path}: {info.st_size:,} bytes, larger than the {limit:,} a JSON input may have")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # the file may have grown since stat
        if len(data) > limit:
            raise ValueError(f"{path}: larger than the {limit:,} bytes a JSON input may have")
        return json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None


__all__ = ["JSON_INPUT_LIMIT", "read_json_file"]
