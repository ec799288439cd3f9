"""Class 2: connections that hold the service. One worker process must keep answering `/healthz` while
a thousand connections are open (idle, slow headers, slow bodies, long model streams, clients that do
not read), must close what makes no progress (read and write timeouts), and must drop its connection
to Ollama as soon as a streaming client leaves, even while Ollama is silent.

These tests assert behaviour, never a duration: the figures are in bench/connections_bench.py.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.ollama_standin import OllamaStandin
from tests.security.conftest import address, open_socket, read_until_closed
from tests.servers import WorkerProcess

HELD = 1000


def wait_for(condition: Callable[[], bool], limit: float) -> bool:
    """Poll until `condition` holds; False when `limit` seconds pass first (a bound, not a measure)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def chat_request(model: str, stream: bool = True) -> bytes:
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return (b"POST /api/chat HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body)


@pytest.fixture(autouse=True, scope="module")
def enough_file_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 4 * HELD:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * HELD, hard), hard))


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_healthz_answers_while_a_thousand_connections_are_held(roomy: WorkerProcess, standin: OllamaStandin,
                                                               sockets: list[socket.socket]) -> None:
    standin.set_fault("/api/chat", chunk_delay=2.0, chunks=4)  # each stream lasts about 8 s
    kinds: dict[str, list[socket.socket]] = {"idle": [], "slow headers": [], "slow body": [], "stream": []}
    for i in range(HELD):
        sock = open_socket(roomy)
        sockets.append(sock)
        kind = list(kinds)[i % 4]
        kinds[kind].append(sock)
        if kind == "slow headers":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: wor")
        elif kind == "slow body":
            sock.sendall(b"POST /v1/count HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 16\r\n\r\n{\"text\":")
        elif kind == "stream":
            sock.sendall(chat_request("guarded" if i % 8 == 3 else "qwen3:8b"))
    assert wait_for(lambda: len(standin.requests_to("/api/chat")) == HELD // 4, 60)

    for _ in range(20):  # new clients are served at once, while all of the above are held
        assert requests.get(roomy.url + "/healthz", timeout=30).json()["status"] == "ok"

    # Every held connection was still open, and each is served when it goes on.
    for sock in kinds["slow headers"]:
        sock.sendall(b"ker\r\nConnection: close\r\n\r\n")
    for sock in kinds["slow body"]:
        sock.sendall(b" \"four\"}")
    for sock in kinds["idle"]:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
    for kind in ("slow headers", "slow body", "idle"):
        for sock in kinds[kind]:
            head = sock.recv(12)
            assert head == b"HTTP/1.1 200", (kind, head)
    for sock in kinds["stream"]:
        sock.settimeout(60)
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):
            piece = sock.recv(65536)
            assert piece, "a stream ended early"
            answer += piece
        assert answer.startswith(b"HTTP/1.1 200") and b'"done": true' in answer


def test_idle_and_slow_header_connections_are_closed_after_the_read_timeout(guarded: WorkerProcess) -> None:
    idle = open_socket(guarded)
    assert read_until_closed(idle) == b""  # closed by the server (1 s), nothing sent
    dribbling = open_socket(guarded)
    header = b"GET /healthz HTTP/1.1\r\nHost: worker\r\n" + b"X-Slow: " + b"a" * 200
    closed_early = False
    for byte in header:  # one byte every 0.1 s: the headers would take 24 s to arrive
        try:
            dribbling.sendall(bytes([byte]))
        except OSError:
            closed_early = True
            break
        dribbling.settimeout(0.1)
        try:
            if dribbling.recv(1) == b"":
                closed_early = True
                break
        except TimeoutError:
            pass
    assert closed_early  # the deadline covers the whole headers, not each byte
    assert requests.get(guarded.url + "/healthz", timeout=10).status_code == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(("path", "shape"), [("/v1/count", "rest"), ("/api/chat", "ollama")])
def test_a_stalled_body_is_408_and_the_connection_closed(guarded: WorkerProcess, standin: OllamaStandin,
                                                         path: str, shape: str, framing: str) -> None:
    sock = open_socket(guarded)
    head = f"POST {path} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
    if framing == "length":
        sock.sendall(f"{head}Content-Length: 1000\r\n\r\n{{\"text\": ".encode())
    else:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n9\r\n{{\"text\": \r\n".encode())
    answer = read_until_closed(sock)  # the server answers, then closes
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    error = json.loads(body)
    assert error["error"]["code"] == "request_timeout" if shape == "rest" else "read timeout" in error["error"]
    assert standin.requests == []


def test_a_stalled_blob_upload_is_408(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    sock = open_socket(guarded)
    sock.sendall(b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: worker\r\n"
                 b"Content-Length: 100000\r\n\r\n" + b"x" * 70_000)
    head = read_until_closed(sock).split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 408"), head
    assert requests.get(guarded.url + "/healthz", timeout=10).status_code == 200


def test_clients_that_never_read_a_large_answer_are_dropped(guarded: WorkerProcess, standin: OllamaStandin,
                                                            sockets: list[socket.socket]) -> None:
    standin.set_fault("/api/ps", status=200, body={"models": []}, length=64 * 1024 * 1024)
    for _ in range(40):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(address(guarded))
        sock.sendall(b"GET /api/ps HTTP/1.1\r\nHost: worker\r\n\r\n")
        sockets.append(sock)
    assert requests.get(guarded.url + "/healthz", timeout=10).status_code == 200
    # Each stuck answer ends at the write timeout: the connection to Ollama is closed too.
    assert wait_for(lambda: standin.interrupted == 40, 60), standin.interrupted
    for sock in sockets:
        sock.settimeout(30)
        assert len(read_until_closed(sock)) < 64 * 1024 * 1024  # the client's connection was closed


@pytest.mark.parametrize("silence", ["before the answer", "between pieces"])
def test_a_streaming_client_that_leaves_frees_the_upstream_at_once(roomy: WorkerProcess, standin: OllamaStandin,
                                                                   silence: str) -> None:
    # Ollama would stay silent for 120 s; the client leaves long before.
    if silence == "before the answer":
        standin.set_fault("/api/chat", delay=120)
    else:
        standin.set_fault("/api/chat", chunk_delay=120, chunks=2)
    clients = []
    for i in range(30):
        sock = open_socket(roomy)
        sock.sendall(chat_request("guarded" if i % 2 else "qwen3:8b"))
        clients.append(sock)
    assert wait_for(lambda: len(standin.requests_to("/api/chat")) == 30, 60)
    if silence == "between pieces":
        for sock in clients:
            assert sock.recv(12) == b"HTTP/1.1 200"  # the first piece came
    for sock in clients:
        sock.close()
    assert wait_for(lambda: standin.interrupted == 30, 60), standin.interrupted
    log = roomy.log()
    assert "Traceback" not in log and "Internal Server Error" not in log
