"""Loading, validation, splitting, tokenization and data loaders (gpt_sft.data)."""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict

from gpt_sft.data.collator import InstructionDataCollator, to_book_batch
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.loaders import create_dataloaders
from gpt_sft.data.split import split_dataset
from gpt_sft.data.tokenize import TokenizationStats, tokenize_dataset
from gpt_sft.data.validate import InstructionDataError, LoadStats
from gpt_sft.common.download import DownloadError
from gpt_sft.data.prompts import PromptStyle, format_text
from gpt_sft.model.tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parents[1]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, entries) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


def entries(n: int, **extra) -> list[dict]:
    return [{"instruction": f"Say {i}.", "input": "" if i % 2 else f"in {i}", "output": f"{i}", **extra} for i in range(n)]


@pytest.fixture(scope="module")
def book(book_data_path):
    return load_instruction_data(book_data_path)


@pytest.fixture(scope="module")
def book_json(book_data_path):
    return json.loads(book_data_path.read_text())


# ------------------------------------------------------------------------------------------------ loading


def test_load_book_data(book, book_json):
    assert isinstance(book, Dataset) and len(book) == 1100
    assert book.column_names == ["instruction", "input", "output"]
    assert book.to_list() == book_json


def test_load_jsonl_and_json_lines_named_json(tmp_path):
    data = entries(5)
    a = load_instruction_data(write_jsonl(tmp_path / "d.jsonl", data))
    b = load_instruction_data(write_jsonl(tmp_path / "lines.json", data))
    assert a.to_list() == b.to_list() == data


def test_input_missing_everywhere_loads(tmp_path):
    data = [{"instruction": "Name a color.", "output": "Blue."}, {"instruction": "Name a fruit.", "output": "Apple."}]
    for path in (write_json(tmp_path / "d.json", data), write_jsonl(tmp_path / "d.jsonl", data)):
        ds = load_instruction_data(path)
        assert ds["input"] == ["", ""] and ds["output"] == ["Blue.", "Apple."]
    ds = load_instruction_data([{**data[0], "input": None}, data[1]])
    assert ds["input"] == ["", ""]


def test_extra_fields_are_kept_even_if_only_some_entries_have_them(tmp_path):
    data = entries(3)
    data[2]["source"] = "wiki"
    data[0]["id"] = 7
    ds = load_instruction_data(write_json(tmp_path / "d.json", data))
    assert ds.column_names == ["instruction", "input", "output", "id", "source"]
    assert ds["source"] == [None, None, "wiki"] and ds["id"] == [7, None, None]


def test_load_from_list_and_dataset():
    ds = load_instruction_data(entries(4))
    assert len(ds) == 4
    again = load_instruction_data(ds)
    assert again.to_list() == ds.to_list()


# ---- errors: one message with file, entry index and problem


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("{not json", r"d\.json: not valid JSON: .* line 1 column 2"),
        ('{"data": [1]}', r"d\.json: expected a JSON list of entries, got a object \(it has a list under 'data'"),
        ("[]", r"d\.json: the data set is empty"),
        ('"text"', r"d\.json: expected a JSON list of entries, got a string"),
    ],
    ids=["not-json", "not-a-list", "empty", "string"],
)
def test_file_level_errors(tmp_path, content, pattern):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(InstructionDataError, match=pattern) as info:
        load_instruction_data(path)
    assert info.value.source == str(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[{"instruction": "\xff"}]')
    with pytest.raises(InstructionDataError, match=r"d\.json: not UTF-8 text"):
        load_instruction_data(path)


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (["a string"], r"entry 2: expected an object with 'instruction' and 'output', got a string"),
        ({"instruction": 3, "input": "", "output": "x"}, r"entry 2: field 'instruction' must be a string, got a number"),
        ({"instruction": "x", "input": ""}, r"entry 2: required field 'output' is missing"),
        ({"instruction": "x", "output": None}, r"entry 2: required field 'output' is null"),
        ({"instruction": "x", "input": ["a"], "output": "y"}, r"entry 2: field 'input' must be a string \(or missing\), got a list"),
        ({"instruction": "x", "input": "", "output": "  \n"}, r"entry 2: field 'output' is empty"),
        ({"instruction": "x", "input": "a<|endoftext|>b", "output": "y"}, r"entry 2: field 'input' contains '<\|endoftext\|>'"),
        ({"instruction": "x", "output": "done<|endoftext|>"}, r"entry 2: field 'output' contains '<\|endoftext\|>'"),
    ],
    ids=["not-object", "instruction-type", "missing-output", "null-output", "input-type", "empty-output", "eot-input", "eot-output"],
)
def test_entry_errors_name_file_index_and_problem(tmp_path, bad, pattern):
    data = entries(2) + ([bad] if isinstance(bad, dict) else bad) + entries(2)
    path = write_json(tmp_path / "bad.json", data)
    with pytest.raises(InstructionDataError, match=r"bad\.json: " + pattern) as info:
        load_instruction_data(path)
    assert info.value.index == 2
    assert "more invalid" not in str(info.value)


