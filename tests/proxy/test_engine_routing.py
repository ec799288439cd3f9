"""Past one machine, with the real parts: two llama-servers (SmolLM2-135M) behind a real vllm-router
(`consistent_hash`, installed by scripts/engine-toolchain.sh), the worker in front of the router. Started
once for the module.

Several conversations at once, each on a role of its own: every turn of a conversation is answered by
one engine, as the engines' own logs say, and that engine reuses the conversation's prefix (its cached
tokens); the router sees the routing key, never the conversation's text. Then the faults, last because
they kill the engines: an engine dies mid-conversation and the next turn is answered by the other
(the router's job); with none left, the client gets a clear 502 in OpenAI's shape quoting the router.

Which engine ran a request is read from its log: llama-server logs `stop processing: n_tokens = N` as it
releases a request's slot, N being the prompt's tokens plus the answer's but its last; the answer's
usage gives the prompt's, and the prompts of all requests are far enough apart for one line to match."""

from __future__ import annotations

import json
import random
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pytest
import requests

from role_injector.engines.routing import routing_key
from tests.engine import LlamaServer, Router, run_llama_server, run_vllm_router
from tests.servers import WorkerProcess, run_worker, write_place

CONVERSATIONS = 4
TURNS = 3
ANSWER_TOKENS = 3
SLOTS = CONVERSATIONS  # per engine: one per conversation even if all land on one, so none evicts another
SLOT_CONTEXT = 2048
WORDS = re.findall(r"\S+", "harbour ship sail mast rope anchor tide wave storm compass chart deck hull keel rudder "
                   "crew captain cargo port bay cliff lighthouse fog gull net fish boat oar knot wind north south "
                   "east west the a of to and in on with before after while when which it is was")
RELEASED = re.compile(r"release: id +\d+ \| task \d+ \| stop processing: n_tokens = (\d+)")


def sentences(seed: int, count: int) -> str:
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(count))


# Roles of different sizes (about 90 tokens apart, more than a conversation grows in its turns), so that
# every request's prompt has a size of its own.
ROLES = {f"harbour-{c}": f"---\ndescription: Harbour {c}\n---\nYou are the harbour master of port {c}.\n\n"
                         f"## Rules {{required}}\nAnswer in a few words.\n\n## Log\n{sentences(c, 2 + 6 * c)}\n"
         for c in range(CONVERSATIONS)}
PROFILE = "virtual_models:\n" + "".join(
    f"  port-{c}: {{base: smollm2, role: harbour-{c}, params: {{temperature: 0, num_predict: {ANSWER_TOKENS}}}}}\n"
    for c in range(CONVERSATIONS))


def turn_messages(conversation: int, turns: int) -> list[dict[str, str]]:
    """The conversation as a client sends it at turn `turns` (1-based): each question unique."""
    messages: list[dict[str, str]] = []
    for t in range(1, turns + 1):
        messages.append({"role": "user", "content": f"Conversation {conversation}, turn {t}: when is high tide?"})
        if t < turns:
            messages.append({"role": "assistant", "content": f"At {t} o'clock."})
    return messages


@dataclass
class Stack:
    engines: list[LlamaServer]
    router: Router
    worker: WorkerProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("routing")
    place = write_place(logs, ROLES, PROFILE)
    with ExitStack() as running:
        engines = [running.enter_context(run_llama_server(logs, slots=SLOTS, context=SLOTS * SLOT_CONTEXT, threads=1))
                   for _ in range(2)]
        router = running.enter_context(run_vllm_router(logs, [engine.url for engine in engines]))
        worker = running.enter_context(run_worker(place / "roles", place, workers=1, env={
            "ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": router.url,
            "ROLE_INJECTOR_MODELS": str(place / "models.yaml"), "ROLE_INJECTOR_UPSTREAM_TIMEOUT": "120"}))
        yield Stack(engines, router, worker)


def ask(worker: WorkerProcess, conversation: int, turns: int) -> requests.Response:
    return requests.post(worker.url + "/v1/chat/completions", timeout=300, json={
        "model": f"port-{conversation}", "messages": turn_messages(conversation, turns)})


