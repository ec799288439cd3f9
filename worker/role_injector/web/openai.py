"""The OpenAI-compatible routes, /v1/models and /v1/chat/completions: roles and a safe num_ctx for
every OpenAI client (n8n's OpenAI Chat Model, LangChain, Open WebUI, the `openai` SDKs).

HTTP only: `role_injector.openai_compat` translates the request into an Ollama /api/chat body, a
virtual model gets its role from `role_injector.ollama_proxy` exactly as on the Ollama proxy, the
body goes to Ollama natively through the forwarding of `web.upstream`, and Ollama's
streamed lines come back as one `chat.completion` or as OpenAI's SSE chunks. Errors are in OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`, with the statuses of `errors.KINDS`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from role_injector import ollama_proxy as proxy
from role_injector import openai_compat as compat
from role_injector.errors import KINDS, RoleInjectorError, UpstreamError, code_of_status
from role_injector.web.bodies import encode_json, parse_ollama_body
from role_injector.web.ollama import DROPPED_HEADER, proxy_body, rewrite_for_virtual, virtual_model
from role_injector.web.state import cache, compute, profiles, roles, settings
from role_injector.web.upstream import Answer, forward_headers, relay, send

openai = Blueprint("openai", __name__)

# Paths of OpenAI's API: answered in OpenAI's error shape even where the worker serves nothing.
PATHS = ("/v1/chat/", "/v1/models", "/v1/completions", "/v1/responses", "/v1/embeddings")
NOT_SERVED = {
    "/v1/responses": "the Responses API is not served here, only Chat Completions: in n8n's OpenAI Chat Model "
                     "turn off 'Use Responses API'",
}
INCOMPLETE = "Ollama's answer ended before it was complete"
MAX_LINE_BYTES = 8 * 1024 * 1024  # one line of Ollama's stream: a piece of the answer


def serves(path: str) -> bool:
    return path.startswith(PATHS)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), status, mimetype="application/json")


def openai_error(exc: RoleInjectorError) -> Response:
    response = _json(compat.error_body(exc.message, exc.kind.openai_type, exc.code, exc.details.get("field")),
                     exc.kind.openai_status)
    if exc.code == "unauthorized":
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


# --- Ollama, upstream ------------------------------------------------------------------------------


def _send(method: str, path: str, body: bytes | None = None) -> Answer:
    return send(method, path, body, forward_headers("application/json" if body is not None else None))


def _relayed_error(answer: Answer) -> Response:
    """Ollama's own refusal (e.g. 404 for a model it does not have) with its status, in OpenAI's shape."""
    try:
        refusal = answer.json(f"{answer.path} error")
    except UpstreamError:
        refusal = None
    message = refusal.get("error") if isinstance(refusal, dict) else None
    if not isinstance(message, str):
        message = f"Ollama answered {answer.status}"
    kind = "invalid_request_error" if answer.status < 500 else "server_error"
    return _json(compat.error_body(message, kind, "model_not_found" if answer.status == 404 else None),
                 answer.status)


def _lines(answer: Answer) -> Iterator[dict[str, Any]]:
    """Ollama's streamed answer as JSON lines; a broken or silent connection is an upstream error."""
    lines = compat.NdjsonLines(MAX_LINE_BYTES)
    with closing(answer.chunks()) as chunks:
        for chunk in chunks:
            yield from lines.feed(chunk)
    yield from lines.end()


def _events(lines: Iterator[dict[str, Any]], stream: compat.ChatStream) -> Iterator[bytes]:
    """SSE events as Ollama's lines arrive. Closing this (the client went away) closes the upstream
    connection."""
    last = b""
    with closing(lines):
        for line in lines:  # read to the end even after the last line: the connection is then reused
            if stream.answer.done:
                continue
            events = stream.events(line)
            if stream.answer.done:
                # Held until Ollama's answer is read to its end: its connection is back in the pool
                # before the client, which stops reading at [DONE], can send its next request.
                last = events
            elif events:
                yield events
        if not stream.answer.done:
            raise UpstreamError(INCOMPLETE)
    yield last


def _error_event(exc: RoleInjectorError) -> bytes:
    """A failure after the first byte: an error event, as OpenAI's clients read them."""
    return compat.sse(compat.error_body(exc.message, exc.kind.openai_type, exc.code))


def _completion(answer: Answer, completion: compat.ChatAnswer) -> dict[str, Any]:
    """The whole answer as one chat.completion."""
    with closing(_lines(answer)) as lines:
        for line in lines:  # to the end, so the connection goes back to the pool
            if not completion.done:
                completion.add(line)
    if not completion.done:
        raise UpstreamError(INCOMPLETE)
    return completion.completion()


# --- routes ----------------------------------------------------------------------------------------


@openai.get("/v1/models")
def models() -> Response:
    answer = _send("GET", "/api/tags")
    if answer.status != 200:
        return _relayed_error(answer)
    return _json(compat.model_list(proxy.tags_response(answer.json("/api/tags"), roles(), profiles())))


@openai.post("/v1/chat/completions")
def chat_completions() -> Response:
    asked = compat.parse_chat_request(parse_ollama_body(proxy_body()))
    virtual = virtual_model(asked.model)
    headers: dict[str, str] = {}
    if virtual is None:
        g.log.update(model=asked.model)
        chat = compute(lambda: compat.plain_chat(asked.chat, profiles(), cache()))
    else:  # the role, the context policy and what is logged, as on the Ollama proxy
        chat, injection = rewrite_for_virtual(proxy.rewrite_chat, asked.chat, virtual)
        headers[DROPPED_HEADER] = str(injection.dropped_messages)
    answer = _send("POST", "/api/chat", encode_json(chat))
    if answer.status != 200:
        response = _relayed_error(answer)
    elif asked.stream:
        stream = compat.ChatStream(compat.ChatAnswer(asked.model), asked.include_usage)
        response = relay(answer, _events(_lines(answer), stream), status=200, error_line=_error_event, headers=[
            ("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])
    else:
        response = _json(_completion(answer, compat.ChatAnswer(asked.model)))
    response.headers.update(headers)
    return response


# --- errors in OpenAI's shape ----------------------------------------------------------------------


@openai.errorhandler(RoleInjectorError)
def library_error(exc: RoleInjectorError) -> Response:
    return openai_error(exc)


@openai.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """Werkzeug's errors (also routing errors on OpenAI's paths, which the app hands here)."""
    status = exc.code or 500
    code = code_of_status(status)
    message = {
        404: NOT_SERVED.get(request.path, f"no such endpoint: {request.method} {request.path}"),
        413: f"the body is larger than {settings().max_proxy_body_bytes} bytes",
    }.get(status, exc.description or exc.name)
    return _json(compat.error_body(message, KINDS[code].openai_type, code), status)


@openai.errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    current_app.logger.exception("unexpected error in the OpenAI-compatible route")
    return _json(compat.error_body("internal error of Role Injector; see the worker's log", "server_error",
                                   "internal_error"), 500)

