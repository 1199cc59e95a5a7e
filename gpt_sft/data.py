"""Stage 1 of the book's pipeline as ``datasets`` objects: load, validate, split, tokenize, batch.

::

    ds = load_instruction_data()                  # the book's 1100 entries (downloaded once, cached)
    splits = split_dataset(ds)                    # DatasetDict: train 935 / validation 55 / test 110
    train = tokenize_dataset(splits["train"])     # adds input_ids and prompt_length
    loaders = create_dataloaders()                # or all of it in one call: train/val/test DataLoaders

**Sources** (:func:`load_instruction_data`): an ``http(s)://`` URL (downloaded once into
``$GPT_SFT_CACHE/data`` -- default ``~/.cache/gpt_sft/data`` -- with a progress bar, written
atomically, reused offline afterwards), a local ``.json`` file (a list of objects), ``.jsonl`` file
(one object a line) or ``.parquet``/``.csv`` file, a Hugging Face Hub data set name (such as
``"tatsu-lab/alpaca"``; extra keyword arguments go to :func:`datasets.load_dataset`), an existing
:class:`datasets.Dataset`, or a list of dicts.

**Validation.** Every entry needs a string ``instruction`` and a non-empty string ``output``;
``input`` is optional (missing or null means ``""``); other fields are kept. A bad file or entry
raises one :class:`InstructionDataError` naming the file, the entry index (0-based, in file order)
and the problem. ``<|endoftext|>`` inside the text is rejected: it is GPT-2's end-of-text and padding
token (id 50256), so text containing it would either make the tokenizer raise or, encoded as
ordinary text, teach the model a fake end-of-text marker. With ``skip_invalid=True`` invalid entries
are skipped instead; how many and why is logged as a warning and returned in :class:`LoadStats`
(``return_stats=True``). Nothing is dropped silently.

**Over-long examples** (:func:`tokenize_dataset`): like the book's collate function, the collator
keeps at most ``allowed_max_length`` input positions and targets (``allowed_max_length + 1`` columns
in Hugging Face form), so an example is over-long when ``len(input_ids) > allowed_max_length``
(equivalently, tokens plus the appended end-of-text > ``allowed_max_length + 1``) -- the book cuts
its end-of-text target. They are counted and logged; ``overlong="truncate"`` keeps them (the book's
behaviour: they are cut in the collator) and ``overlong="drop"`` removes them. The counts are in :class:`TokenizationStats`
(``return_stats=True``).

This module knows nothing of training or generation.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

from .prompts import PromptStyle, get_prompt_style

if TYPE_CHECKING:  # pragma: no cover
    from datasets import Dataset, DatasetDict
    from torch.utils.data import DataLoader

    from .collator import InstructionDataCollator

__all__ = [
    "DEFAULT_DATA_URL",
    "END_OF_TEXT",
    "InstructionDataError",
    "LoadStats",
    "TokenizationStats",
    "DataLoaders",
    "load_instruction_data",
    "validate_entries",
    "split_dataset",
    "tokenize_dataset",
    "create_dataloaders",
    "default_data_cache_dir",
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_URL = (
    "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/instruction-data.json"
)
END_OF_TEXT = "<|endoftext|>"
REQUIRED_FIELDS = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")
_FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
_FILE_SUFFIXES = (".json", ".jsonl", *_FILE_BUILDERS)
_ORIGIN_PREFIX = "gpt_sft instruction data from "
_MIN_TEXTS_PER_THREAD = 256

_LOCAL_FILE_HINT = (
    "To use a local copy instead, pass its path: load_instruction_data('path/to/data.json') "
    "(a JSON list of objects with instruction/input/output, or a .jsonl file)."
)


class InstructionDataError(ValueError):
    """Invalid instruction data. The message names the source, the entry index and the problem.

    Attributes:
        source: The file, URL or data set name.
        index: 0-based index of the offending entry in file order (``None`` for file-level problems).
        problem: What is wrong.
    """

    def __init__(self, source: str, problem: str, index: int | None = None, *, line: int | None = None):
        self.source = str(source)
        self.index = index
        self.problem = problem
        where = self.source
        if index is not None:
            where += f": entry {index}" + (f" (line {line})" if line is not None else "")
        super().__init__(f"{where}: {problem}")


@dataclass
class LoadStats:
    """What :func:`load_instruction_data` read and skipped.

    Attributes:
        source: The file, URL or data set name.
        num_read: Entries in the source.
        num_loaded: Entries in the returned data set.
        skipped: Number of skipped entries by reason (only with ``skip_invalid=True``).
        skipped_indices: 0-based indices of the skipped entries.
    """

    source: str
    num_read: int
    num_loaded: int
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_indices: list[int] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_indices)

    def __str__(self) -> str:
        text = f"{self.source}: loaded {self.num_loaded} of {self.num_read} entries"
        if self.skipped:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items(), key=lambda kv: -kv[1]))
            text += f"; skipped {self.num_skipped} invalid ({reasons})"
        return text


@dataclass
class TokenizationStats:
    """What :func:`tokenize_dataset` did.

    Attributes:
        num_examples: Entries tokenized.
        num_kept: Entries in the returned data set.
        num_overlong: Entries with ``len(input_ids) > allowed_max_length`` (tokens without the
            end-of-text; they lose their end-of-text target in the collator, as in the book, or are
            dropped with ``overlong="drop"``).
        num_dropped: Over-long entries removed (``overlong="drop"``).
        num_truncated: Entries whose stored ``input_ids`` were cut to ``allowed_max_length + 1``
            tokens (``overlong="truncate"``; the collator builds the same batches from them as from
            the full ids). An entry of exactly ``allowed_max_length + 1`` tokens is over-long but
            not cut.
        longest: Longest ``len(input_ids) + 1`` seen (tokens plus the end-of-text).
        num_tokens: Total stored tokens (without end-of-text).
        allowed_max_length: The limit used (``None``: no limit).
        overlong: ``"truncate"`` or ``"drop"``.
        seconds: Wall time of the tokenization.
    """

    num_examples: int = 0
    num_kept: int = 0
    num_overlong: int = 0
    num_dropped: int = 0
    num_truncated: int = 0
    longest: int = 0
    num_tokens: int = 0
    allowed_max_length: int | None = None
    overlong: str = "truncate"
    seconds: float = 0.0

    @property
    def examples_per_second(self) -> float:
        return self.num_examples / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        text = f"tokenized {self.num_examples} entries ({self.num_tokens} tokens, longest {self.longest} with end-of-text)"
        if self.num_overlong:
            action = "dropped" if self.overlong == "drop" else "kept and truncated"
            text += (
                f"; {self.num_overlong} over-long (more than allowed_max_length={self.allowed_max_length} "
                f"tokens: the end-of-text target is cut), {action}"
            )
        return text


# --------------------------------------------------------------------------------------------------
# loading


def default_data_cache_dir() -> Path:
    """``$GPT_SFT_CACHE/data`` (default ``~/.cache/gpt_sft/data``): where downloaded data sets are kept."""
    root = os.environ.get("GPT_SFT_CACHE") or Path.home() / ".cache" / "gpt_sft"
    return Path(root).expanduser() / "data"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class _UnparsableLine:
    """A JSON Lines line that is not JSON: an invalid entry (skipped with ``skip_invalid``)."""

    message: str


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _entry_problem(entry: Any) -> tuple[str, str] | None:
    """``(reason, message)`` if ``entry`` is invalid, else ``None``."""
    if isinstance(entry, _UnparsableLine):
        return "not valid JSON", entry.message
    if not isinstance(entry, Mapping):
        return "not an object", f"expected an object with 'instruction' and 'output', got a {_json_type(entry)}"
    for name in REQUIRED_FIELDS:
        value = entry.get(name)
        if value is None:
            what = "is null" if name in entry else "is missing"
            return f"missing '{name}'", f"required field '{name}' {what}"
        if not isinstance(value, str):
            return f"'{name}' not a string", f"field '{name}' must be a string, got a {_json_type(value)}"
    value = entry.get("input")
    if value is not None and not isinstance(value, str):
        return "'input' not a string", f"field 'input' must be a string (or missing), got a {_json_type(value)}"
    if not entry["output"].strip():
        return "empty 'output'", "field 'output' is empty"
    for name in TEXT_FIELDS:
        value = entry.get(name)
        if value and END_OF_TEXT in value:
            return (
                f"'{END_OF_TEXT}' in '{name}'",
                f"field '{name}' contains '{END_OF_TEXT}', GPT-2's end-of-text/padding token; "
                "remove it from the data (or pass skip_invalid=True to skip such entries)",
            )
    return None


def validate_entries(
    entries: Sequence[Any],
    source: str = "<data>",
    *,
    skip_invalid: bool = False,
    lines: Sequence[int] | None = None,
) -> tuple[list[int], LoadStats]:
    """Check instruction entries; return the indices of the valid ones and the stats.

    Raises :class:`InstructionDataError` on the first invalid entry (mentioning how many more there
    are) unless ``skip_invalid`` is true. ``lines`` gives each entry's line number (JSON Lines).
    """
    valid: list[int] = []
    reasons: Counter[str] = Counter()
    bad: list[int] = []
    first: tuple[int, str] | None = None
    for i, entry in enumerate(entries):
        problem = _entry_problem(entry)
        if problem is None:
            valid.append(i)
            continue
        reasons[problem[0]] += 1
        bad.append(i)
        if first is None:
            first = (i, problem[1])
    if bad and not skip_invalid:
        i, message = first
        if len(bad) > 1:
            message += f" ({len(bad) - 1} more invalid entries; pass skip_invalid=True to skip them)"
        raise InstructionDataError(source, message, i, line=None if lines is None else lines[i])
    return valid, LoadStats(source, len(entries), len(valid), dict(reasons), bad)


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
        raise InstructionDataError(source, f"expected a JSON list of entries, got a {_json_type(data)}{hint}")
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
            entries.append(_UnparsableLine(problem))
        lines.append(lineno)
    return entries, lines


def _dataset_from_entries(entries: Sequence[Mapping[str, Any]], source: str) -> Dataset:
    """A Dataset with columns instruction, input, output, then every extra field (union, first-seen order)."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo

    keys: dict[str, None] = dict.fromkeys(TEXT_FIELDS)
    for entry in entries:
        for key in entry:
            if key not in keys:
                keys[key] = None
    columns: dict[str, list[Any]] = {}
    for key in keys:
        if key == "input":
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
                typed = [(i, _json_type(v)) for i, v in enumerate(values) if v is not None]
                first_type = typed[0][1] if typed else "null"
                index = next((i for i, kind in typed if kind != first_type), None)
                found = (f"{_a(_json_type(values[index]))} where entry {typed[0][0]} has {_a(first_type)}"
                         if index is not None else str(col_err))
                raise InstructionDataError(
                    source, f"field {key!r} does not have one type in all entries: {found}", index
                ) from None
        raise InstructionDataError(source, f"could not build a data set: {err}") from None


