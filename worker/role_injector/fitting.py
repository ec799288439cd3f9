"""Fitting a role into a token budget, by the budget rule of docs/architecture.md.

Sections are walked in (required, priority desc, document order); each is kept whole while it
fits; the first that does not is cut at its last paragraph (else sentence) boundary that fits and
the walk stops. The kept text is emitted in document order and its exact count is verified.

Cost: every section is encoded once per (role version, tokenizer, the values of the variables it
uses) and cached; a request then sums cached counts, picks the cut from cached prefix estimates and
encodes only the final string. Estimates choose a candidate, the exact count decides: if the final
string is over budget the fitter steps back one candidate at a time. Candidates are totally ordered,
so the result is the largest candidate not beyond the estimate's choice whose exact count fits,
which makes the fit monotone in the budget whatever the tokenizer does at section joins.

Relevance selection (a `Query` given) fits in two steps by the same rule. First the part no question
changes: required sections, then the core (priority >= `CORE_PRIORITY`), emitted in document order.
Only if all of it fits whole, the sections ranked for the query follow (`RelevanceIndex.rank`) in
what is left, emitted after that stable part in document order: the stable part stays a byte-
identical prefix across the turns of a conversation, so a model server's prompt cache keeps it.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, cast

from role_injector import os_threads
from role_injector.cpu_pool import weigh
from role_injector.errors import BudgetTooSmall, RoleError
from role_injector.formats import neutralise
from role_injector.relevance import CORE_PRIORITY, Query, Ranking, RelevanceIndex
from role_injector.roles import FENCE, SEPARATOR, Role, Section, fill_variables
from role_injector.tokens import Tokenizer

log = logging.getLogger("role_injector.fitting")
SENTENCE_END = re.compile(r"[.!?…。！？][\"'»”’)\]]*+(?=\s)")


@dataclass(frozen=True)
class MeasuredSection:
    """A section's final text with its exact token count; cut estimates are made when first needed."""

    index: int
    section: Section
    text: str
    tokens: int
    separator_tokens: int  # what a following separator adds: 0 where it merges into the last token
    tokenizer: Tokenizer = field(repr=False, compare=False)

    @cached_property
    def cuts(self) -> array[int]:
        """Character offsets where the text may be cut, ascending (4 bytes each: see `footprint`)."""
        return array("i", cut_points(self.text, self.section.title is not None))

    @cached_property
    def joined_tokens(self) -> int:
        """Exact tokens of the text followed by a separator (relevance selection adds these up)."""
        return self.tokenizer.count(self.text + SEPARATOR)

    @cached_property
    def cut_tokens(self) -> array[int]:
        """Estimated tokens of text[:cut] for each cut: the tokens that start before it.
        Only a section that is cut pays for this, once (a request encodes only the cut section)."""
        starts = self.tokenizer.token_boundaries(self.text)
        estimates = []
        byte_offset, char_offset = 0, 0
        for cut in self.cuts:
            byte_offset += len(self.text[char_offset:cut].encode())
            char_offset = cut
            estimates.append(max(1, bisect.bisect_left(starts, byte_offset)))
        return array("i", estimates)


State = Literal["kept", "truncated", "dropped"]
Reason = Literal["required", "priority", "relevance"]


@dataclass(frozen=True)
class SectionReport:
    """What became of one section in a fit, and why it was where it was in the walk."""

    index: int
    title: str | None  # None for the preamble
    state: State
    reason: Reason  # required; priority (priority order, or the core); relevance (ranked for the query)
    score: float | None  # the section's relevance score; None in priority selection


@dataclass(frozen=True)
class Outline:
    """Titles and kinds of a role's sections, shared by all its fits (for their reports)."""

    titles: tuple[str | None, ...]
    required: frozenset[int]
    core: frozenset[int]


