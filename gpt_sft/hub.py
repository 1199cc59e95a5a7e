"""Export: Hub-compatible checkpoint folders, written atomically, and pushing them to the Hub.

A checkpoint folder holds what ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
and ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)`` need: ``config.json`` with
``auto_map``, the self-contained ``configuration_gpt.py`` / ``modeling_gpt.py``, safetensors weights,
the GPT-2 tokenizer files and ``generation_config.json`` (end-of-text 50256 for stopping and padding).

Writes go to a temporary sibling folder that is renamed into place only when complete, so an
interrupted save (Ctrl-C, kill, full disk) never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .tokenizer import END_OF_TEXT_ID, get_hf_tokenizer


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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
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


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def save_checkpoint(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    extra_json: dict[str, object] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Save ``model`` (a ``GPTForCausalLM``, possibly a merged or unmerged peft model) as a complete,
    reloadable Hugging Face folder, atomically.

    Args:
        model: The model; its ``generation_config`` gets end-of-text 50256 as EOS and padding.
        output_dir: Final folder; replaced as a whole when the new one is complete.
        tokenizer: A Hugging Face tokenizer to save alongside (default: the GPT-2 tokenizer).
        extra_json: ``{file name: object}`` written as JSON files into the folder (training args, metrics).
        write_extra: Called with the temporary folder to add more files (plots, model card) before
            the rename.
    """
    tokenizer = tokenizer if tokenizer is not None else get_hf_tokenizer()
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = END_OF_TEXT_ID
        gen.pad_token_id = END_OF_TEXT_ID
        gen.bos_token_id = END_OF_TEXT_ID
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=safe_serialization)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
        if write_extra is not None:
            write_extra(tmp)
    return Path(output_dir)
