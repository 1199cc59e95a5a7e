"""Loading instruction data as a :class:`datasets.Dataset`, from wherever it is.

Sources (:func:`load_instruction_data`): an ``http(s)://`` URL (downloaded once into
``$GPT_SFT_CACHE/data`` -- default ``~/.cache/gpt_sft/data`` -- with a progress bar, written
atomically, reused offline afterwards), a local ``.json`` file (a list of objects), ``.jsonl`` file
(one object a line) or ``.parquet``/``.csv`` file, a Hugging Face Hub data set name (such as
``"tatsu-lab/alpaca"``; extra keyword arguments go to :func:`datasets.load_dataset`), an existing
:class:`datasets.Dataset`, or a list of dicts. Every entry is validated (:mod:`.validate`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import pyarrow as pa
from datasets import Dataset, DatasetDict, DatasetInfo, Value, load_dataset

from ..common.download import download_file, hub_offline_reason
from .constants import BOOK_DATA_URL
from .conversations import (conversation_problem, holds_pairs, pair_to_messages, preference_problem, resolve_format,
                            to_messages)
from .sources import FILE_BUILDERS, FILE_SUFFIXES, looks_like_path
from .validate import (REQUIRED_FIELDS, TEXT_FIELDS, InstructionDataError, LoadStats, UnparsableLine, json_type_name,
                       validate_entries, with_article)

logger = logging.getLogger(__name__)

_ORIGIN_PREFIX = "gpt_sft instruction data from "

_LOCAL_FILE_HINT = (
    "To use a local copy instead, pass its path: load_instruction_data('path/to/data.json') "
    "(a JSON list of objects with instruction/input/output, or a .jsonl file)."
)


def default_data_cache_dir() -> Path:
    """``$GPT_SFT_CACHE/data`` (default ``~/.cache/gpt_sft/data``): where downloaded data sets are kept."""
    root = os.environ.get("GPT_SFT_CACHE") or Path.home() / ".cache" / "gpt_sft"
    return Path(root).expanduser() / "data"


def _read_json(path: Path, source: str, skip_invalid: bool = False) -> tuple[list[Any], list[int] | None]:
    """Entries of a ``.json`` (list) or ``.jsonl`` file, and their line numbers for JSON Lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise InstructionDataError(source, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if path.suffix.lower() == ".jsonl":
        return _parse_jsonl(text, source, skip_invalid)
    try:
        data = json.loads(text)
    except RecursionError:
        raise InstructionDataError(source, "not usable JSON: nested too deeply (entries are flat objects)") from None
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # several JSON values: maybe JSON Lines named .json
            try:
                return _parse_jsonl(text, source, skip_invalid)
            except InstructionDataError:
                pass
        raise InstructionDataError(
            source, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    if not isinstance(data, list):
        hint = ""
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if lists:
                hint = f" (it has a list under {lists[0]!r}: save that list alone, or use .jsonl)"
        raise InstructionDataError(source, f"expected a JSON list of entries, got a {json_type_name(data)}{hint}")
    return data, None


def _parse_jsonl(text: str, source: str, skip_invalid: bool = False) -> tuple[list[Any], list[int]]:
    """One entry a line; a line that is not JSON is an error, or with ``skip_invalid`` an invalid entry
    that validation counts and skips like any other."""
    entries, lines = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError) as err:
            problem = (f"not valid JSON: {err.msg} at column {err.colno}" if isinstance(err, json.JSONDecodeError)
                       else "not usable JSON: nested too deeply")
            if not skip_invalid:
                raise InstructionDataError(
                    source, problem + " (pass skip_invalid=True to skip such lines)", len(entries), line=lineno
                ) from None
            entries.append(UnparsableLine(problem))
        lines.append(lineno)
    return entries, lines


def _dataset_from_entries(entries: Sequence[Mapping[str, Any]], source: str,
                          leading: Sequence[str] = TEXT_FIELDS) -> Dataset:
    """A Dataset with the ``leading`` columns (instruction, input, output), then every extra field (union,
    first-seen order)."""
    keys: dict[str, None] = dict.fromkeys(leading)
    for entry in entries:
        for key in entry:
            if key not in keys:
                keys[key] = None
    columns: dict[str, list[Any]] = {}
    for key in keys:
        if key == "input" and key in leading:
            columns[key] = [entry.get("input") or "" for entry in entries]
        else:
            columns[key] = [entry.get(key) for entry in entries]
    info = DatasetInfo(description=_ORIGIN_PREFIX + source)
    try:
        return Dataset.from_dict(columns, info=info)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        for key, values in columns.items():
            try:
                pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as col_err:
                # text that is not valid Unicode (a lone surrogate, which JSON's \ud800 escape can carry)
                broken = next((i for i, v in enumerate(values) if isinstance(v, str) and _not_unicode(v)), None)
                if broken is not None:
                    raise InstructionDataError(
                        source, f"field {key!r} holds text that is not valid Unicode (a lone surrogate such as "
                        f"\\ud800): fix or remove it", broken) from None
                typed = [(i, json_type_name(v)) for i, v in enumerate(values) if v is not None]
                first_type = typed[0][1] if typed else "null"
                index = next((i for i, kind in typed if kind != first_type), None)
                found = (f"{with_article(json_type_name(values[index]))} where entry {typed[0][0]} has "
                         f"{with_article(first_type)}" if index is not None else str(col_err))
                raise InstructionDataError(
                    source, f"field {key!r} does not have one type in all entries: {found}", index
                ) from None
        raise InstructionDataError(source, f"could not build a data set: {err}") from None


def _not_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def dataset_origin(dataset: Dataset) -> str:
    """The source a data set was loaded from (for error messages)."""
    description = dataset.info.description or ""
    if description.startswith(_ORIGIN_PREFIX):
        return description[len(_ORIGIN_PREFIX):].split("\n", 1)[0]
    if dataset.cache_files:
        return dataset.cache_files[0]["filename"]
    return dataset.info.dataset_name or "<in-memory data set>"


def _set_origin(dataset: Dataset, source: str) -> Dataset:
    """Record ``source`` in the first line of ``dataset.info.description`` (kept by select/map)."""
    old = dataset.info.description or ""
    if not old.startswith(_ORIGIN_PREFIX):
        dataset.info.description = _ORIGIN_PREFIX + source + (f"\n\n{old}" if old else "")
    return dataset


def _validate_dataset(dataset: Dataset, source: str, skip_invalid: bool, response_fields: Sequence[str] = (),
                      data_format: str = "alpaca", purpose: str = "training") -> tuple[Dataset, LoadStats]:
    """Check the columns and entries of a ``datasets.Dataset``; normalise ``input``. Conversations are checked
    and converted entry by entry (:func:`_load_entries`)."""
    data_format = resolve_format(data_format, None, dataset.column_names)
    if data_format != "alpaca":
        if len(dataset) == 0:
            raise InstructionDataError(source, "the data set is empty")
        return _load_entries(dataset.to_list(), None, source, skip_invalid, (), data_format, purpose)
    missing = [name for name in REQUIRED_FIELDS if name not in dataset.column_names]
    if missing:
        raise InstructionDataError(
            source,
            f"missing column(s) {missing}; found {dataset.column_names}. Instruction data needs "
            "'instruction' and 'output' (and optionally 'input'): rename yours with dataset.rename_column(old, new)",
        )
    for name in TEXT_FIELDS:
        feature = dataset.features.get(name)
        if feature is None:
            continue
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null")):
            shown = f"Value({feature.dtype!r})" if isinstance(feature, Value) else feature  # one repr in datasets 3 to 5
            raise InstructionDataError(source, f"column {name!r} has type {shown}, expected string")
    present = [name for name in (*TEXT_FIELDS, *response_fields) if name in dataset.column_names]
    if len(dataset) == 0:
        raise InstructionDataError(source, "the data set is empty")
    columns = dataset.select_columns(present)[:]
    entries = [dict(zip(present, values)) for values in zip(*(columns[name] for name in present))]
    valid, stats = validate_entries(entries, source, skip_invalid=skip_invalid, response_fields=response_fields)
    if len(valid) != len(dataset):
        dataset = dataset.select(valid)
    if "input" not in dataset.column_names:
        dataset = dataset.add_column("input", [""] * len(dataset))
    elif dataset.features["input"].dtype == "null" or any(entries[i]["input"] is None for i in valid):
        dataset = dataset.map(
            lambda batch: {"input": [value or "" for value in batch["input"]]},
            batched=True,
            features=_with_string_input(dataset.features),
            keep_in_memory=True,
            load_from_cache_file=False,
            desc="Filling missing inputs",
        )
    return dataset, stats


def _with_string_input(features):
    features = features.copy()
    features["input"] = Value("string")
    return features


def _offline_by_choice() -> bool:
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@overload
def load_instruction_data(
    source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = ...,
    *,
    skip_invalid: bool = ...,
    return_stats: Literal[False] = ...,
    split: str = ...,
    cache_dir: str | os.PathLike | None = ...,
    progress: bool = ...,
    response_fields: Sequence[str] = ...,
    data_format: str = ...,
    purpose: str = ...,
    **load_kwargs: Any,
) -> Dataset: ...


@overload
def load_instruction_data(
    source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = ...,
    *,
    skip_invalid: bool = ...,
    return_stats: Literal[True],
    split: str = ...,
    cache_dir: str | os.PathLike | None = ...,
    progress: bool = ...,
    response_fields: Sequence[str] = ...,
    data_format: str = ...,
    purpose: str = ...,
    **load_kwargs: Any,
) -> tuple[Dataset, LoadStats]: ...


def load_instruction_data(
    source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = BOOK_DATA_URL,
    *,
    skip_invalid: bool = False,
    return_stats: bool = False,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    response_fields: Sequence[str] = (),
    data_format: str = "auto",
    purpose: str = "training",
    **load_kwargs: Any,
) -> Dataset | tuple[Dataset, LoadStats]:
    """Load and validate instruction data; return a :class:`datasets.Dataset`.

    Args:
        source: URL (default: the book's data set), local ``.json``/``.jsonl``/``.parquet``/``.csv``
            file, Hugging Face Hub data set name (e.g. ``"tatsu-lab/alpaca"``, or ``"json"`` with
            ``data_files=...``), a ``Dataset``, or a list of dicts.
        skip_invalid: Skip invalid entries (logged with counts by reason) instead of raising.
        return_stats: Also return a :class:`LoadStats`.
        split: Split to load from a Hub data set.
        cache_dir: Download folder for URLs (default :func:`default_data_cache_dir`).
        progress: Show a progress bar while downloading.
        response_fields: More fields every entry needs as non-empty strings (preference data's
            ``chosen`` and ``rejected``), validated like ``output``; or, for ``messages`` data, preference
            data in TRL's conversational format (:func:`gpt_sft.data.conversations.preference_problem`).
        data_format: ``auto`` (what the first entry holds), ``alpaca``, ``messages`` or ``sharegpt``
            (:mod:`gpt_sft.data.conversations`). Conversations load as one ``messages`` column (list of
            ``{"role", "content"}``) and the entries' other fields; ShareGPT is converted to it here.
        purpose: What conversations are read for, which decides how they may end
            (:mod:`gpt_sft.data.conversations`): ``training`` (the default: on an answer) or ``generation``
            (questions to answer: also on a user message). Alpaca entries are the same either way.
        **load_kwargs: Passed to :func:`datasets.load_dataset` for Hub names.

    The columns are ``instruction``, ``input`` (``""`` where missing), ``output`` and any extra field; for
    conversations, ``messages`` and any extra field; for conversational preference pairs (as preference data, or as
    instruction data from a file of them), ``messages`` (the prompt and the chosen answer), ``rejected`` (the rejected
    answer's text) and any extra field.

    Raises:
        InstructionDataError: the source cannot be read, is not a list of entries, is empty, or has an
            invalid entry (unless ``skip_invalid``). The message names the source, entry and problem.
        gpt_sft.download.DownloadError: a URL that is not cached yet cannot be downloaded (the
            message says how to pass a local copy instead).
    """
    if isinstance(source, DatasetDict):
        source = source[split]
    path: Path | None = None  # the file read, if any
    if isinstance(source, Dataset):
        name = dataset_origin(source)
        dataset, stats = _validate_dataset(source, name, skip_invalid, response_fields, data_format, purpose)
    elif isinstance(source, (list, tuple)):
        name = "<list of entries>"
        dataset, stats = _load_entries(list(source), None, name, skip_invalid, response_fields, data_format, purpose)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(("http://", "https://")):
            path = _download(text, cache_dir, progress)
            name = text
            dataset, stats = _load_file(path, name, skip_invalid, response_fields, data_format, purpose)
        elif "://" in text:
            raise InstructionDataError(text, "unsupported URL scheme (use http(s):// or a local path)")
        elif os.path.isfile(os.path.expanduser(text)):
            path = Path(text).expanduser()
            name = str(path)
            dataset, stats = _load_file(path, name, skip_invalid, response_fields, data_format, purpose)
        elif os.path.isdir(os.path.expanduser(text)):
            name = str(Path(text).expanduser())
            dataset, stats = _load_hub(name, name, split, skip_invalid, load_kwargs, response_fields, data_format,
                                       purpose)
        elif looks_like_path(text) or isinstance(source, os.PathLike):
            raise InstructionDataError(text, "file not found")
        else:
            name = text
            if "data_files" in load_kwargs:
                name = f"{text} (data_files={load_kwargs['data_files']})"
            dataset, stats = _load_hub(text, name, split, skip_invalid, load_kwargs, response_fields, data_format,
                                       purpose)
    else:
        raise TypeError(f"load_instruction_data: unsupported source type {type(source).__name__}")
    stats.sha256 = _sha256(path) if path is not None else None
    stats.fingerprint = dataset._fingerprint

    if len(dataset) == 0:
        raise InstructionDataError(
            name, "no valid entries" + (f" (all {stats.num_read} were skipped: {stats.skipped})" if stats.num_read else "")
        )
    if stats.num_skipped:
        logger.warning("%s", stats)
    return (dataset, stats) if return_stats else dataset


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, cache_dir: str | os.PathLike | None, progress: bool) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_data_cache_dir()
    filename = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "data.json"
    dest = folder / hashlib.sha256(url.encode()).hexdigest()[:16] / filename
    return download_file(url, dest, progress=progress, local_hint=_LOCAL_FILE_HINT)


