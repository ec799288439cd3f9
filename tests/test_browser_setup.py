"""The shared browser fixtures work: Chromium renders and runs a page, and a screenshot lands as an artifact."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.conftest import save_screenshot

pytestmark = pytest.mark.browser

PAGE = """<!doctype html><meta charset="utf-8"><title>probe</title>
<button id="b" onclick="document.getElementById('out').textContent = 'clicked: ' + navigator.userAgent">Go</button>
<p id="out">Привет</p>"""


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_chromium_loads_a_local_page_and_runs_its_script(page: Page, site: str) -> None:
    page.goto(site)
    assert page.locator("#out").inner_text() == "Привет"
    page.get_by_role("button", name="Go").click()
    text = page.locator("#out").inner_text()
    assert text.startswith("clicked: ") and "HeadlessChrome" in text


def test_a_screenshot_is_saved_under_the_tests_name(page: Page, site: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLE_INJECTOR_TEST_ARTIFACTS", str(tmp_path))
    page.goto(site)
    path = save_screenshot(page, "tests/browser/test_x.py::test_y[a b]")
    assert path == tmp_path / "tests_browser_test_x.py_test_y_a_b.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and path.stat().st_size > 1000