def test_error_counts_the_other_invalid_entries(tmp_path):
    data = entries(3) + [{"instruction": "x", "output": ""}, {"instruction": "y"}]
    with pytest.raises(InstructionDataError, match=r"entry 3: field 'output' is empty \(1 more invalid entries; pass skip_invalid=True"):
        load_instruction_data(write_json(tmp_path / "d.json", data))


def test_jsonl_errors_give_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(entries(1)[0]) + "\n\n" + '{"instruction": "x", "output": ""}\n')
    with pytest.raises(InstructionDataError, match=r"d\.jsonl: entry 1 \(line 3\): field 'output' is empty"):
        load_instruction_data(path)
    path.write_text(json.dumps(entries(1)[0]) + "\n{oops\n")
    with pytest.raises(InstructionDataError, match=r"d\.jsonl: entry 1 \(line 2\): not valid JSON"):
        load_instruction_data(path)


def test_inconsistent_extra_field_types(tmp_path):
    data = entries(2)
    data[0]["meta"] = {"a": 1}
    data[1]["meta"] = "text"
    with pytest.raises(InstructionDataError, match=r"d\.json: entry 1: field 'meta' does not have one type in all "
                                                   r"entries: a string where entry 0 has an object"):
        load_instruction_data(write_json(tmp_path / "d.json", data))


def test_missing_file_and_bad_scheme(tmp_path):
    with pytest.raises(InstructionDataError, match=r"nope\.json: file not found"):
        load_instruction_data(tmp_path / "nope.json")
    with pytest.raises(InstructionDataError, match="unsupported URL scheme"):
        load_instruction_data("ftp://example.com/d.json")


def test_skip_invalid_reports_how_many_and_why(tmp_path, caplog):
    data = entries(4)
    data[1] = {"instruction": "x", "output": ""}
    data[3] = {"instruction": "x", "input": "<|endoftext|>", "output": "y"}
    data.append({"instruction": "z", "output": " "})
    path = write_json(tmp_path / "d.json", data)
    with caplog.at_level(logging.WARNING, logger="gpt_sft.data.load"):
        ds, stats = load_instruction_data(path, skip_invalid=True, return_stats=True)
    assert isinstance(stats, LoadStats)
    assert len(ds) == 2 and ds["output"] == ["0", "2"]
    assert stats.num_read == 5 and stats.num_loaded == 2 and stats.num_skipped == 3
    assert stats.skipped == {"empty 'output'": 2, "'<|endoftext|>' in 'input'": 1}
    assert stats.skipped_indices == [1, 3, 4]
    assert "skipped 3 invalid (2 empty 'output', 1 '<|endoftext|>' in 'input')" in caplog.text
    assert str(path) in caplog.text


def test_skip_invalid_with_nothing_left(tmp_path):
    path = write_json(tmp_path / "d.json", [{"instruction": "x", "output": ""}])
    with pytest.raises(InstructionDataError, match=r"d\.json: no valid entries \(all 1 were skipped"):
        load_instruction_data(path, skip_invalid=True)


# ---- URL, Hub and other file formats


