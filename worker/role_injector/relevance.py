"""Ranking a role's sections by how relevant they are to a conversation: BM25, offline, deterministic.

Text becomes terms by one rule for sections and questions alike: words (letters and digits) in lower
case, English and Russian stop words dropped, each word stemmed by Snowball (Russian for words with
Cyrillic letters, English for the rest), so "парковке" meets "парковка" and "reservations" meets
"reserve". A section's document is its title (counted `TITLE_WEIGHT` times) and its text.

The BM25 index (`bm25s`) is built once per role version (`FitCache.relevance_index`); a query costs
one look-up per distinct term of the last few messages. The last user message weighs 1, each message
before or after it half as much as the next closer one; only the last `MAX_QUERY_CHARS` of a message
are read, so a long paste costs a bounded amount.
"""

from __future__ import annotations

import functools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import Stemmer

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


_local = threading.local()  # PyStemmer's stemmers are not thread-safe: one pair per thread


def _stemmers() -> tuple[Stemmer.Stemmer, Stemmer.Stemmer]:
    pair = getattr(_local, "stemmers", None)
    if pair is None:
        pair = _local.stemmers = (Stemmer.Stemmer("english"), Stemmer.Stemmer("russian"))
    return pair


def terms(text: str) -> list[str]:
    """The stemmed terms of `text`, in order, stop words left out."""
    stop = _stop_words()
    words = [w for w in WORD.findall(text.casefold().replace("ё", "е")) if w not in stop]
    english, russian = _stemmers()
    cyrillic = [bool(CYRILLIC.search(w)) for w in words]
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


class RelevanceIndex:
    """A BM25 index over one role version's sections, and their static order for ranking."""

    def __init__(self, sections: Sequence[Section]) -> None:
        import bm25s
        import numpy as np

        self.sections = len(sections)
        self.characters = sum(len(section.text) for section in sections)  # for the cache's footprint
        documents = [_document(section) for section in sections]
        self._bm25: bm25s.BM25 | None = None
        if any(documents):  # bm25s cannot index a corpus without a single term
            self._bm25 = bm25s.BM25()
            self._bm25.index(documents, show_progress=False)
        self._priority = np.array([s.priority for s in sections], dtype=np.int64)
        # The sections a query may move: titled, neither required nor in the core, in priority order.
        walk = sorted((i for i, s in enumerate(sections)
                       if s.title is not None and not s.required and s.priority < CORE_PRIORITY),
                      key=lambda i: (-sections[i].priority, i))
        self._open = np.array(walk, dtype=np.int64)

    def scores(self, query: Query) -> np.ndarray:
        """Each section's score against the query (float64, one per section; 0 where no term matches)."""
        import numpy as np

        total = np.zeros(len(self._priority), dtype=np.float64)
        if self._bm25 is None:
            return total
        for weight, words in query.parts:
            ids = self._bm25.get_tokens_ids(list(words))
            if ids:
                total += weight * self._bm25.get_scores_from_ids(ids)
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
