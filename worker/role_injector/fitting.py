"""Fitting a role into a token budget, by DESIGN.md's rule.

Sections are walked in (required, priority desc, document order); each is kept whole while it
fits; the first that does not is cut at its last paragraph (else sentence) boundary that fits and
the walk stops. The kept text is emitted in document order and its exact count is verified.

Cost: every section is encoded once per (role version, tokenizer, the values of the variables it
uses) and cached; a request then sums cached counts, picks the cut from cached prefix estimates and
encodes only the final string. Estimates choose a candidate, the exact count decides: if the final
string is over budget the fitter steps back one candidate at a time. Candidates are totally ordered,
so the result is the largest candidate not beyond the estimate's choice whose exact count fits,
which makes the fit monotone in the budget whatever the tokenizer does at section joins.
"""

from __future__ import annotations

import bisect
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from role_injector.errors import RoleInjectorError
from role_injector.formats import neutralise
from role_injector.roles import FENCE, Role, Section, fill_variables
from role_injector.tokens import Tokenizer

SEPARATOR = "\n\n"
SENTENCE_END = re.compile(r"[.!?…。！？][\"'»”’)\]]*(?=\s)")


class BudgetTooSmall(RoleInjectorError):
    code = "budget_too_small"


@dataclass(frozen=True)
class MeasuredSection:
    """A section's final text with its exact token count and estimated counts of its cut prefixes."""

    index: int
    section: Section
    text: str
    tokens: int
    cuts: tuple[int, ...]  # character offsets where the text may be cut, ascending
    cut_tokens: tuple[int, ...]  # estimated tokens of text[:cut], non-decreasing


@dataclass(frozen=True)
class Fit:
    system: str
    tokens: int  # exact count of `system`
    full_tokens: int  # the whole role untrimmed (sum of section counts and separators)
    budget: int
    kept: tuple[str, ...]
    truncated: tuple[str, ...]
    dropped: tuple[str, ...]

    @property
    def trimmed(self) -> bool:
        return bool(self.truncated or self.dropped)


def cut_points(text: str, has_heading: bool) -> list[int]:
    """Offsets after which `text` may be cut: sentence ends inside the first paragraph of the body,
    then paragraph ends. Never inside a code fence, never inside the heading line."""
    body_start = text.find("\n") + 1 if has_heading else 0
    if has_heading and body_start == 0:
        return []
    paragraph_ends = []
    in_fence = False
    offset = 0
    for line in text.split("\n"):
        if FENCE.match(line):
            in_fence = not in_fence
        offset += len(line) + 1
        if not in_fence and not line.strip() and offset > body_start + 1:
            end = len(text[: offset - len(line) - 1].rstrip())
            if end > body_start and (not paragraph_ends or end > paragraph_ends[-1]):
                paragraph_ends.append(end)
    first_end = paragraph_ends[0] if paragraph_ends else len(text)
    first_paragraph = text[body_start:first_end]
    sentence_ends = []
    if not FENCE.search(first_paragraph) and "```" not in first_paragraph:
        sentence_ends = [body_start + m.end() for m in SENTENCE_END.finditer(first_paragraph)]
    return sorted({c for c in sentence_ends + paragraph_ends if body_start < c < len(text.rstrip())})


def measure_section(index: int, section: Section, text: str, tokenizer: Tokenizer) -> MeasuredSection:
    tokens = tokenizer.encode(text)
    starts = list(itertools.accumulate((tokenizer.token_bytes[t] for t in tokens), initial=0))
    cuts = cut_points(text, section.title is not None)
    cut_tokens = []
    byte_offset, char_offset = 0, 0
    for cut in cuts:
        byte_offset += len(text[char_offset:cut].encode())
        char_offset = cut
        cut_tokens.append(max(1, bisect.bisect_left(starts, byte_offset)))
    return MeasuredSection(index, section, text, len(tokens), tuple(cuts), tuple(cut_tokens))