@contextmanager
def serve(folder: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_is_downloaded_once_then_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    site = tmp_path / "site"
    site.mkdir()
    write_json(site / "instruction-data.json", entries(6))
    cache = tmp_path / "cache"
    with serve(site) as base:
        url = f"{base}/instruction-data.json"
        ds = load_instruction_data(url, cache_dir=cache, progress=False)
    assert ds.to_list() == entries(6)
    cached = list(cache.rglob("instruction-data.json"))
    assert len(cached) == 1 and not list(cache.rglob("*.part"))
    # the server is gone: the cached copy is used
    again = load_instruction_data(url, cache_dir=cache, progress=False)
    assert again.to_list() == entries(6)
    # another URL on the dead server: a clear error saying how to use a local file
    with pytest.raises(DownloadError, match=r"other\.json.*load_instruction_data\('path/to/data\.json'\)"):
        load_instruction_data(f"{base}/other.json", cache_dir=cache, progress=False)


def test_cached_download_is_validated_with_its_url_as_source(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    site = tmp_path / "site"
    site.mkdir()
    (site / "broken.json").write_text("[{")
    with serve(site) as base:
        with pytest.raises(InstructionDataError, match=r"http://127\.0\.0\.1:\d+/broken\.json: not valid JSON"):
            load_instruction_data(f"{base}/broken.json", cache_dir=tmp_path / "cache", progress=False)


def test_hub_name_offline_gives_a_clear_error():
    with pytest.raises(InstructionDataError) as info:
        load_instruction_data("tatsu-lab/alpaca")
    message = str(info.value)
    assert message.startswith("tatsu-lab/alpaca: could not load this data set")
    assert "HF_DATASETS_OFFLINE is 1" in message
    assert "load_instruction_data('path/to/data.json')" in message


def test_columns_are_validated_on_load_dataset_json(tmp_path):
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"instruction": "a", "output": "b", "extra": 1}])
    ds = load_instruction_data("json", data_files=str(ok))
    assert ds.column_names == ["instruction", "output", "extra", "input"] and ds["input"] == [""]
    no_output = write_jsonl(tmp_path / "no_output.jsonl", [{"instruction": "a", "response": "b"}])
    with pytest.raises(InstructionDataError, match=r"json \(data_files=.*no_output\.jsonl\): missing column\(s\) \['output'\]; found \['instruction', 'response'\].*rename_column"):
        load_instruction_data("json", data_files=str(no_output))
    int_output = write_jsonl(tmp_path / "int_output.jsonl", [{"instruction": "a", "output": 5}])
    with pytest.raises(InstructionDataError, match=r"int_output\.jsonl\): column 'output' has type Value\('int64'\), expected string"):
        load_instruction_data("json", data_files=str(int_output))
    empty = write_jsonl(tmp_path / "empty_output.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": ""}])
    with pytest.raises(InstructionDataError, match=r"empty_output\.jsonl\): entry 1: field 'output' is empty"):
        load_instruction_data("json", data_files=str(empty))
    ds, stats = load_instruction_data("json", data_files=str(empty), skip_invalid=True, return_stats=True)
    assert len(ds) == 1 and stats.skipped_indices == [1]


