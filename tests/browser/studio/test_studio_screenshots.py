"""The README's pictures of the role studio, taken by this suite from the bundled roles.

They are written to docs/images/ when ROLE_INJECTOR_SCREENSHOTS=1 (after a change to the page:
`ROLE_INJECTOR_SCREENSHOTS=1 .venv/bin/pytest tests/browser/studio -k screenshots`), else to a scratch
folder; either way the committed ones must exist and be PNGs of the documented size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.studio.support import Watched, open_studio, wait_for_plan
from tests.servers import REPO, WorkerProcess, run_worker

pytestmark = pytest.mark.browser

IMAGES = REPO / "docs" / "images"
WIDE = {"width": 1280, "height": 1000}
NARROW = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def bundled_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The bundled roles only, as a user sees them after `make run`."""
    with run_worker(REPO / "roles", tmp_path_factory.mktemp("screenshot-logs"), workers=1) as worker:
        yield worker


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def target(name: str, scratch: Path) -> Path:
    return (IMAGES if os.environ.get("ROLE_INJECTOR_SCREENSHOTS") == "1" else scratch) / name


def test_screenshots_for_the_readme(watched: Watched, bundled_studio: WorkerProcess, tmp_path: Path) -> None:
    page = watched.page
    page.set_viewport_size(WIDE)
    open_studio(page, bundled_studio.url, "manifest")
    page.get_by_label("Budget in tokens").fill("3000")
    wait_for_plan(page, "manifest", 3000, "")
    page.locator("#budget").focus()
    scroll_to = "selector => window.scrollTo(0, document.querySelector(selector).getBoundingClientRect().top" \
        " + window.scrollY - 12)"
    page.evaluate(scroll_to, "#controls")  # the controls and the first bars
    wide = target("studio-wide.png", tmp_path)
    page.screenshot(path=str(wide))

    fitted = target("studio-fitted.png", tmp_path)
    page.locator("#fitted").evaluate("""pre => {
        const cut = pre.querySelector('del.cut').getBoundingClientRect().top;
        pre.scrollTop += cut - pre.getBoundingClientRect().top - 160;
    }""")
    page.locator("section.panel").first.screenshot(path=str(fitted))

    # Relevance selection: a query picks sections of the handbook; the controls, the picks and the bars.
    question = "Where do I park my car or my bike, and can I bring my dog?"
    open_studio(page, bundled_studio.url, "handbook")
    page.get_by_label("Budget in tokens").fill("900")
    page.get_by_label("Query", exact=True).fill(question)
    wait_for_plan(page, "handbook", 900, "", query=question)
    assert page.locator('#sections li[data-picked="true"]').count() >= 3
    page.evaluate(scroll_to, "#controls")
    relevance = target("studio-relevance.png", tmp_path)
    page.screenshot(path=str(relevance))

    page.set_viewport_size(NARROW)
    open_studio(page, bundled_studio.url, "agi-engineer")
    page.get_by_label("user_name").fill("Мария")
    page.get_by_label("Budget in tokens").fill("1200")
    page.get_by_label("Selection", exact=True).select_option("relevance")
    page.get_by_label("Query", exact=True).fill("Как работать с графами знаний?")
    wait_for_plan(page, "agi-engineer", 1200, "", selection="relevance", query="Как работать с графами знаний?")
    page.evaluate("document.querySelector('#result').scrollIntoView()")
    narrow = target("studio-narrow.png", tmp_path)
    page.screenshot(path=str(narrow))

    for name, size in (("studio-wide.png", WIDE), ("studio-relevance.png", WIDE), ("studio-narrow.png", NARROW)):
        assert png_size(IMAGES / name) == (size["width"], size["height"]), name
    assert png_size(IMAGES / "studio-fitted.png")[0] > 600
