"""A worker whose Ollama is not running (its URL is a port where nothing listens), as a newcomer's
`make run` without Ollama has it: the REST API works, and every answer that needs Ollama says that
Ollama cannot be reached, where the worker looks for it and what to do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.servers import WorkerProcess, free_port, run_worker_at, write_place

ROLE = "---\ndescription: A test role\n---\nYou help with tests.\n"
PROFILE = """\
virtual_models:
  tester: {base: "qwen3:8b", role: tester}
  tester-short: {base: "qwen3:8b", role: tester, budget: 100}
"""
HINT = ". Start Ollama there, or point the worker at it: ROLE_INJECTOR_OLLAMA_URL (OLLAMA_URL for make run)"


@pytest.fixture(scope="module")
def nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, nowhere: str) -> Iterator[WorkerProcess]:
    place = write_place(tmp_path_factory.mktemp("without-ollama"), {"tester": ROLE}, PROFILE)
    with run_worker_at(place, nowhere) as process:
        yield process


def unreachable(nowhere: str) -> str:
    return f"cannot reach Ollama at {nowhere}: [Errno 111] Connection refused{HINT}"


def test_the_rest_api_works_without_ollama(worker: WorkerProcess) -> None:
    reply = requests.post(worker.url + "/v1/inject", json={"role": "tester", "prompt": "hi"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["system"] == "You help with tests."


def test_the_ollama_proxy_names_ollama_its_url_and_what_to_do(worker: WorkerProcess, nowhere: str) -> None:
    for model in ("qwen3:8b", "tester", "qwen3:8b@tester"):
        reply = requests.post(worker.url + "/api/chat", timeout=30,
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 502, reply.text
        assert reply.json() == {"error": unreachable(nowhere)}


def test_chat_completions_say_why_they_cannot_answer(worker: WorkerProcess, nowhere: str) -> None:
    reply = requests.post(worker.url + "/v1/chat/completions", timeout=30,
                          json={"model": "tester", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"] == {"message": unreachable(nowhere), "type": "server_error", "param": None,
                                     "code": "upstream_unreachable"}


def test_the_model_list_says_why_the_declared_virtual_models_are_not_listed(worker: WorkerProcess,
                                                                            nowhere: str) -> None:
    reply = requests.get(worker.url + "/v1/models", timeout=30)
    assert reply.status_code == 502, reply.text
    error = reply.json()["error"]
    assert error["code"] == "upstream_unreachable"
    assert error["message"] == (unreachable(nowhere) + "; the declared virtual models (tester, tester-short) run "
                                "on Ollama's models, so none is listed")


def test_a_worker_with_no_virtual_models_says_only_that_ollama_cannot_be_reached(tmp_path: Path,
                                                                                  nowhere: str) -> None:
    with run_worker_at(write_place(tmp_path, {"tester": ROLE}, "models: []\n"), nowhere) as plain:
        reply = requests.get(plain.url + "/v1/models", timeout=30)
    assert reply.status_code == 502, reply.text
    assert reply.json()["error"]["message"] == unreachable(nowhere)