class SectionCache:
    """Bounded LRU of measured sections and required-part counts; safe across threads."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: Hashable) -> object | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def _put(self, key: Hashable, value: object) -> None:
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def static(self, role: Role, tokenizer: Tokenizer) -> tuple[MeasuredSection | None, ...]:
        """Measured sections that use no variable (None for the others), once per version."""
        key = (role.version, tokenizer.name, "static")
        found = self._get(key)
        if isinstance(found, tuple):
            return found
        measured = tuple(
            None if section.variables else measure_section(i, section, neutralise(section.text), tokenizer)
            for i, section in enumerate(role.sections)
        )
        self._put(key, measured)
        return measured

    def measure(
        self, role: Role, index: int, values: Mapping[str, str], tokenizer: Tokenizer
    ) -> MeasuredSection:
        """A section that uses variables, measured once per set of the values it uses."""
        section = role.sections[index]
        key = (role.version, tokenizer.name, index, tuple(values[v] for v in sorted(section.variables)))
        found = self._get(key)
        if isinstance(found, MeasuredSection):
            return found
        text = neutralise(fill_variables(section.text, values))
        measured = measure_section(index, section, text, tokenizer)
        self._put(key, measured)
        return measured

    def count(self, key: Hashable, text: str, tokenizer: Tokenizer) -> int:
        full_key = ("count", tokenizer.name, key)
        found = self._get(full_key)
        if isinstance(found, int):
            return found
        tokens = tokenizer.count(text)
        self._put(full_key, tokens)
        return tokens


DEFAULT_CACHE = SectionCache()


def fit_budget(
    role: Role,
    values: Mapping[str, str],
    budget: int,
    tokenizer: Tokenizer,
    cache: SectionCache = DEFAULT_CACHE,
) -> Fit:
    """The role's system prompt in at most `budget` tokens of `tokenizer`, with a trim report."""
    measured = [
        m if m is not None else cache.measure(role, i, values, tokenizer)
        for i, m in enumerate(cache.static(role, tokenizer))
    ]
    required = [m for m in measured if m.section.required]
    separator = cache.count("separator", SEPARATOR, tokenizer)
    required_text = SEPARATOR.join(m.text for m in required)
    used = cache.count((role.version, "required", required_text), required_text, tokenizer) if required else 0
    if used > budget:
        raise BudgetTooSmall(
            f"role {role.name!r} needs {used} tokens for its required sections; the budget is {budget}",
            details={"needed": used, "budget": budget, "required": [m.section.label for m in required]},
        )

    walk = [measured[i] for i in role.walk_order if not role.sections[i].required]
    kept_whole, cut, remaining, count = 0, -1, budget - used, len(required)
    for m in walk:
        joiner = separator if count else 0
        if m.tokens + joiner <= remaining:
            remaining -= m.tokens + joiner
            kept_whole += 1
            count += 1
            continue
        cut = bisect.bisect_right(m.cut_tokens, remaining - joiner) - 1
        break

    while True:
        system = _assemble(measured, required, walk, kept_whole, cut)
        tokens = tokenizer.count(system)
        if tokens <= budget:
            break
        # Step back one candidate; required-only was verified above, so this ends.
        if cut >= 0:
            cut -= 1
        else:
            kept_whole -= 1
            cut = len(walk[kept_whole].cuts) - 1

    truncated = walk[kept_whole] if cut >= 0 else None
    whole = {m.index for m in required} | {m.index for m in walk[:kept_whole]}
    return Fit(
        system=system,
        tokens=tokens,
        full_tokens=sum(m.tokens for m in measured) + separator * max(0, len(measured) - 1),
        budget=budget,
        kept=tuple(m.section.label for m in measured if m.index in whole),
        truncated=(truncated.section.label,) if truncated else (),
        dropped=tuple(
            m.section.label for m in measured if m.index not in whole and m is not truncated
        ),
    )


def _assemble(
    measured: list[MeasuredSection],
    required: list[MeasuredSection],
    walk: list[MeasuredSection],
    kept_whole: int,
    cut: int,
) -> str:
    pieces = {m.index: m.text for m in required}
    pieces.update((m.index, m.text) for m in walk[:kept_whole])
    if cut >= 0:
        m = walk[kept_whole]
        pieces[m.index] = m.text[: m.cuts[cut]]
    return SEPARATOR.join(pieces[i] for i in sorted(pieces))
