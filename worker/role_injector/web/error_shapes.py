"""The three shapes an error takes, one per family of clients, and the one place errors become responses.

- REST (`/v1/*`, the studio): `{"error": {"code", "message", "details"}}` with `KINDS[code].rest_status`;
- Ollama's (`/api/*`, `/`): `{"error": "..."}` with `ollama_status`, and inside an NDJSON stream a
  line `{"error": "..."}` (Ollama's clients raise on it);
- OpenAI's (`/v1/chat/completions`, `/v1/models`, and OpenAI's other paths): `{"error": {"message",
  "type", "param", "code"}}` with `openai_status` and `openai_type`, and inside a stream an SSE event.

A blueprint answers in its shape (`answer_errors(blueprint, shape)`); the app answers what no blueprint
routed (an unknown path, the API key checked before routing) in the shape of the path's family
(`answer_errors(app)`). Errors the HTTP framework raises (routing, body size) take their code from
`errors.code_of_status` and keep their status; anything unexpected is logged and answered as
`internal_error`. Every body goes through the app's JSON provider; `WWW-Authenticate` is set here only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from role_injector.engines.transport import encode_json
from role_injector.errors import KINDS, ErrorKind, RoleInjectorError, code_of_status
from role_injector.openai_compat import error_body, sse

# Paths of OpenAI's API: answered in OpenAI's shape even where the worker serves nothing.
OPENAI_PATHS = ("/v1/chat/", "/v1/models", "/v1/completions", "/v1/responses", "/v1/embeddings")
NOT_SERVED = {
    "/v1/responses": "the Responses API is not served here, only Chat Completions: in n8n's OpenAI Chat Model "
                     "turn off 'Use Responses API'",
}


class InternalError(RoleInjectorError):
    """A defect: what the client is told instead of the trace, which only the log has."""

    code = "internal_error"


class FrameworkError(RoleInjectorError):
    """An error the HTTP framework raised (routing, body size): its code of KINDS, its own status."""

    def __init__(self, exc: HTTPException) -> None:
        self.status = exc.code or 500
        self.code = code_of_status(self.status)
        limit = request.max_content_length
        message = {
            404: NOT_SERVED.get(request.path, f"no such endpoint: {request.method} {request.path}"),
            413: f"the body is larger than {limit} bytes",
        }.get(self.status, exc.description or exc.name)
        super().__init__(message)

    @property
    def kind(self) -> ErrorKind:
        return dataclasses.replace(KINDS[self.code], rest_status=self.status, ollama_status=self.status)


@dataclass(frozen=True)
class ErrorShape:
    """How one family of clients reads an error: the body and status of an answer, and the line that
    reports a failure inside a stream already under way."""

    name: str
    body: Callable[[RoleInjectorError], dict[str, Any]]
    status: Callable[[ErrorKind], int]
    stream_line: Callable[[RoleInjectorError], bytes]
    internal: str  # what an unexpected error says


REST = ErrorShape(
    "REST",
    body=lambda exc: {"error": {"code": exc.code, "message": exc.message, "details": exc.details}},
    status=lambda kind: kind.rest_status,
    stream_line=lambda exc: encode_json({"error": {"code": exc.code, "message": exc.message,
                                                   "details": exc.details}}) + b"\n",
    internal="internal error; see the worker's log",
)
OLLAMA = ErrorShape(
    "Ollama",
    body=lambda exc: {"error": exc.message},
    status=lambda kind: kind.ollama_status,
    stream_line=lambda exc: encode_json({"error": exc.message}) + b"\n",
    internal="internal error of the Role Injector proxy; see the worker's log",
)
OPENAI = ErrorShape(
    "OpenAI",
    body=lambda exc: error_body(exc.message, exc.kind.openai_type, exc.code, exc.details.get("field")),
    status=lambda kind: kind.openai_status,
    stream_line=lambda exc: sse(error_body(exc.message, exc.kind.openai_type, exc.code)),
    internal="internal error of Role Injector; see the worker's log",
)


def shape_of_path(path: str) -> ErrorShape:
    """The shape of a path no blueprint routed, by the family its clients belong to."""
    if path.startswith("/api/"):
        return OLLAMA
    return OPENAI if path.startswith(OPENAI_PATHS) else REST


def respond(shape: ErrorShape, exc: RoleInjectorError) -> Response:
    response = current_app.json.response(shape.body(exc))
    response.status_code = shape.status(exc.kind)
    if exc.code == "unauthorized":
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def answer_errors(owner: Flask | Blueprint, shape: ErrorShape | None = None) -> None:
    """Answer the errors of `owner`'s routes in `shape` (the app: by the path's family)."""

    def chosen() -> ErrorShape:
        return shape or shape_of_path(request.path)

    @owner.errorhandler(RoleInjectorError)
    def library_error(exc: RoleInjectorError) -> Response:
        return respond(chosen(), exc)

    @owner.errorhandler(HTTPException)
    def framework_error(exc: HTTPException) -> Response:
        return respond(chosen(), FrameworkError(exc))

    @owner.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        answered = chosen()
        current_app.logger.exception("unexpected error (answered in %s's shape)", answered.name)
        return respond(answered, InternalError(answered.internal))