def _load_entries(
    entries: list[Any], lines: list[int] | None, source: str, skip_invalid: bool, response_fields: Sequence[str] = (),
    data_format: str = "alpaca", purpose: str = "training",
) -> tuple[Dataset, LoadStats]:
    if not entries:
        raise InstructionDataError(source, "the data set is empty (no entries)")
    # the first entry that is an object says the format (a JSON Lines line that is not JSON says nothing)
    first = next((entry for entry in entries if isinstance(entry, Mapping)), None)
    data_format = resolve_format(data_format, first)
    # TRL's conversational preference pairs: always for preference data in messages form; as instruction data (a
    # preference run's recipe reading its data back), the conversation of the prompt and the chosen answer
    pairs = data_format == "messages" and (bool(response_fields) or holds_pairs(first))
    if response_fields and data_format == "sharegpt":
        raise InstructionDataError(source, "ShareGPT data holds no preference pairs: preference data is Alpaca pairs "
                                           "(instruction, input, chosen, rejected) or TRL's conversational pairs (prompt, "
                                           "chosen, rejected as messages); pass --data-format auto, alpaca or messages")
    problem = (preference_problem if pairs else None if data_format == "alpaca"
               else functools.partial(conversation_problem, data_format=data_format, purpose=purpose))
    valid, stats = validate_entries(entries, source, skip_invalid=skip_invalid, lines=lines,
                                    response_fields=response_fields, problem=problem)
    stats.data_format = data_format
    if not valid:
        raise InstructionDataError(source, f"no valid entries (all {stats.num_read} were skipped: {stats.skipped})")
    kept = entries if len(valid) == len(entries) else [entries[i] for i in valid]
    if pairs:
        return _dataset_from_entries([pair_to_messages(entry) for entry in kept], source, ("messages", "rejected")), stats
    if data_format != "alpaca":  # ShareGPT becomes messages here, once
        return _dataset_from_entries([to_messages(entry, data_format) for entry in kept], source, ("messages",)), stats
    return _dataset_from_entries(kept, source), stats


