"""Fixtures for every test folder: a real headless Chromium driven by Playwright, and the one n8n
stack of the session (`e2e_stack`, shared by tests/e2e and tests/browser; see tests/e2e/stack.py).

One browser per test session (`browser`); each test gets its own context and page (`page`), and a
failing test leaves a full-page screenshot in the artifacts folder (`test-artifacts/` in the
repository, or $ROLE_INJECTOR_TEST_ARTIFACTS), named after the test and listed in its report.

The browser is Debian's Chromium, which scripts/install-chromium.sh installs when it is missing
(or any binary named by $ROLE_INJECTOR_CHROMIUM); Playwright launches it by path, so nothing is
downloaded (`playwright install` is never used).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.stack import Stack, run_stack
from tests.engine import LlamaServer, run_llama_server
from tests.servers import REPO

INSTALL_CHROMIUM = REPO / "scripts" / "install-chromium.sh"
# Headless and quiet: the machine has no GPU, runs as root (no sandbox) and has no network beyond
# loopback, so everything that would phone home is off.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1440, "height": 900}


def artifacts_dir() -> Path:
    return Path(os.environ.get("ROLE_INJECTOR_TEST_ARTIFACTS") or REPO / "test-artifacts")


def chromium_binary() -> str:
    """The path install-chromium.sh prints (it installs Chromium first when it is missing)."""
    result = subprocess.run(["bash", str(INSTALL_CHROMIUM)], capture_output=True, text=True, timeout=900,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"install-chromium.sh failed ({result.returncode}):\n{result.stderr}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the whole session."""
    executable = chromium_binary()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    """Extra arguments for `browser.new_context` (a test folder may override it, e.g. to log in)."""
    return {}


@pytest.fixture
def page(browser: Browser, browser_context_args: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh context and page; on failure its screenshot goes to the artifacts folder."""
    context = browser.new_context(**{"viewport": VIEWPORT, **browser_context_args})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            try:
                report.sections.append(("screenshot", str(save_screenshot(opened, request.node.nodeid))))
            except Exception as error:  # a crashed page must not hide the test's own failure
                report.sections.append(("screenshot", f"none: {error}"))
        context.close()


def save_screenshot(page: Page, nodeid: str) -> Path:
    """A full-page screenshot in the artifacts folder, named after the test."""
    path = artifacts_dir() / (re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid).strip("_") + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`make run` (n8n 2.41 with the packed node and the samples, and the worker) in front of an
    Ollama stand-in. Built once per session (a minute or two) and shared; each test clears the
    stand-in's record first.
    """
    with run_stack(tmp_path_factory.mktemp("e2e")) as stack:
        yield stack


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Keep the call phase's report on the item (so `page` knows at teardown whether the test failed),
    and attach the n8n and worker logs to a failing test that used the stack."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.report_call = report  # type: ignore[attr-defined]
    stack = getattr(item, "funcargs", {}).get("e2e_stack")
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("n8n logs", stack.n8n.logs()))
        report.sections.append(("worker log", stack.worker.log()[-20000:]))


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """One real llama-server with SmolLM2-135M for the session (tests/engine.py), started on first use."""
    with run_llama_server(tmp_path_factory.mktemp("llama")) as server:
        yield server
