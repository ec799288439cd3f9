"""Requests gunicorn itself refuses, before or while the app reads them (issue 22, item 9): a bad header
name, a duplicate Content-Length, a request line over 4 KiB, a malformed chunked body. Each is
answered in JSON, in the shape of the surface its path names (REST's envelope by default, Ollama's
under /api/, OpenAI's on its paths), with gunicorn's status, and the connection is closed: never an
HTML page, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.conftest import open_socket, read_until_closed
from tests.servers import WorkerProcess

REST, OLLAMA, OPENAI = "/v1/count", "/api/chat", "/v1/chat/completions"


def head(path: str, *lines: str, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: worker\r\n" + "".join(line + "\r\n" for line in lines)
            + "\r\n").encode("latin-1")


def chunked(path: str, body: bytes) -> bytes:
    return head(path, "Content-Type: application/json", "Transfer-Encoding: chunked") + body


# name -> (the request for a path, gunicorn's status)
REFUSED: dict[str, tuple[Any, int]] = {
    "header name with a space": (lambda p: head(p, "Bad Name: 1"), 400),
    "header name with a bracket": (lambda p: head(p, "Bad(Name: 1"), 400),
    "duplicate Content-Length": (lambda p: head(p, "Content-Length: 1", "Content-Length: 2") + b"ab", 400),
    "Content-Length and Transfer-Encoding": (lambda p: head(p, "Content-Length: 3", "Transfer-Encoding: chunked")
                                             + b"0\r\n\r\n", 400),
    "negative Content-Length": (lambda p: head(p, "Content-Length: -1"), 400),
    "unknown transfer coding": (lambda p: head(p, "Transfer-Encoding: gzip"), 400),
    "NUL in a header value": (lambda p: head(p, "X-Thing: a\0b"), 400),
    "obsolete line folding": (lambda p: head(p, "X-Thing: a", " b"), 400),
    "an expectation": (lambda p: head(p, "Expect: 200-ok", "Content-Length: 2") + b"{}", 417),
    "header over 8 KiB": (lambda p: head(p, "X-Thing: " + "a" * 9_000), 431),
    "too many headers": (lambda p: head(p, *(f"X-H{i}: 1" for i in range(120))), 431),
    "chunk size that is no number": (lambda p: chunked(p, b"ZZ\r\nab\r\n0\r\n\r\n"), 400),
    "chunk longer than its size": (lambda p: chunked(p, b"5\r\nabcdefgh\r\n0\r\n\r\n"), 400),
    "chunk extension with a control": (lambda p: chunked(p, b"2;a\x01b\r\n{}\r\n0\r\n\r\n"), 400),
}


def exchange(server: WorkerProcess, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send raw bytes; the one answer (the server must close the connection after it) parsed."""
    with open_socket(server) as sock:
        sock.sendall(data)
        answer = read_until_closed(sock)
    header, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = header.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    assert len(body) == int(headers["content-length"]), "one answer, then the connection is closed"
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_shape(path: str, status: int, body: Any) -> None:
    if path == OLLAMA:
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    elif path == OPENAI:
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    else:
        error = body["error"]
        assert set(error) == {"code", "message", "details"} and error["code"] == "invalid_request"
    assert "<html" not in json.dumps(body).lower()


@pytest.mark.parametrize("path", [REST, OLLAMA, OPENAI])
@pytest.mark.parametrize("case", REFUSED)
def test_a_request_gunicorn_refuses_is_answered_in_json_in_the_shape_of_its_path(
    guarded: WorkerProcess, case: str, path: str
) -> None:
    build, expected = REFUSED[case]
    status, headers, body = exchange(guarded, build(path))
    assert status == expected
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert_shape(path, status, body)


@pytest.mark.parametrize("line", [
    b"GET /" + b"a" * 5_000 + b" HTTP/1.1\r\nHost: worker\r\n\r\n",  # over 4 KiB: the path is never read
    b"G@T /v1/roles HTTP/1.1\r\nHost: worker\r\n\r\n",
    b"GET /v1/roles HTTP/7.1\r\nHost: worker\r\n\r\n",
    b"GET http://[::1/ HTTP/1.1\r\nHost: worker\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
])
def test_a_request_line_gunicorn_cannot_read_is_answered_in_the_rest_shape(guarded: WorkerProcess,
                                                                          line: bytes) -> None:
    status, headers, body = exchange(guarded, line)
    assert status == (414 if len(line) > 4_096 else 400)
    assert headers["content-type"] == "application/json"
    assert_shape(REST, status, body)
    assert len(body["error"]["message"]) < 300  # what it quotes of the request is bounded


def test_a_malformed_chunked_upload_of_a_model_layer_is_a_400(guarded: WorkerProcess) -> None:
    """`ollama create` uploads layers to /api/blobs/<digest>, streamed on to Ollama as they arrive."""
    digest = "sha256:" + "0" * 64
    status, _, body = exchange(guarded, chunked(f"/api/blobs/{digest}", b"4\r\nabcdefgh\r\n0\r\n\r\n"))
    assert status == 400 and "malformed" in body["error"]


@pytest.mark.parametrize("request_head", [
    head("/v1/nothing", "Transfer-Encoding: chunked"),  # answered 404 before its body is read
    head("/healthz", "Transfer-Encoding: chunked", method="GET"),
])
def test_a_malformed_body_left_unread_gets_no_second_answer(guarded: WorkerProcess, request_head: bytes) -> None:
    with open_socket(guarded) as sock:
        sock.sendall(request_head + b"5\r\nabcdefgh\r\n0\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def test_the_worker_serves_on_after_refusals(guarded: WorkerProcess) -> None:
    for build, _ in REFUSED.values():
        exchange(guarded, build(REST))
    status, _, body = exchange(guarded, head("/healthz", "Connection: close", method="GET"))
    assert status == 200 and body["status"] == "ok"
    assert "Traceback" not in guarded.log()
