"""Atomic writes: a file or folder is either the old one or the complete new one, never half.

Everything gpt-sft writes for people to keep (checkpoints, responses, judge reports, metrics) goes
through here: written under a temporary name in the same folder, flushed to disk, then renamed into
place, so Ctrl-C, a kill or a full disk never leaves a truncated file that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, ``fsync`` and ``os.replace``.

    The new file gets the permissions ``open(path, "w")`` would give it (an existing file keeps its own).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if path.exists():
            mode = path.stat().st_mode & 0o777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)  # mkstemp creates 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that takes a file name (the GGUF writer,
    matplotlib); on success it gets ``open``'s permissions and replaces ``path``; on any exception it
    is removed and ``path`` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, not ASCII-escaped) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_permissions(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything in it the permissions a plain ``open``/``mkdir`` would have
    given (``0666``/``0777`` less the umask): temporary files and folders are created ``0600``/``0700``,
    and a renamed one keeps that."""
    umask = _umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final_dir``; on success it replaces ``final_dir`` as a whole.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and an existing
    ``final_dir`` is left untouched.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    try:
        yield tmp
        default_permissions(tmp)
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DiskFullError(OSError):
    """A write failed because the disk is full; the message says what was being written, and where."""

    def __init__(self, what: str, where: str | os.PathLike) -> None:
        super().__init__(errno.ENOSPC, f"disk full while writing {what} to {where}: free some space, or write elsewhere")
        self.filename = str(where)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is the disk being full. Writers in C and Rust (torch,
    safetensors) report it as text, not as an ``OSError`` with ``errno.ENOSPC``."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        text = str(err)
        if "No space left on device" in text or "StorageFull" in text:
            return True
        # torch's zip writer reports a short write without the cause ("unexpected pos N vs M", "file write failed")
        if "PytorchStreamWriter failed writing" in text or re.search(r"unexpected pos \d+ vs \d+", text):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def reporting_disk_full(what: str, where: str | os.PathLike) -> Iterator[None]:
    """Turn any disk-full failure inside into one :class:`DiskFullError` naming ``what`` and ``where``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if is_disk_full(err):
            raise DiskFullError(what, where) from err
        raise
