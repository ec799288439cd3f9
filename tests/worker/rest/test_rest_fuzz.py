"""Arbitrary JSON at /v1/inject, /v1/plan and /v1/count (and arbitrary names at /v1/roles/<name>), through the
Flask test client: never a 5xx, every error in the documented envelope with the REST status of its
code in `role_injector.errors.KINDS`, every success valid against the OpenAPI schema."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from role_injector.errors import KINDS
from role_injector.web.rest import OPENAPI
from tests.worker.rest.support import FlaskApi, Reply

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

REGISTRY = Registry().with_resource("urn:openapi", Resource.from_contents(OPENAPI, default_specification=DRAFT202012))


def validator(pointer: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"urn:openapi#{pointer}"}, registry=REGISTRY)


ERROR = validator("/components/schemas/Error")
INJECT_REQUEST = validator("/components/schemas/InjectRequest")
INJECT_RESPONSE = validator("/components/schemas/InjectResponse")
PLAN_RESPONSE = validator("/components/schemas/PlanResponse")
COUNT_REQUEST = validator("/paths/~1v1~1count/post/requestBody/content/application~1json/schema")
COUNT_RESPONSE = validator("/paths/~1v1~1count/post/responses/200/content/application~1json/schema")

# Text, including lone surrogates (sent as \udXXX escapes) and control characters.
text = st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=30)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)
role_names = st.sampled_from(["helper", "child", "plain", "manifest", "agi-engineer", "broken", "helpr", "",
                              "../helper", "Helper", "a" * 65])
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | json_values, "content": text | json_values},
        optional={"name": text},
    ),
    max_size=4,
)
tokens = st.integers(min_value=-10, max_value=20_000) | st.integers() | json_values
inject_bodies = st.fixed_dictionaries(
    {},
    optional={
        "role": role_names | json_values,
        "messages": messages | json_values,
        "prompt": text | json_values,
        "variables": st.dictionaries(st.sampled_from(["user_name", "tone", "language", "team", "x"]) | text,
                                     text | json_values, max_size=3) | json_values,
        "model": st.sampled_from(["qwen3:8b", "llama3.1:8b", "mistral:7b", "gemma3:4b", "qwen3.5:9b"]) | text,
        "budget": tokens,
        "context_window": tokens,
        "reserve_output": tokens,
        "format": st.sampled_from(["chatml", "llama3", "mistral", "gemma"]) | json_values,
        "context_policy": st.sampled_from(["keep_role", "shrink_role"]) | json_values,
        "history_share": st.floats(min_value=-1, max_value=2) | json_values,
        "selection": st.sampled_from(["priority", "relevance"]) | json_values,
        "query": text | json_values,
        "extra": json_values,
    },
)
count_bodies = st.fixed_dictionaries(
    {}, optional={"text": text | json_values, "model": st.sampled_from(["qwen3:8b", "x"]) | json_values,
                  "extra": json_values},
)


def serialise(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def check(reply: Reply) -> Any:
    """Below 500; an error is the envelope with the status its code has in KINDS."""
    assert reply.status < 500, reply
    body = reply.json()
    if reply.status >= 400:
        ERROR.validate(body)
        assert KINDS[body["error"]["code"]].rest_status == reply.status, body
    return body


@pytest.fixture(scope="module")
def client(flask_app: Flask) -> FlaskApi:
    return FlaskApi(flask_app)


@FUZZ
@given(body=inject_bodies | json_values, ascii_only=st.booleans())
def test_inject_fuzz(client: FlaskApi, body: Any, ascii_only: bool) -> None:
    reply = client.request("POST", "/v1/inject", data=serialise(body, ascii_only),
                           headers={"Content-Type": "application/json"})
    result = check(reply)
    if reply.status == 200:
        INJECT_REQUEST.validate({k: v for k, v in body.items() if v is not None})
        INJECT_RESPONSE.validate(result)
        assert result["usage"]["system_tokens"] <= result["usage"]["budget"]
        assert result["role"]["name"] == body["role"]


@settings(FUZZ, max_examples=200)
@given(body=inject_bodies | json_values, ascii_only=st.booleans())
def test_plan_fuzz(client: FlaskApi, body: Any, ascii_only: bool) -> None:
    """/v1/plan answers what /v1/inject answers, error or not, plus sections that explain `system`."""
    data, headers = serialise(body, ascii_only), {"Content-Type": "application/json"}
    reply = client.request("POST", "/v1/plan", data=data, headers=headers)
    result = check(reply)
    injected = client.request("POST", "/v1/inject", data=data, headers=headers)
    assert reply.status == injected.status
    if reply.status == 200:
        PLAN_RESPONSE.validate(result)
        assert {k: v for k, v in result.items() if k != "sections"} == injected.json()
        kept = [s["text"][: s["kept_chars"]] for s in result["sections"] if s["kept_chars"]]
        assert "\n\n".join(kept) == result["system"]
    else:
        assert result == injected.json()


@FUZZ
@given(body=count_bodies | json_values, ascii_only=st.booleans())
def test_count_fuzz(client: FlaskApi, body: Any, ascii_only: bool) -> None:
    reply = client.request("POST", "/v1/count", data=serialise(body, ascii_only),
                           headers={"Content-Type": "application/json"})
    result = check(reply)
    if reply.status == 200:
        COUNT_REQUEST.validate({k: v for k, v in body.items() if v is not None})
        COUNT_RESPONSE.validate(result)


@settings(max_examples=200, deadline=None)
@given(name=st.text(max_size=80))
def test_role_name_fuzz(client: FlaskApi, name: str) -> None:
    reply = client.request("GET", "/v1/roles/" + quote(name.encode("utf-8", "surrogatepass"), safe=""))
    body = check(reply)
    if reply.status == 200:
        assert body["name"] == name
