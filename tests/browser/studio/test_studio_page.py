"""The role studio in a real headless Chromium against a real gunicorn: what a role author does with it.

Every figure the page shows is checked against what /v1/inject answers for the same inputs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.studio.support import (
    Watched,
    fit_with_message,
    inject,
    kept_text,
    open_studio,
    post,
    shown_states,
    trim_states,
    wait_for_plan,
)
from tests.servers import WorkerProcess, run_worker
from tests.worker.rest.support import API_KEY

pytestmark = pytest.mark.browser


def test_the_roles_list_shows_every_role_and_every_broken_file(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url)
    listed = requests.get(studio.url + "/v1/roles", timeout=10).json()
    buttons = page.locator("#roles button")
    expect(buttons).to_have_count(len(listed["roles"]))
    for role, button in zip(listed["roles"], buttons.all(), strict=True):
        assert button.get_attribute("data-role") == role["name"]
        expect(button.locator(".description")).to_have_text(role["description"] or "(no description)")
        expect(button.locator(".meta")).to_contain_text(f"{role['tokens']:,} tokens · {role['version'][7:19]}")
    expect(page.locator("#broken")).to_be_visible()
    (broken,) = listed["errors"]
    expect(page.locator("#broken-list li")).to_have_text(f"{broken['file']}: {broken['message']}")
    expect(page.locator("#pick-hint")).to_be_visible()


def test_the_slider_moved_by_keyboard_shows_exactly_what_inject_reports(watched: Watched,
                                                                        studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url)
    page.locator('#roles button[data-role="manifest"]').click()
    wait_for_plan(page, "manifest", None, "")
    slider = page.get_by_label("Budget", exact=True)
    slider.focus()
    seen = []
    # A tenth of the range down, three tokens less, another tenth down, to the end (the context caps
    # it), to the start (1 token).
    for keys in (["PageDown"], ["ArrowLeft"] * 3, ["PageDown"], ["End"], ["Home"]):
        for key in keys:
            page.keyboard.press(key)
        budget = int(slider.input_value())
        body = {"role": "manifest", "budget": budget}
        reply = post(studio.url, "/v1/inject", body)
        if reply.status_code != 200:
            code = reply.json()["error"]["code"]
            wait_for_plan(page, "manifest", budget, code)
            expect(page.locator(f'#messages [data-code="{code}"]')).to_contain_text(reply.json()["error"]["message"])
            expect(page.locator("#summary")).to_contain_text("No fit")
            seen.append(code)
            continue
        wait_for_plan(page, "manifest", budget, "")
        injected = reply.json()
        states = shown_states(page)
        assert states == trim_states(injected), budget
        usage = injected["usage"]
        expect(page.locator("#summary .used")).to_have_text(f"{usage['system_tokens']:,} of {usage['budget']:,} tokens")
        assert kept_text(page) == injected["system"]
        expect(page.locator("#prompt")).to_have_text(injected["prompt"])
        for cut in page.locator('#sections li[data-state="truncated"]').all():
            planned = next(s for s in post(studio.url, "/v1/plan", body).json()["sections"]
                           if s["label"] == cut.get_attribute("data-label"))
            assert cut.get_attribute("data-kept-chars") == str(planned["kept_chars"])
            expect(cut.locator(".state")).to_have_text(
                f"cut after {planned['kept_chars']:,} of {planned['chars']:,} characters · "
                f"keeps {planned['kept_tokens']:,} of {planned['tokens']:,} tokens")
        seen.append(json.dumps([states, usage["system_tokens"]], sort_keys=True))
    assert seen[-1] == "budget_too_small"  # Home: 1 token is less than the required sections
    # Three tokens less may keep the same text (cuts fall at sentence ends); the other steps differ.
    assert len(set(seen)) >= 4, seen
    # End asked for the whole role; the context window leaves less, and the page says so.
    assert int(slider.get_attribute("max") or 0) > 8000


def test_a_required_variable_is_asked_for_and_filled(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url)
    page.locator('#roles button[data-role="helper"]').click()
    wait_for_plan(page, "helper", None, "missing_variable")
    expect(page.locator('#messages [data-code="missing_variable"]')).to_contain_text("needs variable(s) user_name")
    name = page.get_by_label("user_name")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_have_attribute("required", "")
    expect(page.locator('label[for="var-user_name"] .required-mark')).to_have_text(" *")
    tone = page.get_by_label("tone")
    expect(tone).to_have_attribute("placeholder", "calm")
    expect(page.locator("#var-tone-help")).to_have_text("Default: “calm”. How it sounds")
    expect(page.locator("#sections li")).to_have_count(4)  # the bars still show the sections

    name.fill("Ada")
    wait_for_plan(page, "helper", None, "")
    expect(page.locator("#messages")).to_be_empty()
    expect(name).not_to_have_attribute("aria-invalid", "true")
    injected = inject(studio.url, {"role": "helper", "variables": {"user_name": "Ada"}})
    assert kept_text(page) == injected["system"] and "Help Ada in a calm tone" in injected["system"]
    tone.fill("cheerful")
    wait_for_plan(page, "helper", None, "")
    expect(page.locator("#fitted")).to_contain_text("Help Ada in a cheerful tone")


def test_the_fitted_text_marks_what_was_cut_and_dropped_and_copies(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=studio.url)
    injected = fit_with_message(page, studio.url, "manifest", 1500, "How do I roll back a deploy?")
    body = {"role": "manifest", "budget": 1500, "prompt": "How do I roll back a deploy?"}
    planned = {s["label"]: s for s in post(studio.url, "/v1/plan", body).json()["sections"]}
    assert kept_text(page) == injected["system"]
    (cut_label,) = injected["trim"]["truncated"]
    cut = planned[cut_label]
    expect(page.locator("#fitted del.cut")).to_have_text(cut["text"][cut["kept_chars"]:])
    expect(page.locator("#fitted del.dropped")).to_have_count(len(injected["trim"]["dropped"]))
    expect(page.locator("#prompt")).to_have_text(injected["prompt"])
    expect(page.locator("#prompt-heading")).to_have_text("Full prompt (chatml)")

    page.get_by_label("Show cut and dropped text").uncheck()
    expect(page.locator("#fitted del.cut")).to_be_hidden()
    assert page.locator("#fitted").inner_text() == injected["system"]

    page.get_by_role("button", name="Copy").first.click()
    expect(page.locator("#copy-status")).to_have_text("System prompt copied")
    assert page.evaluate("navigator.clipboard.readText()") == injected["system"]
    page.get_by_role("button", name="Copy").nth(1).click()
    expect(page.locator("#copy-status")).to_have_text("Full prompt copied")
    assert page.evaluate("navigator.clipboard.readText()") == injected["prompt"]


def test_the_model_picks_tokenizer_and_format_and_the_format_can_be_chosen(watched: Watched,
                                                                           studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "code-reviewer")
    options = page.eval_on_selector_all("#model-options option", "os => os.map(o => o.value)")
    assert {"qwen3.5", "qwen", "llama3", "mistral", "gemma"} <= set(options)
    page.get_by_label("Budget in tokens").fill("400")
    page.get_by_label("Model").fill("llama3.1:8b")
    wait_for_plan(page, "code-reviewer", 400, "")
    injected = inject(studio.url, {"role": "code-reviewer", "budget": 400, "model": "llama3.1:8b"})
    expect(page.locator("#summary")).to_contain_text("tokenizer cl100k_base (estimated) · format llama3")
    expect(page.locator("#prompt")).to_have_text(injected["prompt"])
    assert injected["prompt"].startswith("<|begin_of_text|><|start_header_id|>system")
    assert shown_states(page) == trim_states(injected)

    page.get_by_label("Chat format").select_option("gemma")
    wait_for_plan(page, "code-reviewer", 400, "")
    expect(page.locator("#prompt-heading")).to_have_text("Full prompt (gemma)")
    gemma = inject(studio.url, {"role": "code-reviewer", "budget": 400, "model": "llama3.1:8b", "format": "gemma"})
    expect(page.locator("#prompt")).to_have_text(gemma["prompt"])


def test_the_page_follows_the_files(watched: Watched, studio: WorkerProcess, studio_roles: Path) -> None:
    page = watched.page
    open_studio(page, studio.url)
    fresh = studio_roles / "fresh.md"
    try:
        fresh.write_text("---\ndescription: Written while the page was open\n---\nFirst words.\n", encoding="utf-8")
        button = page.locator('#roles button[data-role="fresh"]')
        expect(button).to_contain_text("Written while the page was open", timeout=15_000)
        button.click()
        wait_for_plan(page, "fresh", None, "")
        expect(page.locator("#sections li")).to_have_count(1)

        fresh.write_text("---\ndescription: Grown\n---\nFirst words.\n\n## More {priority=5}\n\nSecond.\n",
                         encoding="utf-8")
        expect(page.locator("#sections li")).to_have_count(2, timeout=15_000)
        expect(page.locator("#role-description")).to_have_text("Grown")
        version = requests.get(studio.url + "/v1/roles/fresh", timeout=10).json()["version"]
        expect(page.locator("#role-facts")).to_contain_text(version)

        # A broken edit: the worker keeps serving the last good version and says why.
        fresh.write_text("---\ndescription: [unclosed\n---\nBroken now.\n", encoding="utf-8")
        expect(page.locator("#broken-list")).to_contain_text("fresh.md: front matter: not valid YAML",
                                                             timeout=15_000)
        expect(button.locator(".warning")).to_have_text("Its file does not load: this is the last good version")
        expect(page.locator('#messages [data-code="invalid_role"]')).to_contain_text("fresh.md: front matter")
        expect(page.locator("#sections li")).to_have_count(2)
    finally:
        fresh.unlink(missing_ok=True)
    expect(page.locator("#broken-list")).not_to_contain_text("fresh.md", timeout=15_000)
    expect(button).to_have_count(0)
    expect(page.locator('#messages [data-code="role_gone"]')).to_contain_text("role fresh is gone")
    expect(page.locator('#messages [data-code="invalid_role"]')).to_have_count(0)


def test_a_worker_with_a_key_asks_for_it_and_keeps_it_for_the_tab(watched: Watched,
                                                                  keyed_studio: WorkerProcess) -> None:
    page = watched.page
    page.goto(keyed_studio.url + "/studio/")
    key = page.get_by_label("API key")
    expect(key).to_be_focused()
    expect(page.locator('#messages [data-code="unauthorized"]')).to_contain_text("needs its API key")
    expect(page.locator("#roles button")).to_have_count(0)

    key.fill("wrong")
    key.press("Enter")
    expect(page.locator('#messages [data-code="unauthorized"]')).to_contain_text("refused this key")
    expect(key).to_be_visible()

    key.fill(API_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator('#roles button[data-role="plain"]')).to_be_visible()
    expect(key).to_be_hidden()
    expect(page.locator("#messages")).to_be_empty()
    page.locator('#roles button[data-role="plain"]').click()
    wait_for_plan(page, "plain", None, "")
    assert page.evaluate("sessionStorage.getItem('role-injector-api-key')") == API_KEY
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []

    page.reload()  # the same tab keeps it
    wait_for_plan(page, "plain", None, "")
    expect(key).to_be_hidden()

    page.get_by_role("button", name="Forget key").click()
    expect(key).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0

    other = page.context.new_page()  # another tab starts without it
    other.goto(keyed_studio.url + "/studio/")
    expect(other.get_by_label("API key")).to_be_visible()
    other.close()


def test_russian_role_text_is_shown_as_the_worker_sends_it(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "agi-engineer")
    page.get_by_label("user_name").fill("Мария")
    wait_for_plan(page, "agi-engineer", None, "")
    body = {"role": "agi-engineer", "variables": {"user_name": "Мария"}}
    planned = post(studio.url, "/v1/plan", body).json()
    assert [s["label"] for s in planned["sections"]] == \
        page.eval_on_selector_all("#sections li .title", "ts => ts.map(t => t.textContent)")
    assert "Миссия" in shown_states(page)
    assert kept_text(page) == planned["system"] and "Мария" in planned["system"]
    description = requests.get(studio.url + "/v1/roles/agi-engineer", timeout=10).json()["description"]
    expect(page.locator("#role-description")).to_have_text(description)
    expect(page.locator("#var-language-help")).to_contain_text("Язык ответа")
    # Cyrillic is drawn with a real font: its glyphs have widths, not one box each.
    widths = page.evaluate("""() => {
        const c = document.createElement('canvas').getContext('2d');
        c.font = getComputedStyle(document.querySelector('#role-description')).font;
        return ['Ж', 'ш', 'ы', 'i'].map(ch => c.measureText(ch).width);
    }""")
    assert len(set(widths)) > 1 and min(widths) > 0


def test_role_text_that_looks_like_html_stays_text(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "markup")
    title = page.title()
    role = requests.get(studio.url + "/v1/roles/markup", timeout=10).json()
    expect(page.locator('#roles button[data-role="markup"] .description')).to_have_text(role["description"])
    injected = inject(studio.url, {"role": "markup"})
    assert kept_text(page) == injected["system"] and "<script>" in injected["system"]
    assert page.locator("main img, main script, main iframe, nav img, main b").count() == 0
    assert page.title() == title


@pytest.mark.parametrize(("width", "height"), [(1280, 800), (390, 844)], ids=["1280px", "narrow"])
def test_readable_at_1280_pixels_and_on_a_narrow_window(watched: Watched, studio: WorkerProcess,
                                                        width: int, height: int) -> None:
    page = watched.page
    page.set_viewport_size({"width": width, "height": height})
    open_studio(page, studio.url, "handbook")
    page.get_by_label("Query", exact=True).fill("Where do I leave my bicycle and my dog?")
    wait_for_plan(page, "handbook", None, "", query="Where do I leave my bicycle and my dog?")
    assert page.evaluate("document.documentElement.scrollWidth") <= width  # nothing sideways
    for selector in ("#roles button", "#budget", "#budget-number", "#model", "#selection", "#query", "#picks li",
                     "#sections li", '#sections li[data-picked="true"]', "#fitted", "#prompt"):
        box = page.locator(selector).first.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
        assert box["width"] > 40, (selector, box)
    size = page.evaluate("parseFloat(getComputedStyle(document.querySelector('#sections li')).fontSize)")
    assert size >= 12


def test_every_control_has_a_name_and_works_from_the_keyboard(watched: Watched, studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url)
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to the role")
    for _ in range(30):  # tab to the role, pick it with Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.role") == "code-reviewer":
            break
    page.keyboard.press("Enter")
    wait_for_plan(page, "code-reviewer", None, "")
    expect(page.locator('#roles button[data-role="code-reviewer"]')).to_have_attribute("aria-current", "true")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"  # the focus can be seen

    passed = []
    for _ in range(30):  # past the other roles to the model, the format, the selection and the budget slider
        page.keyboard.press("Tab")
        passed.append(page.evaluate("document.activeElement.id"))
        if passed[-1] == "budget":
            break
    assert passed[-4:] == ["model", "format", "selection", "budget"], passed
    before = int(page.locator("#budget").input_value())
    page.keyboard.press("ArrowLeft")
    wait_for_plan(page, "code-reviewer", before - 1, "")
    expect(page.locator("#budget")).to_have_attribute("aria-valuetext", f"{before - 1:,} tokens")

    for _ in range(5):  # on to the query
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "query":
            break
    page.keyboard.type("unit tests")
    wait_for_plan(page, "code-reviewer", before - 1, "", query="unit tests")

    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter(e => e.offsetParent !== null)
        .filter(e => !(e.labels && [...e.labels].some(l => l.textContent.trim()))
                     && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')
                     && !e.textContent.trim())
        .map(e => e.outerHTML)""")
    assert unnamed == []
    for landmark in ("banner", "navigation", "main"):
        expect(page.get_by_role(landmark)).to_have_count(1)
    expect(page.get_by_role("alert")).to_have_count(1)


