"""The Ollama-compatible proxy (/api/*): roles for every Ollama client.

HTTP only: read the client's request, let `role_injector.ollama_proxy` rewrite bodies for virtual
models, forward to Ollama (ROLE_INJECTOR_OLLAMA_URL) and relay the answer chunk by chunk as it
arrives. Requests on plain models, and every other path under /api/, go through untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, redirect, request
from werkzeug.exceptions import HTTPException

from role_injector import ollama_proxy as proxy
from role_injector.context import policy_name
from role_injector.errors import InvalidRequest, RoleInjectorError
from role_injector.injection import Injection
from role_injector.profiles import VirtualModel
from role_injector.web import metrics
from role_injector.web.bodies import encode_json, parse_ollama_body, read_body, stream_body
from role_injector.web.state import compute, profiles, roles, settings
from role_injector.web.studio import wants_page
from role_injector.web.upstream import api_path, forward_headers, relay, send

ollama = Blueprint("ollama", __name__)
log = logging.getLogger("role_injector.ollama")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Ollama clients cannot send fields of their own, but most can send headers: this one chooses the
# context policy of a request (role_injector.context) over the virtual model's and the role's.
POLICY_HEADER = "X-Role-Injector-Context-Policy"
# On every answer for a virtual model: how many of the oldest messages the policy left out.
DROPPED_HEADER = "X-Role-Injector-Dropped-Messages"


def ollama_error(message: str, status: int) -> Response:
    """An error in Ollama's own shape, which Ollama clients read: {"error": "..."}."""
    response = Response(json.dumps({"error": message}, ensure_ascii=False), status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def error_line(exc: RoleInjectorError) -> bytes:
    """How Ollama reports an error inside a stream: a line {"error": "..."}; its clients raise on it."""
    return (json.dumps({"error": exc.message}, ensure_ascii=False) + "\n").encode()


def forward(method: str, path: str, body: Any = None, content_type: str | None = None,
            length: int | None = None) -> Response:
    """Send to Ollama and stream its answer back as it is; errors inside an NDJSON stream as Ollama's."""
    answer = send(method, path, body, forward_headers(content_type), length)
    ndjson = "ndjson" in answer.headers.get("Content-Type", "")
    return relay(answer, error_line=error_line if ndjson else None)


def proxy_body() -> bytes:
    return read_body(settings().max_proxy_body_bytes)  # larger than the REST limit: images


# --- routes ---------------------------------------------------------------------------------------


@ollama.before_request
def plain_path() -> None:
    """Only plain Ollama API paths are served (and so forwarded): see `upstream.api_path`."""
    if request.path != "/":
        api_path()


def virtual_model(name: Any) -> VirtualModel | None:
    """The virtual model a request names (logged), or None for a plain model."""
    virtual = proxy.resolve_virtual(profiles(), name)
    if virtual is not None:
        g.log.update(model=virtual.name, base=virtual.base, role=virtual.role)
    return virtual


def context_policy_header() -> str | None:
    value = request.headers.get(POLICY_HEADER)
    if value is None:
        return None
    try:
        return policy_name(value.strip())
    except ValueError as exc:
        raise InvalidRequest(f"header {POLICY_HEADER} {exc}", details={"header": POLICY_HEADER}) from None


Rewrite = Callable[..., tuple[dict[str, Any], Injection]]


def rewrite_for_virtual(
    rewrite: Rewrite, body: dict[str, Any], virtual: VirtualModel
) -> tuple[dict[str, Any], Injection]:
    """The body to send upstream with the role in it, as on every route that serves virtual models:
    the context policy header, the injection metrics and the log line's figures."""
    policy = context_policy_header()
    with metrics.injection(virtual.role) as record:
        upstream_body, injection = compute(lambda: rewrite(body, roles(), profiles(), virtual, policy))
        record(injection)
    g.log.update(system_tokens=injection.usage.system_tokens, trimmed=injection.fit.trimmed,
                 context_policy=injection.usage.context_policy, dropped_messages=injection.dropped_messages)
    return upstream_body, injection


def _completion(path: str, rewrite: Rewrite) -> Response:
    raw = proxy_body()
    body = parse_ollama_body(raw)
    virtual = virtual_model(body.get(proxy.model_field(body)))
    if virtual is None:
        return forward("POST", path, raw)  # a plain model: the client's bytes, untouched
    upstream_body, injection = rewrite_for_virtual(rewrite, body, virtual)
    response = forward("POST", path, encode_json(upstream_body), "application/json")
    response.headers[DROPPED_HEADER] = str(injection.dropped_messages)
    return response


@ollama.post("/api/chat")
def chat() -> Response:
    return _completion("/api/chat", proxy.rewrite_chat)


@ollama.post("/api/generate")
def generate() -> Response:
    return _completion("/api/generate", proxy.rewrite_generate)


@ollama.post("/api/show")
def show() -> Response:
    raw = proxy_body()
    body = parse_ollama_body(raw)
    virtual = virtual_model(body.get(proxy.model_field(body)))
    if virtual is None:
        return forward("POST", "/api/show", raw)
    answer = send("POST", "/api/show", encode_json(proxy.rewrite_show(body, virtual)),
                  forward_headers("application/json"))
    if answer.status != 200:
        return relay(answer)  # Ollama's own error, as it is
    upstream = answer.json("/api/show")
    shown = compute(lambda: proxy.show_response(upstream, roles(), profiles(), virtual))
    return Response(json.dumps(shown, ensure_ascii=False), 200, mimetype="application/json")


@ollama.get("/api/tags")
def tags() -> Response:
    answer = send("GET", "/api/tags", headers=forward_headers())
    if answer.status != 200:
        return relay(answer)
    listed = proxy.tags_response(answer.json("/api/tags"), roles(), profiles())
    return Response(json.dumps(listed, ensure_ascii=False), 200, mimetype="application/json")


@ollama.route("/", methods=["GET", "HEAD"])
def heartbeat() -> Response:
    """Ollama answers "Ollama is running" here; the `ollama` CLI checks it before every command.
    A browser (it asks for text/html) is sent to the role studio instead."""
    if request.method == "GET" and wants_page():
        return redirect("studio/", 302)  # relative: right behind a proxy that mounts the worker on a sub-path
    return forward(request.method, "/")


@ollama.route("/api/<path:rest>", methods=ALL_METHODS)
def passthrough(rest: str) -> Response:
    target = "/api/" + rest
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    if request.method == "POST" and target.startswith("/api/blobs/"):
        # Model layers for `ollama create` can be gigabytes: stream them, never hold them.
        return forward("POST", target, stream_body(), length=request.content_length)
    return forward(request.method, target, proxy_body() or None)


# --- errors in Ollama's shape ---------------------------------------------------------------------


@ollama.errorhandler(RoleInjectorError)
def library_error(exc: RoleInjectorError) -> Response:
    return ollama_error(exc.message, exc.kind.ollama_status)


@ollama.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        return ollama_error(f"the body is larger than {settings().max_proxy_body_bytes} bytes", 413)
    return ollama_error(exc.description or exc.name, status)


@ollama.errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unexpected error in the Ollama proxy")
    return ollama_error("internal error of the Role Injector proxy; see the worker's log", 500)