@dataclass(frozen=True)
class Fit:
    system: str
    tokens: int  # exact count of `system`
    full_tokens: int  # the whole role untrimmed (section counts and separators)
    budget: int
    kept: tuple[str, ...]
    truncated: tuple[str, ...]
    dropped: tuple[str, ...]
    kept_chars: Mapping[int, int]  # section index -> characters kept, for kept and truncated sections
    truncated_index: int | None
    stable_chars: int  # the leading characters of `system` that no question changes (all in priority selection)
    scores: tuple[float, ...] | None  # relevance selection: every section's score against the query
    walk_order: tuple[int, ...]  # section indexes in the order the fitter walked them
    layout: tuple[int, ...]  # indexes of the kept (and truncated) sections in the order `system` has them
    outline: Outline = field(repr=False, compare=False)

    @property
    def trimmed(self) -> bool:
        return bool(self.truncated or self.dropped)

    @cached_property
    def sections(self) -> tuple[SectionReport, ...]:
        """Every section in document order: kept, truncated or dropped, and why."""
        outline, scores = self.outline, self.scores
        reports = []
        for i, title in enumerate(outline.titles):
            state: State = "truncated" if i == self.truncated_index else "kept" if i in self.kept_chars else "dropped"
            reason: Reason = "required" if i in outline.required else "priority"
            if scores is not None and reason == "priority" and i not in outline.core and scores[i] > 0:
                reason = "relevance"
            score = None if scores is None else round(scores[i], 4)
            reports.append(SectionReport(i, title, state, reason, score))
        return tuple(reports)

    def report(self) -> dict[str, Any]:
        """The trim report as JSON-ready data (REST `trim`, the CLI); callers copy before adding keys."""
        return self._report

    @cached_property
    def _report(self) -> dict[str, Any]:
        # Built once per fit: fits are cached, and listing a large role's sections costs more than the fit.
        return {
            "trimmed": self.trimmed,
            "kept": list(self.kept),
            "truncated": list(self.truncated),
            "dropped": list(self.dropped),
            "selection": "priority" if self.scores is None else "relevance",
            "sections": [
                {"title": s.title, "state": s.state, "reason": s.reason, "score": s.score} for s in self.sections
            ],
        }


@dataclass(frozen=True)
class SectionFit:
    """What a fit did to one section, for people who tune a role (the role studio, POST /v1/plan)."""

    index: int
    label: str
    title: str | None
    required: bool
    priority: int
    order: int  # 1-based position in the order the fitter walks the sections
    tokens: int  # exact count of the section's text alone
    text: str  # as fitted: variables filled, control tokens neutralised
    kept_chars: int  # characters kept from the start of `text`: all when kept, none when dropped
    kept_tokens: int  # exact count of those characters
    state: State  # the words of the trim report (see SectionReport)
    reason: Reason  # why it stood where it did in the walk (see SectionReport)
    # Relevance selection: one of the core, kept whatever the question (its reason says "priority").
    core: bool
    score: float | None  # relevance score against the query; None in priority selection
    position: int | None  # 0-based place of the kept text among the pieces of `system`; None when dropped


def is_heading_line(line: str) -> bool:
    """A Markdown ATX heading: up to three spaces, one to six `#`, then a blank or the line's end."""
    stripped = line.lstrip(" ")
    hashes = len(stripped) - len(stripped.lstrip("#"))
    return len(line) - len(stripped) <= 3 and 1 <= hashes <= 6 and stripped[hashes:hashes + 1] in ("", " ", "\t")


def leads_into_next(line: str) -> bool:
    """Whether a line only leads into what follows it, so that text cut right after it would end on
    nothing: a heading (`is_heading_line`, or a setext underline), a thematic break, or a line that
    introduces what comes next, ending with a colon (closing `*` or `_` of emphasis aside)."""
    stripped = line.strip()
    if not stripped:
        return False
    if is_heading_line(line) or any(set(stripped) <= {mark, " "} for mark in "=-*_"):
        return True  # a setext underline (`===`, `---`) or a thematic break (`---`, `***`, `___`)
    return stripped.rstrip("*_").endswith((":", "："))


