"""A GGUF export read by llama.cpp (through llama-cpp-python) against the checkpoint it was exported from.

Four rows for the exported file itself: llama.cpp's tokenizer (from the file) on the held-out prompts against
GPT-2's; the chat template in the file, rendered as llama.cpp's OpenAI-compatible server renders it (``gpt-sft serve``),
against the training text; llama.cpp's logits of the file against those of the checkpoint converted here to the same
type (the same weights give the same numbers: a file of another checkpoint, or weights changed since the export, do
not, even where the answers stay the same); and llama.cpp's greedy tokens against ours (what a "talks gibberish" export
fails). With ``convert``, the checkpoint is also converted into temporary files of the other types, whose greedy
tokens are compared the same way: the f32, f16 and q8_0 figures side by side.

f32 and f16 must give our tokens. Only a divergence at a near tie is forgiven, where our model preferred its token by
less than the type's rounding can move a logit (:data:`NEAR_TIE`); the detail counts them. q8_0 changes the weights
by up to half a step of 1/127 of each block's largest: its greedy tokens are compared as a share that agrees
(:data:`Q8_0_AGREEMENT`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import gguf
import numpy as np

try:  # optional (gpt-sft[serve]): without it the GGUF checks are skipped, saying how to install it
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
except ImportError:  # pragma: no cover - the dev install has it
    llama_cpp = None
from ..export.gguf_file import write_gguf
from ..model.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer
from .check import AT_LEAST, Check, skipped
from .held_out import HeldOut, text_check

GGUF_TYPES = ("f32", "f16", "q8_0")
# Our logit of our greedy token minus our logit of llama.cpp's, below which a differing token is a near tie that the
# type's arithmetic can flip. f32: llama.cpp sums the same products in another order (its logits differ from ours by
# about 1e-5 on the offline demo, 1e-3 at most on the tests' models). f16: weights and, in llama.cpp's CPU matrix
# products, activations are rounded to 11 bits, about 5e-4 of each value, which moves a GPT-2-size logit (tens to a
# hundred) by hundredths and, through the layers, up to tenths. A model other than the checkpoint leaves ours where
# ours was sure: a copy of the offline demo with 60% noise on its matrices first differs where ours led by 6.5.
NEAR_TIE = {"f32": 0.01, "f16": 0.25}
# q8_0: the share of our greedy tokens that llama.cpp reproduces, each prompt counted up to its first difference
# (after it the two continue different texts). The offline demo keeps all of them in q8_0; a near tie flipped early in
# a long answer costs the rest of that answer, so a GPT-2-size model keeps less; a model other than the checkpoint
# keeps less (that copy with 60% noise: 0.65 on 5 prompts). 0.8 is the test suite's bound since the GGUF export.
Q8_0_AGREEMENT = 0.8
# The exported file against the checkpoint converted here to the same type, both run by llama.cpp: the same weights
# give the same logits, bit for bit (measured: 0 on the offline demo, in f16 and q8_0). Any weight changed since the
# export, or a file of another checkpoint, moves them (10% noise on the demo's matrices: by 0.44), even where the
# greedy tokens stay the same. The bound leaves room for float32 round-off alone (another build of the writer).
SAME_FILE_BOUND = 1e-4
INSTALL = "pip install 'gpt-sft[serve]' (llama-cpp-python)"


def llama_cpp_missing() -> str | None:
    """Why llama.cpp cannot be run here, or None."""
    if llama_cpp is None:
        return f"llama.cpp's Python binding is not installed: {INSTALL}"
    return None


def gguf_type(llm, path: Path) -> str:
    """The weight type the opened GGUF file says it holds (``general.file_type``): f32, f16 or q8_0."""
    names = {int(gguf.LlamaFileType.ALL_F32): "f32", int(gguf.LlamaFileType.MOSTLY_F16): "f16",
             int(gguf.LlamaFileType.MOSTLY_Q8_0): "q8_0"}
    value = llm.metadata.get("general.file_type")
    if value is None or not value.isdigit() or int(value) not in names:
        raise ValueError(f"weight type {value!r} (general.file_type), which gpt-sft does not export: f32, f16 or q8_0")
    return names[int(value)]


def row_names(file_type: str, references: Sequence[str]) -> list[str]:
    """The names of the rows :func:`gguf_checks` returns, in order."""
    return (["llama.cpp tokenizer vs GPT-2's (prompts tokenized differently)",
             "chat template in the file, rendered by llama.cpp's server, vs the training text (prompts differing)",
             f"llama.cpp logits of the exported {file_type} file vs the checkpoint converted here to {file_type} "
             "(max abs difference)",
             _greedy_name(f"the exported {file_type} file", file_type)]
            + [_greedy_name(f"the checkpoint converted here to {t}", t) for t in references])


def _greedy_name(what: str, file_type: str) -> str:
    if file_type == "q8_0":
        return f"llama.cpp greedy tokens of {what} agreeing with ours (share)"
    return f"llama.cpp greedy tokens of {what} vs ours (prompts differing)"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp's C code writes its loading notes to the process's stderr, past Python: not into our table."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open(path: Path, context: int):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, min(4, cores // 2))  # llama.cpp's threads spin while they wait: a busy machine's cores stall them
    with _quiet_stderr():
        return llama_cpp.Llama(str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads, verbose=False)


def gguf_checks(path: Path, held: HeldOut, group: str, *, convert: bool = False) -> list[Check]:
    """The rows of the GGUF file ``path`` (:func:`row_names`); ``convert``: also the greedy tokens of the checkpoint
    converted to the other types."""
    missing = llama_cpp_missing()
    if missing:
        return [skipped(group, f"llama.cpp checks of {path.name} (tokenizer, chat template, logits, greedy tokens)",
                        missing)]
    context = held.model.config.n_positions
    try:
        llm = _open(path, context)
    except ValueError as err:  # llama-cpp-python's "Failed to load model from file"
        return [unreadable(group, path, err)]
    try:
        file_type = gguf_type(llm, path)
        others = [t for t in GGUF_TYPES if t != file_type] if convert else []
        names = row_names(file_type, others)
        rows = [_tokenizer_check(llm, held, group, names[0]), _template_check(llm, held, group, names[1])]
        exported = [_last_logits(llm, ids) for ids in held.ids]
        rows.append(_greedy_check(llm, held, group, names[3], file_type))
    except ValueError as err:
        return [unreadable(group, path, err)]
    finally:
        llm.close()
    with tempfile.TemporaryDirectory(prefix="gpt-sft-verify-") as tmp:
        for reference in [file_type, *others]:
            converted = write_gguf(held.model, Path(tmp) / f"reference-{reference}.gguf", gguf_type=reference,
                                   style=held.style, conversation_layout=held.layout).path
            llm = _open(converted, context)
            try:
                if reference == file_type:
                    rows.insert(2, _same_file_check(exported, [_last_logits(llm, ids) for ids in held.ids], held,
                                                    group, names[2]))
                else:
                    rows.append(_greedy_check(llm, held, group, names[len(rows)], reference))
            finally:
                llm.close()
            converted.unlink()
    return rows


def _last_logits(llm, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits of the token after ``ids``."""
    llm.reset()
    llm.eval(ids)
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def _same_file_check(exported: list[np.ndarray], converted: list[np.ndarray], held: HeldOut, group: str,
                     name: str) -> Check:
    differences = [float(np.abs(a - b).max()) for a, b in zip(exported, converted)]
    worst = int(np.argmax(differences))
    return Check(group, name, differences[worst], SAME_FILE_BOUND,
                 detail=f"largest at {held.describe(worst)}; {held.source}")


