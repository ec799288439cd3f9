"""Classes 7 and 8 (web part): Ollama's answers that are huge, stall, break off or are not its API,
bodies that are not text, and errors without a status.

Upstream bodies are relayed in pieces, never held whole; a fault before the first byte is a JSON
502/504 (never gunicorn's HTML 500), and the request log says that status; a JSON answer the proxy
reads is bounded; a lone surrogate anywhere in a body is a 400; every error code of the one table has
its status on each surface.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from role_injector.errors import KINDS, RoleInjectorError
from role_injector.settings import Settings
from role_injector.web import create_app
from tests.ollama_standin import OllamaStandin
from tests.security.conftest import raw_request
from tests.servers import WorkerProcess, proc_status_kib

MiB = 1024 * 1024
CHAT = {"model": "guarded", "stream": False, "messages": [{"role": "user", "content": "hi"}]}


def logged_statuses(server: WorkerProcess, route: str) -> list[int]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line["status"] for line in lines if line.get("route") == route]


# --- bodies streamed, never held ------------------------------------------------------------------


def test_a_huge_fixed_length_answer_is_relayed_without_being_held(guarded: WorkerProcess,
                                                                   standin: OllamaStandin) -> None:
    (pid,) = guarded.worker_pids()
    requests.get(guarded.url + "/api/ps", timeout=10)  # warm: the pool, the first request's allocations
    before = proc_status_kib(pid, "VmHWM")
    size = 400 * MiB
    standin.set_fault("/api/ps", status=200, body={"models": []}, length=size)
    received = 0
    with requests.get(guarded.url + "/api/ps", stream=True, timeout=60) as response:
        assert response.headers["Content-Length"] == str(size)
        for piece in response.iter_content(MiB):
            received += len(piece)
    assert received == size
    assert proc_status_kib(pid, "VmHWM") - before < 64 * 1024  # pieces, not 400 MiB


@pytest.mark.parametrize(("path", "body"), [("/api/tags", None), ("/api/show", {"model": "guarded"})])
def test_json_the_proxy_reads_is_bounded(guarded: WorkerProcess, standin: OllamaStandin, path: str,
                                         body: Any) -> None:
    (pid,) = guarded.worker_pids()
    before = proc_status_kib(pid, "VmHWM")
    standin.set_fault(path, status=200, body={"models": []}, length=400 * MiB)
    answer = requests.request("POST" if body else "GET", guarded.url + path, json=body, timeout=60)
    assert answer.status_code == 502
    assert "ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES" in answer.json()["error"]
    assert proc_status_kib(pid, "VmHWM") - before < 64 * 1024
    assert logged_statuses(guarded, path)[-1] == 502


# --- faults are JSON 502/504 ----------------------------------------------------------------------


FAULTS = [  # what the stand-in does, the status the client must get
    (dict(status=200, body="garbage"), 502),
    (dict(status=200, body="null"), 502),
    (dict(status=200, body=[]), 502),
    (dict(status=200, body={"models": 5}), 502),
    (dict(status=200, body={"models": []}, length=100_000, cut_after=1000, stall=0), 502),  # cut short
    (dict(status=200, body={"models": []}, length=100_000, cut_after=1000, stall=6), 504),  # stalls
    (dict(status=200, body={"models": []}, length=100_000, cut_after=0, stall=6), 504),  # headers only
    (dict(delay=6), 504),
]


@pytest.mark.parametrize(("fault", "status"), FAULTS)
def test_tags_faults_are_json(guarded: WorkerProcess, standin: OllamaStandin, fault: dict[str, Any],
                              status: int) -> None:
    standin.set_fault("/api/tags", **fault)
    answer = requests.get(guarded.url + "/api/tags", timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json" and set(answer.json()) == {"error"}
    assert logged_statuses(guarded, "/api/tags")[-1] == status


@pytest.mark.parametrize(("fault", "status"), [f for f in FAULTS if "models" not in json.dumps(f[0].get("body"))])
def test_show_of_a_virtual_model_faults_are_json(guarded: WorkerProcess, standin: OllamaStandin,
                                                 fault: dict[str, Any], status: int) -> None:
    standin.set_fault("/api/show", **fault)
    answer = requests.post(guarded.url + "/api/show", json={"model": "guarded"}, timeout=30)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"}
    assert logged_statuses(guarded, "/api/show")[-1] == status


@pytest.mark.parametrize("model", ["guarded", "qwen3:8b"])
def test_a_passed_through_answer_that_stalls_or_breaks(guarded: WorkerProcess, standin: OllamaStandin,
                                                       model: str) -> None:
    # Before its first byte: a JSON 504 / 502 in Ollama's shape.
    for fault, status in (({"cut_after": 0, "stall": 6}, 504), ({"cut_after": 0, "stall": 0}, 502)):
        standin.set_fault("/api/chat", status=200, body={"done": True}, length=50_000, **fault)
        answer = requests.post(guarded.url + "/api/chat", json={**CHAT, "model": model}, timeout=30)
        assert answer.status_code == status and set(answer.json()) == {"error"}, answer.text
        assert logged_statuses(guarded, "/api/chat")[-1] == status
    # After some of it: an answer that is not a stream is read whole before the status goes out, so
    # it is still a JSON 504 / 502, never a 200 with a cut body.
    for fault, status in (({"stall": 6}, 504), ({"stall": 0}, 502)):
        standin.set_fault("/api/chat", status=200, body={"done": True}, length=50_000, cut_after=20_000, **fault)
        answer = requests.post(guarded.url + "/api/chat", json={**CHAT, "model": model}, timeout=30)
        assert answer.status_code == status and set(answer.json()) == {"error"}, answer.text
        assert logged_statuses(guarded, "/api/chat")[-1] == status
    # One larger than ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES is relayed as it comes: after some of it went
    # out, the connection is cut, so the client cannot take it for a whole answer.
    for stall in (6, 0):
        standin.set_fault("/api/chat", status=200, body={"done": True}, length=17 * MiB, cut_after=16 * MiB + 1,
                          stall=stall)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            requests.post(guarded.url + "/api/chat", json={**CHAT, "model": model}, timeout=30).content  # noqa: B018 - read the whole answer
    assert "Internal Server Error" not in guarded.log()
    assert "broke off" in guarded.log() and "sent nothing for 3 s" in guarded.log()


# --- bodies that are not text ---------------------------------------------------------------------


SURROGATE_BODIES = [
    b'{"model": "%s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "\\uD83D\\uD83D"}]}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "options": {"stop": ["\\udc80"]}}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "options": {"\\ud800": 1}}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "options": {"x": {"y": ["\\ud801"]}}}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi", "images": ["\\ud800"]}]}',
    b'{"model": "%s", "messages": [], "tools": [{"function": {"name": "\\udbff"}}]}',
    b'{"model": "%s", "messages": [{"role": "\\ud800", "content": "hi"}]}',
    b'{"model": "%s\\ud800", "messages": []}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "a\xed\xa0\x80b"}]}',  # encoded surrogate
    b'{"model": "%s", "messages": [{"role": "user", "content": "\xff"}]}',  # not UTF-8 at all
]


@pytest.mark.parametrize("template", SURROGATE_BODIES)
@pytest.mark.parametrize("model", [b"guarded", b"qwen3:8b"])
def test_lone_surrogates_anywhere_are_400(guarded: WorkerProcess, standin: OllamaStandin, template: bytes,
                                          model: bytes) -> None:
    body = template.replace(b"%s", model)
    for path in ("/api/chat", "/api/generate", "/api/show"):
        answer = raw_request(guarded, "POST", path, body, {"Content-Type": "application/json"})
        assert answer.status == 400, (path, answer.body)
        assert set(answer.json()) == {"error"}
    assert standin.requests == []


# --- every code of the one table has its status on each surface -----------------------------------


@pytest.fixture(scope="module")
def raising_app(place: Path) -> Flask:
    """The real app, with one REST and one proxy endpoint replaced by a view that raises the error
    named in the query (the app's own error handlers answer it)."""
    app = create_app(Settings.from_env({}, roles_dir=str(place / "roles")))

    def raise_it() -> Any:
        from flask import request

        error = RoleInjectorError("raised for the test")
        error.code = request.args["code"]
        raise error

    app.view_functions["rest.healthz"] = raise_it
    app.view_functions["ollama.tags"] = raise_it
    return app


@pytest.mark.parametrize("code", list(KINDS))
def test_every_code_has_its_status_on_every_surface(raising_app: Flask, code: str) -> None:
    client = raising_app.test_client()
    rest = client.get("/healthz", query_string={"code": code})
    assert rest.status_code == KINDS[code].rest_status
    assert rest.json["error"]["code"] == code
    proxied = client.get("/api/tags", query_string={"code": code})
    assert proxied.status_code == KINDS[code].ollama_status
    assert proxied.json == {"error": "raised for the test"}