def cut_points(text: str, has_heading: bool) -> list[int]:
    """Offsets after which `text` may be cut: sentence ends inside the first paragraph of the body,
    then paragraph ends. Never inside a code fence, never inside the heading line, and never right
    after a line that only leads into what was cut (`leads_into_next`; a sentence end inside a heading
    line counts as that line)."""
    body_start = text.find("\n") + 1 if has_heading else 0
    if has_heading and body_start == 0:
        return []
    paragraph_ends: list[int] = []
    leading_ends: set[int] = set()  # paragraph ends whose last line leads into what follows
    line_starts: list[int] = []
    heading_lines: list[bool] = []
    in_fence = False
    offset = 0
    last_text_end = 0  # end of the last line that had text
    last_leads = False
    for line in text.split("\n"):
        line_starts.append(offset)
        heading_lines.append(not in_fence and is_heading_line(line))
        if FENCE.match(line):
            in_fence = not in_fence
        if line.strip():
            last_text_end = offset + len(line.rstrip())
            last_leads = not in_fence and leads_into_next(line)
        elif not in_fence and last_text_end > body_start and (not paragraph_ends or last_text_end > paragraph_ends[-1]):
            paragraph_ends.append(last_text_end)
            if last_leads:
                leading_ends.add(last_text_end)
        offset += len(line) + 1
    first_end = paragraph_ends[0] if paragraph_ends else len(text)
    first_paragraph = text[body_start:first_end]
    sentence_ends = []
    if not FENCE.search(first_paragraph) and "```" not in first_paragraph:
        sentence_ends = [body_start + m.end() for m in SENTENCE_END.finditer(first_paragraph)]
        sentence_ends = [c for c in sentence_ends if not heading_lines[bisect.bisect_right(line_starts, c) - 1]]
    end = len(text.rstrip())
    return sorted({c for c in sentence_ends + paragraph_ends if body_start < c < end and c not in leading_ends})


def measure_section(index: int, section: Section, text: str, tokenizer: Tokenizer) -> MeasuredSection:
    tail = text[-32:]
    separator_tokens = tokenizer.count(tail + SEPARATOR) - tokenizer.count(tail)
    return MeasuredSection(index, section, text, tokenizer.count(text), separator_tokens, tokenizer)


@dataclass(frozen=True)
class RolePlan:
    """What fitting a role needs under one tokenizer, computed once per role version."""

    sections: tuple[MeasuredSection | None, ...]  # None where the section uses variables
    dynamic: tuple[int, ...]  # indexes of sections that use variables
    required: tuple[int, ...]  # document order
    walk: tuple[int, ...]  # the other sections, in walk order
    core: tuple[int, ...]  # relevance selection: the sections of `walk` kept whatever the question
    labels: tuple[str, ...]
    static_full_tokens: int
    outline: Outline

    @classmethod
    def build(cls, role: Role, tokenizer: Tokenizer) -> RolePlan:
        sections = tuple(
            None if section.variables else measure_section(i, section, neutralise(section.text), tokenizer)
            for i, section in enumerate(role.sections)
        )
        required = tuple(i for i, s in enumerate(role.sections) if s.required)
        core = tuple(i for i in role.walk_order if is_core(role.sections[i]))
        return cls(
            sections=sections,
            dynamic=tuple(i for i, m in enumerate(sections) if m is None),
            required=required,
            walk=tuple(i for i in role.walk_order if not role.sections[i].required),
            core=core,
            labels=tuple(s.label for s in role.sections),
            static_full_tokens=sum(m.tokens + m.separator_tokens for m in sections if m is not None),
            outline=Outline(titles=tuple(s.title for s in role.sections), required=frozenset(required),
                            core=frozenset(core)),
        )


def is_core(section: Section) -> bool:
    return not section.required and section.priority >= CORE_PRIORITY