def test_when_the_worker_goes_away_the_page_says_so(watched: Watched, studio_roles: Path,
                                                    tmp_path: Path) -> None:
    page = watched.page
    with run_worker(studio_roles, tmp_path, workers=1) as worker:
        open_studio(page, worker.url, "plain")
    # The roles poll finds nobody there: a message, and the page it had stays.
    expect(page.locator('#messages [data-code="unreachable"]')).to_contain_text("cannot reach the worker",
                                                                                timeout=15_000)
    expect(page.locator('#roles button[data-role="plain"]')).to_be_visible()
    expect(page.locator("#summary .used")).to_be_visible()


def test_every_budget_figure_says_where_it_comes_from(watched: Watched, studio: WorkerProcess) -> None:
    """manifest's file asks for 8,000 tokens; in Qwen's 8,192-token context the context policy leaves
    5,120, and the list counts the file as written while the plan counts it with its variables filled."""
    page = watched.page
    open_studio(page, studio.url, "manifest")
    plan = inject(studio.url, {"role": "manifest"})
    usage = plan["usage"]
    roles = requests.get(studio.url + "/v1/roles", timeout=10).json()["roles"]
    listed = next(r for r in roles if r["name"] == "manifest")
    assert (listed["budget"], usage["budget"], usage["context_window"]) == (8000, 5120, 8192)
    assert listed["tokens"] != usage["system_tokens_full"]

    expect(page.locator("#role-facts")).to_contain_text("Budget in the file8,000 tokens")
    expect(page.get_by_label("Budget in tokens")).to_have_value("5120")
    expect(page.locator("#summary .budget-note")).to_have_text(
        "Budget 5,120: the role file's 8,000, capped by the context policy (keep_role): a 8,192-token context "
        "less 1,024 for the answer and 25% kept for the conversation.")
    expect(page.locator("#summary .whole-role")).to_have_text(
        f"Whole role: {usage['system_tokens_full']:,} tokens with its variables filled, its sections joined as "
        f"fitted, by qwen; the list's {listed['tokens']:,} counts the file as written, {{{{variables}}}} unfilled.")
    reset = page.get_by_role("button", name="Role's budget")
    expect(reset).to_have_attribute("title", re.compile("capped by the context"))

    page.get_by_label("Budget in tokens").fill("3000")
    wait_for_plan(page, "manifest", 3000, "")
    expect(page.locator("#summary .budget-note")).to_contain_text("Budget 3,000: the 3,000 asked; the context policy")