def test_local_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    Dataset.from_list([{"instruction": "a", "input": None, "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]).to_parquet(path)
    ds = load_instruction_data(path)
    assert ds.to_list() == [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}]


# ----------------------------------------------------------------------------------------------- splitting


def test_book_split(book, book_json):
    splits = split_dataset(book)
    assert isinstance(splits, DatasetDict)
    assert {k: len(v) for k, v in splits.items()} == {"train": 935, "validation": 55, "test": 110}
    # the book's code
    train_portion = int(len(book_json) * 0.85)
    test_portion = int(len(book_json) * 0.1)
    assert splits["train"].to_list() == book_json[:train_portion]
    assert splits["test"].to_list() == book_json[train_portion : train_portion + test_portion]
    assert splits["validation"].to_list() == book_json[train_portion + test_portion :]


def test_seeded_shuffle_and_custom_fractions(book):
    a = split_dataset(book, shuffle=True, seed=1)
    b = split_dataset(book, shuffle=True, seed=1)
    c = split_dataset(book, shuffle=True, seed=2)
    assert a["train"]["instruction"] == b["train"]["instruction"] != c["train"]["instruction"]
    assert a["train"]["instruction"] != split_dataset(book)["train"]["instruction"]
    together = sorted([*a["train"]["instruction"], *a["validation"]["instruction"], *a["test"]["instruction"]])
    assert together == sorted(book["instruction"])
    custom = split_dataset(book, 0.8, 0.1, 0.05)
    assert {k: len(v) for k, v in custom.items()} == {"train": 880, "validation": 55, "test": 110}
    with pytest.raises(ValueError, match="sum to more than 1"):
        split_dataset(book, 0.9, 0.2)
    with pytest.raises(ValueError, match="train_fraction must be in"):
        split_dataset(book, 0.0)


def test_too_small_to_split_names_the_file(tmp_path):
    ds = load_instruction_data(write_json(tmp_path / "tiny.json", entries(5)))
    with pytest.raises(InstructionDataError, match=r"tiny\.json: data set too small to split: 5 entries give train/validation/test = 4/1/0"):
        split_dataset(ds)
    assert [len(v) for v in split_dataset(load_instruction_data(entries(10))).values()] == [8, 1, 1]


# ---------------------------------------------------------------------------------------------- tokenization


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_tokenization_equals_the_books(book, book_json, style):
    tokenizer = get_tokenizer()
    ds, stats = tokenize_dataset(book, style=style, return_stats=True)
    assert ds.column_names == ["instruction", "input", "output", "input_ids", "prompt_length"]
    assert isinstance(stats, TokenizationStats) and stats.num_examples == stats.num_kept == 1100
    assert stats.num_overlong == 0 and stats.longest < 1024
    for entry, row in zip(book_json, ds):
        prompt, full = format_text(entry, style)
        assert row["input_ids"] == tokenizer.encode(full)
        assert row["prompt_length"] == len(tokenizer.encode(prompt))
    assert stats.num_tokens == sum(len(ids) for ids in ds["input_ids"])


def test_tokenization_at_awkward_prompt_boundaries():
    """Prompts ending in whitespace, responses not starting with it: BPE may merge across them."""
    tokenizer = get_tokenizer()
    data = [
        {"instruction": "Ends with newline\n", "input": "", "output": "x"},
        {"instruction": "a", "input": "ends with spaces   ", "output": "y"},
        {"instruction": "a", "input": "nbsp\u00a0", "output": "z"},
        {"instruction": "ideographic space\u3000", "input": "", "output": "w"},
        {"instruction": "tab\t", "input": "", "output": "\n\nleading newlines"},
        {"instruction": "don", "input": "", "output": "'t"},
    ]
    from gpt_sft.data.tokenize import _batch_encoder

    assert _batch_encoder(tokenizer, 1).token_bytes is not None  # the shortcut is in use for GPT-2
    glued = PromptStyle("glued", prompt="{instruction}{input}", response="{output}")
    spaced = PromptStyle("spaced", prompt="{instruction}{input}", response=" {output}")
    for style in ("alpaca", "phi3", glued, spaced):
        ds = tokenize_dataset(Dataset.from_list(data), style=style, num_threads=1)
        for entry, row in zip(data, ds):
            prompt, full = format_text(entry, style)
            assert row["input_ids"] == tokenizer.encode(full), (style, entry)
            assert row["prompt_length"] == len(tokenizer.encode(prompt))


def test_threads_give_the_same_result(book):
    one = tokenize_dataset(book, num_threads=1, batch_size=1100)
    four = tokenize_dataset(book, num_threads=4, batch_size=1100)
    assert one["input_ids"] == four["input_ids"] and one["prompt_length"] == four["prompt_length"]


def test_overlong_truncate_and_drop(book, caplog):
    full = tokenize_dataset(book, allowed_max_length=None)
    lengths = [len(ids) for ids in full["input_ids"]]
    limit = 60
    # over-long: more than L tokens (the book cuts the end-of-text target); stored cut: more than L + 1
    n_overlong = sum(n > limit for n in lengths)
    n_longer = sum(n > limit + 1 for n in lengths)
    assert 0 < n_longer < n_overlong < 1100
    with caplog.at_level(logging.WARNING, logger="gpt_sft.data.load"):
        truncated, stats = tokenize_dataset(book, allowed_max_length=limit, return_stats=True)
    assert f"{n_overlong} over-long" in caplog.text and "kept and truncated" in caplog.text
    assert (stats.num_overlong, stats.num_truncated, stats.num_dropped, stats.num_kept) == (n_overlong, n_longer, 0, 1100)
    assert stats.longest == max(lengths) + 1
    assert [len(ids) for ids in truncated["input_ids"]] == [min(n, limit + 1) for n in lengths]
    assert stats.num_tokens == sum(min(n, limit + 1) for n in lengths)
    # storing the ids cut to L + 1 gives exactly the batches the full ids give (with and without
    # prompt masking and padding to a multiple), and those equal the book's
    for collate in (
        InstructionDataCollator(allowed_max_length=limit, mask_prompt=True),
        InstructionDataCollator(allowed_max_length=limit, pad_to_multiple_of=16, return_attention_mask=True),
    ):
        for start in range(0, 1100, 8):
            rows = range(start, min(start + 8, 1100))
            a = collate(full.select(rows))
            b = collate(truncated.select(rows))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... while cutting to L tokens would not: the end-of-text would replace token L + 1
    cut_short = truncated.map(lambda row: {"input_ids": row["input_ids"][:limit]})
    collate = InstructionDataCollator(allowed_max_length=limit)
    assert any(
        not torch.equal(collate(full.select(range(s, s + 8)))["input_ids"], collate(cut_short.select(range(s, s + 8)))["input_ids"])
        for s in range(0, 1096, 8)
    )

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpt_sft.data.load"):
        dropped, stats = tokenize_dataset(book, allowed_max_length=limit, overlong="drop", return_stats=True)
    assert "dropped" in caplog.text
    assert (stats.num_overlong, stats.num_dropped, stats.num_kept) == (n_overlong, n_overlong, 1100 - n_overlong)
    assert len(dropped) == 1100 - n_overlong
    kept = [i for i, n in enumerate(lengths) if n <= limit]
    assert dropped["instruction"] == [book[i]["instruction"] for i in kept]
    assert dropped["input_ids"] == [full[i]["input_ids"] for i in kept]
    # every kept example keeps its end-of-text target
    collate = InstructionDataCollator(allowed_max_length=limit)
    for start in range(0, len(dropped), 8):
        targets = to_book_batch(collate(dropped.select(range(start, min(start + 8, len(dropped))))))[1]
        assert (targets == 50256).any(dim=1).all()
    with pytest.raises(ValueError, match="overlong must be"):
        tokenize_dataset(book, overlong="cut")


def test_overlong_boundary_is_more_than_allowed_max_length_tokens():
    ds = Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}])
    n = len(tokenize_dataset(ds)["input_ids"][0])
    collate = InstructionDataCollator
    # len == L: not over-long, keeps its end-of-text target
    out, stats = tokenize_dataset(ds, allowed_max_length=n, return_stats=True)
    assert stats.num_overlong == 0 and len(out["input_ids"][0]) == n
    assert to_book_batch(collate(allowed_max_length=n)(out))[1][0, -1] == 50256
    assert len(tokenize_dataset(ds, allowed_max_length=n, overlong="drop")) == 1
    # len == L + 1: over-long (loses its end-of-text target), stored whole, dropped with "drop"
    out, stats = tokenize_dataset(ds, allowed_max_length=n - 1, return_stats=True)
    assert (stats.num_overlong, stats.num_truncated) == (1, 0) and len(out["input_ids"][0]) == n
    assert "1 over-long (more than allowed_max_length=" in str(stats)
    assert not (to_book_batch(collate(allowed_max_length=n - 1)(out))[1] == 50256).any()
    with pytest.raises(InstructionDataError, match="all 1 entries are over-long .*nothing is left"):
        tokenize_dataset(ds, allowed_max_length=n - 1, overlong="drop")
    two = Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": "", "output": "bb cc"}])
    out, stats = tokenize_dataset(two, allowed_max_length=n, overlong="drop", return_stats=True)
    assert (len(out), stats.num_dropped, out["input_ids"][0]) == (1, 1, tokenize_dataset(ds)["input_ids"][0])
    # len == L + 2: over-long and stored cut to L + 1 tokens
    out, stats = tokenize_dataset(ds, allowed_max_length=n - 2, return_stats=True)
    assert (stats.num_overlong, stats.num_truncated) == (1, 1) and len(out["input_ids"][0]) == n - 1
    with pytest.raises(ValueError, match="allowed_max_length must be at least 1"):
        tokenize_dataset(ds, allowed_max_length=0)