def released(engine: LlamaServer) -> list[int]:
    """The n_tokens of each request the engine has released, in order."""
    return [int(n) for n in RELEASED.findall(engine.log())]


def engine_of(answer: dict[str, Any], engines: list[LlamaServer]) -> list[int]:
    """The engines (indexes) whose log released a request of this answer's size. llama-server logs the
    release just after it sends the answer's end, so a moment is given for the line to come."""
    prompt = answer["usage"]["prompt_tokens"]
    deadline = time.monotonic() + 10
    while True:
        found = sorted({i for i, engine in enumerate(engines) for n in released(engine)
                        if prompt <= n < prompt + ANSWER_TOKENS})
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def logged(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in worker.log().splitlines() if line.startswith('{"route"')]


def test_every_turn_of_a_conversation_is_answered_by_one_engine_that_reuses_its_prefix(stack: Stack) -> None:
    answers: dict[tuple[int, int], dict[str, Any]] = {}

    def converse(conversation: int) -> None:
        for turns in range(1, TURNS + 1):
            answer = ask(stack.worker, conversation, turns)
            assert answer.status_code == 200, answer.text
            answers[conversation, turns] = answer.json()

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        list(pool.map(converse, range(CONVERSATIONS)))

    prompts = sorted(answer["usage"]["prompt_tokens"] for answer in answers.values())
    assert all(b - a >= ANSWER_TOKENS for a, b in pairwise(prompts)), \
        f"the test's prompts are too close to tell apart in the engines' logs: {prompts}"
    served = {}
    for (conversation, turns), answer in sorted(answers.items()):
        found = engine_of(answer, stack.engines)
        assert len(found) == 1, (conversation, turns, found)
        served[conversation, turns] = found[0]
        if turns > 1:  # the whole previous prompt was still in that engine's cache
            before = answers[conversation, turns - 1]["usage"]["prompt_tokens"]
            assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] >= before - 1, (conversation, turns)
            assert answer["timings"]["cache_n"] == answer["usage"]["prompt_tokens_details"]["cached_tokens"]
    for conversation in range(CONVERSATIONS):
        assert len({served[conversation, t] for t in range(1, TURNS + 1)}) == 1, served

    # The router routed by the key: each conversation's, from its first question. Its log has keys, no
    # text: every request the worker sends has a key (a request without one is logged by its body).
    keys = {e["routing_key"] for e in logged(stack.worker) if e.get("route") == "/v1/chat/completions"}
    expected = {routing_key(f"port-{c}", None, turn_messages(c, 1)[0]["content"]) for c in range(CONVERSATIONS)}
    assert keys == expected
    router_log = stack.router.log()
    for key in expected:
        assert router_log.count(f"header:x-session-id:{key}' ->") >= TURNS
    for text in ("high tide", "o'clock", "harbour master"):
        assert text not in router_log
    assert "request:" not in router_log.replace("request:null", "")


# --- faults: these kill the module's engines, so they come last -----------------------------------------


def test_an_engine_dies_the_next_turn_is_answered_by_the_other_and_with_none_left_a_502(stack: Stack) -> None:
    conversation = 0
    answer = ask(stack.worker, conversation, 1)
    assert answer.status_code == 200, answer.text
    first = engine_of(answer.json(), stack.engines)
    assert len(first) == 1
    dead, alive = stack.engines[first[0]], stack.engines[1 - first[0]]
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait(timeout=10)

    answer = ask(stack.worker, conversation, 2)
    assert answer.status_code == 200, answer.text
    assert engine_of(answer.json(), [alive]) == [0]

    alive.process.send_signal(signal.SIGKILL)
    alive.process.wait(timeout=10)
    answer = ask(stack.worker, conversation, 3)
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["type"] == "server_error"
    assert stack.router.url in error["message"]
    assert re.search(r"answered 50\d|No available workers|Request failed", error["message"]), error["message"]
    assert all(line["status"] != 500 for line in logged(stack.worker))
    assert "Traceback" not in stack.worker.log()
