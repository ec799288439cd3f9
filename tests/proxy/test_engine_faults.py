"""Faults of an OpenAI-compatible engine, on the OpenAI route: an engine without /tokenize or /props, one
that answers garbage, stalls, cuts a stream, refuses, reports a window too small for the role, or is not
there. Each is a clear error in OpenAI's shape (before the first byte a JSON 4xx/5xx, after it an SSE
error event and no [DONE]) and a log line; never a 500, never a silently cut role.

The engine is the session's real llama-server behind `tests.engine.FaultyEngine`, which misbehaves on
the paths a test names. The worker waits 6 s for the engine (ROLE_INJECTOR_UPSTREAM_TIMEOUT; room for a loaded
machine: the real engine behind it must start its answer within that). Facts
(/props) are cached per model for a minute, so each test that spoils them asks for a model of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.engine import FaultyEngine
from tests.servers import WorkerProcess, free_port, run_worker, write_place

GUARD = """---
description: Guards the gate
---
## Mission {required}
You are the gate guard. Answer in one short sentence.
"""
FRESH = """---
description: Counted by nobody yet
---
## Mission {required}
You keep bees on a roof in Lisbon and answer questions about honey.
"""
# Roles for the router's 502s, each counted by nobody before its test.
ONCE = FRESH.replace("bees on a roof in Lisbon", "goats on a hill above Porto")
TWICE = FRESH.replace("bees on a roof in Lisbon", "pigeons in a loft in Faro")
ROUTER_502 = b"Backend request failed: error sending request for url (http://127.0.0.1:9/tokenize)"
PROFILE = """\
virtual_models:
  guard: {base: smollm2, role: guard, params: {temperature: 0, num_predict: 12}}
