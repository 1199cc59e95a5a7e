"""Atomic writes: an interrupted write leaves the old file (or nothing), never half a file."""

from __future__ import annotations

import json
import os

import pytest

from gpt_sft.common import atomic_io
from gpt_sft.common.atomic_io import atomic_directory, write_json_atomic


def test_interrupted_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_text("OLD")
    real_fsync = os.fsync

    def killed(fd):  # the data is half on disk when the process is interrupted
        real_fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_io.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, [{"a": 1}])
    assert target.read_text() == "OLD" and list(tmp_path.iterdir()) == [target]
    monkeypatch.undo()
    write_json_atomic(target, [{"a": "é"}], indent=4)
    assert json.loads(target.read_text()) == [{"a": "é"}] and list(tmp_path.iterdir()) == [target]
    assert '    {\n        "a": "é"' in target.read_text(encoding="utf-8")


def test_new_file_gets_normal_permissions(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "x.json", {})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    final = tmp_path / "ckpt"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("disk full")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    with atomic_directory(final) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
