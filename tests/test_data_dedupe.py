"""``gpt-sft data dedupe``: the book's data with planted near-copies (case, punctuation, one article changed) is
searched, the copies are found and dropped, entries without a near-duplicate are kept, and the similarities agree with
a TF-IDF computed here in plain Python."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pytest

from gpt_sft.cli.main import main as gpt_sft
from gpt_sft.data.dedupe import DuplicatePair, find_duplicates, group_duplicates, similar_pairs

THRESHOLD = 0.9


def with_one_article_changed(text: str) -> str:
    changed = re.sub(r"\bthe\b", "a", text, count=1)
    assert changed != text
    return changed


@pytest.fixture(scope="module")
def book(book_data_path):
    """The book's entries, and the indices of those with no near-duplicate among them."""
    entries = json.loads(book_data_path.read_text(encoding="utf-8"))
    report = find_duplicates(entries, threshold=THRESHOLD)
    paired = {i for p in report.pairs for i in (p.first, p.second)}
    return entries, [i for i in range(len(entries)) if i not in paired]


@pytest.fixture(scope="module")
def planted(book):
    """The book's data and, at its end, three near-copies of entries that had no near-duplicate: the instruction
    in capitals, the output without punctuation, one "the" of the output made "a". ``{copy: original}``."""
    entries, singles = book
    candidates = [i for i in singles if re.search(r"\bthe\b", entries[i]["output"]) and len(entries[i]["output"]) > 120]
    upper, bare, article = candidates[0], candidates[len(candidates) // 2], candidates[-1]
    copies = [
        {**entries[upper], "instruction": entries[upper]["instruction"].upper()},
        {**entries[bare], "output": re.sub(r"[^\w\s]", "", entries[bare]["output"])},
        {**entries[article], "output": with_one_article_changed(entries[article]["output"])},
    ]
    n = len(entries)
    return entries + copies, {n: upper, n + 1: bare, n + 2: article}


def test_the_planted_copies_are_found_and_dropped_and_the_others_kept(book, planted):
    data, copies = planted
    report = find_duplicates(data, threshold=THRESHOLD)
    for copy, original in copies.items():
        assert report.kept_for[copy] == original
        pair = report.dropped[copy]
        assert (pair.first, pair.second, pair.field) == (original, copy, "entry")
    exact = {copy: report.dropped[copy].exact for copy in copies}
    assert list(exact.values()) == [True, True, False]  # case and punctuation vanish in normalising; the article not
    assert THRESHOLD <= report.dropped[max(copies)].similarity < 1
    kept = set(report.kept())
    assert set(book[1]) <= kept, "an entry without a near-duplicate is kept"
    assert set(copies.values()) <= kept, "the first member of each group is kept"
    # the book's own near-duplicates are dropped too, and nothing else
    assert len(kept) == len(book[0]) - len(find_duplicates(book[0], threshold=THRESHOLD).dropped)


def plain_tfidf_cosine(texts: list[str], pairs: list[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """Cosine similarity of TF-IDF vectors, written out: lowercase, no punctuation, words split on white space, term
    counts times the smoothed inverse document frequency ln((1 + n) / (1 + df)) + 1 over the distinct non-empty texts
    (identical texts are one document), each vector of unit length."""
    norm = [re.sub(r"[^\w\s]", "", t.lower()).split() for t in texts]
    documents = {" ".join(words) for words in norm if words}
    df = Counter(word for doc in documents for word in set(doc.split()))

    def vector(words):
        v = {w: c * (math.log((1 + len(documents)) / (1 + df[w])) + 1) for w, c in Counter(words).items()}
        length = math.sqrt(sum(x * x for x in v.values()))
        return {w: x / length for w, x in v.items()}

    return {(i, j): sum(x * vector(norm[j]).get(w, 0.0) for w, x in vector(norm[i]).items()) for i, j in pairs}


def test_the_similarities_agree_with_a_tfidf_written_out(planted):
    data, copies = planted
    texts = ["\n".join(e[k] for k in ("instruction", "input", "output")) for e in data]
    found = {(p.first, p.second): p.similarity for p in similar_pairs(texts, THRESHOLD)}
    article_copy = max(copies)
    some = [(copies[article_copy], article_copy)] + [pair for pair in found if pair[1] < len(data) - 3][:4]
    unalike = [(0, 1), (2, 3)]  # below the threshold: not found, and far from it here too
    expected = plain_tfidf_cosine(texts, some + unalike)
    for pair in some:
        assert found[pair] == pytest.approx(expected[pair], abs=1e-5), pair
    for pair in unalike:
        assert pair not in found and expected[pair] < THRESHOLD


def test_fields_are_searched_separately(planted):
    data, copies = planted
    report = find_duplicates(data, fields=["output"], threshold=THRESHOLD)
    upper, bare, article = copies
    assert upper not in report.dropped or report.dropped[upper].field == "output"  # its output is the original's
    assert report.dropped[bare].field == report.dropped[article].field == "output"
    assert {p.field for p in report.pairs} == {"output"}
    instruction = find_duplicates(data, fields=["instruction"], threshold=THRESHOLD)
    assert instruction.dropped[upper].exact and instruction.dropped[upper].field == "instruction"


def test_a_group_keeps_its_first_member_and_empty_texts_are_nobodys_duplicate():
    pairs = [DuplicatePair(0, 5, "entry", 0.95), DuplicatePair(3, 5, "entry", 0.97)]
    report = group_duplicates(6, pairs)
    assert report.kept() == [0, 1, 2, 4]
    assert report.kept_for == {3: 0, 5: 0}
    assert report.dropped[3] == pairs[1] and report.dropped[5] == pairs[1]  # each with its most similar partner
    assert similar_pairs(["", "  ", "?!", "A b", "a, B."], THRESHOLD) == [DuplicatePair(3, 4, "entry", 1.0, True)]


def test_the_books_character_ngrams_find_the_same_near_copy():
    texts = ["Rewrite the sentence in the passive voice.", "Rewrite a sentence in the passive voice!",
             "Name three primary colours."]
    (pair,) = similar_pairs(texts, 0.75, analyzer="char")
    assert (pair.first, pair.second, pair.exact) == (0, 1, False) and 0.75 <= pair.similarity < 1


@pytest.fixture
def small_file(tmp_path, book, planted):
    """Forty of the book's entries without near-duplicates and the three planted copies, as a JSON file."""
    entries, singles = book
    data, copies = planted
    chosen = sorted(set(singles[:37]) | set(copies.values()))
    small = [entries[i] for i in chosen] + [data[c] for c in copies]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(small, indent=1), encoding="utf-8")
    return path, small, {len(chosen) + k: chosen.index(original) for k, original in enumerate(copies.values())}


def test_the_command_counts_prints_and_writes_the_data_without_the_copies(small_file, tmp_path, capsys):
    path, small, copies = small_file
    before = path.read_bytes()
    assert gpt_sft(["data", "dedupe", "--data", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"3 duplicate pair(s) (2 exact) among {len(small)} entries; "
                                "3 later member(s) of 3 group(s) to drop"]
    assert gpt_sft(["data", "dedupe", "--data", str(path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and all(f"#{original} ~ #{copy}:" in "\n".join(printed) for copy, original in
                                     copies.items())
    output = tmp_path / "clean.json"
    assert gpt_sft(["data", "dedupe", "--data", str(path), "--quiet", "--output", str(output)]) == 0
    assert json.loads(output.read_text(encoding="utf-8")) == small[:-3]
    report = json.loads((tmp_path / "clean.dedupe-report.json").read_text(encoding="utf-8"))
    assert report["kept"] == len(small) - 3 and report["threshold"] == THRESHOLD
    assert [(d["dropped"], d["kept"], d["field"]) for d in report["dropped"]] == [
        (copy, original, "entry") for copy, original in copies.items()]
    assert [d["similarity"] == 1.0 for d in report["dropped"]] == [True, True, False]
    assert path.read_bytes() == before, "the input is never changed"


@pytest.mark.parametrize("argv, status, message", [
    (["--data", "{tmp}/missing.json"], 1, "error: --data {tmp}/missing.json: file not found"),
    (["--data", "{data}", "--fields", "instruction,prompt"], 1,
     "error: --fields takes instruction, input, output for Alpaca data, got instruction, prompt"),
    (["--data", "{data}", "--output", "{data}"], 2, "error: --output {data} is --data: the input is never changed"),
    (["--data", "{data}", "--threshold", "1.5"], 2, "error: --threshold must be above 0 and at most 1, got 1.5"),
    (["--data", "{data}", "--by", "entry", "--fields", "output"], 2, "error: --fields compares fields one by one"),
    (["--data", "{data}", "--report", "{tmp}/report.json"], 2, "error: --report needs --output"),
])
def test_errors_are_one_line(small_file, tmp_path, capsys, argv, status, message):
    path = small_file[0]
    argv = [a.format(tmp=tmp_path, data=path) for a in argv]
    message = message.format(tmp=tmp_path, data=path)
    try:
        result = gpt_sft(["data", "dedupe", *argv])
    except SystemExit as stop:
        result = stop.code
    err = capsys.readouterr().err
    assert result == status
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "clean.json").exists()


def test_conversations_are_compared_by_their_messages(tmp_path, capsys):
    def talk(question, answer):
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    data = [talk("What is the capital of France?", "The capital of France is Paris, a city on the Seine."),
            talk("Name a primary colour.", "Red is one of the three primary colours of paint."),
            talk("what is THE capital of france", "The capital of France is Paris, the city on the Seine!"),
            talk("Name a primary colour.", "Blue.")]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in data), encoding="utf-8")
    output = tmp_path / "clean.json"
    assert gpt_sft(["data", "dedupe", "--data", str(path), "--quiet", "--output", str(output)]) == 0
    assert json.loads(output.read_text(encoding="utf-8")) == data[:2] + data[3:]
    assert gpt_sft(["data", "dedupe", "--data", str(path), "--fields", "user", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("2 duplicate pair(s) (2 exact) among 4 entries")
    assert gpt_sft(["data", "dedupe", "--data", str(path), "--fields", "instruction"]) == 1
    assert capsys.readouterr().err == ("error: --fields takes system, user, assistant for conversations, "
                                       "got instruction\n")
    sharegpt = tmp_path / "sharegpt.json"  # the same conversations in ShareGPT's format: the same pairs, as messages
    sharegpt.write_text(json.dumps([{"conversations": [{"from": {"user": "human", "assistant": "gpt"}[m["role"]],
                                                        "value": m["content"]} for m in d["messages"]]} for d in data]))
    assert gpt_sft(["data", "dedupe", "--data", str(sharegpt), "--quiet", "--output", str(output)]) == 0
    assert capsys.readouterr().out.startswith("1 duplicate pair(s) (0 exact) among 4 entries")
    assert json.loads(output.read_text(encoding="utf-8")) == data[:2] + data[3:]


def test_data_lists_its_subcommands(capsys):
    assert gpt_sft(["data", "--help"]) == 0
    assert "dedupe" in capsys.readouterr().err
    assert gpt_sft(["data", "shuffle"]) == 2
    assert "unknown subcommand 'shuffle'" in capsys.readouterr().err
