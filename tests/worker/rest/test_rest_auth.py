"""ROLE_INJECTOR_API_KEY: /v1/* needs `Authorization: Bearer <key>` or `X-API-Key: <key>`; a missing or
wrong key is a 401 that gives nothing away; /healthz (and the documents) stay open; no key, no check."""

from __future__ import annotations

import pytest

from tests.worker.rest.support import API_KEY, Api, Reply, assert_error

ADA = {"user_name": "Ada"}
PROTECTED = [
    ("GET", "/v1/roles", None),
    ("GET", "/v1/roles/helper", None),
    ("POST", "/v1/inject", {"role": "helper", "variables": ADA, "budget": 100}),
    ("POST", "/v1/count", {"text": "hello"}),
    ("POST", "/v1/plan", {"role": "helper", "variables": ADA, "budget": 100}),
    ("GET", "/v1/profiles", None),
]
WRONG = [
    pytest.param({}, id="none"),
    pytest.param({"Authorization": "Bearer wrong"}, id="bearer-wrong"),
    pytest.param({"Authorization": "Bearer "}, id="bearer-empty"),
    pytest.param({"Authorization": f"Bearer {API_KEY[:-1]}"}, id="bearer-prefix"),
    pytest.param({"Authorization": f"Bearer {API_KEY}x"}, id="bearer-longer"),
    pytest.param({"Authorization": f"Bearer {API_KEY.upper()}"}, id="bearer-case"),
    pytest.param({"Authorization": f"Bearer  {API_KEY}"}, id="bearer-two-spaces"),
    pytest.param({"Authorization": API_KEY}, id="no-scheme"),
    pytest.param({"Authorization": f"Basic {API_KEY}"}, id="basic"),
    pytest.param({"Authorization": f"Token {API_KEY}"}, id="token"),
    pytest.param({"X-API-Key": "wrong"}, id="x-api-key-wrong"),
    pytest.param({"X-API-Key": ""}, id="x-api-key-empty"),
    pytest.param({"X-API-Key": f"Bearer {API_KEY}"}, id="x-api-key-with-scheme"),
    pytest.param({"X-API-Key": "ключ".encode().decode("latin-1")}, id="x-api-key-utf8-bytes"),
    pytest.param({"Api-Key": API_KEY}, id="other-header"),
]
RIGHT = [
    pytest.param({"Authorization": f"Bearer {API_KEY}"}, id="bearer"),
    pytest.param({"Authorization": f"bearer {API_KEY}"}, id="bearer-lower-case-scheme"),
    pytest.param({"X-API-Key": API_KEY}, id="x-api-key"),
    pytest.param({"x-api-key": API_KEY}, id="x-api-key-lower-case"),
]


def call(api: Api, method: str, path: str, body: object, headers: dict[str, str]) -> Reply:
    if body is None:
        return api.request(method, path, headers=headers)
    return api.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("headers", WRONG)
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_missing_or_wrong_key_is_401_without_a_hint(secured_api: Api, method: str, path: str, body: object,
                                                     headers: dict[str, str]) -> None:
    reply = call(secured_api, method, path, body, headers)
    error = assert_error(reply, 401, "unauthorized")
    assert error["details"] == {}
    assert reply.headers["www-authenticate"] == "Bearer"
    assert API_KEY not in reply.body.decode()
    assert API_KEY[:8] not in reply.body.decode() + str(reply.headers)
    # The same answer whatever was sent: nothing to learn from comparing them.
    assert reply.body == call(secured_api, "GET", "/v1/roles", None, {}).body


@pytest.mark.parametrize("headers", RIGHT)
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_right_key_in_either_header_is_accepted(secured_api: Api, method: str, path: str, body: object,
                                                headers: dict[str, str]) -> None:
    reply = call(secured_api, method, path, body, headers)
    assert reply.status == 200, reply


def test_key_is_checked_before_the_body(secured_api: Api) -> None:
    """An unauthenticated caller learns nothing about validation, roles, or size limits."""
    headers = {"Content-Type": "application/json"}
    for data in (b"not json", b'{"role": "no-such-role"}', b'{"role": "helper", "prompt": "' + b"x" * 8000 + b'"}'):
        assert_error(secured_api.request("POST", "/v1/inject", data=data, headers=headers), 401, "unauthorized")
    assert_error(secured_api.request("GET", "/v1/roles/%2e%2e"), 401, "unauthorized")
    assert_error(secured_api.request("GET", "/v1/roles/no-such-role"), 401, "unauthorized")


def test_open_endpoints_with_a_key_set(secured_api: Api) -> None:
    reply = secured_api.request("GET", "/healthz")
    assert reply.status == 200 and reply.json()["status"] == "ok"
    assert secured_api.request("GET", "/openapi.json").status == 200
    # /metrics names the roles: with a key set it needs one (tests/security/test_exposure.py).
    assert_error(secured_api.request("GET", "/metrics"), 401, "unauthorized")
    assert secured_api.request("GET", "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}).status == 200
    # Wrong credentials on an open endpoint do not close it.
    assert secured_api.request("GET", "/healthz", headers={"Authorization": "Bearer wrong"}).status == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer anything"}, {"X-API-Key": "anything"}])
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_without_a_key_nothing_is_checked(api: Api, method: str, path: str, body: object,
                                          headers: dict[str, str]) -> None:
    reply = call(api, method, path, body, headers)
    assert reply.status == 200, reply
