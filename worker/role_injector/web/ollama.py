"""The Ollama-compatible proxy (/api/*): roles for every Ollama client.

HTTP only: read the client's request, let `role_injector.engines.ollama` rewrite bodies for virtual
models (`virtual_models.target` says which), forward to the engine (ROLE_INJECTOR_OLLAMA_URL) and relay
the answer chunk by chunk as it arrives. Requests on plain models, and every other path under /api/,
go through untouched. Errors are in Ollama's shape (`error_shapes.OLLAMA`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request

from role_injector.engines import ollama as native
from role_injector.engines.transport import encode_json
from role_injector.injection import Injection, VirtualRequest
from role_injector.web.bodies import parse_ollama_body, read_proxy_body, stream_body
from role_injector.web.error_shapes import OLLAMA, answer_errors
from role_injector.web.pages import wants_page
from role_injector.web.state import compute, profiles, roles
from role_injector.web.upstream import forward_headers, is_stream, relay, send
from role_injector.web.virtual_models import mark_dropped, placing, target

ollama = Blueprint("ollama", __name__)
answer_errors(ollama, OLLAMA)
log = logging.getLogger("role_injector.ollama")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
Rewrite = Callable[[dict[str, Any], VirtualRequest], tuple[dict[str, Any], Injection]]


def forward(method: str, path: str, body: Any = None, content_type: str | None = None,
            length: int | None = None) -> Response:
    """Send to the engine and relay its answer as it is; errors inside an NDJSON stream as Ollama's."""
    answer = send(method, path, body, forward_headers(content_type), length)
    return relay(answer, shape=OLLAMA if is_stream(answer) else None)


def answer_json(value: Any) -> Response:
    return current_app.json.response(value)


def _completion(path: str, rewrite: Rewrite) -> Response:
    raw = read_proxy_body()
    body = parse_ollama_body(raw)
    field = native.model_field(body)
    on_virtual = target(body.get(field), field).virtual
    if on_virtual is None:
        return forward("POST", path, raw)  # a plain model: the client's bytes, untouched
    with placing(on_virtual.virtual) as placed:
        upstream_body, injection = compute(lambda: rewrite(body, on_virtual))
        placed(injection)
    return mark_dropped(forward("POST", path, encode_json(upstream_body), "application/json"), injection)


@ollama.post("/api/chat")
def chat() -> Response:
    return _completion("/api/chat", native.rewrite_chat)


@ollama.post("/api/generate")
def generate() -> Response:
    return _completion("/api/generate", native.rewrite_generate)


@ollama.post("/api/show")
def show() -> Response:
    raw = read_proxy_body()
    body = parse_ollama_body(raw)
    field = native.model_field(body)
    on_virtual = target(body.get(field), field).virtual
    if on_virtual is None:
        return forward("POST", "/api/show", raw)
    answer = send("POST", "/api/show", encode_json(native.rewrite_show(body, on_virtual.virtual)),
                  forward_headers("application/json"))
    if answer.status != 200:
        return relay(answer)  # Ollama's own error, as it is
    upstream = answer.json("/api/show")
    return answer_json(compute(lambda: native.show_response(upstream, on_virtual)))


@ollama.get("/api/tags")
def tags() -> Response:
    answer = send("GET", "/api/tags", headers=forward_headers())
    if answer.status != 200:
        return relay(answer)
    return answer_json(native.tags_response(answer.json("/api/tags"), roles(), profiles()))


@ollama.route("/", methods=["GET", "HEAD"])
def heartbeat() -> Response:
    """Ollama answers "Ollama is running" here; the `ollama` CLI checks it before every command.
    A browser (it asks for text/html) is sent to the role studio instead."""
    if request.method == "GET" and wants_page():
        return redirect("studio/", 302)  # relative: right behind a proxy that mounts the worker on a sub-path
    return forward(request.method, "/")


@ollama.route("/api/<path:rest>", methods=ALL_METHODS)
def passthrough(rest: str) -> Response:
    target_path = "/api/" + rest
    if request.query_string:
        target_path += "?" + request.query_string.decode("latin-1")
    if request.method == "POST" and target_path.startswith("/api/blobs/"):
        # Model layers for `ollama create` can be gigabytes: stream them, never hold them.
        return forward("POST", target_path, stream_body(), length=request.content_length)
    return forward(request.method, target_path, read_proxy_body() or None)
