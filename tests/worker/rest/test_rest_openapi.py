"""/openapi.json documents every route with its methods, and real responses of every documented
status validate against the documented schemas (JSON Schema 2020-12, the document as registry)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from role_injector.errors import KINDS
from role_injector.settings import Settings
from role_injector.web import create_app
from tests.ollama_standin import OllamaStandin
from tests.worker.rest.support import API_KEY, Api, FlaskApi

KEY = {"Authorization": f"Bearer {API_KEY}"}
OPERATIONS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
OPENAI_TAG = "OpenAI-compatible"
ADA = {"user_name": "Ada"}


def document(api: Api) -> dict[str, Any]:
    reply = api.request("GET", "/openapi.json")
    assert reply.status == 200
    return reply.json()


def routes(app: Flask) -> dict[str, set[str]]:
    """Flask's routes as OpenAPI paths with their methods: not the static files, not the Ollama proxy
    (/api/* and the other routes of its blueprint, such as Ollama's `GET /`), not the role studio's page or the
    documentation pages (/docs/*), not the OpenAI-compatible routes (tests/worker/test_openai_route.py checks
    those against the document)."""
    found: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith(("ollama.", "studio.", "docs.", "openai.")) \
                or rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found.setdefault(path, set()).update(m.lower() for m in rule.methods or () if m not in {"HEAD", "OPTIONS"})
    return found


def rest_paths(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's paths of the REST API: not the Ollama proxy's, not the OpenAI-compatible ones."""
    return {path: item for path, item in doc["paths"].items() if not path.startswith("/api/")
            and not any(OPENAI_TAG in item[op].get("tags", ()) for op in set(item) & OPERATIONS)}


def test_every_route_is_documented_with_its_methods(flask_app: Flask, api: Api) -> None:
    doc = document(api)
    documented = {path: set(item) & OPERATIONS for path, item in rest_paths(doc).items()}
    assert routes(flask_app) == documented
    for path, item in doc["paths"].items():
        for name in re.findall(r"{([^}]+)}", path):
            for operation in set(item) & OPERATIONS:
                parameters = item[operation].get("parameters", []) + item.get("parameters", [])
                assert {"name": name, "in": "path", "required": True}.items() <= next(
                    p for p in parameters if p["name"] == name).items(), (path, operation)


def test_the_documented_error_codes_are_the_table_of_errors(api: Api) -> None:
    enum = document(api)["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
    assert enum == list(KINDS)


def req(method: str, path: str, body: Any = None, *, key: bool = True, data: bytes | None = None,
        headers: dict[str, str] | None = None, ollama_fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """A request of a case; `ollama_fault` is set on the Ollama stand-in (`set_fault`) for it."""
    sent = {**(KEY if key else {}), **(headers or {})}
    fault = {"ollama_fault": ollama_fault} if ollama_fault else {}
    if body is not None:
        return {"method": method, "path": path, "json": body, "headers": sent, **fault}
    return {"method": method, "path": path, "data": data, "headers": sent, **fault}


MODEL = "/v1/roles/helper/ollama-model"
ROLE_MODEL = "/v1/roles/{name}/ollama-model"


# Requests that produce each documented (path, operation, status), against the app with an API key
# and a 4 KiB body limit. The test fails when the document and this table disagree.
CASES: dict[tuple[str, str, str], list[dict[str, Any]]] = {
    ("/healthz", "get", "200"): [req("GET", "/healthz", key=False)],
    ("/v1/roles", "get", "200"): [req("GET", "/v1/roles")],
    ("/v1/roles", "get", "401"): [req("GET", "/v1/roles", key=False)],
    ("/v1/roles/{name}", "get", "200"): [req("GET", f"/v1/roles/{n}") for n in ("helper", "child", "plain",
                                                                                  "agi-engineer", "manifest")],
    ("/v1/roles/{name}", "get", "400"): [req("GET", "/v1/roles/%2e%2e"), req("GET", "/v1/roles/Helper")],
    ("/v1/roles/{name}", "get", "401"): [req("GET", "/v1/roles/helper", key=False)],
    ("/v1/roles/{name}", "get", "404"): [req("GET", "/v1/roles/helpr"), req("GET", "/v1/roles/broken")],
    (ROLE_MODEL, "post", "200"): [req("POST", MODEL, {"variables": ADA, "budget": 80, "name": "fixture-helper"}),
                             req("POST", "/v1/roles/plain/ollama-model", {"base": "qwen3:0.6b"})],
    (ROLE_MODEL, "post", "400"): [req("POST", MODEL, {"variables": ADA, "budget": "80"}),
                             req("POST", "/v1/roles/Helper/ollama-model", {}),
                             req("POST", "/v1/roles/plain/ollama-model", {}),  # no base model, none in the role
                             req("POST", MODEL, {"variables": ADA, "name": "bad name"})],
    (ROLE_MODEL, "post", "401"): [req("POST", MODEL, {"variables": ADA}, key=False)],
    (ROLE_MODEL, "post", "404"): [req("POST", "/v1/roles/helpr/ollama-model", {})],
    (ROLE_MODEL, "post", "409"): [req("POST", MODEL, {"variables": ADA, "name": "qwen3:0.6b"})],
    (ROLE_MODEL, "post", "413"): [req("POST", MODEL, {"variables": {"user_name": "x" * 5000}})],
    (ROLE_MODEL, "post", "415"): [req("POST", MODEL, data=b"{}", headers={"Content-Type": "text/plain"})],
    (ROLE_MODEL, "post", "422"): [req("POST", MODEL, {}), req("POST", MODEL, {"variables": ADA, "budget": 5}),
                             req("POST", MODEL, {"variables": ADA, "base": "qwen3:32b"})],
    (ROLE_MODEL, "post", "502"): [req("POST", MODEL, {"variables": ADA},
                                 ollama_fault={"path": "/api/create", "status": 500, "body": {"error": "disk full"}})],
    ("/v1/inject", "post", "200"): [
        req("POST", "/v1/inject", {"role": "helper", "variables": ADA, "budget": 80, "prompt": "hi"}),
        req("POST", "/v1/inject", {"role": "helper", "variables": ADA, "budget": 80, "prompt": "hi ls",
                                   "selection": "relevance"}),
        req("POST", "/v1/inject", {"role": "plain", "messages": [{"role": "user", "content": "a"},
                                                                 {"role": "assistant", "content": "b"}]}),
        req("POST", "/v1/inject", {"role": "manifest", "model": "llama3.1:8b", "context_window": 4096,
                                   "reserve_output": 512, "format": "gemma"}),
    ],
    ("/v1/inject", "post", "400"): [req("POST", "/v1/inject", {"role": "helper", "budget": -1}),
                                    req("POST", "/v1/inject", data=b"{", headers={"Content-Type": "application/json"})],
    ("/v1/inject", "post", "401"): [req("POST", "/v1/inject", {"role": "helper"}, key=False)],
    ("/v1/inject", "post", "404"): [req("POST", "/v1/inject", {"role": "helpr"})],
    ("/v1/inject", "post", "413"): [req("POST", "/v1/inject", {"role": "helper", "prompt": "x" * 5000})],
    ("/v1/inject", "post", "415"): [req("POST", "/v1/inject", data=b'{"role": "helper"}',
                                        headers={"Content-Type": "text/plain"})],
    ("/v1/inject", "post", "422"): [
        req("POST", "/v1/inject", {"role": "helper"}),
        req("POST", "/v1/inject", {"role": "helper", "variables": ADA, "budget": 5}),
        req("POST", "/v1/inject", {"role": "helper", "variables": ADA, "context_window": 100}),
    ],
    ("/v1/plan", "post", "200"): [
        req("POST", "/v1/plan", {"role": "helper", "variables": ADA, "budget": 60, "prompt": "hi"}),
        req("POST", "/v1/plan", {"role": "manifest", "model": "llama3.1:8b", "budget": 900, "format": "mistral"}),
        req("POST", "/v1/plan", {"role": "plain"}),
        req("POST", "/v1/plan", {"role": "handbook", "budget": 500, "prompt": "Where is the bike cage?"}),
    ],
    ("/v1/plan", "post", "400"): [req("POST", "/v1/plan", {"role": "helper", "budget": 0}),
                                  req("POST", "/v1/plan", {"role": "helper", "selection": "bm25"})],
    ("/v1/plan", "post", "401"): [req("POST", "/v1/plan", {"role": "helper"}, key=False)],
    ("/v1/plan", "post", "404"): [req("POST", "/v1/plan", {"role": "helpr"})],
    ("/v1/plan", "post", "413"): [req("POST", "/v1/plan", {"role": "helper", "prompt": "x" * 5000})],
    ("/v1/plan", "post", "415"): [req("POST", "/v1/plan", data=b'{"role": "helper"}',
                                      headers={"Content-Type": "text/plain"})],
    ("/v1/plan", "post", "422"): [req("POST", "/v1/plan", {"role": "helper"}),
                                  req("POST", "/v1/plan", {"role": "helper", "variables": ADA, "budget": 5})],
    ("/v1/profiles", "get", "200"): [req("GET", "/v1/profiles")],
    ("/v1/profiles", "get", "401"): [req("GET", "/v1/profiles", key=False)],
    ("/v1/count", "post", "200"): [req("POST", "/v1/count", {"text": "hello", "model": "qwen3:8b"}),
                                   req("POST", "/v1/count", {"text": ""})],
    ("/v1/count", "post", "400"): [req("POST", "/v1/count", {"text": 1})],
    ("/v1/count", "post", "401"): [req("POST", "/v1/count", {"text": "a"}, key=False)],
    ("/v1/count", "post", "413"): [req("POST", "/v1/count", {"text": "x" * 5000})],
    ("/v1/count", "post", "415"): [req("POST", "/v1/count", data=b'{"text": "a"}',
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})],
    ("/openapi.json", "get", "200"): [req("GET", "/openapi.json", key=False)],
    ("/metrics", "get", "200"): [req("GET", "/metrics")],
    ("/metrics", "get", "401"): [req("GET", "/metrics", key=False)],
}


def documented_statuses(doc: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (path, operation, status)
        for path, item in rest_paths(doc).items()
        for operation in set(item) & OPERATIONS
        for status in item[operation]["responses"]
    }


def escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


# Statuses that need an app of their own; each has its test below.
ELSEWHERE = {("/healthz", "get", "503")}


def test_the_cases_cover_every_documented_status(api: Api) -> None:
    assert set(CASES) | ELSEWHERE == documented_statuses(document(api))


def check_reply(doc: dict[str, Any], key: tuple[str, str, str], reply: Any, spec: Any = None) -> None:
    """`reply` has the status of `key` and the body its schema documents."""
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012))
    path, operation, status = key
    pointer = f"/paths/{escape(path)}/{operation}/responses/{status}"
    response = doc["paths"][path][operation]["responses"][status]
    if "$ref" in response:
        pointer = response["$ref"][1:]
        response = doc
        for part in pointer.strip("/").split("/"):
            response = response[part]
    assert reply.status == int(status), (spec, reply)
    media_types = list(response["content"])
    assert len(media_types) == 1
    media_type = media_types[0]
    assert reply.content_type.split(";")[0] == media_type
    instance = reply.json() if media_type == "application/json" else reply.body.decode()
    schema_pointer = f"{pointer}/content/{escape(media_type)}/schema"
    Draft202012Validator({"$ref": f"urn:openapi#{schema_pointer}"}, registry=registry).validate(instance)


@pytest.mark.parametrize("key", list(CASES), ids=["{} {} {}".format(*k) for k in CASES])
def test_responses_match_the_document(secured_api: Api, rest_ollama: OllamaStandin, key: tuple[str, str, str]) -> None:
    doc = document(secured_api)
    for case in CASES[key]:
        spec = dict(case)
        rest_ollama.clear()
        if "ollama_fault" in spec:
            rest_ollama.set_fault(**spec.pop("ollama_fault"))
        check_reply(doc, key, secured_api.request(**spec), spec)


def test_healthz_is_503_while_the_roles_folder_is_missing(tmp_path: Path) -> None:
    api = FlaskApi(create_app(Settings.from_env({}, roles_dir=str(tmp_path / "missing"))))
    reply = api.request("GET", "/healthz")
    check_reply(document(api), ("/healthz", "get", "503"), reply)
    assert reply.json()["error"] == f"the roles folder {tmp_path / 'missing'} does not exist"
