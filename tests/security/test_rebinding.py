"""Class 6: DNS rebinding, and model creation overwriting a model the worker did not make.

Without an API key, a page on `http://rebind.attacker.example:8000` whose name later resolves to the
worker's address sends `Host: rebind.attacker.example:8000` (and a matching `Origin`): it must not
read roles, reach Ollama through the proxy or create models. Only the names the worker answers to
pass: IP addresses, localhost and the local suffixes, the machine's name, ROLE_INJECTOR_ALLOWED_HOSTS
(here `worker`, as the compose file sets). With an API key any Host passes (the page has no key).
Model creation never overwrites a model that no role-injector label shares a digest with, unless
asked (`"replace": true`, `--replace`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from role_injector.settings import allowed_hosts
from tests.ollama_standin import OllamaStandin
from tests.security.conftest import open_socket, raw_request, read_until_closed
from tests.servers import CLEAN_ENV, REPO, ROLE_INJECTOR, WorkerProcess, run_worker_at

KEY = "rebinding-test-key-0123456789"
CREATE = json.dumps({"base": "qwen3:8b", "name": "qwen3:8b"}).encode()
JSON = {"Content-Type": "application/json"}

REFUSED_HOSTS = [
    "rebind.attacker.example:8000", "rebind.attacker.example", "REBIND.attacker.example.:8000",
    "localhost.attacker.example", "127.0.0.1.nip.io", "attacker.example:80", "worker.attacker.example",
    "localhost@attacker.example", "xn--localhost-attacker.example", "[::1].attacker.example", "local",
    "internal", "0x7f.0.0.1.attacker.example", "workers", "a.worker",
]
ALLOWED_HOSTS = [
    "localhost", "localhost:8000", "LOCALHOST.:8000", "127.0.0.1:8000", "127.0.0.2", "[::1]:8000", "[::1]",
    "10.0.0.5:8000", "192.168.1.20", "app.localhost:8000", "host.docker.internal:8000", "printer.local",
    "worker", "worker:8000", "WORKER:8000", socket.gethostname(),
]
ROUTES = [  # method, path, body: what a page would read or do, on every surface
    ("GET", "/v1/roles", None), ("GET", "/v1/roles/guarded", None), ("POST", "/v1/inject", b'{"role": "guarded"}'),
    ("POST", "/v1/roles/guarded/ollama-model", CREATE), ("GET", "/api/tags", None),
    ("POST", "/api/chat", b'{"model": "guarded", "messages": []}'), ("POST", "/api/pull", b'{"model": "x"}'),
    ("GET", "/v1/models", None), ("POST", "/v1/chat/completions", b'{"model": "guarded", "messages": []}'),
    ("GET", "/metrics", None), ("GET", "/studio/", None), ("GET", "/", None), ("GET", "/openapi.json", None),
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_a_rebound_name_reaches_nothing(guarded: WorkerProcess, standin: OllamaStandin, host: str) -> None:
    for method, path, body in ROUTES:
        answer = raw_request(guarded, method, path, body,
                             {"Host": host, "Origin": f"http://{host}", **(JSON if body else {})})
        assert answer.status == 403, (host, path, answer.status, answer.body[:200])
        error = answer.json()["error"]
        if path.startswith("/api/") or path == "/":  # Ollama's paths
            assert isinstance(error, str) and "ROLE_INJECTOR_ALLOWED_HOSTS" in error
        elif path.startswith("/v1/chat/") or path == "/v1/models":
            assert error["code"] == "host_not_allowed" and error["type"] == "invalid_request_error"
        else:
            assert error["code"] == "host_not_allowed" and "DNS rebinding" in error["message"]
    assert standin.requests == []


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_the_names_the_worker_answers_to(guarded: WorkerProcess, host: str) -> None:
    answer = raw_request(guarded, "GET", "/v1/roles", headers={"Host": host})
    assert answer.status == 200, (host, answer.body[:200])


def test_http_1_0_without_a_host_is_answered(guarded: WorkerProcess) -> None:
    with open_socket(guarded) as sock:
        sock.sendall(b"GET /v1/roles HTTP/1.0\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.0 200")


@pytest.fixture(scope="module")
def keyed(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    with run_worker_at(place, standin.url, ROLE_INJECTOR_API_KEY=KEY) as server:
        yield server


def test_with_an_api_key_any_host_is_answered_and_the_key_decides(keyed: WorkerProcess) -> None:
    for host in REFUSED_HOSTS[:3]:
        assert raw_request(keyed, "GET", "/v1/roles", headers={"Host": host}).status == 401
        answer = raw_request(keyed, "GET", "/v1/roles", headers={"Host": host, "Authorization": f"Bearer {KEY}"})
        assert answer.status == 200


@pytest.fixture(scope="module")
def suffixed(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    with run_worker_at(place, standin.url, ROLE_INJECTOR_ALLOWED_HOSTS="roles.example.com, .corp.example") as server:
        yield server


def test_configured_names_and_suffixes(suffixed: WorkerProcess) -> None:
    for host, status in (("roles.example.com", 200), ("ROLES.example.com:443", 200), ("a.corp.example", 200),
                         ("x.y.corp.example:8000", 200), ("corp.example", 403), ("example.com", 403),
                         ("roles.example.com.attacker.example", 403), ("worker", 403)):
        assert raw_request(suffixed, "GET", "/v1/roles", headers={"Host": host}).status == status, host


@pytest.mark.parametrize("value", ["worker:8000", "http://worker", "a b:1", "-x", "..", "*.example.com"])
def test_a_wrong_allowed_hosts_setting_stops_the_start(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        [str(ROLE_INJECTOR), "serve", "--port", "0", "--roles", str(REPO / "roles")], capture_output=True,
        text=True, timeout=120, env={**os.environ, **CLEAN_ENV, "ROLE_INJECTOR_ALLOWED_HOSTS": value,
                                     "TMPDIR": str(tmp_path)})
    assert result.returncode == 9 and "ROLE_INJECTOR_ALLOWED_HOSTS" in result.stderr, result.stderr


def test_compose_names_the_worker_as_n8n_reaches_it() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    allowed = compose["services"]["worker"]["environment"]["ROLE_INJECTOR_ALLOWED_HOSTS"]
    for extra in ("", "roles.example.com"):  # whatever .env adds, n8n's name stays
        assert "worker" in allowed_hosts(re.sub(r"\$\{[A-Z_]+:-\}", extra, allowed))
    urls = [value for service in compose["services"].values()
            for value in (service.get("environment") or {}).values() if "//worker:" in str(value)]
    assert urls, "n8n reaches the worker as worker:8000"


# --- model creation never overwrites what the worker did not make -------------------------------------


def create(server: WorkerProcess, body: dict[str, object]) -> tuple[int, list[dict[str, object]]]:
    answer = raw_request(server, "POST", "/v1/roles/guarded/ollama-model", json.dumps(body).encode(), JSON)
    lines = [json.loads(line) for line in answer.body.splitlines() if line.strip()]
    return answer.status, lines


@pytest.mark.parametrize("name", ["qwen3:8b", "QWEN3:8B", "registry.ollama.ai/library/qwen3:8b", "library/qwen3:8b",
                                  "qwen3:4b", "mine", "mine:latest"])
def test_a_model_the_worker_did_not_make_is_not_overwritten(guarded: WorkerProcess, standin: OllamaStandin,
                                                            name: str) -> None:
    standin.models["mine:latest"] = 4096  # pulled or made by the user (the stand-in's `clear` forgets it)
    status, lines = create(guarded, {"base": "qwen3:8b", "name": name})
    assert status == 409, lines
    (error,) = lines
    assert error["error"]["code"] == "model_exists" and '"replace": true' in error["error"]["message"]
    assert standin.requests_to("/api/create") == [] and standin.requests_to("/api/copy") == []
    status, lines = create(guarded, {"base": "qwen3:8b", "name": name, "replace": True})
    assert status == 200 and lines[-1]["status"] == "success", lines
    assert len(standin.requests_to("/api/create")) == 1


def test_a_model_the_worker_made_is_made_again(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    for _ in range(2):
        status, lines = create(guarded, {"base": "qwen3:8b", "name": "guarded-model"})
        assert status == 200 and lines[-1]["status"] == "success", lines
    # Once its label is gone, nothing says the worker made it: a model like any other.
    label = lines[-1]["label"]
    standin.remove(str(label))
    status, lines = create(guarded, {"base": "qwen3:8b", "name": "guarded-model"})
    assert status == 409 and lines[0]["error"]["code"] == "model_exists"


def test_replace_must_be_a_boolean(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    status, lines = create(guarded, {"base": "qwen3:8b", "name": "qwen3:8b", "replace": "yes"})
    assert status == 400 and lines[0]["error"]["details"]["field"] == "replace"
    assert standin.requests == []


def test_the_cli_refuses_too_unless_told_to_replace(standin: OllamaStandin, place: Path) -> None:
    command = [str(ROLE_INJECTOR), "ollama", "create", "guarded", "--roles", str(place / "roles"),
               "--base", "qwen3:8b", "--name", "qwen3:8b", "--ollama-url", standin.url]
    env = {**os.environ, **CLEAN_ENV}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 15 and "model_exists" in refused.stderr, refused.stderr
    assert standin.requests_to("/api/create") == []
    replaced = subprocess.run([*command, "--replace"], capture_output=True, text=True, timeout=120, env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["model"] == "qwen3:8b"
