"""The role studio's Selection control and Query box, in a real Chromium against a real gunicorn: what a
query picks, checked against what /v1/plan and /v1/inject report for the same body."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.studio.support import (
    Watched,
    fit_with_message,
    inject,
    kept_text,
    open_studio,
    planned_reasons,
    post,
    shown_reasons,
    shown_states,
    trim_states,
    wait_for_plan,
)
from tests.servers import WorkerProcess

pytestmark = pytest.mark.browser

QUESTION = "Can I bring my dog to the office, and where may I smoke?"


def plan_for(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """/v1/plan's answer for `body`, checked to explain /v1/inject's for the same body."""
    reply = post(url, "/v1/plan", body)
    assert reply.status_code == 200, reply.text
    plan: dict[str, Any] = reply.json()
    injected = inject(url, body)
    assert {k: v for k, v in plan.items() if k != "sections"} == injected
    assert [(t["reason"], t["score"]) for t in injected["trim"]["sections"]] == \
        [(s["reason"], s["score"]) for s in plan["sections"]]
    return plan


def picked(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The sections the query picked, in the fitter's walk (best score first)."""
    chosen = [s for s in plan["sections"] if s["reason"] == "relevance" and s["state"] != "dropped"]
    return sorted(chosen, key=lambda s: s["order"])


def shown_picks(page: Page) -> list[tuple[str, float]]:
    chips: list[list[str]] = page.eval_on_selector_all(
        "#picks li", "items => items.map(i => [i.dataset.label, i.querySelector('.score').textContent])")
    return [(label, float(score)) for label, score in chips]


def shown_pieces(page: Page) -> list[str]:
    """The kept pieces of the fitted text, in the order the page shows them."""
    pieces: list[str] = page.eval_on_selector_all("#fitted span.kept", "spans => spans.map(s => s.textContent)")
    return pieces


def test_a_typed_query_shows_the_sections_it_picks_with_the_workers_scores(watched: Watched,
                                                                           studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "handbook")
    selection = page.get_by_label("Selection", exact=True)
    expect(selection).to_have_value("")
    expect(page.locator("#selection-default")).to_have_text("The role's (relevance)")
    page.get_by_label("Budget in tokens").fill("700")
    page.get_by_label("Query", exact=True).press_sequentially(QUESTION)  # typed: one plan once it rests
    wait_for_plan(page, "handbook", 700, "", selection="", query=QUESTION)

    body = {"role": "handbook", "budget": 700, "query": QUESTION}
    plan = plan_for(studio.url, body)
    assert plan["trim"]["selection"] == "relevance"
    assert shown_reasons(page) == planned_reasons(plan)
    picks = picked(plan)
    assert {"Pets in the office", "Smoking area"} <= {s["label"] for s in picks}
    assert shown_picks(page) == [(s["label"], s["score"]) for s in picks]
    expect(page.locator("#summary .selection-line")).to_have_text(
        f"Relevance selection by the query: {len(picks)} sections picked, after the stable part (required and core)")
    expect(page.locator('#sections li[data-label="(preamble)"] .badge')).to_have_text("core")
    expect(page.locator('#sections li[data-label="How to answer"] .badge')).to_have_text("required")
    pets = page.locator('#sections li[data-label="Pets in the office"]')
    badge = pets.locator(".badge").text_content() or ""
    assert badge.startswith("picked · relevance ")
    assert float(badge.removeprefix("picked · relevance ")) == \
        next(s["score"] for s in picks if s["label"] == "Pets in the office")
    # Picked bars stand out from the other kept ones (not by colour of the text alone: the badge says so).
    background = "e => getComputedStyle(e).backgroundColor"
    assert pets.evaluate(background) != page.locator('#sections li[data-label="How to answer"]').evaluate(background)

    # The fitted text in the prompt's own order: the stable part first, then what the question changes.
    in_place = sorted((s for s in plan["sections"] if s["position"] is not None), key=lambda s: s["position"])
    assert shown_pieces(page) == [s["text"][: s["kept_chars"]] for s in in_place]
    assert kept_text(page) == plan["system"]
    assert [s["label"] for s in in_place[:2]] == ["(preamble)", "How to answer"]
    expect(page.locator("#fitted .after-stable")).to_have_text(in_place[2]["text"][: in_place[2]["kept_chars"]])
    expect(page.locator("#fitted span.kept.picked")).to_have_count(len(picks))
    dropped = [s for s in plan["sections"] if s["state"] == "dropped"]
    expect(page.locator("#fitted del.dropped").first).to_have_text(dropped[0]["text"])
    expect(page.locator("#fitted del.first-dropped")).to_have_count(1)

    # Priority selection, chosen from the keyboard: the same query picks nothing.
    selection.focus()
    page.keyboard.press("ArrowDown")
    wait_for_plan(page, "handbook", 700, "", selection="priority", query=QUESTION)
    expect(selection).to_have_value("priority")
    by_priority = plan_for(studio.url, {**body, "selection": "priority"})
    assert by_priority["trim"]["selection"] == "priority"
    assert shown_reasons(page) == planned_reasons(by_priority)
    expect(page.locator('#sections li[data-picked="true"]')).to_have_count(0)
    expect(page.locator("#picks")).to_be_hidden()
    expect(page.locator("#sections .badge.relevance")).to_have_count(0)
    assert shown_states(page) == trim_states(by_priority)
    assert shown_states(page)["Pets in the office"] == "dropped"
    assert kept_text(page) == by_priority["system"]
    expect(page.locator("#fitted .after-stable, #fitted span.picked")).to_have_count(0)
    expect(page.locator("#summary .selection-line")).to_have_text(
        "Priority selection: the highest priorities after the required sections · the query is not used")
    expect(page.locator("#messages")).to_be_empty()