DEFAULT_FIT_CACHE_BYTES = 128 * 1024 * 1024  # per process (ROLE_INJECTOR_FIT_CACHE_BYTES)
# What an entry costs besides its texts: the dict slot, key tuple, value object, small ints.
ENTRY_BYTES = 256
# A section's cut offsets and their token estimates, 4 bytes each, are made when it is first cut,
# after it was cached: at most one cut per character, so the entry is counted with 8 bytes more
# per character from the start.
CUT_BYTES_PER_CHAR = 8
FIT_CACHE_VARIABLE = "ROLE_INJECTOR_FIT_CACHE_BYTES"


def footprint(value: object) -> int:
    """Bytes a key or value of the cache holds, estimated from above."""
    if isinstance(value, str | bytes):
        return sys.getsizeof(value)
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(map(footprint, value))
    if isinstance(value, MeasuredSection):
        return ENTRY_BYTES + sys.getsizeof(value.text) + CUT_BYTES_PER_CHAR * len(value.text)
    if isinstance(value, RolePlan):
        return ENTRY_BYTES * len(value.sections) + sum(footprint(m) for m in value.sections if m is not None)
    if isinstance(value, Fit):
        # Per section: its kept characters, score, place in the walk and, made later, its report.
        tuples = (value.kept, value.truncated, value.dropped, value.walk_order, value.layout, value.scores or ())
        return (ENTRY_BYTES * (1 + 2 * len(value.outline.titles)) + sys.getsizeof(value.kept_chars)
                + sys.getsizeof(value.system) + sum(map(sys.getsizeof, tuples)))
    if isinstance(value, RelevanceIndex):
        return value.nbytes  # what its arrays hold (tests/security/test_cache_bounds.py measures it)
    if isinstance(value, _Filled):  # a cut piece is a text of its own; whole ones are the sections'
        return (ENTRY_BYTES * (1 + len(value.pieces)) + sys.getsizeof(value.pieces) + sys.getsizeof(value.system)
                + sum(map(sys.getsizeof, value.pieces.values())))
    return ENTRY_BYTES


