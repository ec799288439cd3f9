"""The n8n editor in a real headless Chromium, against the session's stack (tests/e2e/stack.py).

Every page starts logged in as the stack's owner: the session signs in once through n8n's sign-in
page and each test's context starts from that saved state (cookies and local storage).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.e2e.n8n import OWNER
from tests.e2e.stack import Stack
from tests.servers import REPO

# The README's screenshots; ROLE_INJECTOR_SCREENSHOTS=1 makes the suite write them again.
DOC_IMAGES = REPO / "docs" / "images"


@pytest.fixture(scope="session")
def signed_in(browser: Browser, e2e_stack: Stack) -> dict[str, Any]:
    """The storage state of a context that signed in as the owner through the sign-in page."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{e2e_stack.n8n.url}/signin")
    page.locator('input[name="emailOrLdapLoginId"]').fill(OWNER["email"])
    page.locator('input[name="password"]').fill(OWNER["password"])
    page.locator('[data-test-id="form-submit-button"]').click()
    page.wait_for_url(lambda url: "/signin" not in url, timeout=60_000)
    state = context.storage_state()
    context.close()
    return dict(state)


@pytest.fixture
def browser_context_args(signed_in: dict[str, Any]) -> dict[str, Any]:
    return {"storage_state": signed_in}


def doc_screenshot(page: Page, name: str) -> None:
    """Refresh docs/images/<name>.png when asked to (the README shows them)."""
    if os.environ.get("ROLE_INJECTOR_SCREENSHOTS") == "1":
        path: Path = DOC_IMAGES / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
