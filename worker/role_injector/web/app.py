"""The Flask app factory: settings, role store and profiles on the app; errors as JSON."""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import HTTPException

from role_injector.errors import KINDS, ConfigError, RoleInjectorError, Unauthorized, code_of_status
from role_injector.ollama_url import OllamaUrl
from role_injector.settings import Settings
from role_injector.web import metrics, state

PROTECTED_PREFIXES = ("/v1/", "/api/")  # REST API and the Ollama-compatible proxy
# Metric labels: any other method (clients may send any token) is counted as one.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

log = logging.getLogger("role_injector.requests")


class OrjsonProvider(JSONProvider):
    """Responses repeat the system prompt (system, messages, prompt): the stdlib encoder took longer
    than the whole fit, orjson takes a few microseconds."""

    options = orjson.OPT_NON_STR_KEYS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=str, option=self.options).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, default=str, option=self.options), mimetype="application/json"
        )


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The REST error envelope."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    code: str, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> Response:
    response = Response(json.dumps(error_body(code, message, details), ensure_ascii=False),
                        status or KINDS[code].rest_status,
                        mimetype="application/json")
    if code == "unauthorized":
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def authorised(api_key: str) -> bool:
    header = request.headers.get("Authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")
    # WSGI gives header values as the bytes received, decoded as Latin-1: compare those bytes.
    return hmac.compare_digest(given.encode("latin-1", "replace"), api_key.encode())


def check_api_key(api_key: str | None) -> None:
    """A key that HTTP clients can send as it is, or a clear refusal at start (not a silent lockout)."""
    if api_key is not None and not all("!" <= char <= "~" for char in api_key):
        raise ConfigError(
            "ROLE_INJECTOR_API_KEY may only hold visible ASCII characters (no spaces, no letters "
            "outside ASCII): HTTP clients such as n8n cannot send others in a header"
        )


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    check_api_key(settings.api_key)
    OllamaUrl.parse(settings.ollama_url)  # a wrong URL stops the start, not the first request
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.url_map.merge_slashes = False  # '//' is answered by the API (JSON), not redirected (HTML)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state.install(app, settings)

    from role_injector.web import openai
    from role_injector.web.ollama import ollama, ollama_error
    from role_injector.web.rest import rest
    from role_injector.web.role_models import role_models
    from role_injector.web.studio import studio

    app.register_blueprint(rest)
    app.register_blueprint(role_models)
    app.register_blueprint(ollama)
    app.register_blueprint(studio)
    app.register_blueprint(openai.openai)

    @app.before_request
    def check_key() -> Response | None:
        g.started = time.perf_counter()
        g.log = {}
        if settings.api_key and request.path.startswith(PROTECTED_PREFIXES) and not authorised(settings.api_key):
            message = "missing or wrong API key: send 'Authorization: Bearer <key>'"
            if request.path.startswith("/api/"):  # Ollama clients read Ollama's error shape
                return ollama_error(message, 401)
            if openai.serves(request.path):  # and OpenAI clients OpenAI's
                return openai.openai_error(Unauthorized(message))
            return error_response("unauthorized", message)
        return None

    @app.errorhandler(RoleInjectorError)
    def library_error(exc: RoleInjectorError) -> Response:
        return error_response(exc.code, exc.message, exc.details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if openai.serves(request.path):  # a routing error on one of OpenAI's paths
            return openai.http_error(exc)
        status = exc.code or 500
        code = code_of_status(status)
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            413: f"the body is larger than {settings.max_body_bytes} bytes",
        }.get(status, exc.description or exc.name)
        return error_response(code, message, status=status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        app.logger.exception("unexpected error")
        return error_response("internal_error", "internal error; see the worker's log", status=500)

    @app.after_request
    def record(response: Response) -> Response:
        if g.get("retry_after"):  # the worker's CPU pool was full (state.compute): any surface, any shape
            response.headers["Retry-After"] = str(g.retry_after)
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in METHODS else "other"
        metrics.REQUESTS.labels(route, method, str(response.status_code)).inc()
        entry = {"route": route, "method": request.method, "status": response.status_code, "pid": os.getpid(),
                 "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)}
        entry.update(g.get("log", {}))
        log.info(json.dumps(entry, ensure_ascii=False))
        return response

    return app
