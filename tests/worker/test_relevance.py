"""Relevance selection: terms and stemming, queries, ranking, and the budget rule's properties in this mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.errors import ProfileError
from role_injector.fitting import BudgetTooSmall, FitCache, fit_budget
from role_injector.formats import Message
from role_injector.injection import InjectRequest, inject
from role_injector.options import RoleOptions
from role_injector.profiles import load_profiles
from role_injector.relevance import MAX_QUERY_CHARS, Query, RelevanceIndex, terms
from role_injector.roles import Role, Section
from role_injector.store import RoleStore
from role_injector.tokens import VOCABULARIES, Tokenizer, load_tokenizer
from tests.worker.conftest import RoleWriter
from tests.worker.test_fitting import PROPERTY_SETTINGS, QWEN, WORDS, make_role, role_texts, tokenizers

PROFILES = load_profiles()


# --- terms ------------------------------------------------------------------------------------------


def test_english_words_are_stemmed_and_stop_words_dropped() -> None:
    assert terms("Where do I park my bicycles? Parking, parked, reservations and RESERVE.") == [
        "park", "bicycl", "park", "park", "reserv", "reserv"]


def test_russian_words_are_stemmed_and_yo_is_e() -> None:
    assert terms("Где мне припарковать велосипед? Парковка, парковке, парковку; ёлка и елка.") == [
        "припаркова", "велосипед", "парковк", "парковк", "парковк", "елк", "елк"]


def test_mixed_text_keeps_numbers_and_stems_each_word_in_its_language() -> None:
    assert terms("Код 4471 for the cage, клетка для bikes_2024") == ["код", "4471", "cage", "клетк", "bike", "2024"]


@pytest.mark.parametrize("text", ["", "   \n\t", "?!… — «»", "the and of to", "и в на с по", "_ __ ___"])
def test_texts_without_words_have_no_terms(text: str) -> None:
    assert terms(text) == []
    assert Query.from_text(text).empty


@given(text=st.text(max_size=300))
def test_any_text_gives_terms_without_error(text: str) -> None:
    assert all(t and t == t.casefold() for t in terms(text))


# --- queries ----------------------------------------------------------------------------------------


def test_the_last_user_message_weighs_most_and_earlier_turns_less() -> None:
    turns = [Message("user", "sauna"), Message("assistant", "parking"), Message("user", "bicycle"),
             Message("assistant", "lockers")]
    query = Query.from_turns(turns)
    assert query.parts == ((1.0, ("bicycl",)), (0.5, ("park",)), (0.5, ("locker",)), (0.25, ("sauna",)))
    assert Query.from_turns([]).empty
    assert Query.from_turns([Message("assistant", "only an answer")]).parts == ((1.0, ("answer",)),)


def test_a_very_long_message_is_read_from_its_end_only() -> None:
    long = "filler " * 50_000 + "bicycle"
    query = Query.from_text(long)
    assert query.parts == ((1.0, ("filler", "bicycl")),)
    assert len(long) > MAX_QUERY_CHARS


# --- ranking and layout -----------------------------------------------------------------------------

HANDBOOK = """---
selection: relevance
---
You are the office assistant.

## How to answer {required}
Answer briefly.

## Tone {priority=120}
Friendly and plain.

## Bicycle storage
Bikes go in the locked cage behind building C. The cage code is 4471.

## Car parking
Cars park on level minus two. Spaces are not reserved.

## Sauna
The sauna is on the roof and opens at seven.

## Lockers {priority=70}
Lockers are in the basement; keys come from reception.

