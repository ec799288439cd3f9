"""Class 4: secrets in ROLE_INJECTOR_OLLAMA_URL (`http://user:password@host`).

The userinfo is sent to Ollama as Basic auth and never shown: not in any error answer (REST or
Ollama shape, before or inside a stream), not on `GET /`, not in `/metrics`, not in the log, not in
the refusal to start with a broken URL.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import requests

from tests.ollama_standin import OllamaStandin
from tests.security.conftest import (
    OLLAMA_PASSWORD,
    OLLAMA_USER,
    raw_request,
    with_userinfo,
)
from tests.servers import CLEAN_ENV, ROLE_INJECTOR, WorkerProcess, free_port, run_worker_at

BASIC = "Basic " + base64.b64encode(f"{OLLAMA_USER}:{OLLAMA_PASSWORD}".encode()).decode()
CHAT = {"model": "guarded", "messages": [{"role": "user", "content": "hi"}]}
PLAIN_CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}


def assert_no_secret(text: str) -> None:
    assert OLLAMA_PASSWORD not in text
    assert OLLAMA_USER not in text
    assert base64.b64encode(OLLAMA_PASSWORD.encode()).decode()[:8] not in text


def test_userinfo_is_sent_as_basic_auth(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    requests.post(guarded.url + "/api/chat", json={**CHAT, "stream": False}, timeout=10).raise_for_status()
    requests.post(guarded.url + "/api/chat", json={**PLAIN_CHAT, "stream": False}, timeout=10).raise_for_status()
    requests.get(guarded.url + "/api/tags", timeout=10).raise_for_status()
    # A client's own Authorization header does not replace the configured credentials.
    requests.get(guarded.url + "/api/ps", headers={"Authorization": "Bearer mine"}, timeout=10).raise_for_status()
    requests.head(guarded.url + "/", timeout=10).raise_for_status()
    assert len(standin.requests) == 5
    for seen in standin.requests:
        assert seen.headers.get("Authorization") == BASIC, seen.path
    # The Host header names the host, not the userinfo.
    assert all("@" not in r.headers.get("Host", "") for r in standin.requests)


def test_escaped_userinfo_is_decoded_for_basic_auth(place: Path, standin: OllamaStandin) -> None:
    with run_worker_at(place, with_userinfo(standin.url, "us%40er", "p%3Ass%2Fword")) as server:
        requests.get(server.url + "/api/version", timeout=10).raise_for_status()
    assert standin.requests[0].headers["Authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss/word").decode()


def test_no_answer_metric_or_log_line_shows_the_secret(place: Path) -> None:
    nowhere = with_userinfo(f"http://127.0.0.1:{free_port()}/base")
    with run_worker_at(place, nowhere) as server:
        answers = [
            requests.get(server.url + "/", timeout=10),
            requests.head(server.url + "/", timeout=10),
            requests.get(server.url + "/api/tags", timeout=10),
            requests.get(server.url + "/api/ps", timeout=10),
            requests.post(server.url + "/api/chat", json=CHAT, timeout=10),
            requests.post(server.url + "/api/chat", json=PLAIN_CHAT, timeout=10),
            requests.post(server.url + "/api/generate", json={"model": "guarded", "prompt": "hi"}, timeout=10),
            requests.post(server.url + "/api/show", json={"model": "guarded"}, timeout=10),
            requests.post(server.url + "/api/blobs/sha256:" + "0" * 64, data=b"x" * 100, timeout=10),
        ]
        other_shapes = [  # the OpenAI route and the REST route that creates an Ollama model
            requests.get(server.url + "/v1/models", timeout=10),
            requests.post(server.url + "/v1/chat/completions", json=CHAT, timeout=10),
            requests.post(server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=10),
            requests.post(server.url + "/v1/roles/guarded/ollama-model", json={"base": "qwen3:8b"}, timeout=30),
        ]
        for answer in answers[:1] + answers[2:]:
            assert answer.status_code == 502, answer.text
            message = answer.json()["error"]
            assert message.startswith("cannot reach Ollama at http://***@127.0.0.1:"), message
            assert "/base" in message
            assert_no_secret(answer.text)
        for answer in other_shapes:
            assert "cannot reach Ollama at http://***@127.0.0.1:" in answer.text, answer.text
            assert_no_secret(answer.text)
        for answer in answers:
            assert_no_secret(json.dumps(dict(answer.headers)))
        rest = [requests.get(server.url + path, timeout=10).text for path in ("/metrics", "/v1/roles", "/openapi.json")]
        for text in rest:
            assert_no_secret(text)
        log = server.log()
    assert "127.0.0.1" in log and "***@" in log  # the log names Ollama's address, without the secret
    assert_no_secret(log)


def test_timeouts_and_broken_streams_do_not_show_the_secret(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", delay=5)  # longer than the guarded server's 3 s for Ollama
    late = requests.post(guarded.url + "/api/chat", json=CHAT, timeout=20)
    assert late.status_code == 504 and "***@" in late.json()["error"]
    assert_no_secret(late.text)
    standin.clear()
    standin.set_fault("/api/chat", chunk_delay=5)  # a stream that stalls after its first piece
    lines = requests.post(guarded.url + "/api/chat", json=CHAT, timeout=20).text.splitlines()
    assert "error" in json.loads(lines[-1]) and "***@" in lines[-1]
    assert_no_secret("\n".join(lines))
    assert_no_secret(guarded.log())


def test_a_broken_url_is_refused_at_start_without_the_secret(place: Path) -> None:
    for url in (f"http://{OLLAMA_USER}:{OLLAMA_PASSWORD}@127.0.0.1:99999",
                f"ftp://{OLLAMA_USER}:{OLLAMA_PASSWORD}@127.0.0.1:11434",
                f"http://{OLLAMA_USER}:{OLLAMA_PASSWORD}@127.0.0.1:11434/x/../y",
                f"http://{OLLAMA_USER}:{OLLAMA_PASSWORD}@127.0.0.1:11434/?q=1"):
        result = subprocess.run(
            [str(ROLE_INJECTOR), "serve", "--port", str(free_port()), "--roles", str(place / "roles")],
            env={**os.environ, **CLEAN_ENV, "ROLE_INJECTOR_OLLAMA_URL": url}, capture_output=True, text=True,
            timeout=60,
        )
        assert result.returncode == 9, result.stderr  # invalid_config
        assert "ROLE_INJECTOR_OLLAMA_URL" in result.stderr and "***@127.0.0.1" in result.stderr
        assert_no_secret(result.stdout + result.stderr)


def test_raw_targets_do_not_show_the_secret(guarded: WorkerProcess) -> None:
    answer = raw_request(guarded, "GET", "/api/%2e%2e/x")
    assert answer.status == 400
    assert_no_secret(answer.body.decode())


def test_settings_never_show_the_secrets_in_a_repr() -> None:
    from role_injector.settings import Settings

    settings = Settings.from_env({"ROLE_INJECTOR_OLLAMA_URL": with_userinfo("http://127.0.0.1:11434"),
                                  "ROLE_INJECTOR_API_KEY": "the-api-key-itself"})
    assert_no_secret(repr(settings))
    assert "the-api-key-itself" not in repr(settings)
    from role_injector.engines.url import EngineUrl

    assert_no_secret(repr(EngineUrl.parse(with_userinfo("http://127.0.0.1:11434"))))


def test_the_cli_sends_the_userinfo_as_basic_auth_and_never_shows_it(place: Path, standin: OllamaStandin) -> None:
    def ollama_list(url: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROLE_INJECTOR), "ollama", "list", "--roles", str(place / "roles"),
                               "--ollama-url", url], env={**os.environ, **CLEAN_ENV}, capture_output=True,
                              text=True, timeout=60)

    listed = ollama_list(with_userinfo(standin.url))
    assert listed.returncode == 0, listed.stderr
    assert {r.headers.get("Authorization") for r in standin.requests} == {BASIC}
    down = ollama_list(with_userinfo(f"http://127.0.0.1:{free_port()}"))
    assert down.returncode != 0 and "***@127.0.0.1" in down.stderr
    assert_no_secret(down.stdout + down.stderr)
