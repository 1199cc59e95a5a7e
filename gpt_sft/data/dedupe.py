"""Exact and near-duplicate entries of instruction data, found as the book's ``find-near-duplicates`` finds them.

Each text is lowercased and stripped of punctuation, turned into a TF-IDF vector (scikit-learn's
:class:`~sklearn.feature_extraction.text.TfidfVectorizer`, sparse) and compared by cosine similarity; a pair at or
above the threshold (the default 0.9) is a near-duplicate. Texts that are identical once normalised are exact
duplicates, found by hashing before any vector is made (similarity 1.0). What is compared (:func:`entry_texts`): the
whole entry (its fields, or a conversation's messages with their roles, joined), or each field on its own (Alpaca's
``instruction``, ``input``, ``output``; a conversation's ``system``, ``user``, ``assistant`` messages, joined), each
searched separately as the book does. An empty field is nobody's duplicate.

Memory: no similarity matrix is ever built. The neighbours within the threshold are scikit-learn's
:class:`~sklearn.neighbors.NearestNeighbors` (cosine, brute force) radius queries, a block of rows at a time, and only
the pairs above the threshold are kept: memory grows with the entries and the pairs found, not with their square.

Groups (:func:`find_duplicates`): the pairs join entries into groups (union-find); the first entry of each group is
kept and every later one dropped, each with the pair that ties it to its group (its most similar partner).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import config_context
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.neighbors import NearestNeighbors

DEFAULT_THRESHOLD = 0.9
ALPACA_FIELDS = ("instruction", "input", "output")
CONVERSATION_FIELDS = ("system", "user", "assistant")
# word: whole words (single letters too, so that "a" -> "the" is a change); char: the book's bonus script's character
# 1- to 3-grams, about ten times slower at 52,000 entries (every entry shares most characters with every other)
ANALYZERS = ("word", "char")
_PUNCTUATION = re.compile(r"[^\w\s]")
_ROWS_PER_QUERY = 1024  # radius queries a block of rows at a time: the distances of one block are all that is held
_WORKING_MEMORY_MB = 128  # scikit-learn's chunks of distances inside one query


def normalize_text(text: str) -> str:
    """Lowercased, punctuation removed (the book's preprocessing), runs of white space made one space."""
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def is_conversation(entry: Mapping[str, Any]) -> bool:
    return "messages" in entry and "instruction" not in entry


def fields_of(entry: Mapping[str, Any]) -> tuple[str, ...]:
    """The fields ``--fields`` may name for this kind of entry."""
    return CONVERSATION_FIELDS if is_conversation(entry) else ALPACA_FIELDS


def entry_texts(entries: Sequence[Mapping[str, Any]], name: str | None = None) -> list[str]:
    """The text of each entry that is compared: its field ``name`` (a role's messages for conversations), or with
    ``None`` the whole entry (Alpaca's three fields; a conversation's messages as ``role: content`` lines)."""
    texts = []
    for entry in entries:
        if is_conversation(entry):
            messages = entry["messages"] or []
            if name is None:
                texts.append("\n".join(f"{m['role']}: {m['content']}" for m in messages))
            else:
                texts.append("\n".join(m["content"] for m in messages if m["role"] == name))
        elif name is None:
            texts.append("\n".join(entry.get(key) or "" for key in ALPACA_FIELDS))
        else:
            texts.append(entry.get(name) or "")
    return texts


@dataclass(frozen=True, slots=True)
class DuplicatePair:
    """Entries ``first`` < ``second`` (0-based) whose ``field`` (``"entry"``: the whole entry) is this similar;
    ``exact``: identical once normalised (a bag of words can be 1.0 alike in another order, and is not exact)."""

    first: int
    second: int
    field: str
    similarity: float
    exact: bool = False


def similar_pairs(texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD, field: str = "entry",
                  analyzer: str = "word") -> list[DuplicatePair]:
    """Every pair of ``texts`` whose cosine similarity of TF-IDF vectors is at least ``threshold``; identical
    normalised texts are pairs of similarity 1.0. Empty texts are left out. Sorted by ``(first, second)``."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the threshold must be above 0 and at most 1, got {threshold}")
    if analyzer not in ANALYZERS:
        raise ValueError(f"unknown analyzer {analyzer!r}; choose one of {', '.join(ANALYZERS)}")
    groups: dict[bytes, list[int]] = {}  # identical normalised texts, by their hash
    normalized: list[str] = []
    for index, text in enumerate(texts):
        norm = normalize_text(text)
        if norm:
            key = hashlib.blake2b(norm.encode("utf-8"), digest_size=16).digest()
            members = groups.setdefault(key, [])
            if not members:
                normalized.append(norm)
            members.append(index)
    pairs: list[DuplicatePair] = []
    representatives = list(groups.values())  # one text each, in the order of `normalized`
    for members in representatives:
        pairs += [DuplicatePair(members[0], other, field, 1.0, exact=True) for other in members[1:]]
    if len(normalized) > 1:
        for a, b, similarity in _neighbour_pairs(normalized, threshold, analyzer):
            for i in representatives[a]:
                for j in representatives[b]:
                    pairs.append(DuplicatePair(min(i, j), max(i, j), field, similarity))
    return sorted(pairs, key=lambda p: (p.first, p.second))


def _neighbour_pairs(texts: list[str], threshold: float, analyzer: str) -> list[tuple[int, int, float]]:
    """``(a, b, similarity)`` with ``a < b`` for distinct texts at least ``threshold`` alike."""
    token_pattern = r"(?u)\b\w+\b" if analyzer == "word" else None
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=(1, 3) if analyzer == "char" else (1, 1),
                                 token_pattern=token_pattern, lowercase=False, dtype=np.float32)
    try:
        vectors = vectorizer.fit_transform(texts)
    except ValueError:  # no word at all (every text a single mark of no word character): nothing alike
        return []
    # cosine distance = 1 - similarity; a hair of float32 slack, the exact test is on the similarity below
    neighbours = NearestNeighbors(radius=1.0 - threshold + 1e-6, metric="cosine", algorithm="brute").fit(vectors)
    found = []
    with config_context(working_memory=_WORKING_MEMORY_MB):
        for start in range(0, len(texts), _ROWS_PER_QUERY):
            distances, indices = neighbours.radius_neighbors(vectors[start:start + _ROWS_PER_QUERY])
            for offset, (row_distances, row_indices) in enumerate(zip(distances, indices)):
                a = start + offset
                for b, distance in zip(row_indices.tolist(), row_distances.tolist()):
                    similarity = min(1.0, 1.0 - distance)
                    if b > a and similarity >= threshold:
                        found.append((a, b, round(similarity, 6)))
    return found


@dataclass
class DuplicateReport:
    """The pairs found, and which entries to drop: ``dropped[j]`` is the pair that ties entry ``j`` to its group,
    ``kept_for[j]`` the group's first entry, which is kept."""

    num_entries: int
    pairs: list[DuplicatePair]
    dropped: dict[int, DuplicatePair] = field(default_factory=dict)
    kept_for: dict[int, int] = field(default_factory=dict)

    def kept(self) -> list[int]:
        return [i for i in range(self.num_entries) if i not in self.dropped]

    def summary(self) -> str:
        exact = sum(p.exact for p in self.pairs)
        return (f"{len(self.pairs)} duplicate pair(s) ({exact} exact) among {self.num_entries} entries; "
                f"{len(self.dropped)} later member(s) of {len(set(self.kept_for.values()))} group(s) to drop")

    def to_json(self) -> list[dict[str, Any]]:
        """One record per dropped entry: the entry, the kept one, and the pair (with field and similarity) that
        made it a duplicate."""
        return [{"dropped": j, "kept": self.kept_for[j], "pair": [pair.first, pair.second], "field": pair.field,
                 "similarity": pair.similarity, "exact": pair.exact} for j, pair in sorted(self.dropped.items())]


def group_duplicates(num_entries: int, pairs: Sequence[DuplicatePair]) -> DuplicateReport:
    """Join the pairs into groups; keep each group's first entry and drop the later ones."""
    parent = list(range(num_entries))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, DuplicatePair] = {}  # each entry's most similar pair (the earliest on a tie)
    for pair in pairs:
        a, b = root(pair.first), root(pair.second)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the root is the group's smallest index: the entry kept
        for member in (pair.first, pair.second):
            if member not in best or pair.similarity > best[member].similarity:
                best[member] = pair
    report = DuplicateReport(num_entries, list(pairs))
    for member, pair in sorted(best.items()):
        kept = root(member)
        if kept != member:
            report.dropped[member] = pair
            report.kept_for[member] = kept
    return report


