"""The resumable score cache: one line per finished judgement, so an interrupted evaluation never asks
a finished entry again."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from .errors import JudgeCacheBusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the cache is not locked
    fcntl = None


def cache_key(backend: str, model: str, prompt: str) -> str:
    """SHA-256 of (judge backend, judge model, full judge prompt): one cache slot per question."""
    blob = json.dumps([backend, model, prompt], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def cache_lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file a :class:`ScoreCache` keeps beside its file: ``<cache>.lock``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


class ScoreCache:
    """An append-only JSONL file of finished judgements, for resuming an interrupted evaluation.

    One line per finished question (``{"key", "score", "status", "reason", "replies", ...}``),
    written under a lock, flushed and ``fsync``-ed before the next. On load, a line that does not
    parse (typically the last one, cut by a kill) is ignored; if the file does not end with a
    newline one is written before the next record so it cannot be glued to the broken fragment.
    Later lines for the same key win. Only judge verdicts are stored (scores, and replies that stayed
    unparsable); request failures are not, so they are asked again.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        self._lock = threading.Lock()
        self._needs_newline = False
        self._owner = None
        self._claim()
        self._load()
        self._file = None

    def _claim(self) -> None:
        """Make this process the cache's only user (``<cache>.lock``, an advisory lock that the system
        drops when the process ends): two evaluations on one cache would ask every entry twice."""
        if fcntl is None or self._owner is not None:
            return
        lock_path = cache_lock_path(self.path)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise JudgeCacheBusyError(
                f"{self.path} is in use by another evaluation ({holder}); wait for it to finish, "
                "or give this one its own cache with --cache"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self._owner = handle

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        self._needs_newline = bool(data) and not data.endswith(b"\n")
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                key = record["key"]
            except (ValueError, KeyError, TypeError, UnicodeDecodeError):
                self.skipped_lines += 1
                continue
            if isinstance(key, str):
                self.records[key] = record

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record for ``key``, if any."""
        return self.records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        """Store ``record`` (must have ``key``) durably: write, flush, fsync."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                self._claim()
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a", encoding="utf-8")
                if self._needs_newline:
                    self._file.write("\n")
                    self._needs_newline = False
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records[record["key"]] = record

    def close(self) -> None:
        """Close the file and let other evaluations use the cache (further appends reopen and reclaim it)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._owner is not None:
                self._owner.close()  # closing drops the lock
                self._owner = None

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