def _load_file(path: Path, source: str, skip_invalid: bool, response_fields: Sequence[str] = (),
               data_format: str = "alpaca", purpose: str = "training") -> tuple[Dataset, LoadStats]:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl") or suffix not in FILE_BUILDERS:
        if suffix not in (".json", ".jsonl"):
            # Unknown suffix (e.g. a URL without one): try JSON, say what we expected if it fails.
            try:
                entries, lines = _read_json(path, source, skip_invalid)
            except InstructionDataError as err:
                raise InstructionDataError(
                    source, f"{err.problem} (supported files: {', '.join(FILE_SUFFIXES)})", err.index
                ) from None
        else:
            entries, lines = _read_json(path, source, skip_invalid)
        return _load_entries(entries, lines, source, skip_invalid, response_fields, data_format, purpose)
    try:
        dataset = load_dataset(FILE_BUILDERS[suffix], data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - any reader error becomes one clear message
        raise InstructionDataError(source, f"could not read the file ({err.__class__.__name__}: {err})") from None
    dataset, stats = _validate_dataset(dataset, source, skip_invalid, response_fields, data_format, purpose)
    return _set_origin(dataset, source), stats


def _load_hub(
    name: str, source: str, split: str, skip_invalid: bool, load_kwargs: dict[str, Any],
    response_fields: Sequence[str] = (), data_format: str = "alpaca", purpose: str = "training",
) -> tuple[Dataset, LoadStats]:
    if not _offline_by_choice() and not os.path.isdir(name):
        offline = hub_offline_reason()
        if offline is not None:  # say so now, instead of after ~25 s of retries
            raise InstructionDataError(
                source,
                f"not a local file, and the Hugging Face Hub cannot be reached to load it as a data set ({offline}; "
                f"if it is in the local cache, set HF_DATASETS_OFFLINE=1). {_LOCAL_FILE_HINT}",
            )
    try:
        dataset = load_dataset(name, split=split, **load_kwargs)
    except Exception as err:  # noqa: BLE001 - network, not-found, offline... all get one message
        raise InstructionDataError(
            source,
            f"could not load this data set with datasets.load_dataset ({err.__class__.__name__}: {err}). "
            f"If it is a Hugging Face Hub data set, check the name and your network (HF_DATASETS_OFFLINE "
            f"is {os.environ.get('HF_DATASETS_OFFLINE', 'unset')}). {_LOCAL_FILE_HINT}",
        ) from None
    dataset, stats = _validate_dataset(dataset, source, skip_invalid, response_fields, data_format, purpose)
    return _set_origin(dataset, source), stats


