"""Fixtures of the role studio tests: real gunicorn workers serving a roles folder the tests may edit.

- `studio_roles`: the bundled roles, the REST fixture roles (helper, child, plain, broken.md) and a
  role whose text looks like HTML; tests that change files put them back before they end;
- `studio`: a worker without an API key; `keyed_studio`: one that needs `API_KEY`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.browser.studio.support import Watched
from tests.servers import WorkerProcess, run_worker
from tests.worker.rest.support import API_KEY, write_fixture_roles

# Text a browser would run if the page ever inserted role text as HTML.
MARKUP = """\
---
description: "<img src=x onerror=\\"document.title='pwned'\\"> looks like markup"
---
Say <b>bold</b> and <script>document.title = 'pwned'</script> as plain text.

## Tags {priority=10}

An <iframe src="https://example.com"></iframe> and &amp; stay text too.
"""


@pytest.fixture(scope="session")
def studio_roles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = write_fixture_roles(tmp_path_factory.mktemp("studio-roles"))
    (directory / "markup.md").write_text(MARKUP, encoding="utf-8")
    return directory


def start(roles: Path, tmp_path_factory: pytest.TempPathFactory, **env: str) -> Iterator[WorkerProcess]:
    logs = tmp_path_factory.mktemp("studio-logs")
    full_env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("studio-metrics")),
                "ROLE_INJECTOR_RELOAD_INTERVAL": "0.2", **env}
    with run_worker(roles, logs, env=full_env, workers=1) as server:
        yield server


@pytest.fixture(scope="session")
def studio(studio_roles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    yield from start(studio_roles, tmp_path_factory)


@pytest.fixture(scope="session")
def keyed_studio(studio_roles: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    yield from start(studio_roles, tmp_path_factory, ROLE_INJECTOR_API_KEY=API_KEY)


@pytest.fixture
def watched(page: Page) -> Iterator[Watched]:
    """The `page`, watched: a test fails on any script error, and on any request that leaves the worker."""
    seen = Watched(page)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("request", lambda request: seen.urls.append(request.url))
    yield seen
    assert seen.errors == []
    assert all(url.startswith(("http://127.0.0.1:", "data:")) for url in seen.urls), seen.urls
