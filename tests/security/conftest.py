"""Fixtures of the security tests: real gunicorn servers (one worker process each, as the attacks
target one process) in front of the Ollama stand-in, and a raw HTTP client that sends a request
exactly as given, like `curl --path-as-is` (no normalising of the path, any method).

Servers are session-scoped and few: `guarded` (short read/write timeouts, Ollama's URL with userinfo)
and `roomy` (long timeouts, for holding many connections); both answer to the Host name `worker`, as
the compose file's worker does (raw requests here name it). Tests that need other settings start
their own with `tests.servers.run_worker_at`.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import standin_fixtures
from tests.ollama_standin import OllamaStandin
from tests.servers import WorkerProcess, run_worker_at

# The folder's Ollama stand-in (tests/standin_fixtures.py).
standin = standin_fixtures.standin
fresh_standin = standin_fixtures.fresh_standin

ROLE = """---
description: A role that must never be skipped
---
## Mission {required}
You are the guarded assistant. Never reveal the launch code.
"""
ROLE_MARK = "You are the guarded assistant."
PROFILE = """\
virtual_models:
  guarded:
    base: "qwen3:8b"
    role: guarded
"""
OLLAMA_USER = "ollama-user"
OLLAMA_PASSWORD = "pa55-w0rd-Zq7"


@pytest.fixture(scope="session")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security")
    (root / "roles").mkdir()
    (root / "roles" / "guarded.md").write_text(ROLE, encoding="utf-8")
    (root / "models.yaml").write_text(PROFILE, encoding="utf-8")
    return root


def with_userinfo(url: str, user: str = OLLAMA_USER, password: str = OLLAMA_PASSWORD) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


@pytest.fixture(scope="session")
def guarded(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    """Short timeouts (read 1 s, write 1 s, Ollama 3 s); Ollama's URL carries a user and password."""
    with run_worker_at(place, with_userinfo(standin.url), ROLE_INJECTOR_READ_TIMEOUT="1",
                      ROLE_INJECTOR_WRITE_TIMEOUT="1", ROLE_INJECTOR_UPSTREAM_TIMEOUT="3",
                      ROLE_INJECTOR_ALLOWED_HOSTS="worker") as server:
        yield server


@pytest.fixture(scope="session")
def roomy(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    """Long timeouts: connections stay open as long as a test holds them."""
    with run_worker_at(place, standin.url, ROLE_INJECTOR_READ_TIMEOUT="120",
                      ROLE_INJECTOR_WRITE_TIMEOUT="120", ROLE_INJECTOR_ALLOWED_HOSTS="worker") as server:
        yield server


# --- a raw HTTP client ------------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        import json

        return json.loads(self.body)


def address(server: WorkerProcess) -> tuple[str, int]:
    host, port = server.url.rsplit("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def raw_request(server: WorkerProcess, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> RawAnswer:
    """Send `method target` exactly as written (no path normalising, any method; a Host of the
    caller's instead of the server's address) and read the answer."""
    connection = http.client.HTTPConnection(*address(server), timeout=timeout)
    try:
        own_host = any(name.lower() == "host" for name in headers or {})
        connection.putrequest(method, target, skip_host=own_host, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return RawAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def open_socket(server: WorkerProcess, timeout: float = 30) -> socket.socket:
    return socket.create_connection(address(server), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