def test_a_query_in_another_language_than_the_role_says_why_it_picks_nothing(watched: Watched,
                                                                            studio: WorkerProcess) -> None:
    page = watched.page
    open_studio(page, studio.url, "handbook")
    expect(page.locator("#query-help")).to_contain_text("It matches words, not meaning")
    question = "Где оставить велосипед?"
    page.get_by_label("Query", exact=True).fill(question)
    wait_for_plan(page, "handbook", None, "", query=question)
    line = page.locator("#summary .selection-line")
    expect(line).to_contain_text("no section matches the query")
    expect(line).to_contain_text("this role has no Russian words, so a Russian query finds nothing")


def test_on_a_narrow_window_the_dropped_sections_of_a_long_role_fold_away(watched: Watched,
                                                                          studio: WorkerProcess) -> None:
    page = watched.page
    page.set_viewport_size({"width": 390, "height": 844})
    open_studio(page, studio.url, "handbook")
    question = "Where do I leave my bicycle and my dog?"
    page.get_by_label("Query", exact=True).fill(question)
    wait_for_plan(page, "handbook", None, "", query=question)
    bars = page.locator("#sections li")
    dropped = page.locator('#sections li[data-state="dropped"]')
    total, folded = bars.count(), dropped.count()
    assert total > 100 and folded > 100
    expect(dropped.first).to_be_hidden()
    expect(page.locator('#sections li[data-picked="true"]').first).to_be_visible()
    toggle = page.get_by_role("button", name=f"Show the {folded} dropped sections")
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 6000, height  # it was about 13,000 px with every bar shown

    toggle.click()
    expect(dropped.first).to_be_visible()
    expect(page.get_by_role("button", name=f"Hide the {folded} dropped sections")).to_have_attribute(
        "aria-expanded", "true")
    page.set_viewport_size({"width": 1280, "height": 800})  # a wide window shows every bar, no button
    expect(page.locator("#show-dropped")).to_be_hidden()
@pytest.mark.parametrize("fragment", ["%E0%A4%A", "%", "%ZZ", "%E0%A4", "manifest%"])
def test_a_hash_that_is_no_escape_names_no_role(watched: Watched, studio: WorkerProcess, fragment: str) -> None:
    """A hand-made address (#%E0%A4%A) opens the studio with no role picked, and leaving a role for it
    keeps the page working; no script error (the `watched` fixture fails on any)."""
    page = watched.page
    page.goto(f"{studio.url}/studio/#{fragment}")
    expect(page.locator("#roles-status")).not_to_have_text("Loading roles…")
    expect(page.locator("#pick-hint")).to_be_visible()
    page.locator('#roles button[data-role="manifest"]').click()
    wait_for_plan(page, "manifest", None, "")
    page.goto(f"{studio.url}/studio/#{fragment}")  # only the hash changes: a hashchange
    page.goto(f"{studio.url}/studio/#plain")
    wait_for_plan(page, "plain", None)
    expect(page.locator('.message[data-source="page"]')).to_have_count(0)