def unreadable(group: str, path: Path, err: BaseException) -> Check:
    """The failing row of an export file that cannot be read at all."""
    return Check(group, "the export's file can be read", None, 0.0,
                 detail=f"{path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")


def _tokenizer_check(llm, held: HeldOut, group: str, name: str) -> Check:
    theirs = [llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) for prompt in held.prompts]
    wrong = [i for i, (a, b) in enumerate(zip(theirs, held.ids)) if a != b]
    detail = held.source
    if wrong:
        first = wrong[0]
        at = next((i for i, (a, b) in enumerate(zip(theirs[first], held.ids[first])) if a != b),
                  min(len(theirs[first]), len(held.ids[first])))
        detail = (f"{held.describe(first)}: token {at} is {theirs[first][at:at + 3]} where GPT-2's are "
                  f"{held.ids[first][at:at + 3]}; {held.source}")
    return Check(group, name, float(len(wrong)), 0.0, detail=detail)


def _template_check(llm, held: HeldOut, group: str, name: str) -> Check:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return skipped(group, name, f"the file carries no chat template (prompt style {held.style.name!r} has none)")
    formatter = Jinja2ChatFormatter(template=template, eos_token=END_OF_TEXT, bos_token=END_OF_TEXT,
                                    stop_token_ids=[END_OF_TEXT_ID])
    rendered = []
    for chat in held.chats:
        try:
            rendered.append(formatter(messages=chat).prompt)
        except Exception as err:  # noqa: BLE001 - a template that raises on a held-out entry fails the check
            rendered.append(f"<the template raised {type(err).__name__}: {err}>")
    return text_check(group, name, rendered, held, "the file's template")


def _greedy(llm, ids: list[int], budget: int) -> list[int]:
    """llama.cpp's greedy continuation of ``ids``: up to ``budget`` tokens, end-of-text included when it comes."""
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token == END_OF_TEXT_ID or len(out) == budget:
            break
    return out


def _greedy_check(llm, held: HeldOut, group: str, name: str, file_type: str) -> Check:
    theirs = [_greedy(llm, ids, budget) for ids, budget in zip(held.ids, held.budgets)]
    divergences = held.divergences(theirs)
    decode = get_tokenizer().decode
    first = ""
    if file_type == "q8_0":
        starts = {d.prompt: d.position for d in divergences}
        kept = sum(starts.get(i, len(ours)) for i, ours in enumerate(held.greedy))
        share = kept / max(1, sum(len(ours) for ours in held.greedy))
        decisive = divergences
    else:
        decisive = [d for d in divergences if d.margin > NEAR_TIE[file_type]]
    if decisive:
        d = decisive[0]
        first = (f"{held.describe(d.prompt)}: new token {d.position} is {decode([d.theirs]) if d.theirs >= 0 else 'none'!r}"
                 f" where ours is {decode([d.ours]) if d.ours >= 0 else 'none'!r}, ahead by {d.margin:.3g} logits; ")
    identical = f"{len(held.ids) - len(divergences)} of {len(held.ids)} prompts identical"
    if file_type == "q8_0":
        return Check(group, name, share, Q8_0_AGREEMENT, AT_LEAST, detail=f"{first}{identical}; {held.source}")
    ties = len(divergences) - len(decisive)
    tied = f", {ties} near-tie divergence(s) forgiven (ours ahead by < {NEAR_TIE[file_type]} logits)" if ties else ""
    return Check(group, name, float(len(decisive)), 0.0, detail=f"{first}{identical}{tied}; {held.source}")


__all__ = ["GGUF_TYPES", "INSTALL", "NEAR_TIE", "Q8_0_AGREEMENT", "SAME_FILE_BOUND", "gguf_checks", "gguf_type", "llama_cpp_missing",
           "row_names", "unreadable"]
