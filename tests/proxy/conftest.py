"""Fixtures of the proxy-route tests (the Ollama-compatible proxy, the OpenAI-compatible route, the
context policy through them), one set for the folder: an Ollama stand-in that knows every model and
records what a model server got (cleared before each test), and a real gunicorn worker in front of it
serving the shared roles and profile (`place.py`). Tests that need other settings start their own
worker with `tests.servers.run_worker_at` on the same stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import standin_fixtures
from tests.engine import FaultyEngine, LlamaServer, run_faulty_engine
from tests.ollama_standin import OllamaStandin
from tests.proxy.place import write_place
from tests.servers import WorkerProcess, run_worker_at

# The folder's Ollama stand-in (tests/standin_fixtures.py).
standin = standin_fixtures.standin
fresh_standin = standin_fixtures.fresh_standin


@pytest.fixture(scope="package")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_place(tmp_path_factory.mktemp("proxy"))


@pytest.fixture(scope="package")
def worker(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    with run_worker_at(place, standin.url) as process:
        yield process


@pytest.fixture(scope="package")
def engine_passage(llama_server: LlamaServer) -> Iterator[FaultyEngine]:
    """The session's real llama-server behind a pass-through that records what it is sent and misbehaves
    where a test says (tests.engine.FaultyEngine), for the tests of the route in front of an engine."""
    with run_faulty_engine(llama_server.url) as engine:
        yield engine


@pytest.fixture
def faulty_engine(engine_passage: FaultyEngine) -> Iterator[FaultyEngine]:
    """The pass-through with nothing recorded and no fault, before and after the test."""
    engine_passage.clear()
    yield engine_passage
    engine_passage.clear()