def _origin(dataset: Dataset) -> str:
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


def _validate_dataset(dataset: Dataset, source: str, skip_invalid: bool) -> tuple[Dataset, LoadStats]:
    """Check the columns and entries of a ``datasets.Dataset``; normalise ``input``."""
    from datasets import Value

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
    present = [name for name in TEXT_FIELDS if name in dataset.column_names]
    if len(dataset) == 0:
        raise InstructionDataError(source, "the data set is empty")
    columns = dataset.select_columns(present)[:]
    entries = [dict(zip(present, values)) for values in zip(*(columns[name] for name in present))]
    valid, stats = validate_entries(entries, source, skip_invalid=skip_invalid)
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
    from datasets import Value

    features = features.copy()
    features["input"] = Value("string")
    return features


def _looks_like_path(source: str) -> bool:
    return (
        source.lower().endswith(_FILE_SUFFIXES)
        or os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or (source.count("/") == 1 and os.path.isdir(source.split("/")[0]))  # outputs/typo: not a Hub name
    )


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
    **load_kwargs: Any,
) -> tuple[Dataset, LoadStats]: ...


def load_instruction_data(
    source: str | os.PathLike | Dataset | Sequence[Mapping[str, Any]] = DEFAULT_DATA_URL,
    *,
    skip_invalid: bool = False,
    return_stats: bool = False,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
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
        **load_kwargs: Passed to :func:`datasets.load_dataset` for Hub names.

    The columns are ``instruction``, ``input`` (``""`` where missing), ``output`` and any extra field.

    Raises:
        InstructionDataError: the source cannot be read, is not a list of entries, is empty, or has an
            invalid entry (unless ``skip_invalid``). The message names the source, entry and problem.
        gpt_sft.download.DownloadError: a URL that is not cached yet cannot be downloaded (the
            message says how to pass a local copy instead).
    """
    from datasets import Dataset, DatasetDict

    if isinstance(source, DatasetDict):
        source = source[split]
    if isinstance(source, Dataset):
        name = _origin(source)
        dataset, stats = _validate_dataset(source, name, skip_invalid)
    elif isinstance(source, (list, tuple)):
        name = "<list of entries>"
        dataset, stats = _load_entries(list(source), None, name, skip_invalid)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if text.startswith(("http://", "https://")):
            path = _download(text, cache_dir, progress)
            name = text
            dataset, stats = _load_file(path, name, skip_invalid)
        elif "://" in text:
            raise InstructionDataError(text, "unsupported URL scheme (use http(s):// or a local path)")
        elif os.path.isfile(os.path.expanduser(text)):
            path = Path(text).expanduser()
            name = str(path)
            dataset, stats = _load_file(path, name, skip_invalid)
        elif os.path.isdir(os.path.expanduser(text)):
            name = str(Path(text).expanduser())
            dataset, stats = _load_hub(name, name, split, skip_invalid, load_kwargs)
        elif _looks_like_path(text) or isinstance(source, os.PathLike):
            raise InstructionDataError(text, "file not found")
        else:
            name = text
            if "data_files" in load_kwargs:
                name = f"{text} (data_files={load_kwargs['data_files']})"
            dataset, stats = _load_hub(text, name, split, skip_invalid, load_kwargs)
    else:
        raise TypeError(f"load_instruction_data: unsupported source type {type(source).__name__}")

    if len(dataset) == 0:
        raise InstructionDataError(
            name, "no valid entries" + (f" (all {stats.num_read} were skipped: {stats.skipped})" if stats.num_read else "")
        )
    if stats.num_skipped:
        logger.warning("%s", stats)
    return (dataset, stats) if return_stats else dataset


def _download(url: str, cache_dir: str | os.PathLike | None, progress: bool) -> Path:
    from .download import download_file

    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_data_cache_dir()
    filename = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1] or "data.json"
    dest = folder / hashlib.sha256(url.encode()).hexdigest()[:16] / filename
    return download_file(url, dest, progress=progress, local_hint=_LOCAL_FILE_HINT)


def _load_entries(
    entries: list[Any], lines: list[int] | None, source: str, skip_invalid: bool
) -> tuple[Dataset, LoadStats]:
    if not entries:
        raise InstructionDataError(source, "the data set is empty (no entries)")
    valid, stats = validate_entries(entries, source, skip_invalid=skip_invalid, lines=lines)
    if not valid:
        raise InstructionDataError(source, f"no valid entries (all {stats.num_read} were skipped: {stats.skipped})")
    kept = entries if len(valid) == len(entries) else [entries[i] for i in valid]
    return _dataset_from_entries(kept, source), stats


def _load_file(path: Path, source: str, skip_invalid: bool) -> tuple[Dataset, LoadStats]:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl") or suffix not in _FILE_BUILDERS:
        if suffix not in (".json", ".jsonl"):
            # Unknown suffix (e.g. a URL without one): try JSON, say what we expected if it fails.
            try:
                entries, lines = _read_json(path, source, skip_invalid)
            except InstructionDataError as err:
                raise InstructionDataError(
                    source, f"{err.problem} (supported files: {', '.join(_FILE_SUFFIXES)})", err.index
                ) from None
        else:
            entries, lines = _read_json(path, source, skip_invalid)
        return _load_entries(entries, lines, source, skip_invalid)
    from datasets import load_dataset

    try:
        dataset = load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train")
    except Exception as err:  # noqa: BLE001 - any reader error becomes one clear message
        raise InstructionDataError(source, f"could not read the file ({err.__class__.__name__}: {err})") from None
    dataset, stats = _validate_dataset(dataset, source, skip_invalid)
    return _set_origin(dataset, source), stats


def _load_hub(
    name: str, source: str, split: str, skip_invalid: bool, load_kwargs: dict[str, Any]
) -> tuple[Dataset, LoadStats]:
    from datasets import load_dataset

    from .download import hub_offline_reason

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
    dataset, stats = _validate_dataset(dataset, source, skip_invalid)
    return _set_origin(dataset, source), stats


# --------------------------------------------------------------------------------------------------
# splitting


def split_dataset(
    dataset: Dataset,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    val_fraction: float | None = None,
    *,
    shuffle: bool = False,
    seed: int = 123,
) -> DatasetDict:
    """Split into train / validation / test, as the book does by default.

    The book's split, in file order: ``train = data[:int(0.85 n)]``, ``test`` = the next
    ``int(0.10 n)`` entries, ``validation`` = the rest (935 / 110 / 55 on the book's 1100 entries).

    Args:
        dataset: The data (any columns).
        train_fraction: Fraction for training (book: 0.85).
        test_fraction: Fraction for testing (book: 0.10).
        val_fraction: Fraction for validation; ``None`` (the book) means everything left. When
            given, the validation split has ``int(val_fraction * n)`` entries and left-over entries
            are unused.
        shuffle: Shuffle the entries (with ``seed``) before splitting; the book does not.
        seed: Seed of the shuffle.

    Returns:
        A :class:`datasets.DatasetDict` with keys ``"train"``, ``"validation"`` and ``"test"``.

    Raises:
        InstructionDataError: a split would be empty (data set too small) -- names the source.
        ValueError: fractions out of range or summing to more than 1.
    """
    from datasets import DatasetDict

    fractions = {"train_fraction": train_fraction, "test_fraction": test_fraction}
    if val_fraction is not None:
        fractions["val_fraction"] = val_fraction
    for key, value in fractions.items():
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"{key} must be in (0, 1], got {value}")
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ValueError(f"split fractions sum to more than 1: {fractions}")
    n = len(dataset)
    train_portion = int(n * train_fraction)
    test_portion = int(n * test_fraction)
    if val_fraction is None:
        val_portion = n - train_portion - test_portion
    else:
        val_portion = min(int(n * val_fraction), n - train_portion - test_portion)
    if min(train_portion, test_portion, val_portion) <= 0:
        raise InstructionDataError(
            _origin(dataset),
            f"data set too small to split: {n} entries give train/validation/test = "
            f"{train_portion}/{val_portion}/{test_portion} with fractions {fractions}; every split needs "
            "at least one entry (use more data or other fractions)",
        )
    if shuffle:
        dataset = dataset.shuffle(seed=seed)
    end_test = train_portion + test_portion
    return DatasetDict(
        train=dataset.select(range(0, train_portion)),
        validation=dataset.select(range(end_test, end_test + val_portion)),
        test=dataset.select(range(train_portion, end_test)),
    )


# --------------------------------------------------------------------------------------------------
# tokenization


@dataclass
class _Encoder:
    """Batch encoding of texts without special tokens, by a tiktoken or transformers tokenizer."""

    name: str
    encode: Callable[[list[str]], list[list[int]]]
    # Byte length of every token id, when the tokenizer splits text with GPT-2's regex (tiktoken
    # "gpt2"/"r50k"): then the prompt length can be read off the full text's tokens (see _prompt_length).
    token_bytes: list[int] | None = None


@functools.lru_cache(maxsize=4)
def _token_byte_lengths(tokenizer: Any) -> list[int]:
    lengths = []
    for token in range(tokenizer.n_vocab):
        try:
            lengths.append(len(tokenizer.decode_single_token_bytes(token)))
        except KeyError:  # pragma: no cover - gaps in a vocabulary
            lengths.append(-1)
    return lengths


def _batch_encoder(tokenizer: Any, num_threads: int) -> _Encoder:
    """How to encode a list of texts with ``tokenizer`` (default: GPT-2 via tiktoken)."""
    if tokenizer is None:
        from .tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if hasattr(tokenizer, "encode_ordinary"):  # tiktoken.Encoding
        # encode_ordinary == encode for text without special tokens, which we check beforehand.
        # tiktoken's encode_ordinary_batch submits one thread-pool task per text, which costs more
        # than the encoding of a short text (measured 3-4x slower than a loop); instead each thread
        # encodes one contiguous chunk (tiktoken releases the GIL while encoding).
        encode_one = tokenizer.encode_ordinary

        def encode(texts: list[str]) -> list[list[int]]:
            threads = min(num_threads, len(texts) // _MIN_TEXTS_PER_THREAD)
            if threads <= 1:
                return [encode_one(text) for text in texts]
            size = -(-len(texts) // threads)
            chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
            with ThreadPoolExecutor(len(chunks)) as pool:
                parts = pool.map(lambda chunk: [encode_one(text) for text in chunk], chunks)
                return [ids for part in parts for ids in part]

        from .tokenizer import GPT2_PAT_STR

        gpt2_regex = getattr(tokenizer, "_pat_str", None) == GPT2_PAT_STR
        return _Encoder(f"tiktoken:{tokenizer.name}", encode, _token_byte_lengths(tokenizer) if gpt2_regex else None)
    if callable(tokenizer) and hasattr(tokenizer, "convert_tokens_to_ids"):  # transformers tokenizer
        def encode_hf(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

        return _Encoder(f"hf:{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}", encode_hf)
    raise TypeError(
        f"tokenizer must be a tiktoken Encoding or a transformers tokenizer, got {type(tokenizer).__name__}"
    )


_ASCII_WHITESPACE = frozenset(" \t\n\r\f\v")


def _splits_cleanly(prompt: str, response: str) -> bool:
    """Whether GPT-2 encodes ``prompt + response`` as ``encode(prompt) + encode(response)``.

    GPT-2's BPE merges only inside the pieces its regex cuts the text into, and that regex has no
    look-behind. If the prompt ends with a non-whitespace character and the response starts with
    ASCII whitespace, no piece can span the boundary (letter, number and punctuation pieces stop at
    whitespace; whitespace pieces only look ahead), so the tokens of the full text start with exactly
    the prompt's tokens. True for every entry of the built-in styles unless the instruction or input
    ends with whitespace.
    """
    if not prompt or not response:
        return True
    return not prompt[-1].isspace() and response[0] in _ASCII_WHITESPACE


def _prompt_length(full_ids: list[int], token_bytes: list[int], prompt_bytes: int) -> int | None:
    """Number of leading tokens of ``full_ids`` spelling exactly ``prompt_bytes`` bytes, else None."""
    if prompt_bytes == 0:
        return 0
    ends = list(accumulate(map(token_bytes.__getitem__, full_ids)))  # byte offset after each token
    count = bisect_left(ends, prompt_bytes)
    return count + 1 if count < len(ends) and ends[count] == prompt_bytes else None


@overload
def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = ...,
    style: PromptStyle | str = ...,
    *,
    allowed_max_length: int | None = ...,
    overlong: str = ...,
    keep_columns: bool = ...,
    batch_size: int = ...,
    num_threads: int | None = ...,
    return_stats: Literal[False] = ...,
) -> Dataset: ...


@overload
def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = ...,
    style: PromptStyle | str = ...,
    *,
    allowed_max_length: int | None = ...,
    overlong: str = ...,
    keep_columns: bool = ...,
    batch_size: int = ...,
    num_threads: int | None = ...,
    return_stats: Literal[True],
) -> tuple[Dataset, TokenizationStats]: ...


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any = None,
    style: PromptStyle | str = "alpaca",
    *,
    allowed_max_length: int | None = 1024,
    overlong: str = "truncate",
    keep_columns: bool = True,
    batch_size: int = 2000,
    num_threads: int | None = None,
    return_stats: bool = False,
) -> Dataset | tuple[Dataset, TokenizationStats]:
    """Tokenize instruction entries with a batched ``Dataset.map``.

    Adds ``input_ids`` -- the tokens of prompt + response (the book's ``encode(full_text)``, without
    the end-of-text token, which the collator appends) -- and ``prompt_length`` --
    ``len(encode(prompt))``, what the collator masks with ``mask_prompt=True`` (exercise 7.2).

    Args:
        dataset: Entries with ``instruction``, ``input``, ``output`` (see :func:`load_instruction_data`).
        tokenizer: A ``tiktoken.Encoding`` (default: :func:`gpt_sft.tokenizer.get_tokenizer`, GPT-2)
            or a transformers tokenizer.
        style: Prompt style name or :class:`~gpt_sft.prompts.PromptStyle`.
        allowed_max_length: The collator's limit, the book's ``allowed_max_length`` (default 1024);
            ``None`` for no limit. An entry is over-long when ``len(input_ids) > allowed_max_length``
            (tokens without the end-of-text): the book's collate function cuts its end-of-text
            target.
        overlong: ``"truncate"`` (the book): keep over-long entries; their ``input_ids`` are stored
            cut to ``allowed_max_length + 1`` tokens, from which the collator builds exactly the
            batches it (and the book's collate function) builds from the full sequence (the
            end-of-text target is lost).
            ``"drop"``: remove them, so every kept example is trained to stop.
        keep_columns: Keep the text columns next to the new ones.
        batch_size: Entries per ``map`` batch.
        num_threads: Threads encoding with tiktoken, each given a contiguous chunk of at least 256
            texts of a batch. Default: 1 on machines with up to 2 CPUs (measured: a second thread only
            adds GIL hand-over cost there), else the number of CPUs, at most 4.
        return_stats: Also return a :class:`TokenizationStats`.

    Over-long counts are logged as a warning. ``<|endoftext|>`` in the formatted text raises
    :class:`InstructionDataError` (entry index given). Results are computed in memory every time
    (no ``datasets`` cache is used).
    """
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"allowed_max_length must be at least 1 (or None), got {allowed_max_length}")
    prompt_style = get_prompt_style(style)
    if num_threads is None:
        cpus = os.cpu_count() or 1
        num_threads = 1 if cpus <= 2 else min(4, cpus)
    encoder = _batch_encoder(tokenizer, num_threads)
    source = _origin(dataset)
    missing = [name for name in REQUIRED_FIELDS if name not in dataset.column_names]
    if missing:
        raise InstructionDataError(
            source, f"missing column(s) {missing} (found {dataset.column_names}); load it with load_instruction_data"
        )
    if len(dataset) == 0:
        raise InstructionDataError(source, "the data set is empty: nothing to tokenize")
    stats = TokenizationStats(num_examples=len(dataset), allowed_max_length=allowed_max_length, overlong=overlong)
    columns = list(dataset.column_names)
    for new in ("input_ids", "prompt_length"):
        if new in columns:
            columns.remove(new)  # re-tokenizing replaces them
    limit = allowed_max_length

    def tokenize(batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]:
        n = len(indices)
        rows = [dict(zip(columns, values)) for values in zip(*(batch[c] for c in columns))]
        prompts, texts = [], []
        for j, row in enumerate(rows):
            prompt, response = prompt_style.format_parts(row)
            if END_OF_TEXT in prompt or END_OF_TEXT in response:
                raise InstructionDataError(
                    source,
                    f"the {prompt_style.name!r} text of this entry contains '{END_OF_TEXT}', GPT-2's "
                    "end-of-text/padding token; remove it (load_instruction_data rejects such entries)",
                    indices[j],
                )
            prompts.append(prompt)
            texts.append(prompt + response)
        full_ids = encoder.encode(texts)  # the book: tokenizer.encode(full_text)
        # The book: len(tokenizer.encode(prompt)). With GPT-2's regex and a clean boundary that is the
        # number of leading tokens of the full text covering the prompt's bytes (no second encoding).
        prompt_lengths: list[int | None] = [None] * n
        if encoder.token_bytes is not None:
            for j, prompt in enumerate(prompts):
                if _splits_cleanly(prompt, texts[j][len(prompt):]):
                    prompt_lengths[j] = _prompt_length(full_ids[j], encoder.token_bytes, len(prompt.encode("utf-8")))
        todo = [j for j in range(n) if prompt_lengths[j] is None]
        if todo:
            for j, ids in zip(todo, encoder.encode([prompts[j] for j in todo])):
                prompt_lengths[j] = len(ids)
        keep: list[int] = []
        ids_out, plen_out = [], []
        for j in range(n):
            ids = full_ids[j]
            length = len(ids) + 1
            stats.longest = max(stats.longest, length)
            # The book keeps inputs[:limit] and targets[:limit]: the end-of-text target (index
            # len(ids) - 1 of targets) survives iff len(ids) <= limit.
            if limit is not None and len(ids) > limit:
                stats.num_overlong += 1
                if overlong == "drop":
                    stats.num_dropped += 1
                    continue
                # The collator keeps limit + 1 columns, all of them tokens of ids here: storing
                # ids[:limit + 1] gives the same batches (ids[:limit] would put the end-of-text in
                # column limit instead of ids[limit]).
                if len(ids) > limit + 1:
                    ids = ids[: limit + 1]
                    stats.num_truncated += 1
            stats.num_tokens += len(ids)
            keep.append(j)
            ids_out.append(ids)
            plen_out.append(prompt_lengths[j])
        out = {"input_ids": ids_out, "prompt_length": plen_out}
        if keep_columns:
            for c in columns:
                values = batch[c]
                out[c] = values if len(keep) == n else [values[j] for j in keep]
        return out

    fingerprint = hashlib.sha256(
        repr((dataset._fingerprint, repr(prompt_style), encoder.name, limit, overlong, keep_columns)).encode()
    ).hexdigest()[:16]
    start = time.perf_counter()
    result = dataset.map(
        tokenize,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        remove_columns=dataset.column_names,
        keep_in_memory=True,
        load_from_cache_file=False,
        new_fingerprint=fingerprint,
        desc=f"Tokenizing ({prompt_style.name})",
    )
    stats.seconds = time.perf_counter() - start
    stats.num_kept = len(result)
    if stats.num_kept == 0:
        raise InstructionDataError(
            source,
            f"all {stats.num_examples} entries are over-long (more than allowed_max_length={limit} tokens) "
            "and overlong='drop' removed them all: nothing is left; raise allowed_max_length or use "
            "overlong='truncate'",
        )
    if keep_columns:
        result = result.select_columns([*columns, "input_ids", "prompt_length"])
    if stats.num_overlong:
        logger.warning("%s: %s", source, stats)
    return (result, stats) if return_stats else result


# --------------------------------------------------------------------------------------------------
# data loaders


class DataLoaders(NamedTuple):
    """The three loaders of :func:`create_dataloaders` (unpack as ``train, val, test``)."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


def create_dataloaders(
    data: str | os.PathLike | Dataset | Mapping[str, Dataset] | Sequence[Mapping[str, Any]] = DEFAULT_DATA_URL,
    tokenizer: Any = None,
    *,
    style: PromptStyle | str = "alpaca",
    batch_size: int = 8,
    eval_batch_size: int | None = None,
    mask_prompt: bool = False,
    allowed_max_length: int | None = 1024,
    overlong: str = "truncate",
    pad_to_multiple_of: int | None = None,
    return_attention_mask: bool = False,
    seed: int = 123,
    num_workers: int = 0,
    train_fraction: float = 0.85,
    test_fraction: float = 0.10,
    val_fraction: float | None = None,
    shuffle_split: bool = False,
    skip_invalid: bool = False,
    collator: InstructionDataCollator | None = None,
) -> DataLoaders:
    """Train / validation / test ``DataLoader`` s from one call, with the book's defaults.

    Loads ``data`` (anything :func:`load_instruction_data` takes; or a ``DatasetDict``/mapping with
    ``train``, ``validation`` (or ``val``) and ``test``), splits it (:func:`split_dataset`), tokenizes
    each split (:func:`tokenize_dataset`; skipped for splits that already have ``input_ids``) and
    batches with :class:`~gpt_sft.collator.InstructionDataCollator`.

    The book's loaders: batch size 8; train ``shuffle=True, drop_last=True`` (here with a
    ``torch.Generator`` seeded with ``seed``, so the order is reproducible and independent of the
    global RNG); validation and test neither shuffled nor dropping the last batch;
    ``num_workers=0``. The batches are dicts of CPU tensors (``input_ids``, ``labels``, and
    ``attention_mask`` if asked for).
    """
    import torch
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from .collator import InstructionDataCollator

    if isinstance(data, Mapping) and "train" in data:
        val_key = "validation" if "validation" in data else "val"
        splits = {"train": data["train"], "validation": data[val_key], "test": data["test"]}
    else:
        dataset = data if isinstance(data, Dataset) and "input_ids" in data.column_names else None
        if dataset is None:
            dataset = load_instruction_data(data, skip_invalid=skip_invalid)
        splits = dict(
            split_dataset(
                dataset, train_fraction, test_fraction, val_fraction, shuffle=shuffle_split, seed=seed
            )
        )
    for name, split in splits.items():
        if "input_ids" not in split.column_names:
            split = tokenize_dataset(
                split, tokenizer, style, allowed_max_length=allowed_max_length, overlong=overlong, keep_columns=False
            )
        wanted = [c for c in ("input_ids", "prompt_length") if c in split.column_names]
        splits[name] = split.select_columns(wanted)
    if collator is None:
        collator = InstructionDataCollator(
            allowed_max_length=allowed_max_length,
            mask_prompt=mask_prompt,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=return_attention_mask,
        )
    eval_batch_size = eval_batch_size or batch_size
    train = DataLoader(
        splits["train"],
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collator,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    val, test = (
        DataLoader(
            splits[name], batch_size=eval_batch_size, shuffle=False, drop_last=False,
            collate_fn=collator, num_workers=num_workers,
        )
        for name in ("validation", "test")
    )
    return DataLoaders(train, val, test)

