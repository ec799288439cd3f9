"""Fixtures of the REST API tests. Real gunicorn servers are few and session-scoped:

- `plain_server`: default settings (no API key, 1 MiB body limit, prompts not logged), 2 workers;
- `configured_server`: API key, ROLE_INJECTOR_LOG_PROMPTS=1 and a 4 KiB body limit, 1 worker.

Both serve a read-only copy of the fixture roles and the bundled roles, and, like the Flask apps,
reach Ollama at `rest_ollama`, a stand-in that knows only its default models. Tests that edit roles
start their own server (test_rest_reload.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from role_injector.settings import Settings
from role_injector.web import create_app
from tests.ollama_standin import OllamaStandin, run_ollama_standin
from tests.servers import WorkerProcess, run_worker
from tests.worker.rest.support import (
    API_KEY,
    Api,
    FlaskApi,
    HttpApi,
    write_fixture_roles,
)

SMALL_BODY_LIMIT = 4096


@pytest.fixture(scope="session")
def rest_roles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture_roles(tmp_path_factory.mktemp("rest-roles"))


@pytest.fixture(scope="session")
def rest_ollama() -> Iterator[OllamaStandin]:
    with run_ollama_standin(strict_models=True) as server:
        yield server


@pytest.fixture(scope="session")
def flask_app(rest_roles: Path, rest_ollama: OllamaStandin) -> Flask:
    return create_app(Settings.from_env({"ROLE_INJECTOR_OLLAMA_URL": rest_ollama.url}, roles_dir=str(rest_roles)))


@pytest.fixture(scope="session")
def secured_flask_app(rest_roles: Path, rest_ollama: OllamaStandin) -> Flask:
    env = {"ROLE_INJECTOR_API_KEY": API_KEY, "ROLE_INJECTOR_MAX_BODY_BYTES": str(SMALL_BODY_LIMIT),
           "ROLE_INJECTOR_OLLAMA_URL": rest_ollama.url}
    return create_app(Settings.from_env(env, roles_dir=str(rest_roles)))


def start_server(rest_roles: Path, tmp_path_factory: pytest.TempPathFactory, rest_ollama: OllamaStandin,
                 workers: int, **env: str) -> Iterator[WorkerProcess]:
    logs = tmp_path_factory.mktemp("server-logs")
    metrics_dir = tmp_path_factory.mktemp("server-metrics")
    full_env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "ROLE_INJECTOR_OLLAMA_URL": rest_ollama.url, **env}
    with run_worker(rest_roles, logs, env=full_env, workers=workers) as server:
        yield server


@pytest.fixture(scope="session")
def plain_server(rest_roles: Path, tmp_path_factory: pytest.TempPathFactory,
                 rest_ollama: OllamaStandin) -> Iterator[WorkerProcess]:
    yield from start_server(rest_roles, tmp_path_factory, rest_ollama, workers=2)


@pytest.fixture(scope="session")
def configured_server(rest_roles: Path, tmp_path_factory: pytest.TempPathFactory,
                      rest_ollama: OllamaStandin) -> Iterator[WorkerProcess]:
    yield from start_server(
        rest_roles, tmp_path_factory, rest_ollama, workers=1,
        ROLE_INJECTOR_API_KEY=API_KEY,
        ROLE_INJECTOR_LOG_PROMPTS="1",
        ROLE_INJECTOR_MAX_BODY_BYTES=str(SMALL_BODY_LIMIT),
    )


@pytest.fixture(params=["flask", "gunicorn"])
def api(request: pytest.FixtureRequest) -> Api:
    """The app with default settings: in-process (Flask test client) and under real gunicorn."""
    if request.param == "flask":
        return FlaskApi(request.getfixturevalue("flask_app"))
    return HttpApi(request.getfixturevalue("plain_server").url)


@pytest.fixture(params=["flask", "gunicorn"])
def secured_api(request: pytest.FixtureRequest) -> Api:
    """The app with ROLE_INJECTOR_API_KEY set and a 4 KiB body limit."""
    if request.param == "flask":
        return FlaskApi(request.getfixturevalue("secured_flask_app"))
    return HttpApi(request.getfixturevalue("configured_server").url)
