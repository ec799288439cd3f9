"""Ranking a role's sections by how relevant they are to a conversation: BM25, offline, deterministic.

Text becomes terms by one rule for sections and questions alike: words (letters and digits) in lower
case, English and Russian stop words dropped, each word stemmed by Snowball (Russian for words with
Cyrillic letters, English for the rest), so "парковке" meets "парковка" and "reservations" meets
"reserve". A section's document is its title (counted `TITLE_WEIGHT` times) and its text.

The BM25 index is built once per role version (`FitCache.relevance_index`); a query costs one look-up
per distinct term of the last few messages. The last user message weighs 1, each message before or
after it half as much as the next closer one; only the last `MAX_QUERY_CHARS` of a message are read,
so a long paste costs a bounded amount.

The index is compact, so that the largest role the limits admit keeps its index in the fit cache:
BM25 scores as bm25s computes them (its Lucene variant, float32; `tests/worker/test_relevance.py`
compares them bit for bit) in a sparse matrix of float32 scores and 16-bit section numbers, and the
vocabulary as sorted 64-bit hashes of the terms with the terms themselves in one bytes object (to check
a hash's match). No Python object per term: at most `INDEX_BYTES_PER_BYTE` bytes per byte of the role
(`RelevanceIndex.bound`); about 0.5 for prose, whose words repeat.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import Stemmer

from role_injector import os_threads
from role_injector.formats import Message
from role_injector.roles import PREAMBLE_PRIORITY, Section

if TYPE_CHECKING:
    import numpy as np

WORD = re.compile(r"[^\W_]+")
CYRILLIC = re.compile(r"[а-яё]")
TITLE_WEIGHT = 3
DECAY = 0.5  # the weight of a message relative to the next one closer to the last user message
MAX_QUERY_MESSAGES = 7  # messages back from the last user message; 0.5**7 would barely count
MAX_QUERY_CHARS = 8_000  # read from the end of each message (where a question usually is)
# In relevance selection, sections of at least this priority (the preamble's by default) are the core:
# kept whatever the question, like required ones, but without failing when they do not fit.
CORE_PRIORITY = PREAMBLE_PRIORITY


@functools.cache
def _stop_words() -> frozenset[str]:
    # bm25s (and numpy with it) is imported on first use, so only relevance selection pays for it.
    from bm25s.stopwords import STOPWORDS_EN_PLUS, STOPWORDS_RUSSIAN

    return frozenset(STOPWORDS_EN_PLUS) | frozenset(STOPWORDS_RUSSIAN)


_local = os_threads.local()  # PyStemmer's stemmers are not thread-safe: one pair per OS thread


def _stemmers() -> tuple[Stemmer.Stemmer, Stemmer.Stemmer]:
    pair = getattr(_local, "stemmers", None)
    if pair is None:
        # No cache of stems: it saves little on prose, costs on unique words, and holds memory no one counts.
        pair = _local.stemmers = (Stemmer.Stemmer("english", 0), Stemmer.Stemmer("russian", 0))
    return pair


def terms(text: str) -> list[str]:
    """The stemmed terms of `text`, in order, stop words left out."""
    stop = _stop_words()
    words = [w for w in WORD.findall(text.casefold().replace("ё", "е")) if w not in stop]
    english, russian = _stemmers()
    if text.isascii():  # most text, and no word of it is Cyrillic
        return list(english.stemWords(words))
    cyrillic = [not w.isascii() and CYRILLIC.search(w) is not None for w in words]
    stems_ru = iter(russian.stemWords([w for w, c in zip(words, cyrillic, strict=True) if c]))
    stems_en = iter(english.stemWords([w for w, c in zip(words, cyrillic, strict=True) if not c]))
    return [next(stems_ru) if c else next(stems_en) for c in cyrillic]


@dataclass(frozen=True)
class Query:
    """What sections are ranked against: distinct terms of each message with the message's weight."""

    parts: tuple[tuple[float, tuple[str, ...]], ...] = ()

    @classmethod
    def from_text(cls, text: str) -> Query:
        return cls(((1.0, _distinct(text)),))

    @classmethod
    def from_turns(cls, turns: Sequence[Message]) -> Query:
        """The last user message first, the others with less weight the further they are from it."""
        if not turns:
            return cls()
        anchor = max((i for i, m in enumerate(turns) if m.role == "user"), default=len(turns) - 1)
        parts = []
        for i in range(max(0, anchor - MAX_QUERY_MESSAGES), min(len(turns), anchor + MAX_QUERY_MESSAGES + 1)):
            parts.append((DECAY ** abs(anchor - i), _distinct(turns[i].content)))
        parts.sort(key=lambda part: -part[0])
        return cls(tuple(parts))

    @property
    def empty(self) -> bool:
        return not any(words for _, words in self.parts)


