"""The Ollama stand-in as fixtures of a test folder whose conftest imports them: one stand-in for the
folder (it knows every model and records what a model server got), cleared before each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ollama_standin import OllamaStandin, run_ollama_standin


@pytest.fixture(scope="session")
def standin() -> Iterator[OllamaStandin]:
    with run_ollama_standin() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_standin(standin: OllamaStandin) -> None:
    standin.clear()
