"""Replicas of the worker are interchangeable: two `role-injector serve` processes started separately on
the same roles and profile file (each with its own hash seed, so nothing may depend on the order of a
set) send the engine byte-identical requests for the same client request, routing key included, on both
routes and both kinds of engine. A byte that differed would break every engine's prefix cache behind a
load balancer that sends the turns of one conversation to different replicas.

The Ollama stand-in records what Ollama would get; for the OpenAI-compatible engine, the real llama-server
behind the recording pass-through (`tests.engine.FaultyEngine`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

from role_injector.engines.routing import DEFAULT_ROUTING_HEADERS, routing_key
from tests.engine import FaultyEngine
from tests.ollama_standin import OllamaStandin
from tests.servers import WorkerProcess, run_worker, run_worker_at, write_place

SEEDS = ("1", "2")  # PYTHONHASHSEED of each replica
CONVERSATION = [
    {"role": "system", "content": "The client's own system message gives way to the role."},
    {"role": "user", "content": "Where do I leave my bike, and can I print there?"},
    {"role": "assistant", "content": "In the cage behind building C."},
    {"role": "user", "content": "And the sauna: when does it open? <|im_end|> printers, bikes, toner"},
]
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Finds a room",
                                           "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                          "required": ["q"]}}}]
# One request of each kind a replica rewrites: virtual models (a plain role, relevance selection,
# variables, tools), a plain model, Ollama's generate, OpenAI's route to Ollama.
REQUESTS: list[tuple[str, dict[str, Any], dict[str, str]]] = [
    ("/api/chat", {"model": "engineer", "messages": CONVERSATION, "stream": False}, {}),
    ("/api/chat", {"model": "desk", "messages": CONVERSATION, "tools": TOOLS, "stream": False,
                   "options": {"temperature": 0.1}}, {"X-Session-ID": "chat-7"}),
    ("/api/chat", {"model": "named-greeter", "messages": CONVERSATION[1:2], "stream": False}, {}),
    ("/api/chat", {"model": "qwen3:8b", "messages": CONVERSATION, "stream": False}, {}),
    ("/api/generate", {"model": "engineer", "prompt": "Name the bug.", "raw": True, "stream": False}, {}),
    ("/v1/chat/completions", {"model": "desk", "messages": CONVERSATION, "max_tokens": 9, "user": "ann"}, {}),
    ("/v1/chat/completions", {"model": "qwen3:8b", "messages": CONVERSATION}, {"x-dynamo-session-id": "d-1"}),
]


@pytest.fixture(scope="module")
def replicas(place: Path, standin: OllamaStandin) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(run_worker_at(place, standin.url, PYTHONHASHSEED=seed)) for seed in SEEDS]


def sent_by_each(replicas: list[WorkerProcess], send: Callable[[WorkerProcess], requests.Response],
                 received: Callable[[], list[Any]]) -> list[Any]:
    """What the engine received for the same request sent to each replica in turn."""
    got = []
    for replica in replicas:
        answer = send(replica)
        assert answer.status_code == 200, answer.text
        got.append(received()[-1])
    return got


@pytest.mark.parametrize(("path", "body", "headers"), REQUESTS, ids=[f"{p} {b['model']}" for p, b, _ in REQUESTS])
def test_two_replicas_send_ollama_the_same_bytes(replicas: list[WorkerProcess], standin: OllamaStandin, path: str,
                                                 body: dict[str, Any], headers: dict[str, str]) -> None:
    upstream = "/api/generate" if path == "/api/generate" else "/api/chat"
    one, other = sent_by_each(replicas, lambda r: requests.post(r.url + path, json=body, headers=headers, timeout=30),
                              lambda: standin.requests_to(upstream))
    assert one.raw == other.raw
    keys = {one.headers.get(name) for name in DEFAULT_ROUTING_HEADERS} | \
        {other.headers.get(name) for name in DEFAULT_ROUTING_HEADERS}
    session = next(iter(headers.values()), None) or body.get("user")
    first = body["prompt"] if path == "/api/generate" else str(body["messages"][1]["content"] if len(
        body["messages"]) > 1 else body["messages"][0]["content"])
    assert keys == {routing_key(body["model"], session, first)}


# --- an OpenAI-compatible engine (the real llama-server) ----------------------------------------------------

ROLE = """---
description: A bicycle shop
---
You are Pip, the assistant of a bicycle shop.

## Mission {required}
Answer in one short sentence.

## Prices {priority=40}
A new tube costs 8 euros; fitting it is free with the tube.
"""


@pytest.fixture(scope="module")
def engine_replicas(tmp_path_factory: pytest.TempPathFactory,
                    engine_passage: FaultyEngine) -> Iterator[list[WorkerProcess]]:
    place = write_place(tmp_path_factory.mktemp("replicas"), {"shop": ROLE},
                        "virtual_models:\n  pip: {base: smollm2, role: shop, params: {temperature: 0}}\n")
    env = {"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": engine_passage.url,
           "ROLE_INJECTOR_MODELS": str(place / "models.yaml")}
    with ExitStack() as stack:
        yield [stack.enter_context(run_worker(place / "roles", place, workers=1, env={**env, "PYTHONHASHSEED": seed}))
               for seed in SEEDS]


@pytest.mark.parametrize("model", ["pip", "smollm2"])
def test_two_replicas_send_an_openai_compatible_engine_the_same_bytes(engine_replicas: list[WorkerProcess],
                                                                      faulty_engine: FaultyEngine, model: str) -> None:
    body = {"model": model, "messages": CONVERSATION, "max_tokens": 2, "temperature": 0}
    one, other = sent_by_each(
        engine_replicas, lambda r: requests.post(r.url + "/v1/chat/completions", json=body, timeout=120),
        lambda: faulty_engine.sent_to("/v1/chat/completions"))
    assert one.raw == other.raw
    key = routing_key(model, None, CONVERSATION[1]["content"])
    for exchange in (one, other):
        assert {name: exchange.headers.get(name) for name in DEFAULT_ROUTING_HEADERS} == \
            dict.fromkeys(DEFAULT_ROUTING_HEADERS, key)
