"""The Flask app factory: what the requests share (`state`), the blueprints, the Host names answered
without a key (`hosts`), the API key and the metrics key, the plain-path rule of the Ollama API's
paths, the log line of every request, and errors answered in each family's shape (`error_shapes`)."""

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

from role_injector.errors import MAX_DETAIL_CHARS, ConfigError, HostNotAllowed, Unauthorized, bounded
from role_injector.settings import Settings
from role_injector.web import metrics, state
from role_injector.web.docs import docs
from role_injector.web.error_shapes import answer_errors
from role_injector.web.hosts import AllowedHosts, host_name
from role_injector.web.ollama import ollama
from role_injector.web.openai import openai
from role_injector.web.rest import rest
from role_injector.web.role_models import role_models
from role_injector.web.studio import studio
from role_injector.web.upstream import api_path

PROTECTED_PREFIXES = ("/v1/", "/api/")  # REST API, the OpenAI-compatible route and the Ollama-compatible proxy
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


def authorised(api_key: str) -> bool:
    header = request.headers.get("Authorization", "")
    given = header[7:] if header[:7].lower() == "bearer " else request.headers.get("X-API-Key", "")
    # WSGI gives header values as the bytes received, decoded as Latin-1: compare those bytes.
    return hmac.compare_digest(given.encode("latin-1", "replace"), api_key.encode())


def check_api_key(api_key: str | None, variable: str = "ROLE_INJECTOR_API_KEY") -> None:
    """A key that HTTP clients can send as it is, or a clear refusal at start (not a silent lockout)."""
    if api_key is not None and not all("!" <= char <= "~" for char in api_key):
        raise ConfigError(
            f"{variable} may only hold visible ASCII characters (no spaces, no letters "
            "outside ASCII): HTTP clients such as n8n cannot send others in a header"
        )


def logged(key: str, value: Any) -> Any:
    """A value of the request's log line: strings bounded (a client's model name, say), except the
    prompt that ROLE_INJECTOR_LOG_PROMPTS asks for."""
    return bounded(value, MAX_DETAIL_CHARS) if isinstance(value, str) and key != "prompt" else value


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    check_api_key(settings.api_key)
    check_api_key(settings.metrics_key, "ROLE_INJECTOR_METRICS_KEY")
    allowed_hosts = AllowedHosts(settings.allowed_hosts)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.url_map.merge_slashes = False  # '//' is answered by the API (JSON), not redirected (HTML)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    state.install(app, settings)  # a wrong Ollama URL or profile file stops the start, not the first request

    @app.before_request
    def start_log() -> None:
        """The request's timer and the figures its log line will carry."""
        g.started = time.perf_counter()
        g.log = {}

    @app.before_request
    def known_host() -> None:
        """Without an API key, only the Host names the worker answers to (`web/hosts.py`)."""
        host = request.environ.get("HTTP_HOST")
        if not settings.api_key and host not in allowed_hosts:
            name = host_name(host) or host
            raise HostNotAllowed(
                f"this worker has no API key and does not answer to the name {name!r} (a web page could "
                "otherwise reach it through DNS rebinding): add the name to ROLE_INJECTOR_ALLOWED_HOSTS "
                "or set ROLE_INJECTOR_API_KEY", details={"host": name})

    @app.before_request
    def require_key() -> None:
        """The API key, on the API's paths, answered in the shape of the path's clients; on /metrics
        the API key or the metrics key, once either is set."""
        if request.path == "/metrics":
            keys = [key for key in (settings.metrics_key, settings.api_key) if key]
            if keys and not any(authorised(key) for key in keys):
                raise Unauthorized("missing or wrong key for /metrics: send 'Authorization: Bearer <key>' "
                                   "with ROLE_INJECTOR_METRICS_KEY or ROLE_INJECTOR_API_KEY")
        elif settings.api_key and request.path.startswith(PROTECTED_PREFIXES) and not authorised(settings.api_key):
            raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")

    @app.before_request
    def plain_api_path() -> None:
        """Only plain Ollama API paths are served or forwarded, routed or not (`upstream.api_path`)."""
        if request.path.startswith("/api/"):
            api_path()

    for blueprint in (rest, role_models, ollama, studio, docs, openai):
        app.register_blueprint(blueprint)
    answer_errors(app)  # what no blueprint routed: by the path's family

    @app.after_request
    def record(response: Response) -> Response:
        if g.get("retry_after"):  # the worker's CPU pool was full (state.compute): any surface, any shape
            response.headers["Retry-After"] = str(g.retry_after)
        route = request.url_rule.rule if request.url_rule else "unmatched"
        method = request.method if request.method in METHODS else "other"
        metrics.REQUESTS.labels(route, method, str(response.status_code)).inc()
        entry = {"route": route, "method": request.method, "status": response.status_code, "pid": os.getpid(),
                 "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)}
        entry.update({key: logged(key, value) for key, value in g.get("log", {}).items()})
        log.info(json.dumps(entry, ensure_ascii=False))
        return response

    return app
