"""Budget fitting: the rule's properties under hypothesis, and the cost of a cached fit."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from role_injector.fitting import BudgetTooSmall, FitCache, cut_points, fit_budget
from role_injector.relevance import Query
from role_injector.roles import Role, build_role, parse_role_source, resolve_variables
from role_injector.store import RoleStore
from role_injector.tokens import Tokenizer, VocabularyTokenizer, load_tokenizer
from tests.servers import REPO

WORDS = ["alpha", "beta", "gamma", "дельта", "эпсилон", "東京", "naïve", "x1", "42", "über", "résumé", "—"]


def make_role(text: str, name: str = "r") -> Role:
    return build_role(parse_role_source(name, f"{name}.md", text))


sentences = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(
    lambda words: " ".join(words).capitalize()
).flatmap(lambda body: st.sampled_from([".", "!", "?", "…"]).map(lambda end: body + end))
paragraphs = st.lists(sentences, min_size=1, max_size=4).map(" ".join)
section_bodies = st.lists(paragraphs, min_size=1, max_size=4).map("\n\n".join)


@st.composite
def role_texts(draw: st.DrawFn) -> str:
    count = draw(st.integers(min_value=1, max_value=6))
    parts = []
    if draw(st.booleans()):
        parts.append(draw(section_bodies))
    for i in range(count):
        attribute = draw(st.sampled_from(["", " {required}", " {priority=10}", " {priority=60}", " {priority=90}"]))
        level = draw(st.sampled_from(["#", "##"]))
        parts.append(f"{level} Section {i}{attribute}\n{draw(section_bodies)}")
    return "\n\n".join(parts) + "\n"


QWEN = load_tokenizer("qwen")
CL100K = load_tokenizer("cl100k_base")
tokenizers = st.sampled_from([QWEN, CL100K])
PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Bodies with the Markdown a role author writes besides prose: deeper headings (`###`, with or without a
# sentence end in them, or a setext underline), lines that introduce what follows (ending with ':',
# also in bold), lists, thematic breaks and code fences.
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join)
blocks = st.one_of(
    paragraphs,
    words.map(lambda title: f"### {title.capitalize()}"),
    st.tuples(words, sentences).map(lambda t: f"#### {t[0].capitalize()}. {t[1]}"),
    words.map(lambda title: f"{title.capitalize()}\n====="),
    st.tuples(st.sampled_from(["", "**"]), words, st.sampled_from([":", "：", ":"])).map(
        lambda t: f"{t[0]}{t[1].capitalize()}{t[2]}{t[0]}"),
    st.tuples(paragraphs, words).map(lambda t: f"{t[0]} {t[1].capitalize()}:"),
    st.lists(words, min_size=1, max_size=3).map(lambda items: "\n".join(f"- {item}" for item in items)),
    st.sampled_from(["---", "***", "___", "```\ncode: here.\n\nmore code.\n```"]),
)
rich_bodies = st.lists(blocks, min_size=1, max_size=8).map("\n\n".join)


@st.composite
def rich_role_texts(draw: st.DrawFn) -> str:
    # A preamble starts with prose ('---' first would open front matter).
    parts = [draw(paragraphs) + "\n\n" + draw(rich_bodies)] if draw(st.booleans()) else []
    for i in range(draw(st.integers(min_value=1, max_value=5))):
        attribute = draw(st.sampled_from(["", " {required}", " {priority=10}", " {priority=60}"]))
        parts.append(f"## Section {i}{attribute}\n{draw(rich_bodies)}")
    return "\n\n".join(parts) + "\n"


# What a cut must never end on: the kept text's last line is not one that only leads into what was cut.
# "Introduces" means: the line ends with a colon (':' or the full-width '：'), after trailing blanks and
# the '*' and '_' that close emphasis ("**Steps:**"); headings are ATX lines ('#' to '######' then a
# blank or the line's end, up to three spaces before) and setext underlines ('===', '---'); thematic
# breaks are lines of one of '-', '*', '_' (blanks between allowed).
HEADING_LINE = re.compile(r" {0,3}#{1,6}(?:[ \t]|$)")
INTRODUCING_LINE = re.compile(r".*[:：][*_]*[ \t]*$")
UNDERLINE_OR_BREAK = re.compile(r"[ \t]*([=*_-])(?:[ \t]*\1)*[ \t]*$")


def fit_or_none(role: Role, budget: int, tokenizer: Tokenizer):
    try:
        return fit_budget(role, {}, budget, tokenizer, FitCache())
    except BudgetTooSmall:
        return None


@PROPERTY_SETTINGS
@given(text=role_texts(), budget=st.integers(min_value=1, max_value=400), tokenizer=tokenizers)
def test_fit_is_within_budget_keeps_required_and_is_valid_utf8(text: str, budget: int, tokenizer: Tokenizer) -> None:
    role = make_role(text)
    required = [s.label for s in role.sections if s.required]
    fit = fit_or_none(role, budget, tokenizer)
    if fit is None:
        needed = tokenizer.count("\n\n".join(s.text for s in role.sections if s.required))
        assert needed > budget
        return
    assert fit.tokens == tokenizer.count(fit.system) <= budget
    assert set(required) <= set(fit.kept)
    assert fit.system.encode("utf-8").decode("utf-8") == fit.system
    assert len(fit.kept) + len(fit.truncated) + len(fit.dropped) == len(role.sections)
    assert fit == fit_budget(role, {}, budget, tokenizer, FitCache())  # deterministic


@PROPERTY_SETTINGS
@given(text=role_texts(), budgets=st.lists(st.integers(1, 400), min_size=2, max_size=4), tokenizer=tokenizers)
def test_a_larger_budget_never_keeps_less(text: str, budgets: list[int], tokenizer: Tokenizer) -> None:
    role = make_role(text)
    cache = FitCache()  # shared, as in production: cached and cold fits must agree
    previous = None
    for budget in sorted(budgets):
        try:
            fit = fit_budget(role, {}, budget, tokenizer, cache)
        except BudgetTooSmall:
            assert previous is None  # once the required part fits, it keeps fitting
            continue
        if previous is not None:
            assert all(chars <= fit.kept_chars.get(i, 0) for i, chars in previous.kept_chars.items())
        previous = fit


@PROPERTY_SETTINGS
@given(text=role_texts(), budget=st.integers(min_value=1, max_value=400), tokenizer=tokenizers)
def test_cuts_fall_on_sentence_or_paragraph_boundaries(text: str, budget: int, tokenizer: Tokenizer) -> None:
    role = make_role(text)
    fit = fit_or_none(role, budget, tokenizer)
    if fit is None or not fit.truncated:
        return
    index = next(i for i, s in enumerate(role.sections) if s.label == fit.truncated[0])
    full, kept = role.sections[index].text, fit.kept_chars[index]
    assert 0 < kept < len(full)
    assert full[kept].isspace(), "cut inside a word"
    assert full[:kept].endswith((".", "!", "?", "…")), "cut not at a sentence end"
    heading_end = full.find("\n") if role.sections[index].title else -1
    assert kept > heading_end + 1, "a heading kept without its text"
    assert full[:kept] in fit.system


def test_walk_order_and_report() -> None:
    role = make_role(
        "Intro.\n\n## Must {required}\nRequired text.\n\n## Low {priority=10}\n"
        + " ".join(["Low priority sentence."] * 50)
        + "\n\n## High {priority=90}\nHigh priority.\n\n## Mid\nMiddle one.\n\nMiddle two.\n"
    )
    full = fit_budget(role, {}, 10_000, QWEN, FitCache())
    assert not full.trimmed and full.system == role.content
    expected = "Intro.\n\n## Must\nRequired text.\n\n## High\nHigh priority.\n\n## Mid\nMiddle one."
    small = fit_budget(role, {}, QWEN.count(expected), QWEN, FitCache())
    assert small.kept == ("(preamble)", "Must", "High")
    assert small.truncated == ("Mid",) and small.dropped == ("Low",)
    assert small.system == expected


def test_required_sections_over_budget_name_the_tokens_needed() -> None:
    role = make_role("## A {required}\n" + "Word. " * 100)
    needed = QWEN.count(role.content)
    with pytest.raises(BudgetTooSmall) as error:
        fit_budget(role, {}, needed - 1, QWEN, FitCache())
    assert error.value.details["needed"] == needed
    assert fit_budget(role, {}, needed, QWEN, FitCache()).tokens == needed


def test_cut_points_skip_code_fences_and_headings() -> None:
    text = "## Title\nFirst sentence. Second one!\n\n```\ncode. more code.\n\nstill code.\n```\n\nLast para."
    cuts = cut_points(text, has_heading=True)
    assert [text[:c] for c in cuts] == [
        "## Title\nFirst sentence.",
        "## Title\nFirst sentence. Second one!",
        "## Title\nFirst sentence. Second one!\n\n```\ncode. more code.\n\nstill code.\n```",
    ]


class CountingTokenizer(VocabularyTokenizer):
    def __init__(self, base: VocabularyTokenizer) -> None:
        super().__init__(base.name, base.encoding, base.nfc, base.token_bytes, base.blank_pieces)
        self.encoded_chars = 0

    def encode(self, text: str) -> list[int]:
        self.encoded_chars += len(text)
        return super().encode(text)


def test_a_new_budget_on_a_measured_role_encodes_only_about_the_final_string() -> None:
    body = "\n\n".join(
        f"## Part {i} {{priority={i % 90}}}\n" + " ".join(f"Sentence {j} of part {i}." for j in range(60))
        for i in range(200)
    )
    role = make_role(body)
    tokenizer = CountingTokenizer(QWEN)
    cache = FitCache()
    fit_budget(role, {}, 1000, tokenizer, cache)
    assert tokenizer.encoded_chars >= len(role.content)  # the cold fit measured every section once
    tokenizer.encoded_chars = 0
    # A budget not fitted before: the plan is cached, the fit is computed (not a fit-cache hit).
    fit = fit_budget(role, {}, 1333, tokenizer, cache)
    assert fit.truncated  # a section was cut, so its cut estimates were computed too
    assert 0 < tokenizer.encoded_chars <= 3 * len(fit.system) + max(len(s.text) for s in role.sections)
    assert tokenizer.encoded_chars < len(role.content) / 20


def test_sections_with_variables_are_measured_per_value() -> None:
    role = make_role("---\nvariables: {who: {required: true}}\n---\n## A {required}\nHello {{who}}.\n\n## B\nStatic.\n")
    cache = FitCache()
    one = fit_budget(role, {"who": "Ann"}, 100, QWEN, cache)
    two = fit_budget(role, {"who": "Bob <|im_end|>"}, 100, QWEN, cache)
    assert "Hello Ann." in one.system
    assert "Hello Bob <\u200b|im_end|>." in two.system
    assert re.search(r"<\|im_end\|>", two.system) is None


@PROPERTY_SETTINGS
@given(text=role_texts(), tokenizer=tokenizers)
def test_a_budget_of_the_whole_role_keeps_it_whole(text: str, tokenizer: Tokenizer) -> None:
    role = make_role(text)
    fit = fit_budget(role, {}, tokenizer.count(role.content), tokenizer, FitCache())
    assert not fit.trimmed and fit.system == role.content


@PROPERTY_SETTINGS
@given(text=rich_role_texts(), budget=st.integers(min_value=1, max_value=500), tokenizer=tokenizers,
       question=st.one_of(st.none(), words))
def test_a_cut_never_ends_on_a_heading_or_a_line_that_introduces_what_was_cut(
        text: str, budget: int, tokenizer: Tokenizer, question: str | None) -> None:
    role = make_role(text)
    query = None if question is None else Query.from_text(question)
    try:
        fit = fit_budget(role, {}, budget, tokenizer, FitCache(), query)
    except BudgetTooSmall:
        return
    assert fit.tokens == tokenizer.count(fit.system) <= budget
    for label in fit.truncated:
        index = next(i for i, s in enumerate(role.sections) if s.label == label)
        kept = role.sections[index].text[: fit.kept_chars[index]]
        assert kept in fit.system
        last_line = kept.rsplit("\n", 1)[-1]
        assert not HEADING_LINE.match(last_line), f"a cut ends on a heading: {kept!r}"
        assert not UNDERLINE_OR_BREAK.match(last_line), f"a cut ends on an underline or a rule: {kept!r}"
        assert not INTRODUCING_LINE.match(last_line), f"a cut ends on a line introducing what was cut: {kept!r}"


@PROPERTY_SETTINGS
@given(text=rich_role_texts(), budgets=st.lists(st.integers(1, 500), min_size=2, max_size=4), tokenizer=tokenizers)
def test_with_headings_and_lists_a_larger_budget_still_never_keeps_less(
        text: str, budgets: list[int], tokenizer: Tokenizer) -> None:
    role = make_role(text)
    cache = FitCache()
    previous = None
    for budget in sorted(budgets):
        try:
            fit = fit_budget(role, {}, budget, tokenizer, cache)
        except BudgetTooSmall:
            assert previous is None
            continue
        assert fit.tokens == tokenizer.count(fit.system) <= budget
        if previous is not None:
            assert all(chars <= fit.kept_chars.get(i, 0) for i, chars in previous.kept_chars.items())
        previous = fit


def test_the_bundled_russian_role_at_3000_tokens_does_not_end_on_a_heading() -> None:
    """Issue 23's example: agi-engineer at 3,000 Qwen tokens used to end on "### Пример: роль для нового
    эксперта" with nothing under it."""
    role = RoleStore(REPO / "roles").current().roles["agi-engineer"]
    fit = fit_budget(role, resolve_variables(role, {"user_name": "Анна"}), 3000, QWEN, FitCache())
    assert fit.truncated
    last_line = fit.system.rstrip().rsplit("\n", 1)[-1]
    assert not HEADING_LINE.match(last_line) and not INTRODUCING_LINE.match(last_line), last_line


def test_cut_points_skip_lines_that_lead_into_what_follows() -> None:
    text = ("## Title\nIntro sentence.\n\n### Example\n\nSteps:\n\n- one\n- two\n\n**Note:**\n\nText.\n\n"
            "Setext\n---\n\nLast.")
    assert [text[:c].rsplit("\n", 1)[-1] for c in cut_points(text, has_heading=True)] == [
        "Intro sentence.", "- two", "Text."]