def find_duplicates(entries: Sequence[Mapping[str, Any]], fields: Sequence[str] | None = None,
                    threshold: float = DEFAULT_THRESHOLD, analyzer: str = "word") -> DuplicateReport:
    """Exact and near-duplicate entries: by the whole entry (``fields=None``), or by each of ``fields``
    separately (any one field alike makes a pair). Raises ``ValueError`` for a field this kind of entry lacks."""
    if not entries:
        return DuplicateReport(0, [])
    if fields is not None:
        allowed = fields_of(entries[0])
        unknown = [name for name in fields if name not in allowed]
        if unknown or not fields:
            kind = "conversations" if allowed is CONVERSATION_FIELDS else "Alpaca data"
            raise ValueError(f"--fields takes {', '.join(allowed)} for {kind}, got {', '.join(fields) or 'none'}")
    pairs: list[DuplicatePair] = []
    for name in fields if fields is not None else (None,):
        pairs += similar_pairs(entry_texts(entries, name), threshold, name or "entry", analyzer)
    return group_duplicates(len(entries), sorted(pairs, key=lambda p: (p.first, p.second, p.field)))


__all__ = ["ALPACA_FIELDS", "ANALYZERS", "CONVERSATION_FIELDS", "DEFAULT_THRESHOLD", "DuplicatePair",
           "DuplicateReport", "entry_texts", "fields_of", "find_duplicates", "group_duplicates", "is_conversation",
           "normalize_text", "similar_pairs"]