def test_an_empty_or_stop_word_query_shows_no_error(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "handbook")
    page.get_by_label("Budget in tokens").fill("500")
    page.get_by_label("Selection", exact=True).select_option("relevance")
    line = page.locator("#summary .selection-line")
    query = page.get_by_label("Query", exact=True)
    for typed, sent, says in (
        ("", "", "Relevance selection: no query and no user message, so nothing to rank by"),
        ("what is the and of it", "what is the and of it", "no section matches the query (only stop words"),
        ("   ", "", "Relevance selection: no query and no user message"),
        ("???  ...", "???  ...", "no section matches the query"),
    ):
        query.fill(typed)
        wait_for_plan(page, "handbook", 500, "", selection="relevance", query=sent)
        body: dict[str, Any] = {"role": "handbook", "budget": 500, "selection": "relevance"}
        if sent:
            body["query"] = sent
        plan = plan_for(studio.url, body)
        assert not picked(plan) and all(s["score"] == 0 for s in plan["sections"])
        expect(line).to_contain_text(says)
        expect(page.locator("#messages")).to_be_empty()
        expect(page.locator("#picks")).to_be_hidden()
        assert shown_reasons(page) == planned_reasons(plan)
        assert kept_text(page) == plan["system"]


def test_the_query_ranks_and_the_user_message_is_what_the_model_reads(watched: Watched,
                                                                      studio: WorkerProcess) -> None:
    page = watched.page
    message = "Can I bring my dog to work?"
    injected = fit_with_message(page, studio.url, "handbook", 600, message)
    expect(page.locator("#summary .selection-line")).to_contain_text("Relevance selection by the user message: ")
    assert "Pets in the office" in [label for label, _ in shown_picks(page)]
    assert kept_text(page) == injected["system"]

    page.get_by_label("Query", exact=True).fill("smoking")
    wait_for_plan(page, "handbook", 600, "", query="smoking")
    plan = plan_for(studio.url, {"role": "handbook", "budget": 600, "prompt": message, "query": "smoking"})
    assert [label for label, _ in shown_picks(page)] == [s["label"] for s in picked(plan)] == ["Smoking area"]
    expect(page.locator("#summary .selection-line")).to_contain_text(
        "Relevance selection by the query: 1 section picked")
    expect(page.locator("#prompt")).to_have_text(plan["prompt"])
    assert plan["messages"][1:] == [{"role": "user", "content": message}]  # the query is not sent


def test_a_russian_query_picks_by_word_forms(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "agi-engineer")
    page.get_by_label("user_name").fill("Мария")
    page.get_by_label("Budget in tokens").fill("1200")
    page.get_by_label("Selection", exact=True).select_option("relevance")
    question = "Как работать с графами знаний?"  # the section is "Графы и знания"
    page.get_by_label("Query", exact=True).fill(question)
    wait_for_plan(page, "agi-engineer", 1200, "", selection="relevance", query=question)
    plan = plan_for(studio.url, {"role": "agi-engineer", "budget": 1200, "variables": {"user_name": "Мария"},
                                 "selection": "relevance", "query": question})
    assert [s["label"] for s in picked(plan)] == ["Графы и знания"]
    assert shown_picks(page) == [(s["label"], s["score"]) for s in picked(plan)]
    assert shown_reasons(page) == planned_reasons(plan)
    expect(page.locator('#sections li[data-label="Графы и знания"] .title')).to_have_text("Графы и знания")
    assert kept_text(page) == plan["system"]


def test_the_fitted_text_follows_the_prompt_not_the_document(watched: Watched, studio: WorkerProcess) -> None:
    """code-reviewer's required "Review method" stands after "Tone" in the file; a question about tone
    picks "Tone", which the prompt puts after the whole stable part, and so does the page."""
    page = watched.page
    open_studio(page, studio.url, "code-reviewer")
    expect(page.locator("#selection-default")).to_have_text("The role's (priority)")
    page.get_by_label("Budget in tokens").fill("500")
    question = "What tone should the review take?"
    page.get_by_label("Query", exact=True).fill(question)
    wait_for_plan(page, "code-reviewer", 500, "", selection="", query=question)
    plan = plan_for(studio.url, {"role": "code-reviewer", "budget": 500, "query": question})
    in_place = sorted((s for s in plan["sections"] if s["position"] is not None), key=lambda s: s["position"])
    labels = [s["label"] for s in in_place]
    assert labels.index("Tone") > labels.index("Review method")
    assert [s["index"] for s in in_place] != sorted(s["index"] for s in in_place)  # not document order
    assert shown_pieces(page) == [s["text"][: s["kept_chars"]] for s in in_place]
    assert kept_text(page) == plan["system"]
    tone = next(s for s in in_place if s["label"] == "Tone")
    expect(page.locator("#fitted .after-stable.picked")).to_have_text(tone["text"])
    assert shown_reasons(page) == planned_reasons(plan)
    expect(page.locator('#sections li[data-label="Review method"] .badge')).to_have_text("required")
