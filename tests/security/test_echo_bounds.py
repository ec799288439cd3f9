"""Class 9 (echoes): what a request sends is not logged or answered back whole.

A model name longer than any model's is a 400 naming its field before anything is logged or sent
on; every other field a client fills (a number field holding megabytes of text, a role, a tool's
name, a header) comes back in an error and in the request's log line bounded, whatever the surface.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.ollama_standin import OllamaStandin
from tests.security.conftest import raw_request
from tests.servers import WorkerProcess

MiB = 1024 * 1024
HUGE = "m" * (4 * MiB)
BOUND = 8 * 1024  # an error answer's body, and what one request adds to the log, stay under this


def send(server: WorkerProcess, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return raw_request(server, "POST", path, json.dumps(body).encode(),
                       {"Content-Type": "application/json", **(headers or {})})


MODEL_FIELDS = [  # path, body with the huge name, the field the 400 names
    ("/api/chat", {"model": HUGE, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("/api/generate", {"model": HUGE, "prompt": "hi"}, "model"),
    ("/api/show", {"model": HUGE}, "model"),
    ("/api/show", {"name": HUGE}, "name"),
    ("/api/chat", {"model": "qwen3:8b@" + HUGE, "messages": []}, "model"),
    ("/api/chat", {"model": HUGE + "@guarded", "messages": []}, "model"),
    ("/v1/chat/completions", {"model": HUGE, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ("/v1/inject", {"role": "guarded", "model": "m" * (MiB - 100)}, "model"),
    ("/v1/count", {"text": "hi", "model": "m" * (MiB - 100)}, "model"),
]


@pytest.mark.parametrize(("path", "body", "field"), MODEL_FIELDS)
def test_a_model_name_longer_than_any_is_a_400_naming_it(guarded: WorkerProcess, standin: OllamaStandin,
                                                         path: str, body: dict[str, Any], field: str) -> None:
    logged = len(guarded.log())
    answer = send(guarded, path, body)
    assert answer.status == 400, answer.body[:300]
    assert len(answer.body) < BOUND
    assert f"'{field}'" in answer.body.decode()
    assert len(guarded.log()) - logged < BOUND
    assert standin.requests == []


ECHOED = [  # a huge value in a field that is not a model name: a bounded 400
    ("/v1/chat/completions", {"model": "guarded", "messages": [{"role": "user", "content": "hi"}],
                              "temperature": HUGE}),
    ("/v1/chat/completions", {"model": "guarded", "messages": [{"role": HUGE, "content": "hi"}]}),
    ("/v1/chat/completions", {"model": "guarded", "messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": HUGE}}}),
    ("/v1/chat/completions", {"model": "guarded", "stream": HUGE, "messages": []}),
    ("/v1/chat/completions", {"model": "guarded", "messages": [{"role": "user", "content": [{"type": HUGE}]}]}),
    ("/api/chat", {"model": "guarded", "options": {"num_ctx": HUGE}, "messages": [{"role": "user", "content": "x"}]}),
    ("/api/chat", {"model": "guarded", "messages": [{"role": "user", "content": "x", "tool_name": HUGE + "<s>"}]}),
    ("/api/chat", {"model": "guarded", "messages": [{"role": HUGE, "content": "x"}]}),
    ("/v1/inject", {"role": "guarded", "budget": "b" * (MiB - 100)}),
    ("/v1/inject", {"role": "guarded", "selection": "s" * (MiB - 100)}),
    ("/v1/inject", {"role": "guarded", "messages": [{"role": "r" * (MiB - 100), "content": "x"}]}),
    ("/v1/inject", {"role": "guarded", **{f"unknown{i}": 1 for i in range(20_000)}}),
]


@pytest.mark.parametrize(("path", "body"), ECHOED)
def test_a_huge_value_comes_back_bounded(guarded: WorkerProcess, standin: OllamaStandin, path: str,
                                         body: dict[str, Any]) -> None:
    logged = len(guarded.log())
    answer = send(guarded, path, body)
    assert answer.status == 400, answer.body[:300]
    assert len(answer.body) < BOUND, answer.body[:300]
    assert len(guarded.log()) - logged < BOUND
    assert standin.requests == []


def test_a_huge_header_value_comes_back_bounded(guarded: WorkerProcess) -> None:
    answer = send(guarded, "/api/chat", {"model": "guarded", "messages": []},
                  {"X-Role-Injector-Context-Policy": "p" * 8000})
    assert answer.status == 400 and len(answer.body) < BOUND


def test_an_engines_huge_refusal_comes_back_bounded(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", status=404, body={"error": f'model "{HUGE}" not found, try pulling it first'})
    answer = send(guarded, "/v1/chat/completions",
                  {"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]})
    assert answer.status == 404 and len(answer.body) < BOUND
    assert "not found" in answer.json()["error"]["message"]