def _distinct(text: str) -> tuple[str, ...]:
    tail = text[-MAX_QUERY_CHARS:]
    if len(text) > MAX_QUERY_CHARS and WORD.match(text, len(text) - MAX_QUERY_CHARS - 1):
        tail = WORD.sub("", tail, count=1)  # the end of a word cut in two is not a word
    return tuple(dict.fromkeys(terms(tail)))


@dataclass(frozen=True)
class Ranking:
    """A query's ranking of one role's sections."""

    scores: tuple[float, ...]  # every section's score, in document order; 0 where no term matches
    order: tuple[int, ...]  # the sections open to ranking: matching ones first (see `RelevanceIndex.rank`)
    key: bytes  # equal for rankings with equal scores, so fits can be cached by it


# BM25 as bm25s computes it by default (its Lucene variant, scores in float32).
K1, B = 1.5, 0.75
# What an index holds at most per byte of its role's section text (`RelevanceIndex.bound`). A term comes
# from a word, and words are apart by at least one character, so a role of n bytes has at most n/2 word
# occurrences, and so at most n/2 distinct terms and n/2 (term, section) scores. Per distinct term: its
# hash (8), its place in the term bytes (4), its column start (4) and its bytes: a stem of a casefolded
# word, at most 3 times the word's bytes (casefold turns 2-byte letters into up to 6 bytes) plus one.
# Per score: float32 and a section number (2, or 4 beyond 32,767 sections). (16 + 1 + 4) / 2, plus
# 3 bytes per byte of words, rounded up.
INDEX_BYTES_PER_BYTE = 14
INDEX_BYTES_PER_SECTION = 32  # its priority and its place in the walk (8 each), its length while built
INDEX_BYTES = 16 * 1024  # the object, its arrays' headers, what a build leaves allocated (measured: 2-6 KiB)


def _term_hashes(words: Sequence[str]) -> np.ndarray:
    import numpy as np

    return np.fromiter((int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                        for w in words), dtype=np.uint64, count=len(words))


