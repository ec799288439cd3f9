"""The engines' one transport (`engines.transport`) against an engine that drops its kept-alive
connections without saying so, as llama-server does after every streamed answer: a request that
meets such a connection is sent again once, on a new one; a body that cannot be sent again is not."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.errors import UpstreamUnreachable

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@contextmanager
def one_answer_per_connection(linger: float) -> Iterator[tuple[str, list[int]]]:
    """A server that answers one request per connection (claiming keep-alive, as HTTP/1.1 does by
    default), then holds the connection `linger` seconds unread and closes it. Yields its URL and the
    number of connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = [0]

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted[0] += 1
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += connection.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(rest) < length:
                    rest += connection.recv(65536)
                connection.sendall(ANSWER)
                time.sleep(linger)  # a request sent meanwhile on this connection is never answered

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    finally:
        listener.close()


def transport(url: str) -> Transport:
    return Transport(EngineUrl.parse(url), "llama.cpp", timeout=5, max_json_bytes=1024)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dropped_kept_alive_connection_is_tried_once_more(method: str) -> None:
    with one_answer_per_connection(linger=0.3) as (url, accepted):
        engine = transport(url)
        for _ in range(3):  # each after the first meets the connection the engine is about to drop
            assert engine.request_json(method, "/props", b'{"x":1}' if method == "POST" else None) == {}
        assert accepted[0] == 3


def test_a_streamed_body_is_not_sent_twice() -> None:
    with one_answer_per_connection(linger=0.3) as (url, _):
        engine = transport(url)
        engine.send("POST", "/api/blobs/sha256:x", b"{}").body("blob")
        with pytest.raises(UpstreamUnreachable, match=r"cannot reach llama\.cpp at"):
            engine.send("POST", "/api/blobs/sha256:x", iter([b"{", b"}"]), length=2)