"""
HI = [{"role": "user", "content": "Who goes there?"}]
LLAMA_404 = {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}
pytestmark = pytest.mark.usefixtures("faulty_engine")  # no fault left from another test




def engine_env(url: str, place: Any) -> dict[str, str]:
    return {"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": url,
            "ROLE_INJECTOR_MODELS": str(place / "models.yaml"), "ROLE_INJECTOR_UPSTREAM_TIMEOUT": "6"}


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return write_place(tmp_path_factory.mktemp("engine-faults"),
                       {"guard": GUARD, "fresh": FRESH, "once": ONCE, "twice": TWICE}, PROFILE)


@pytest.fixture(scope="module")
def worker(place: Any, engine_passage: FaultyEngine) -> Iterator[WorkerProcess]:
    with run_worker(place / "roles", place, workers=1, env=engine_env(engine_passage.url, place)) as process:
        yield process


def chat(worker: WorkerProcess, model: str = "guard", stream: bool = False, **extra: Any) -> requests.Response:
    return requests.post(worker.url + "/v1/chat/completions", timeout=60,
                         json={"model": model, "messages": HI, "stream": stream, **extra})


def openai_error(response: requests.Response, status: int, code: str | None) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return str(error["message"])


def logged(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in worker.log().splitlines() if line.startswith('{"route"')]


@pytest.fixture(autouse=True)
def never_a_500(worker: WorkerProcess) -> Iterator[None]:
    yield
    assert all(line["status"] != 500 for line in logged(worker))
    assert "Traceback" not in worker.log()


# --- the engine's facts and counts ----------------------------------------------------------------------


def test_an_engine_without_tokenize_cannot_count_the_role(worker: WorkerProcess, faulty_engine: FaultyEngine) -> None:
    faulty_engine.fail("/tokenize", status=404, body=LLAMA_404)
    message = openai_error(chat(worker, "smollm2@fresh"), 503, "tokenizer_unavailable")
    assert "cannot tokenize" in message and "404" in message
    assert faulty_engine.sent_to("/v1/chat/completions") == []  # nothing was sent without its count
    assert logged(worker)[-1]["status"] == 503


def test_a_routers_502_on_a_count_is_asked_once_more(worker: WorkerProcess, faulty_engine: FaultyEngine) -> None:
    # vllm-router answers 502 when its connection to an engine failed; it retries chat requests, not these.
    faulty_engine.fail("/tokenize", status=502, body=ROUTER_502, content_type="text/plain", times=1)
    answer = chat(worker, "smollm2@once", max_tokens=4)
    assert answer.status_code == 200, answer.text
    asked = faulty_engine.sent_to("/tokenize")
    assert asked[0].answer == ROUTER_502 and len(asked) >= 2 and asked[1].body == asked[0].body
    assert len(faulty_engine.sent_to("/v1/chat/completions")) == 1

    faulty_engine.clear()
    faulty_engine.fail("/tokenize", status=502, body=ROUTER_502, content_type="text/plain", times=2)
    response = chat(worker, "smollm2@twice", max_tokens=4)
    assert response.status_code in (502, 503), response.text
    assert "Backend request failed" in response.json()["error"]["message"]
    assert [e.answer for e in faulty_engine.sent_to("/tokenize")] == [ROUTER_502, ROUTER_502]  # once more, no more
    assert faulty_engine.sent_to("/v1/chat/completions") == []


@pytest.mark.parametrize(("base", "fault", "status", "code", "said"), [
    ("no-props", {"status": 404, "body": LLAMA_404}, 502, "bad_upstream", "has no /props (it answered 404)"),
    ("garbage", {"status": 200, "body": b"garbage"}, 502, "bad_upstream", "is not JSON"),
    ("a-list", {"status": 200, "body": [1, 2]}, 502, "bad_upstream", "not an object"),
    ("odd-window", {"status": 200, "body": {"default_generation_settings": {"n_ctx": "8k"}}}, 502, "bad_upstream",
     "n_ctx"),
    ("loading", {"status": 500, "body": {"error": {"message": "loading model"}}}, 502, "upstream_refused",
     "loading model"),
    ("silent", {"delay": 9}, 504, "upstream_timeout", "did not answer within 6 s"),
])
def test_props_faults_are_clear_errors(worker: WorkerProcess, faulty_engine: FaultyEngine, base: str,
                                       fault: dict[str, Any], status: int, code: str, said: str) -> None:
    faulty_engine.fail("/props", **fault)
    assert said in openai_error(chat(worker, f"smollm2-{base}@guard"), status, code)
    assert faulty_engine.sent_to("/v1/chat/completions") == []
    assert logged(worker)[-1]["status"] == status


def test_a_window_too_small_for_the_role_is_an_error_not_a_cut_role(worker: WorkerProcess,
                                                                    faulty_engine: FaultyEngine) -> None:
    def small(props: dict[str, Any]) -> dict[str, Any]:
        return {**props, "default_generation_settings": {**props["default_generation_settings"], "n_ctx": 40}}

    faulty_engine.fail("/props", rewrite=small)
    response = chat(worker, "smollm2-small@guard")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] in ("budget_too_small", "context_overflow")
    assert "40 tokens is what llama.cpp at" in error["message"] and "/props" in error["message"]
    assert faulty_engine.sent_to("/v1/chat/completions") == []


# --- the answer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("fault", "status", "code"), [
    ({"status": 200, "body": b"garbage"}, 502, "bad_upstream"),  # as one JSON answer
    ({"status": 200, "body": b"data: garbage\n\n", "content_type": "text/event-stream"}, 502, "bad_upstream"),
    ({"status": 200, "body": b"", "content_type": "text/event-stream"}, 502, "bad_upstream"),  # ends at once
    ({"delay": 9}, 504, "upstream_timeout"),  # silent before its status
    ({"cut_after": 0, "stall": 9}, 504, "upstream_timeout"),  # headers, then silence
])
def test_an_answer_that_fails_before_its_first_byte_is_a_json_error(
        worker: WorkerProcess, faulty_engine: FaultyEngine, fault: dict[str, Any], status: int, code: str,
        stream: bool) -> None:
    faulty_engine.fail("/v1/chat/completions", **fault)
    openai_error(chat(worker, stream=stream), status, code)
    assert logged(worker)[-1]["status"] == status


@pytest.mark.parametrize(("stall", "code", "said"), [(0, "bad_upstream", "broke off"),
                                                     (9, "upstream_timeout", "sent nothing for 6 s")])
def test_a_stream_cut_after_it_began_ends_with_an_error_event(worker: WorkerProcess, faulty_engine: FaultyEngine,
                                                              stall: float, code: str, said: str) -> None:
    faulty_engine.fail("/v1/chat/completions", cut_after=900, stall=stall)  # the role chunk, a piece of text, then
    with requests.post(worker.url + "/v1/chat/completions", stream=True, timeout=60,
                       json={"model": "guard", "messages": HI, "stream": True}) as response:
        assert response.status_code == 200
        body = response.content.decode()
    events = [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]
    assert events[0]["object"] == "chat.completion.chunk"  # the answer had begun
    assert events[-1]["error"]["code"] == code and said in events[-1]["error"]["message"]
    assert "[DONE]" not in body
    assert said in worker.log()
    # Asked without a stream, the same fault is a JSON error: nothing had gone to the client yet.
    openai_error(chat(worker), 504 if stall else 502, code)


def test_the_engines_own_refusal_keeps_its_status_and_message(worker: WorkerProcess,
                                                               faulty_engine: FaultyEngine) -> None:
    refusal = {"error": {"code": 400, "message": "the request exceeds the available context size, try increasing it",
                         "type": "exceed_context_size_error", "n_prompt_tokens": 9000, "n_ctx": 8192}}
    faulty_engine.fail("/v1/chat/completions", status=400, body=refusal)
    message = openai_error(chat(worker, "smollm2"), 400, None)  # type: ignore[arg-type]
    assert message == "llama.cpp: the request exceeds the available context size, try increasing it"
    assert "refused /v1/chat/completions with 400" in worker.log()


def test_an_engine_that_is_not_there(place: Any) -> None:
    with run_worker(place / "roles", place, workers=1,
                    env=engine_env(f"http://127.0.0.1:{free_port()}", place)) as down:
        message = openai_error(chat(down), 502, "upstream_unreachable")
        assert "cannot reach llama.cpp at http://127.0.0.1:" in message and "ROLE_INJECTOR_ENGINE_URL" in message
        assert logged(down)[-1]["status"] == 502