class RelevanceIndex:
    """A BM25 index over one role version's sections, and their static order for ranking."""

    def __init__(self, sections: Sequence[Section]) -> None:
        import numpy as np

        self.sections = len(sections)
        documents = [_document(section) for section in sections]
        # Terms numbered as first seen (a dict only while building), then renumbered in hash order.
        numbers: dict[str, int] = {}
        flat = np.fromiter((numbers.setdefault(term, len(numbers)) for document in documents for term in document),
                           dtype=np.int64, count=sum(map(len, documents)))
        vocabulary = list(numbers)
        del numbers
        hashes = _term_hashes(vocabulary)
        by_hash = np.argsort(hashes, kind="stable")
        self._hashes = hashes[by_hash]
        renumber = np.empty(len(vocabulary), dtype=np.int64)
        renumber[by_hash] = np.arange(len(vocabulary))
        encoded = [vocabulary[i].encode() for i in by_hash.tolist()]
        del vocabulary
        self._terms = b"".join(encoded)
        self._term_starts = np.zeros(len(encoded) + 1, dtype=np.int64 if len(self._terms) >= 2**31 else np.int32)
        np.cumsum([len(term) for term in encoded], out=self._term_starts[1:])
        del encoded

        # BM25 scores per (term, section), term-major: bm25s's formula and float rounding, step by step.
        lengths = np.array([len(document) for document in documents], dtype=np.int64)
        del documents
        count = max(self.sections, 1)
        pairs, tf = np.unique(renumber[flat] * count + np.repeat(np.arange(self.sections), lengths),
                              return_counts=True)
        del flat
        term, doc = np.divmod(pairs, count)
        del pairs
        df = np.bincount(term, minlength=len(self._hashes))
        levels, at = np.unique(df, return_inverse=True)  # math.log per distinct df, as bm25s takes it
        idf = np.array([math.log(1 + (self.sections - d + 0.5) / (d + 0.5)) for d in levels.tolist()],
                       dtype=np.float32)[at]
        average = lengths.mean() if tf.size else 1.0  # (no term at all: no score uses it)
        norm = K1 * ((1 - B) + B * lengths.astype(np.float64) / average)
        tf64 = tf.astype(np.float64)
        self._scores = (idf[term].astype(np.float64) * (tf64 / (norm[doc] + tf64))).astype(np.float32)
        self._docs = doc.astype(np.int16 if self.sections < 2**15 else np.int32)
        self._starts = np.zeros(len(self._hashes) + 1, dtype=np.int32)
        np.cumsum(df, out=self._starts[1:])
        del term, doc, df, tf, tf64, idf

        self._priority = np.array([s.priority for s in sections], dtype=np.int64)
        # The sections a query may move: titled, neither required nor in the core, in priority order.
        walk = sorted((i for i, s in enumerate(sections)
                       if s.title is not None and not s.required and s.priority < CORE_PRIORITY),
                      key=lambda i: (-sections[i].priority, i))
        self._open = np.array(walk, dtype=np.int64)

    @staticmethod
    def bound(sections: Sequence[Section]) -> int:
        """Bytes the index of these sections holds at most, known before it is built."""
        return (INDEX_BYTES + INDEX_BYTES_PER_SECTION * len(sections)
                + INDEX_BYTES_PER_BYTE * sum(len(section.text.encode()) for section in sections))

    @property
    def nbytes(self) -> int:
        """What the index holds: its arrays and its term bytes (the fit cache's footprint of it)."""
        arrays = (self._hashes, self._term_starts, self._scores, self._docs, self._starts, self._priority, self._open)
        return INDEX_BYTES + len(self._terms) + sum(a.nbytes for a in arrays)

    def term_ids(self, words: Sequence[str]) -> list[int]:
        """The column of each word that is a term of the index, in the words' order."""
        import numpy as np

        if not words or not len(self._hashes):
            return []
        places = np.searchsorted(self._hashes, _term_hashes(words)).tolist()
        found = []
        for word, place in zip(words, places, strict=True):
            if place < len(self._hashes):
                start, end = int(self._term_starts[place]), int(self._term_starts[place + 1])
                if self._terms[start:end] == word.encode():
                    found.append(place)
        return found

    def scores(self, query: Query) -> np.ndarray:
        """Each section's score against the query (float64, one per section; 0 where no term matches)."""
        import numpy as np

        total = np.zeros(self.sections, dtype=np.float64)
        for weight, words in query.parts:
            ids = self.term_ids(words)
            if not ids:
                continue
            part = np.zeros(self.sections, dtype=np.float32)
            for column in ids:  # in float32, term after term, as bm25s adds them up
                start, end = self._starts[column], self._starts[column + 1]
                np.add.at(part, self._docs[start:end], self._scores[start:end])
            total += weight * part
        return total

    def rank(self, query: Query) -> Ranking:
        """Sections that match the query by score (high first), ties by priority (high first), then
        document order; after them the sections that do not match, in priority order."""
        import numpy as np

        scores = self.scores(query)
        matches = scores[self._open] > 0
        matched = self._open[matches]
        by_score = matched[np.lexsort((matched, -self._priority[matched], -scores[matched]))]
        nonzero = np.flatnonzero(scores)
        return Ranking(
            scores=tuple(scores.tolist()),
            order=tuple(by_score.tolist() + self._open[~matches].tolist()),
            key=nonzero.tobytes() + scores[nonzero].tobytes(),
        )


def _document(section: Section) -> list[str]:
    body = section.text.partition("\n")[2] if section.title is not None else section.text
    title = terms(section.title) if section.title is not None else []
    return title * TITLE_WEIGHT + terms(body)
