"""POST /v1/roles/<name>/ollama-model, in-process and under a real gunicorn, against the Ollama
stand-in: what Ollama is asked to create, the streamed progress, and every error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from role_injector.errors import KINDS
from role_injector.settings import Settings
from role_injector.tokens import load_tokenizer
from role_injector.web import create_app
from tests.ollama_standin import OllamaStandin
from tests.servers import free_port
from tests.worker.rest.support import Api, FlaskApi, assert_error

ADA = {"user_name": "Ada"}
MODEL = "/v1/roles/helper/ollama-model"


@pytest.fixture(autouse=True)
def fresh(rest_ollama: OllamaStandin) -> None:
    rest_ollama.clear()


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


def test_the_model_is_created_with_the_fitted_role_and_the_progress_streams(api: Api,
                                                                           rest_ollama: OllamaStandin) -> None:
    reply = api.request("POST", MODEL, json={"variables": ADA, "budget": 60, "name": "helper-ada"})
    assert reply.status == 200, reply
    assert reply.content_type == "application/x-ndjson"
    lines = ndjson(reply.body)
    assert [line["status"] for line in lines[:-1]][-1] == "writing manifest"
    made = lines[-1]
    assert made["status"] == "success" and made["model"] == "helper-ada:latest"
    assert made["role"]["name"] == "helper" and made["label"].startswith("role-injector/helper:")
    assert made["budget"] == 60 and made["system_tokens"] <= 60 and made["trimmed"] is True

    (create,) = rest_ollama.requests_to("/api/create")
    body = create.body
    assert (body["model"], body["from"], body["stream"]) == ("helper-ada", "qwen3:8b", True)
    assert body["parameters"] == {"temperature": 0.1, "num_ctx": 8192, "num_keep": made["parameters"]["num_keep"]}
    assert made["parameters"]["num_keep"] > made["system_tokens"]
    assert "Help Ada in a calm tone." in body["system"]
    assert load_tokenizer("qwen").count(body["system"]) == made["system_tokens"]
    (copy,) = rest_ollama.requests_to("/api/copy")
    assert copy.body == {"source": "helper-ada", "destination": made["label"]}


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/v1/roles/helpr/ollama-model", {}, 404, "role_not_found"),
    ("/v1/roles/Helper/ollama-model", {}, 400, "invalid_request"),
    ("/v1/roles/a/b/ollama-model", {}, 400, "invalid_request"),
    (MODEL, {"variables": ADA, "think": True}, 400, "invalid_request"),
    (MODEL, {"variables": ADA, "budget": 0}, 400, "invalid_request"),
    (MODEL, {"variables": {"user_name": 1}}, 400, "invalid_request"),
    (MODEL, {"variables": ADA, "base": "bad base"}, 400, "invalid_request"),
    ("/v1/roles/plain/ollama-model", {}, 400, "invalid_request"),
    (MODEL, {}, 422, "missing_variable"),
    (MODEL, {"variables": ADA, "budget": 3}, 422, "budget_too_small"),
    (MODEL, {"variables": ADA, "base": "qwen3:32b"}, 422, "model_not_found"),
    ("/v1/roles/broken/ollama-model", {}, 404, "role_not_found"),
])
def test_bad_requests_create_nothing(api: Api, rest_ollama: OllamaStandin, path: str, body: dict[str, Any],
                                     status: int, code: str) -> None:
    error = assert_error(api.request("POST", path, json=body), status, code)
    if code == "model_not_found":
        assert "pull it first: ollama pull qwen3:32b" in error["message"]
    assert rest_ollama.requests_to("/api/create") == []


def test_ollama_refusing_is_a_502_with_its_message(api: Api, rest_ollama: OllamaStandin) -> None:
    rest_ollama.set_fault("/api/create", status=500, body={"error": "no space left on device"})
    error = assert_error(api.request("POST", MODEL, json={"variables": ADA}), 502, "upstream_refused")
    assert "no space left on device" in error["message"]


def test_a_failure_after_the_stream_started_is_its_last_line(api: Api, rest_ollama: OllamaStandin) -> None:
    rest_ollama.set_fault("/api/copy", status=400, body={"error": "destination exists"})
    reply = api.request("POST", MODEL, json={"variables": ADA})
    assert reply.status == 200
    last = ndjson(reply.body)[-1]
    assert last["error"]["code"] == "upstream_refused" and "destination exists" in last["error"]["message"]


def test_an_unreachable_ollama_is_a_502(rest_roles: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    app = create_app(Settings.from_env({"ROLE_INJECTOR_OLLAMA_URL": url}, roles_dir=str(rest_roles)))
    error = assert_error(FlaskApi(app).request("POST", MODEL, json={"variables": ADA}), 502, "upstream_unreachable")
    assert url in error["message"]


text = st.text(max_size=20)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
bodies = st.fixed_dictionaries({}, optional={
    "base": st.sampled_from(["qwen3:8b", "qwen3:0.6b", "qwen3:32b", "", "a b", "x" * 90]) | json_values,
    "name": st.sampled_from(["m", "me/m:1", "", "-m", "role-injector/x:y"]) | json_values,
    "budget": st.integers(-5, 5000) | json_values,
    "variables": st.dictionaries(st.sampled_from(["user_name", "tone", "x"]), text | json_values, max_size=2)
    | json_values,
    "extra": json_values,
})


@pytest.fixture(scope="module")
def client(flask_app: Flask) -> FlaskApi:
    return FlaskApi(flask_app)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(body=bodies | json_values, role=st.sampled_from(["helper", "child", "plain", "broken", "helpr"]))
def test_any_body_is_a_model_or_a_documented_error(client: FlaskApi, body: Any, role: str) -> None:
    reply = client.request("POST", f"/v1/roles/{role}/ollama-model", json=body)
    assert reply.status < 500, reply
    if reply.status == 200:
        assert ndjson(reply.body)[-1]["status"] == "success"
    else:
        error = reply.json()["error"]
        assert KINDS[error["code"]].rest_status == reply.status, error
