"""Unicode NFC in bounded time, with exactly `unicodedata.normalize("NFC", ...)`'s result.

CPython puts combining marks in canonical order with an insertion sort, so a run of marks in
falling combining class costs O(n²): 80,000 marks take 10 s, the 1 MiB a request or role file may
hold would take an hour. Before CPython sees a run of marks longer than `LONG_MARK_RUN`, the run is
decomposed and stably sorted by combining class here (O(n log n)); that is what canonical ordering
does (UAX #15), so the text is canonically equivalent and its NFC the same, and CPython's own sort
then finds nothing to move.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator

LONG_MARK_RUN = 32  # a run this long costs CPython at most LONG_MARK_RUN² steps: it stays


@functools.cache
def marks() -> frozenset[str]:
    """Characters whose canonical decomposition is all non-starters: combining class > 0, and the
    three Tibetan vowel signs of class 0 that decompose into two marks. From this Python's Unicode
    tables, once per process (~0.2 s)."""
    found = set()
    for cp in range(0x110000):
        char = chr(cp)
        if unicodedata.combining(char):
            found.add(char)
        elif unicodedata.decomposition(char) and not 0xD800 <= cp < 0xE000:
            decomposed = unicodedata.normalize("NFD", char)
            if decomposed != char and all(unicodedata.combining(c) for c in decomposed):
                found.add(char)
    return frozenset(found)


def long_mark_runs(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the maximal runs of at least `LONG_MARK_RUN` marks. Every such run holds one of the
    characters sampled every `LONG_MARK_RUN`, so text without such runs costs one strided slice."""
    found = marks()
    if found.isdisjoint(text[LONG_MARK_RUN - 1 :: LONG_MARK_RUN]):
        return
    done = 0
    for sample in range(LONG_MARK_RUN - 1, len(text), LONG_MARK_RUN):
        if sample < done or text[sample] not in found:
            continue
        start, end = sample, sample + 1
        while start > done and text[start - 1] in found:
            start -= 1
        while end < len(text) and text[end] in found:
            end += 1
        done = end
        if end - start >= LONG_MARK_RUN:
            yield start, end


def nfc(text: str) -> str:
    """`unicodedata.normalize("NFC", text)`, in O(n log n) whatever the text."""
    if text.isascii():
        return text
    pieces = []
    done = 0
    for run_start, run_end in long_mark_runs(text):
        # The character before the run may end in marks of its own (ấ = a + ̂ + ́): they sort with
        # the run. It starts with a starter, as every decomposition that is not all marks does.
        start = max(run_start - 1, done)
        head = unicodedata.normalize("NFD", text[start:run_start])
        keep = len(head)
        while keep and unicodedata.combining(head[keep - 1]):
            keep -= 1
        run = list(head[keep:])
        for char in text[run_start:run_end]:
            run.extend(unicodedata.normalize("NFD", char))
        run.sort(key=unicodedata.combining)  # stable: canonical ordering
        pieces += [text[done:start], head[:keep], "".join(run)]
        done = run_end
    if not pieces:
        return unicodedata.normalize("NFC", text)
    pieces.append(text[done:])
    return unicodedata.normalize("NFC", "".join(pieces))