## Printers {priority=10}
Printers are on every floor.
"""


def test_sections_that_match_the_question_are_kept_after_the_stable_part() -> None:
    role = make_role(HANDBOOK)
    budget = QWEN.count("You are the office assistant.\n\n## How to answer\nAnswer briefly.\n\n## Tone\n"
                        "Friendly and plain.\n\n## Bicycle storage\nBikes go in the locked cage behind building C. "
                        "The cage code is 4471.") + 2
    fit = fit_budget(role, {}, budget, QWEN, FitCache(), Query.from_text("Where can I leave my bike?"))
    assert fit.system.startswith("You are the office assistant.\n\n## How to answer\nAnswer briefly.\n\n## Tone\n")
    assert fit.system[: fit.stable_chars].endswith("Friendly and plain.")
    assert "## Bicycle storage" in fit.system[fit.stable_chars:]
    assert fit.tokens == QWEN.count(fit.system) <= budget
    report = {s.title: (s.state, s.reason) for s in fit.sections}
    assert report == {
        None: ("kept", "priority"), "How to answer": ("kept", "required"), "Tone": ("kept", "priority"),
        "Bicycle storage": ("kept", "relevance"), "Car parking": ("dropped", "priority"),
        "Sauna": ("dropped", "priority"), "Lockers": ("truncated", "priority") if "## Lockers" in fit.system
        else ("dropped", "priority"), "Printers": ("dropped", "priority")}
    bike = next(s for s in fit.sections if s.title == "Bicycle storage")
    assert bike.score is not None and bike.score > 0
    assert all(s.score == 0 for s in fit.sections if s.title in ("Car parking", "Sauna", "Printers"))


def test_picked_sections_follow_in_document_order_and_ties_go_to_priority() -> None:
    role = make_role(HANDBOOK)
    query = Query.from_text("sauna lockers parking")
    fit = fit_budget(role, {}, 10_000, QWEN, FitCache(), query)
    picked = fit.system[fit.stable_chars:]
    assert [line for line in picked.split("\n") if line.startswith("## ")] == [
        "## Bicycle storage", "## Car parking", "## Sauna", "## Lockers", "## Printers"]
    ranking = FitCache().relevance_index(role).rank(query)
    titles = [role.sections[i].title for i in ranking.order]
    assert set(titles[:3]) == {"Sauna", "Lockers", "Car parking"}
    assert titles[3:] == ["Bicycle storage", "Printers"]  # no match: priority order (50 before 10)
    no_match = FitCache().relevance_index(role).rank(Query.from_text("nothing matches this"))
    assert [role.sections[i].title for i in no_match.order] == ["Lockers", "Bicycle storage", "Car parking",
                                                               "Sauna", "Printers"]


def test_equal_scores_are_broken_by_priority_then_document_order() -> None:
    role = make_role("## Ant\nword\n\n## Bee {priority=60}\nword\n\n## Cat\nword\n\n## Dog {priority=60}\nword\n")
    ranking = RelevanceIndex(role.sections).rank(Query.from_text("word"))
    assert [role.sections[i].title for i in ranking.order] == ["Bee", "Dog", "Ant", "Cat"]
    assert len(set(ranking.scores)) == 1


def test_the_core_stays_when_the_question_matches_nothing_in_it() -> None:
    role = make_role(HANDBOOK)
    stable = None
    for question in ("bicycle", "sauna", "", "the of and", "printers on the floor", "weather in Lisbon"):
        fit = fit_budget(role, {}, 60, QWEN, FitCache(), Query.from_text(question))
        head = fit.system[: fit.stable_chars]
        assert "## Tone\nFriendly and plain." in head and "## How to answer" in head
        assert stable in (None, head)
        stable = head


def test_the_index_is_built_once_per_role_version() -> None:
    cache = FitCache()
    role = make_role(HANDBOOK)
    index = cache.relevance_index(role)
    for question in ("bike", "sauna", "lockers"):
        fit_budget(role, {}, 80, QWEN, cache, Query.from_text(question))
    assert cache.relevance_index(role) is index
    edited = make_role(HANDBOOK.replace("seven", "eight"))
    assert edited.version != role.version and cache.relevance_index(edited) is not index


def test_a_role_without_a_single_term_ranks_nothing_and_still_fits() -> None:
    role = make_role("## ?\n!\n\n## …\n—\n")
    fit = fit_budget(role, {}, 100, QWEN, FitCache(), Query.from_text("anything"))
    assert fit.system == "## ?\n!\n\n## …\n—" and fit.scores == (0.0, 0.0)


# --- properties of the budget rule in relevance selection ------------------------------------------

ALL_TOKENIZERS = [load_tokenizer(name) for name in VOCABULARIES]


@settings(max_examples=300, deadline=None)
@given(first=st.text(max_size=40), pieces=st.lists(st.text(max_size=40), min_size=1, max_size=4),
       heading=st.sampled_from(["#", "##", "# ", "## ", "##x"]))
def test_counts_add_up_at_a_separator_before_a_heading(first: str, pieces: list[str], heading: str) -> None:
    """What relevance selection relies on instead of encoding its result: count(a + SEP + b) is
    count(a + SEP) + count(b) when b starts with '#', in every vocabulary, whatever a and b hold."""
    texts = [first, *(heading + piece for piece in pieces)]
    for tokenizer in ALL_TOKENIZERS:
        added = sum(tokenizer.count(t + "\n\n") for t in texts[:-1]) + tokenizer.count(texts[-1])
        assert added == tokenizer.count("\n\n".join(texts)), tokenizer.name

queries = st.lists(st.sampled_from([*WORDS, "the", "и", "section", "?", "x" * 300]), max_size=12).map(" ".join)


# --- the index against bm25s ------------------------------------------------------------------------

section_texts = st.lists(st.lists(st.sampled_from([*WORDS, "the", "и", "Parking", "парковка", "x" * 40, "?", "ΐ"]),
                                  max_size=30).map(" ".join), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(bodies=section_texts, titled=st.lists(st.booleans(), min_size=12, max_size=12),
       question=st.lists(queries, min_size=1, max_size=3))
def test_the_compact_index_scores_exactly_as_bm25s(bodies: list[str], titled: list[bool], question: list[str]) -> None:
    """The index holds bm25s's scores in its own arrays: bit for bit the scores bm25s gives for the same
    terms (its Lucene variant, float32, terms added in the query's order), for every part of a query."""
    import bm25s

    from role_injector.relevance import _document

    sections = [Section(f"T{i} {body[:12]}" if titled[i] else None,
                        (f"## T{i} {body[:12]}\n" if titled[i] else "") + body, 50, False, frozenset())
                for i, body in enumerate(bodies)]
    documents = [_document(section) for section in sections]
    index = RelevanceIndex(sections)
    if not any(documents):
        assert not index.scores(Query.from_text(" ".join(question))).any()
        return
    oracle = bm25s.BM25()
    oracle.index(documents, show_progress=False)
    for words in (tuple(dict.fromkeys(terms(q))) for q in question):
        expected = oracle.get_scores_from_ids(oracle.get_tokens_ids(list(words)))
        assert index.scores(Query(((1.0, words),))).astype("float32").tobytes() == expected.tobytes()


def test_words_that_are_no_term_of_the_index_match_nothing() -> None:
    index = RelevanceIndex(make_role(HANDBOOK).sections)
    assert index.term_ids(["bike", "cage", "nothing", "", "bikes"]) == index.term_ids(["bike", "cage"])
    assert len(index.term_ids(["bike", "cage"])) == 2 and index.term_ids(["zzz"]) == []


def relevance_fit(role: Role, budget: int, tokenizer: Tokenizer, question: str, cache: FitCache | None = None):
    try:
        return fit_budget(role, {}, budget, tokenizer, cache or FitCache(), Query.from_text(question))
    except BudgetTooSmall:
        return None


@PROPERTY_SETTINGS
@given(text=role_texts(), budget=st.integers(1, 400), tokenizer=tokenizers, question=queries)
def test_relevance_fit_is_within_budget_keeps_required_cuts_at_boundaries_and_is_deterministic(
    text: str, budget: int, tokenizer: Tokenizer, question: str
) -> None:
    role = make_role(text)
    fit = relevance_fit(role, budget, tokenizer, question)
    if fit is None:
        assert tokenizer.count("\n\n".join(s.text for s in role.sections if s.required)) > budget
        return
    assert fit.tokens == tokenizer.count(fit.system) <= budget
    assert {s.label for s in role.sections if s.required} <= set(fit.kept)
    assert len(fit.kept) + len(fit.truncated) + len(fit.dropped) == len(role.sections)
    assert fit == relevance_fit(role, budget, tokenizer, question)  # a fresh cache gives the same fit
    # the pieces, whole or cut at their beginning, make the text in the layout's order
    assert "\n\n".join(role.sections[i].text[: fit.kept_chars[i]] for i in fit.layout) == fit.system
    assert sorted(fit.layout) == sorted(fit.kept_chars)
    assert sorted(fit.walk_order) == list(range(len(role.sections)))
    if fit.truncated_index is not None:
        full, kept = role.sections[fit.truncated_index].text, fit.kept_chars[fit.truncated_index]
        assert 0 < kept < len(full) and full[kept].isspace()
        assert full[:kept].endswith((".", "!", "?", "…"))


@PROPERTY_SETTINGS
@given(text=role_texts(), budget=st.integers(1, 400), tokenizer=tokenizers, questions=st.lists(queries, min_size=2,
                                                                                                 max_size=4))
def test_the_stable_part_is_the_same_prefix_whatever_the_question(
    text: str, budget: int, tokenizer: Tokenizer, questions: list[str]
) -> None:
    role = make_role(text)
    cache = FitCache()
    fits = [relevance_fit(role, budget, tokenizer, q, cache) for q in questions]
    if fits[0] is None:
        assert all(f is None for f in fits)
        return
    stable = fits[0].system[: fits[0].stable_chars]
    for fit in fits:
        assert fit is not None and fit.system[: fit.stable_chars] == stable
        assert fit.system == stable or fit.system.startswith(stable + "\n\n" if stable else "")
    required = [s.text for s in role.sections if s.required]
    assert all(r in stable for r in required)


@PROPERTY_SETTINGS
@given(text=role_texts(), budgets=st.lists(st.integers(1, 400), min_size=2, max_size=4), tokenizer=tokenizers,
       question=queries)
def test_with_one_question_a_larger_budget_never_keeps_less(
    text: str, budgets: list[int], tokenizer: Tokenizer, question: str
) -> None:
    role = make_role(text)
    cache = FitCache()
    previous = None
    for budget in sorted(budgets):
        fit = relevance_fit(role, budget, tokenizer, question, cache)
        if fit is None:
            assert previous is None
            continue
        if previous is not None:
            assert all(chars <= fit.kept_chars.get(i, 0) for i, chars in previous.kept_chars.items())
        previous = fit


# --- where the selection is chosen ------------------------------------------------------------------


def test_selection_comes_from_the_request_else_a_query_else_the_role(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("book", HANDBOOK)
    write_role("plainbook", HANDBOOK.replace("selection: relevance", "description: by priority"))
    roles = RoleStore(roles_dir).current()
    ask = (Message("user", "Is there a sauna?"),)

    def trim(name: str, selection: str | None = None, query: str | None = None) -> dict:
        request = InjectRequest(name, ask, RoleOptions(budget=60, selection=selection), query=query)  # type: ignore[arg-type]
        return inject(roles, PROFILES, request, FitCache()).fit.report()

    assert roles.roles["book"].selection == "relevance" and roles.roles["plainbook"].selection == "priority"
    assert trim("book")["selection"] == "relevance" and "Sauna" in trim("book")["kept"]
    assert trim("plainbook")["selection"] == "priority" and "Sauna" not in trim("plainbook")["kept"]
    assert trim("plainbook", selection="relevance")["kept"] == trim("book")["kept"]
    assert trim("book", selection="priority")["kept"] == trim("plainbook")["kept"]
    by_query = trim("plainbook", query="bicycle cage")
    assert by_query["selection"] == "relevance" and "Bicycle storage" in by_query["kept"]
    assert "Sauna" not in by_query["kept"]  # the query, not the conversation
    assert trim("book", selection="priority", query="bicycle")["selection"] == "priority"


def test_an_empty_conversation_in_relevance_selection_keeps_by_priority(write_role: RoleWriter,
                                                                        roles_dir: Path) -> None:
    write_role("book", HANDBOOK)
    roles = RoleStore(roles_dir).current()
    for turns in ((), (Message("user", ""),), (Message("user", "the and of"),), (Message("user", "и или но"),)):
        fit = inject(roles, PROFILES, InjectRequest("book", turns, options=RoleOptions(budget=60)), FitCache()).fit
        assert fit.scores is not None and not any(fit.scores)
        assert all(s.reason != "relevance" for s in fit.sections)
        assert "Lockers" in fit.kept + fit.truncated  # priority 70 comes first among the rest


def test_selection_in_front_matter_and_profiles_is_checked(write_role: RoleWriter, roles_dir: Path,
                                                           tmp_path: Path) -> None:
    write_role("bad", "---\nselection: magic\n---\nText.")
    write_role("same", "---\nselection: priority\n---\nText.")
    write_role("other", "Text.")
    roles = RoleStore(roles_dir).current()
    assert "selection' must be one of priority, relevance" in roles.errors[0].message
    assert roles.roles["same"].version == roles.roles["other"].version  # the default changes no version
    profile = tmp_path / "models.yaml"
    profile.write_text("virtual_models:\n  book: {base: 'qwen3:8b', role: book, selection: relevance}\n")
    assert load_profiles(profile).virtual_model("book").options.selection == "relevance"  # type: ignore[union-attr]
    profile.write_text("virtual_models:\n  book: {base: 'qwen3:8b', role: book, selection: fast}\n")
    with pytest.raises(ProfileError, match="'selection' must be one of priority, relevance"):
        load_profiles(profile)