class FitCache:
    """What fitting remembers between requests: role plans, measured sections, token counts and whole
    fits, in one LRU that is safe across threads, bounded by the bytes its entries hold (estimated
    from above by `footprint`; the texts of keys count too, since a key can hold a variable's value).
    An entry bigger than the whole budget is not kept."""

    def __init__(self, max_bytes: int = DEFAULT_FIT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        # An OS lock: the CPU pool's threads and the event loop's take it (under gevent, threading.Lock
        # would be a greenlet lock). Held around dictionary operations only.
        self._lock = os_threads.lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: object) -> None:
        size = ENTRY_BYTES + footprint(key) + footprint(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                return
            self._entries[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def plan(self, role: Role, tokenizer: Tokenizer) -> RolePlan:
        key = (role.version, tokenizer.name, "plan")
        found = self.get(key)
        if isinstance(found, RolePlan):
            return found
        plan = RolePlan.build(role, tokenizer)
        self.put(key, plan)
        return plan

    def relevance_index(self, role: Role) -> RelevanceIndex:
        """The BM25 index of the role's sections, built once per role version. An index that might not
        fit in the cache is refused before it is built: kept nowhere, it would be built on every request.
        (With the default limits it always fits: 4 MiB of role, at most 14 bytes per byte, in 128 MiB.)"""
        key = (role.version, "relevance")
        found = self.get(key)
        if isinstance(found, RelevanceIndex):
            return found
        bound = RelevanceIndex.bound(role.sections)
        if ENTRY_BYTES + footprint(key) + bound > self.max_bytes:
            raise RoleError(
                f"role {role.name!r} is too large for relevance selection: its index may need {bound} bytes, "
                f"more than the fit cache holds ({self.max_bytes} bytes, set by {FIT_CACHE_VARIABLE}); raise it, "
                "or use priority selection",
                details={"limit": FIT_CACHE_VARIABLE, "value": self.max_bytes, "needed": bound},
            )
        weigh(len(role.content))
        index = RelevanceIndex(role.sections)
        self.put(key, index)
        log.info("built the relevance index of role %r, version %s: %d bytes", role.name, role.version[7:19],
                 index.nbytes)
        return index

    def measure(
        self, role: Role, index: int, values: Mapping[str, str], tokenizer: Tokenizer
    ) -> MeasuredSection:
        """A section that uses variables, measured once per set of the values it uses."""
        section = role.sections[index]
        key = (role.version, tokenizer.name, index, tuple(values[v] for v in sorted(section.variables)))
        found = self.get(key)
        if isinstance(found, MeasuredSection):
            return found
        measured = measure_section(index, section, neutralise(fill_variables(section.text, values)), tokenizer)
        self.put(key, measured)
        return measured

    def count(self, key: Hashable, text: str, tokenizer: Tokenizer, prompt: bool = False) -> int:
        """`tokenizer.count(text)` (or `count_prompt` for a rendered prompt), once per key."""
        full_key = ("count", tokenizer.name, prompt, key)
        found = self.get(full_key)
        if isinstance(found, int):
            return found
        tokens = tokenizer.count_prompt(text) if prompt else tokenizer.count(text)
        self.put(full_key, tokens)
        return tokens


def fit_budget(
    role: Role,
    values: Mapping[str, str],
    budget: int,
    tokenizer: Tokenizer,
    cache: FitCache,
    query: Query | None = None,
) -> Fit:
    """The role's system prompt in at most `budget` tokens of `tokenizer`, with a trim report.
    With a `query` (even an empty one), sections are selected by relevance to it.

    Fits are cached too: budgets come in coarse steps, so the same fit serves many requests."""
    ranking = None if query is None else cache.relevance_index(role).rank(query)
    key = (role.version, tokenizer.name, "fit", budget, tuple(sorted(values.items())), ranking and ranking.key)
    found = cache.get(key)
    if isinstance(found, Fit):
        return found
    weigh(len(role.content))  # selecting among the sections: the bigger the role, the longer
    fit = _compute_fit(role, values, budget, tokenizer, cache, ranking)
    cache.put(key, fit)
    return fit


def measure_sections(
    role: Role, values: Mapping[str, str], tokenizer: Tokenizer, cache: FitCache
) -> tuple[Sequence[MeasuredSection], int]:
    """Every section as the fitter sees it (variables filled, control tokens neutralised) and the
    tokens of the whole role untrimmed; sections without variables come from the cached role plan."""
    plan = cache.plan(role, tokenizer)
    full_tokens = plan.static_full_tokens
    measured = plan.sections
    if plan.dynamic:
        filled = list(measured)
        for i in plan.dynamic:
            m = filled[i] = cache.measure(role, i, values, tokenizer)
            full_tokens += m.tokens + m.separator_tokens
        measured = tuple(filled)
    sections = cast(tuple[MeasuredSection, ...], measured)  # every None was measured above
    if sections:
        full_tokens -= sections[-1].separator_tokens  # no separator after the last section
    return sections, full_tokens


@dataclass(frozen=True)
class _Filled:
    """The result of walking one order of sections into what is left of the budget."""

    pieces: dict[int, str]  # section index -> text kept
    system: str  # the composed text, verified
    tokens: int
    truncated: int | None
    whole: bool  # every section of the order kept whole


def _fill(
    order: Sequence[int],
    measured: Sequence[MeasuredSection],
    remaining: int,
    after_text: bool,
    compose: Callable[[dict[int, str]], str],
    budget: int,
    tokenizer: Tokenizer,
) -> _Filled:
    """Walk `order` keeping whole sections while they fit in `remaining` (estimated), cut the first
    that does not, then verify `compose(pieces)` exactly, stepping back one candidate at a time.
    `compose({})` must already be verified to fit, so the stepping back ends."""
    kept: list[MeasuredSection] = []
    partial: MeasuredSection | None = None
    cut = -1
    whole = True
    for i in order:
        m = measured[i]
        # Estimated cost of a piece: its tokens and the separator it brings. A cut piece ends at a
        # sentence end, where the separator usually merges into the punctuation's token.
        joiner = m.separator_tokens if after_text or kept else 0
        if m.tokens + joiner <= remaining:
            remaining -= m.tokens + joiner
            kept.append(m)
            continue
        partial, cut, whole = m, bisect.bisect_right(m.cut_tokens, remaining) - 1, False
        break

    while True:
        pieces = {m.index: m.text for m in kept}
        if partial is not None and cut >= 0:
            pieces[partial.index] = partial.text[: partial.cuts[cut]]
        system = compose(pieces)
        tokens = tokenizer.count(system)
        if tokens <= budget:
            break
        whole = False
        if partial is not None and cut >= 0:
            cut -= 1
        else:
            partial = kept.pop()
            cut = len(partial.cuts) - 1
    return _Filled(pieces, system, tokens, partial.index if partial is not None and cut >= 0 else None, whole)


def _pick(
    order: Sequence[int],
    measured: Sequence[MeasuredSection],
    stable: _Filled,
    budget: int,
    tokenizer: Tokenizer,
    cache: FitCache,
) -> _Filled:
    """Relevance selection after the stable part: walk the ranked sections by the same rule, counted
    exactly without encoding the whole result.

    The pieces here are titled sections, so each starts with '#'. Every vocabulary's split pattern ends a
    pre-token at the separator's last newline when a '#' follows (a punctuation run takes the newlines
    with it; after a letter or digit they form their own pre-token), and '#' composes with nothing under
    NFC. So count(a + SEP + b) = count(a + SEP) + count(b) whenever b starts with '#', and the result's
    count is count(stable + SEP) plus each piece's count with its separator, the last piece in document
    order without it. Section counts with a separator are cached; only a cut piece is encoded.
    A tokenizer for which this is not proved (`heading_joins_add_up`, false for an engine's) walks the
    same order with `_fill`, which verifies by encoding the result."""
    if not tokenizer.heading_joins_add_up:
        def after_stable(pieces: dict[int, str]) -> str:
            return SEPARATOR.join(([stable.system] if stable.system else []) + [pieces[i] for i in sorted(pieces)])

        return _fill(order, measured, budget - stable.tokens, bool(stable.system), after_stable, budget, tokenizer)
    head = 0
    if stable.system:
        head = cache.count(("stable+separator", stable.system), stable.system + SEPARATOR, tokenizer)
    kept: list[MeasuredSection] = []
    joined = head  # tokens of everything kept, each piece counted with the separator after it
    last: MeasuredSection | None = None  # the kept piece furthest down the document
    cut_piece: tuple[int, str] | None = None
    tokens = stable.tokens
    for i in order:
        m = measured[i]
        assert m.text.startswith("#")  # ranked sections are titled (the preamble is always core)
        ends = m if last is None or m.index > last.index else last
        total = joined + m.joined_tokens - (ends.joined_tokens - ends.tokens)
        if total <= budget:
            kept.append(m)
            joined += m.joined_tokens
            last, tokens = ends, total
            continue
        # Cut it: the largest cut not beyond the estimate's choice whose exact count fits.
        is_last = last is None or m.index > last.index
        trailing = 0 if is_last else last.joined_tokens - last.tokens  # type: ignore[union-attr]
        cut = bisect.bisect_right(m.cut_tokens, budget - joined + trailing - 1) - 1
        while cut >= 0:
            text = m.text[: m.cuts[cut]]
            piece = tokenizer.count(text) if is_last else tokenizer.count(text + SEPARATOR)
            if joined + piece - trailing <= budget:
                cut_piece, tokens = (m.index, text), joined + piece - trailing
                break
            cut -= 1
        break
    pieces = {m.index: m.text for m in kept}
    if cut_piece is not None:
        pieces[cut_piece[0]] = cut_piece[1]
    if not pieces:
        return _Filled({}, stable.system, stable.tokens, None, True)
    system = (stable.system + SEPARATOR if stable.system else "") + SEPARATOR.join(pieces[i] for i in sorted(pieces))
    return _Filled(pieces, system, tokens, cut_piece[0] if cut_piece else None, cut_piece is None)


def _compute_fit(
    role: Role, values: Mapping[str, str], budget: int, tokenizer: Tokenizer, cache: FitCache, ranking: Ranking | None
) -> Fit:
    plan = cache.plan(role, tokenizer)
    measured, full_tokens = measure_sections(role, values, tokenizer, cache)
    required = {i: measured[i].text for i in plan.required}
    required_text = SEPARATOR.join(required.values())
    used = cache.count((role.version, "required", required_text), required_text, tokenizer) if required else 0
    if used > budget:
        raise BudgetTooSmall(
            f"role {role.name!r} needs {used} tokens for its required sections; the budget is {budget}",
            details={"needed": used, "budget": budget, "required": [plan.labels[i] for i in required]},
        )

    def in_document_order(pieces: dict[int, str]) -> str:
        everything = {**required, **pieces}
        return SEPARATOR.join(everything[i] for i in sorted(everything))

    if ranking is None:
        stable = filled = _fill(plan.walk, measured, budget - used, bool(required), in_document_order, budget,
                                tokenizer)
        picked = None
    else:
        # The stable part depends on the budget only, so it is fitted (and encoded) once per budget.
        key = (role.version, tokenizer.name, "stable", budget, tuple(sorted(values.items())))
        found = cache.get(key)
        if not isinstance(found, _Filled):
            found = _fill(plan.core, measured, budget - used, bool(required), in_document_order, budget, tokenizer)
            cache.put(key, found)
        stable = filled = found
        picked = _pick(ranking.order, measured, stable, budget, tokenizer, cache) if stable.whole else None
        if picked is not None and picked.pieces:
            filled = picked

    pieces = {**required, **stable.pieces, **(picked.pieces if picked else {})}
    truncated = picked.truncated if picked is not None else stable.truncated
    in_place = tuple(sorted(pieces))  # document order
    dropped_mask = bytearray(b"\x01") * len(plan.labels)
    for i in pieces:
        dropped_mask[i] = 0
    return Fit(
        system=filled.system,
        tokens=filled.tokens,
        full_tokens=full_tokens,
        budget=budget,
        kept=tuple(plan.labels[i] for i in in_place if i != truncated),
        truncated=(plan.labels[truncated],) if truncated is not None else (),
        dropped=tuple(itertools.compress(plan.labels, dropped_mask)),
        kept_chars={i: len(text) for i, text in pieces.items()},
        truncated_index=truncated,
        stable_chars=len(stable.system),
        scores=None if ranking is None else ranking.scores,
        walk_order=role.walk_order if ranking is None else plan.required + plan.core + ranking.order,
        layout=in_place if not picked else tuple(sorted({**required, **stable.pieces})) + tuple(sorted(picked.pieces)),
        outline=plan.outline,
    )


def section_fits(
    role: Role, values: Mapping[str, str], fit: Fit, tokenizer: Tokenizer, cache: FitCache
) -> tuple[SectionFit, ...]:
    """Each section of `role` with what `fit` (made from the same values and tokenizer) kept of it."""
    measured, _ = measure_sections(role, values, tokenizer, cache)
    order = {index: position for position, index in enumerate(fit.walk_order, 1)}
    position = {index: place for place, index in enumerate(fit.layout)}
    report = []
    for m, why in zip(measured, fit.sections, strict=True):
        kept = fit.kept_chars.get(m.index, 0)
        # Only the cut section is encoded again.
        kept_tokens = m.tokens if kept == len(m.text) else tokenizer.count(m.text[:kept]) if kept else 0
        report.append(SectionFit(
            index=m.index, label=m.section.label, title=m.section.title, required=m.section.required,
            priority=m.section.priority, order=order[m.index], tokens=m.tokens, text=m.text,
            kept_chars=kept, kept_tokens=kept_tokens, state=why.state, reason=why.reason,
            core=fit.scores is not None and m.index in fit.outline.core, score=why.score,
            position=position.get(m.index),
        ))
    return tuple(report)
