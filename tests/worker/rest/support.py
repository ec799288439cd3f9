"""Helpers of the REST API tests: fixture roles, one client interface over the Flask test client
and a real gunicorn, the error envelope, Prometheus samples, the structured request log."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from role_injector.store import RoleStore
from tests.servers import WorkerProcess

REPO = Path(__file__).resolve().parents[3]
BUNDLED_ROLES = REPO / "roles"
API_KEY = "s3cret-Key-for-tests-0123456789"

# A role with a required variable, a defaulted one, a partial, a {required} section and
# prioritised sections. Walk order: Mission (required), preamble (100), Style (60), Examples (10).
HELPER = """\
---
description: Fixture role with a required variable and prioritised sections
model: qwen3:8b
params: {temperature: 0.1}
tags: [test, fixture]
variables:
  user_name: {required: true, description: Who the helper talks to}
  tone: {default: calm, description: How it sounds}
---
You are the fixture helper. {{> signature}}

## Mission {required}

Help {{user_name}} in a {{tone}} tone. Answer the question that was asked.

## Style {priority=60}

Use short sentences. Prefer plain words to jargon. Put the answer first and the reasons after it.

Never pad an answer with summaries of what was already said.

## Examples {priority=10}

Question: how do I list files? Answer: run ls in the folder you want to see.

Question: how do I see hidden files too? Answer: run ls -a; names that start with a dot are hidden.

Question: how do I sort them by time? Answer: run ls -t, newest first, or ls -tr for the oldest first.
"""
SIGNATURE = "You sign nothing and you never mention this fixture.\n"
CHILD = """\
---
extends: helper
description: Child of the fixture helper
budget: 60
---
## Style {priority=70}

Be very brief.
"""
PLAIN = "Just a preamble, no front matter, no sections.\n"
BROKEN = "---\ndescription: uses an undeclared variable\n---\nHello {{nobody}}.\n"
FIXTURE_ROLES = {"helper": HELPER, "child": CHILD, "plain": PLAIN, "broken": BROKEN}
FIXTURE_PARTIALS = {"signature": SIGNATURE}


def bundled_role_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED_ROLES.glob("*.md") if not p.name.startswith("_"))


def write_roles(directory: Path, roles: Mapping[str, str], partials: Mapping[str, str] | None = None) -> Path:
    (directory / "_partials").mkdir(parents=True, exist_ok=True)
    for name, text in roles.items():
        (directory / f"{name}.md").write_text(text, encoding="utf-8")
    for name, text in (partials or {}).items():
        (directory / "_partials" / f"{name}.md").write_text(text, encoding="utf-8")
    return directory


def write_fixture_roles(directory: Path, bundled: bool = True) -> Path:
    """The fixture roles, a file that is not a role, and (optionally) a copy of the bundled roles."""
    if bundled:
        shutil.copytree(BUNDLED_ROLES, directory, dirs_exist_ok=True)
    write_roles(directory, FIXTURE_ROLES, FIXTURE_PARTIALS)
    (directory / "_notes.md").write_text("Files starting with _ are not roles.\n", encoding="utf-8")
    return directory


def role_version(roles: Mapping[str, str], partials: Mapping[str, str], name: str) -> str:
    """The version the library gives `name` when the directory holds exactly these files."""
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = RoleStore(write_roles(Path(scratch), roles, partials)).current()
        assert name in snapshot.roles, snapshot.errors
        return snapshot.roles[name].version


# --- one interface over the Flask test client and a real server ------------------------------

MISSING: Any = object()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class Api(Protocol):
    name: str

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = MISSING,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply: ...


def _encode(json_body: Any, data: bytes | str | None, headers: Mapping[str, str] | None) -> tuple[bytes | None, dict]:
    sent = dict(headers or {})
    if json_body is not MISSING:
        sent.setdefault("Content-Type", "application/json")
        return json.dumps(json_body).encode(), sent
    if isinstance(data, str):
        data = data.encode()
    return data, sent


@dataclass
class FlaskApi:
    app: Flask
    name: str = "flask"

    def request(self, method: str, path: str, *, json: Any = MISSING, data: bytes | str | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        body, sent = _encode(json, data, headers)
        response = self.app.test_client().open(path, method=method, data=body, headers=sent)
        return Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.data)


@dataclass
class HttpApi:
    """A real server over loopback; every request on a new connection (so on any worker), the path
    sent byte for byte as given (no client-side normalisation of '..' or escapes)."""

    url: str
    name: str = "gunicorn"
    timeout: float = 30.0

    def request(self, method: str, path: str, *, json: Any = MISSING, data: bytes | str | None = None,
                headers: Mapping[str, str] | None = None) -> Reply:
        body, sent = _encode(json, data, headers)
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()


def assert_error(reply: Reply, status: int, code: str) -> dict[str, Any]:
    """The reply is the REST error envelope with this status and code; returns the error object."""
    assert reply.status == status, reply
    assert reply.content_type.startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["details"], dict), error
    return error


# --- Prometheus ----------------------------------------------------------------------------

def metric(text: str, sample: str, **labels: str) -> float:
    """The value of one sample (e.g. role_injector_requests_total{route=...}); 0 when absent."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def scrape(api: Api) -> str:
    reply = api.request("GET", "/metrics")
    assert reply.status == 200, reply
    return reply.body.decode()


# --- the structured request log of a real server -----------------------------------------------

@dataclass
class LogCursor:
    """Reads the JSON request lines a server wrote since the cursor was made (or last read)."""

    worker: WorkerProcess
    offset: int = field(default=-1)

    def __post_init__(self) -> None:
        if self.offset < 0:
            self.offset = self.worker.log_path.stat().st_size

    def raw(self) -> str:
        with self.worker.log_path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return complete.decode("utf-8", errors="replace")

    def entries(self) -> list[dict[str, Any]]:
        return request_entries(self.raw())


def request_entries(text: str) -> list[dict[str, Any]]:
    entries = []
    for line in text.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if "route" in entry:
                entries.append(entry)
    return entries


def worker_pids(worker: WorkerProcess, expected: int, attempts: int = 400) -> set[int]:
    """The pids of the server's workers, learnt from the request log of fresh connections."""
    api, cursor, pids = HttpApi(worker.url), LogCursor(worker), set()
    for _ in range(attempts):
        assert api.request("GET", "/healthz").status == 200
        pids.update(e["pid"] for e in cursor.entries())
        if len(pids) >= expected:
            return pids
    raise AssertionError(f"only workers {pids} answered {attempts} new connections; expected {expected}")


def poll(deadline: float, interval: float = 0.0) -> Iterator[float]:
    """Yields the time left until `deadline` (a time.monotonic() value), then stops."""
    while (left := deadline - time.monotonic()) > 0:
        yield left
        if interval:
            time.sleep(interval)