def test_end_of_text_in_unvalidated_data_is_rejected_with_index():
    ds = Dataset.from_list([{"instruction": "a", "input": "", "output": "b"}, {"instruction": "<|endoftext|>", "input": "", "output": "b"}])
    with pytest.raises(InstructionDataError, match=r"entry 1: the 'alpaca' text of this entry contains '<\|endoftext\|>'"):
        tokenize_dataset(ds)


def test_tokenize_options(book):
    small = book.select(range(40))
    slim = tokenize_dataset(small, keep_columns=False)
    assert slim.column_names == ["input_ids", "prompt_length"]
    again = tokenize_dataset(tokenize_dataset(small), style="phi3")
    assert again.column_names == ["instruction", "input", "output", "input_ids", "prompt_length"]
    assert again["input_ids"] == tokenize_dataset(small, style="phi3")["input_ids"]
    from gpt_sft.model.tokenizer import get_hf_tokenizer

    hf = tokenize_dataset(small, get_hf_tokenizer())
    assert hf["input_ids"] == slim["input_ids"] and hf["prompt_length"] == slim["prompt_length"]
    with pytest.raises(TypeError, match="tiktoken Encoding or a transformers tokenizer"):
        tokenize_dataset(small, tokenizer=object())
    with pytest.raises(InstructionDataError, match=r"missing column\(s\) \['instruction'\]"):
        tokenize_dataset(Dataset.from_list([{"prompt": "a", "output": "b"}]))
    with pytest.raises(InstructionDataError, match="empty: nothing to tokenize"):
        tokenize_dataset(small.select([]))


