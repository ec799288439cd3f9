"""Prometheus counters at /metrics (summed over gunicorn workers) and the structured request log
(one JSON line per request; prompt text only with ROLE_INJECTOR_LOG_PROMPTS=1)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import pytest

from role_injector.settings import Settings
from role_injector.web import create_app
from tests.servers import WorkerProcess
from tests.worker.rest.support import (
    API_KEY,
    Api,
    FlaskApi,
    HttpApi,
    LogCursor,
    metric,
    scrape,
)

ADA = {"user_name": "Ada"}
INJECT = {"route": "/v1/inject", "method": "POST"}


def traffic(api: Api, trimmed: int = 2) -> dict[str, int]:
    """A known mix of requests; returns how many of each kind were sent."""
    for _ in range(trimmed):
        assert api.request("POST", "/v1/inject", json={"role": "helper", "variables": ADA, "budget": 80}).status == 200
    assert api.request("POST", "/v1/inject", json={"role": "helper", "variables": ADA, "budget": 1000}).status == 200
    assert api.request("POST", "/v1/inject", json={"role": "helper", "variables": ADA, "budget": 5}).status == 422
    for _ in range(2):
        assert api.request("POST", "/v1/inject", json={"role": "helper", "variables": ADA,
                                                       "context_window": 50}).status == 422
    assert api.request("POST", "/v1/inject", json={"role": "helper"}).status == 422  # missing variable
    assert api.request("POST", "/v1/inject", json={"role": "nope"}).status == 404
    assert api.request("GET", "/v1/roles/nope").status == 404
    assert api.request("GET", "/no/such/route").status == 404
    for _ in range(3):
        assert api.request("GET", "/healthz").status == 200
    return {"ok": trimmed + 1, "trimmed": trimmed, "too_small": 1, "overflow": 2, "422": 4}


def deltas(before: str, after: str) -> dict[str, float]:
    def d(sample: str, **labels: str) -> float:
        return metric(after, sample, **labels) - metric(before, sample, **labels)

    requests = "role_injector_requests_total"
    return {
        "inject_200": d(requests, **INJECT, status="200"),
        "inject_422": d(requests, **INJECT, status="422"),
        "inject_404": d(requests, **INJECT, status="404"),
        "role_404": d(requests, route="/v1/roles/<path:name>", method="GET", status="404"),
        "unmatched_404": d(requests, route="unmatched", method="GET", status="404"),
        "healthz_200": d(requests, route="/healthz", method="GET", status="200"),
        "inject_seconds": d("role_injector_inject_seconds_count"),
        "trims": d("role_injector_trims_total", role="helper"),
        "too_small": d("role_injector_budget_errors_total", role="helper", code="budget_too_small"),
        "overflow": d("role_injector_budget_errors_total", role="helper", code="context_overflow"),
    }


def expected(sent: dict[str, int], repeat: int = 1) -> dict[str, float]:
    return {
        "inject_200": sent["ok"] * repeat, "inject_422": sent["422"] * repeat, "inject_404": repeat,
        "role_404": repeat, "unmatched_404": repeat, "healthz_200": 3 * repeat,
        "inject_seconds": sent["ok"] * repeat, "trims": sent["trimmed"] * repeat,
        "too_small": sent["too_small"] * repeat, "overflow": sent["overflow"] * repeat,
    }


def test_counters_move(api: Api) -> None:
    before = scrape(api)
    sent = traffic(api)
    assert deltas(before, scrape(api)) == expected(sent)


def test_a_scrape_of_any_gunicorn_worker_shows_all_workers(plain_server: WorkerProcess) -> None:
    api = HttpApi(plain_server.url)
    cursor = LogCursor(plain_server)
    before = scrape(api)
    rounds = 0
    sent = {}
    served_by: set[int] = set()
    # Which worker accepts a new connection is the kernel's choice: on a busy machine one may take a
    # long run of them, so send rounds until both have served some (at least 5 rounds, at most 30).
    while rounds < 5 or (len(served_by) < 2 and rounds < 30):
        sent = traffic(api)
        rounds += 1
        served_by |= {e["pid"] for e in cursor.entries() if e["route"] == "/v1/inject"}
    assert len(served_by) == 2, "the requests must have reached both workers for this test to mean anything"
    for _ in range(4):  # whichever worker answers the scrape, it reports the sum
        assert deltas(before, scrape(api)) == expected(sent, rounds)


# --- the request log ---------------------------------------------------------------------

def secret() -> str:
    return f"SECRET-{uuid.uuid4().hex}"


def check_inject_entry(entry: dict[str, Any], reply_body: dict[str, Any]) -> None:
    assert entry["route"] == "/v1/inject" and entry["method"] == "POST" and entry["status"] == 200
    assert entry["role"] == reply_body["role"]["name"]
    assert entry["tokens"] == reply_body["usage"]["prompt_tokens"]
    assert entry["system_tokens"] == reply_body["usage"]["system_tokens"]
    assert entry["trimmed"] == reply_body["trim"]["trimmed"]
    assert isinstance(entry["duration_ms"], float | int) and entry["duration_ms"] >= 0


def logged_traffic(api: Api, marker: str, headers: dict[str, str] | None = None) -> tuple[list[tuple], dict]:
    """Requests that carry `marker` in every place a prompt can hide; returns (route, status) sent."""
    headers = headers or {}
    body = {"role": "helper", "prompt": f"Tell {marker}", "variables": {"user_name": marker}, "budget": 80}
    ok = api.request("POST", "/v1/inject", json=body, headers=headers)
    assert ok.status == 200
    assert api.request("POST", "/v1/inject", headers=headers, json={
        "role": "helper", "variables": ADA, "messages": [{"role": "user", "content": marker * 40}],
        "context_window": 100}).status == 422
    assert api.request("POST", "/v1/inject", headers=headers,
                       json={"role": "helper", "variables": {"tone": marker}}).status == 422
    assert api.request("POST", "/v1/inject", headers=headers,
                       json={"role": "helper", "messages": [{"role": marker, "content": "x"}]}).status == 400
    assert api.request("POST", "/v1/count", json={"text": marker}, headers=headers).status == 200
    assert api.request("GET", "/v1/roles/helper", headers=headers).status == 200
    assert api.request("GET", "/healthz").status == 200
    sent = [("/v1/inject", 200), ("/v1/inject", 422), ("/v1/inject", 422), ("/v1/inject", 400), ("/v1/count", 200),
            ("/v1/roles/<path:name>", 200), ("/healthz", 200)]
    return sent, ok.json()


def test_gunicorn_logs_one_json_line_per_request_without_prompts(plain_server: WorkerProcess) -> None:
    marker = secret()
    cursor = LogCursor(plain_server)
    sent, result = logged_traffic(HttpApi(plain_server.url), marker)
    text = cursor.raw()
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [(e["route"], e["status"]) for e in entries] == sent
    check_inject_entry(entries[0], result)
    assert entries[1]["role"] == "helper" and "tokens" not in entries[1]
    assert all(isinstance(e["pid"], int) and e["pid"] != plain_server.process.pid for e in entries)
    assert marker not in text
    assert marker not in plain_server.log()


def test_gunicorn_logs_prompts_when_asked(configured_server: WorkerProcess) -> None:
    marker = secret()
    cursor = LogCursor(configured_server)
    sent, result = logged_traffic(HttpApi(configured_server.url), marker, {"X-API-Key": API_KEY})
    entries = cursor.entries()
    assert [(e["route"], e["status"]) for e in entries] == sent
    check_inject_entry(entries[0], result)
    assert entries[0]["prompt"] == result["prompt"]
    assert marker in entries[0]["prompt"]
    assert all("prompt" not in e for e in entries[1:]), "only successful injections log their prompt"


@pytest.mark.parametrize("log_prompts", [False, True])
def test_flask_logs_one_json_line_per_request(rest_roles: Path, caplog: pytest.LogCaptureFixture,
                                              log_prompts: bool) -> None:
    env = {"ROLE_INJECTOR_LOG_PROMPTS": "1"} if log_prompts else {}
    api = FlaskApi(create_app(Settings.from_env(env, roles_dir=str(rest_roles))))
    marker = secret()
    caplog.set_level(logging.INFO, logger="role_injector.requests")
    sent, result = logged_traffic(api, marker)
    records = [r for r in caplog.records if r.name == "role_injector.requests"]
    entries = [json.loads(r.getMessage()) for r in records]
    assert [(e["route"], e["status"]) for e in entries] == sent
    check_inject_entry(entries[0], result)
    assert (marker in caplog.text) is log_prompts
    assert ("prompt" in entries[0]) is log_prompts
