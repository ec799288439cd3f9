"""Class 9 (web part): what the server exposes and leaves behind.

Metric labels stay bounded whatever methods and paths clients send; /metrics, which names the roles,
needs the API key or the metrics key once either is set; serving beyond loopback without an API key
is announced loudly; an API key that clients cannot send is refused at start; compose publishes
ports on 127.0.0.1 only; a start and stop leaves no metrics folder behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from tests.ollama_standin import OllamaStandin
from tests.security.conftest import raw_request
from tests.servers import (
    CLEAN_ENV,
    REPO,
    ROLE_INJECTOR,
    WorkerProcess,
    free_port,
    run_worker_at,
    stop_process,
    wait_for_http,
)


def series(metrics: str, name: str) -> list[str]:
    return re.findall(rf"^{name}\{{([^}}]*)\}}", metrics, re.MULTILINE)


def test_metric_labels_stay_bounded(guarded: WorkerProcess) -> None:
    before = set(series(requests.get(guarded.url + "/metrics", timeout=10).text, "role_injector_requests_total"))
    for i in range(60):
        raw_request(guarded, f"M{i}X", "/healthz")
        raw_request(guarded, f"PROP{i}", f"/api/x{i}")
        raw_request(guarded, "GET", f"/nowhere-{i}/{i}")
        raw_request(guarded, "GET", f"/v1/roles/no-such-role-{i}")
    labels = series(requests.get(guarded.url + "/metrics", timeout=10).text, "role_injector_requests_total")
    methods = {re.search(r'method="([^"]*)"', label).group(1) for label in labels}  # type: ignore[union-attr]
    routes = {re.search(r'route="([^"]*)"', label).group(1) for label in labels}  # type: ignore[union-attr]
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert "other" in methods
    assert not any("nowhere" in route or "no-such-role" in route or "x1" in route for route in routes)
    # 240 odd requests add a handful of series (route × method × status), not one per request.
    assert len(set(labels) - before) <= 8, sorted(set(labels) - before)


def start_serving(host: str, tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ROLE_INJECTOR), "serve", "--host", host, "--port", str(port), "--roles", str(REPO / "roles"),
             "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CLEAN_ENV, "TMPDIR": str(tmp_path), **env},
        )
    return process, f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}", log


@pytest.mark.parametrize(("host", "key", "warned"), [
    ("0.0.0.0", "", True),
    ("0.0.0.0", "a-long-secret-key", False),
    ("127.0.0.1", "", False),
    ("127.0.0.2", "", False),
])
def test_serving_beyond_loopback_without_a_key_is_announced(tmp_path: Path, host: str, key: str,
                                                            warned: bool) -> None:
    process, url, log = start_serving(host, tmp_path, ROLE_INJECTOR_API_KEY=key)
    try:
        wait_for_http(url + "/healthz", process=process)
    finally:
        stop_process(process, timeout=15)
    text = log.read_text()
    assert ("WARNING: serving on 0.0.0.0 without an API key" in text) is warned, text
    if warned:
        assert "ROLE_INJECTOR_API_KEY" in text


@pytest.mark.parametrize("key", ["ключ-доступа", "key with spaces", " padded", "naïve🔑"])
def test_an_api_key_clients_cannot_send_is_refused_at_start(tmp_path: Path, key: str) -> None:
    process, _, log = start_serving("127.0.0.1", tmp_path, ROLE_INJECTOR_API_KEY=key)
    assert process.wait(timeout=60) == 9  # invalid_config
    text = log.read_text()
    assert "ROLE_INJECTOR_API_KEY" in text and "visible ASCII" in text
    assert key not in text
    assert list(tmp_path.glob("role-injector-metrics-*")) == []


def test_a_printable_ascii_key_works_both_ways(tmp_path: Path) -> None:
    key = "K3y!with~punctuation#and$more"
    process, url, _ = start_serving("127.0.0.1", tmp_path, ROLE_INJECTOR_API_KEY=key)
    try:
        wait_for_http(url + "/healthz", process=process)
        assert requests.get(url + "/v1/roles", timeout=10).status_code == 401
        assert requests.get(url + "/v1/roles", headers={"Authorization": f"Bearer {key}"}, timeout=10).ok
        assert requests.get(url + "/v1/roles", headers={"X-API-Key": key}, timeout=10).ok
        assert requests.get(url + "/v1/roles", headers={"X-API-Key": key[:-1]}, timeout=10).status_code == 401
        # The same bytes sent as UTF-8 of another text never match.
        wrong = raw_request(WorkerProcess(url, process, tmp_path), "GET", "/v1/roles",
                            headers={"X-API-Key": "ключ".encode().decode("latin-1")})
        assert wrong.status == 401
    finally:
        stop_process(process, timeout=15)


def test_a_start_and_stop_leaves_no_metrics_folder(tmp_path: Path) -> None:
    process, url, _ = start_serving("127.0.0.1", tmp_path)
    wait_for_http(url + "/healthz", process=process)
    requests.get(url + "/metrics", timeout=10).raise_for_status()
    assert len(list(tmp_path.glob("role-injector-metrics-*"))) == 1  # in use while serving
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert list(tmp_path.glob("role-injector-metrics-*")) == []


def test_compose_publishes_on_loopback_unless_told_otherwise() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    published = [(name, port) for name, service in compose["services"].items() for port in service.get("ports", [])]
    assert {name for name, _ in published} >= {"worker", "ollama", "n8n"}
    for name, port in published:
        default = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(port))
        assert default.startswith("127.0.0.1:"), (name, port)
    env_example = (REPO / ".env.example").read_text()
    variable = re.search(r"\$\{([A-Z_]+):-127\.0\.0\.1\}", str(published[0][1]))
    assert variable and f"{variable.group(1)}=" in env_example
    assert "/api/*" in env_example and "/v1/*" in env_example


# --- /metrics names the roles: it needs a key once one is set -----------------------------------------


METRICS_KEY = "scrape-only-key-0123456789"


@pytest.mark.parametrize(("env", "open_api"), [
    ({"ROLE_INJECTOR_API_KEY": "api-key-0123456789", "ROLE_INJECTOR_METRICS_KEY": METRICS_KEY}, False),
    ({"ROLE_INJECTOR_API_KEY": "api-key-0123456789"}, False),
    ({"ROLE_INJECTOR_METRICS_KEY": METRICS_KEY}, True),
])
def test_metrics_need_a_key_once_one_is_set(place: Path, standin: OllamaStandin, env: dict[str, str],
                                            open_api: bool) -> None:
    with run_worker_at(place, standin.url, **env) as server:
        api_key = env.get("ROLE_INJECTOR_API_KEY")
        too_small = requests.post(server.url + "/v1/inject", json={"role": "guarded", "budget": 1}, timeout=10,
                                  headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        assert too_small.json()["error"]["code"] == "budget_too_small"  # counted by role
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            refused = requests.get(server.url + "/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            assert "guarded" not in refused.text
        for key in (METRICS_KEY if "ROLE_INJECTOR_METRICS_KEY" in env else None, api_key):
            if key:
                for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
                    scraped = requests.get(server.url + "/metrics", headers=headers, timeout=10)
                    assert scraped.status_code == 200 and 'role="guarded"' in scraped.text
        # The metrics key opens /metrics only.
        listed = requests.get(server.url + "/v1/roles", headers={"Authorization": f"Bearer {METRICS_KEY}"}, timeout=10)
        assert listed.status_code == (200 if open_api else 401)
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200


def test_a_metrics_key_clients_cannot_send_is_refused_at_start(tmp_path: Path) -> None:
    process, _, log = start_serving("127.0.0.1", tmp_path, ROLE_INJECTOR_METRICS_KEY="clé métriques")
    assert process.wait(timeout=60) == 9
    assert "ROLE_INJECTOR_METRICS_KEY" in log.read_text() and "visible ASCII" in log.read_text()
