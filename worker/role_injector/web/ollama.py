"""The Ollama-compatible proxy (/api/*): roles for every Ollama client.

HTTP only: read the client's request, let `role_injector.engines.ollama` rewrite bodies for virtual
models (`virtual_models.target` says which), forward to Ollama (ROLE_INJECTOR_OLLAMA_URL, or the profile
file's Ollama engine) and relay the answer chunk by chunk as it arrives. Requests on plain models, and
every other path under /api/, go through untouched. Errors are in Ollama's shape (`error_shapes.OLLAMA`).

Ollama's API is not translated for an OpenAI-compatible engine: a model served by one is a 400 naming
the route that serves it, /v1/chat/completions (its clients can send no `num_ctx`, `raw` prompt or
`context` that such an engine would take, and OpenAI's route keeps every field the engine has).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request

from role_injector.engines import ollama as native
from role_injector.engines.engine import Engine
from role_injector.engines.kinds import EngineKind
from role_injector.engines.transport import encode_json
from role_injector.errors import InvalidRequest
from role_injector.web.bodies import parse_ollama_body, read_proxy_body, stream_body
from role_injector.web.error_shapes import OLLAMA, answer_errors
from role_injector.web.pages import wants_page
from role_injector.web.state import compute, engines, profiles, roles
from role_injector.web.upstream import forward_headers, is_stream, relay, send
from role_injector.web.virtual_models import Target, mark_placed, placing, routed, target

ollama = Blueprint("ollama", __name__)
answer_errors(ollama, OLLAMA)
log = logging.getLogger("role_injector.ollama")

ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def ollama_engine() -> Engine:
    """The Ollama this proxy forwards to; a worker with none answers every Ollama client with a 400."""
    found = engines().ollama
    if found is None:
        raise InvalidRequest(f"this worker serves no Ollama (its engine is {engines().default.where}): Ollama's "
                             "API is not translated for it, so send chat requests to the OpenAI-compatible route "
                             "/v1/chat/completions (base URL: this worker + /v1)")
    return found


def on_ollama(name: Any, field: str) -> Target:
    """What a model name (a body's `field`) means, where Ollama serves it; a model another engine serves
    is a 400."""
    chosen = target(name, field)
    if chosen.engine.kind is not EngineKind.OLLAMA:
        raise InvalidRequest(f"model {name!r} is served by {chosen.engine.where}, which speaks OpenAI's API, not "
                             "Ollama's: send it to /v1/chat/completions (base URL: this worker + /v1)",
                             details={"field": field})
    return chosen


def forward(method: str, path: str, body: Any = None, content_type: str | None = None, length: int | None = None,
            engine: Engine | None = None, headers: Mapping[str, str] | None = None) -> Response:
    """Send to Ollama (with `headers` of the engine's own) and relay its answer as it is; errors inside
    an NDJSON stream as Ollama's."""
    answer = send(engine or ollama_engine(), method, path, body, forward_headers(content_type, headers), length)
    return relay(answer, shape=OLLAMA if is_stream(answer) else None)


def answer_json(value: Any) -> Response:
    return current_app.json.response(value)


def _completion(path: str) -> Response:
    raw = read_proxy_body()
    body = parse_ollama_body(raw)
    field = native.model_field(body)
    chosen = on_ollama(body.get(field), field)
    on_virtual = chosen.virtual
    if on_virtual is None:  # a plain model: the client's bytes, untouched
        call = routed(native.completion_call(chosen.engine, path, raw, body, None, chosen.session))
        return forward("POST", path, call.body, engine=chosen.engine, headers=call.headers)
    with placing(on_virtual.virtual) as placed:
        call = routed(compute(lambda: native.completion_call(chosen.engine, path, raw, body, on_virtual,
                                                             chosen.session)))
        assert call.injection is not None  # a virtual model's call always has one
        placed(call.injection)
    sent = forward("POST", path, call.body, "application/json", engine=chosen.engine, headers=call.headers)
    return mark_placed(sent, call.injection)


@ollama.post("/api/chat")
def chat() -> Response:
    return _completion("/api/chat")


@ollama.post("/api/generate")
def generate() -> Response:
    return _completion("/api/generate")


@ollama.post("/api/show")
def show() -> Response:
    raw = read_proxy_body()
    body = parse_ollama_body(raw)
    field = native.model_field(body)
    chosen = on_ollama(body.get(field), field)
    on_virtual = chosen.virtual
    if on_virtual is None:
        return forward("POST", "/api/show", raw, engine=chosen.engine)
    answer = send(chosen.engine, "POST", "/api/show", encode_json(native.rewrite_show(body, on_virtual.virtual)),
                  forward_headers("application/json"))
    if answer.status != 200:
        return relay(answer)  # Ollama's own error, as it is
    upstream = answer.json("/api/show")
    return answer_json(compute(lambda: native.show_response(upstream, on_virtual)))


@ollama.get("/api/tags")
def tags() -> Response:
    serving = ollama_engine()
    answer = send(serving, "GET", "/api/tags", headers=forward_headers())
    if answer.status != 200:
        return relay(answer)
    return answer_json(native.tags_response(answer.json("/api/tags"), roles(), engines().declared(serving, profiles())))


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