# ---------------------------------------------------------------------------------------------- data loaders


def test_create_dataloaders_with_the_books_defaults(book_data_path):
    loaders = create_dataloaders(book_data_path)
    train, val, test = loaders
    assert (len(train), len(val), len(test)) == (935 // 8, 7, 14)
    assert train.batch_size == val.batch_size == test.batch_size == 8
    assert train.drop_last and not val.drop_last and not test.drop_last
    assert isinstance(train.sampler, torch.utils.data.RandomSampler)
    assert isinstance(val.sampler, torch.utils.data.SequentialSampler)
    assert isinstance(test.sampler, torch.utils.data.SequentialSampler)
    batches = list(train)
    assert all(b["input_ids"].shape[0] == 8 for b in batches) and set(batches[0]) == {"input_ids", "labels"}
    # seeded: the same order in a second call, a different one with another seed
    again = next(iter(create_dataloaders(book_data_path).train))
    assert torch.equal(again["input_ids"], batches[0]["input_ids"])
    other = next(iter(create_dataloaders(book_data_path, seed=7).train))
    assert not torch.equal(other["input_ids"], batches[0]["input_ids"])
    # val/test: in order, last batch kept
    splits = split_dataset(load_instruction_data(book_data_path))
    expected = InstructionDataCollator()(tokenize_dataset(splits["validation"].select(range(8))))
    first_val = next(iter(val))
    assert torch.equal(first_val["input_ids"], expected["input_ids"]) and torch.equal(first_val["labels"], expected["labels"])
    assert [b["input_ids"].shape[0] for b in test][-1] == 110 - 13 * 8


def test_create_dataloaders_from_splits_and_options(book):
    splits = split_dataset(book.select(range(200)))
    loaders = create_dataloaders(
        {"train": splits["train"], "val": splits["validation"], "test": splits["test"]},
        style="phi3", batch_size=4, mask_prompt=True, pad_to_multiple_of=8, return_attention_mask=True,
    )
    batch = next(iter(loaders.val))
    assert batch["input_ids"].shape[1] % 8 == 0 and set(batch) == {"input_ids", "labels", "attention_mask"}
    tokenized = tokenize_dataset(splits["validation"].select(range(4)), style="phi3")
    expected = InstructionDataCollator(mask_prompt=True, pad_to_multiple_of=8)(tokenized)
    assert torch.equal(batch["labels"], expected["labels"])
    assert len(loaders.train) == 170 // 4
    # a Dataset that is already tokenized is split and used as is
    pre = tokenize_dataset(book.select(range(100)), style="phi3")
    assert len(create_dataloaders(pre, batch_size=5).train) == 85 // 5


# ---------------------------------------------------------------------------------------------- benchmark


def test_benchmark_script_smoke(book_data_path, capsys):
    spec = importlib.util.spec_from_file_location("benchmark_data", REPO / "benchmarks" / "data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--data", str(book_data_path), "--sizes", "50", "120", "--threads", "1", "2", "--repeats", "1"])
    assert [(r["what"], r["entries"]) for r in rows] == [
        ("tokenize_dataset", 50), ("tokenize_dataset", 50), ("book loop", 50),
        ("tokenize_dataset", 120), ("tokenize_dataset", 120), ("book loop", 120),
    ]
    assert all(r["entries_per_s"] > 0 for r in rows)
    assert "entries/s" in capsys.readouterr().out


def test_source_is_remembered_for_later_errors(tmp_path):
    path = tmp_path / "tiny.parquet"
    Dataset.from_list(entries(3)).to_parquet(path)
    ds = load_instruction_data(path)
    with pytest.raises(InstructionDataError, match=r"^" + str(path).replace(".", r"\.") + ": data set too small"):
        split_dataset(ds.select(range(3)))
