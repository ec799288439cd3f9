"""Driving the role studio in a real Chromium: open it, wait for the worker's answer, read what it shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests
from playwright.sync_api import Page, expect


@dataclass
class Watched:
    """What a page did besides drawing: script errors and every URL it asked for."""

    page: Page
    errors: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)


def open_studio(page: Page, url: str, role: str | None = None) -> None:
    page.goto(f"{url}/studio/" + (f"#{role}" if role else ""))
    expect(page.locator("#roles-status")).not_to_have_text("Loading roles…")
    if role:
        wait_for_plan(page, role, None)


def wait_for_plan(page: Page, role: str, requested: int | None, error: str | None = None, *,
                  selection: str | None = None, query: str | None = None) -> None:
    """Until the page shows the worker's answer for `role` at `requested` (None: the role's default
    budget), and, when `error` is given, that answer is that error code ("" for none); when
    `selection` or `query` is given, the answer to a request that sent them ("" for none sent).

    One selector for all of it, so each poll checks one moment (the page's CSP forbids the eval
    behind `wait_for_function`)."""
    wanted = f'[data-role="{role}"][data-requested="{"" if requested is None else requested}"]'
    for name, value in (("error", error), ("selection", selection), ("query", query)):
        if value is not None:
            wanted += f'[data-{name}="{css_string(value)}"]'
    expect(page.locator(f'main[aria-busy="false"] #result{wanted}')).to_have_count(1)


def css_string(text: str) -> str:
    """`text` inside a double-quoted CSS string."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\a ")


def fit_with_message(page: Page, url: str, role: str, budget: int, message: str) -> dict[str, Any]:
    """Open `role`, set the budget and a user message, wait for the plan; what /v1/inject answers for it."""
    open_studio(page, url, role)
    page.get_by_label("Budget in tokens").fill(str(budget))
    page.get_by_text("User message", exact=True).click()  # open the disclosure
    page.get_by_label("User message").fill(message)
    wait_for_plan(page, role, budget, "")
    return inject(url, {"role": role, "budget": budget, "prompt": message})


def shown_states(page: Page) -> dict[str, str]:
    states: dict[str, str] = page.eval_on_selector_all(
        "#sections li", "items => Object.fromEntries(items.map(i => [i.dataset.label, i.dataset.state]))")
    return states


def shown_reasons(page: Page) -> dict[str, tuple[str, float | None, bool]]:
    """Each bar's label -> (why it stood where it did, its score as shown, whether it is marked picked)."""
    reasons: dict[str, list[Any]] = page.eval_on_selector_all("#sections li", """items => Object.fromEntries(
        items.map(i => [i.dataset.label, [i.dataset.reason, i.dataset.score, i.dataset.picked === 'true']]))""")
    return {label: (reason, float(score) if score else None, picked)
            for label, (reason, score, picked) in reasons.items()}


def planned_reasons(plan: dict[str, Any]) -> dict[str, tuple[str, float | None, bool]]:
    """What `shown_reasons` must read for a /v1/plan answer: the reason (core for the core), the score
    and whether the query picked it (ranked for it, and kept whole or cut)."""
    return {
        s["label"]: ("core" if s["core"] else s["reason"], s["score"],
                     s["reason"] == "relevance" and s["state"] != "dropped")
        for s in plan["sections"]
    }


def kept_text(page: Page) -> str:
    """The fitted text as the page shows it, without what it marks as removed (<del>)."""
    text: str = page.eval_on_selector(
        "#fitted", "pre => [...pre.childNodes].filter(n => n.nodeName !== 'DEL').map(n => n.textContent).join('')")
    return text


def post(url: str, path: str, body: dict[str, Any], key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(url + path, json=body, headers=headers, timeout=30)


def inject(url: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = post(url, "/v1/inject", body)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def trim_states(injected: dict[str, Any]) -> dict[str, str]:
    """/v1/inject's trim report as label -> kept / truncated / dropped."""
    return {label: state for state in ("kept", "truncated", "dropped") for label in injected["trim"][state]}
