"""The Ollama-compatible proxy (/api/*): roles for every Ollama client.

HTTP only: read the client's request, let `role_injector.ollama_proxy` rewrite bodies for virtual
models, forward to Ollama (ROLE_INJECTOR_OLLAMA_URL) and relay the answer chunk by chunk as it
arrives. Requests on plain models, and every other path under /api/, go through untouched.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

import urllib3
from flask import Blueprint, Response, current_app, g, redirect, request
from urllib3 import HTTPResponse
from urllib3.exceptions import NewConnectionError
from werkzeug.exceptions import HTTPException

from role_injector import ollama_proxy as proxy
from role_injector.context import policy_name
from role_injector.errors import InvalidRequest, RoleInjectorError
from role_injector.profiles import VirtualModel
from role_injector.web import metrics
from role_injector.web.bodies import encode_json, parse_ollama_body, read_body
from role_injector.web.state import profiles, roles, settings
from role_injector.web.studio import wants_page

ollama = Blueprint("ollama", __name__)
log = logging.getLogger("role_injector.ollama")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade"})
NOT_SENT_UP = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
NOT_SENT_DOWN = HOP_BY_HOP | {"date", "server"}  # gunicorn sets its own
OUR_AUTH = frozenset({"authorization", "x-api-key"})
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")
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


# --- connections to Ollama, per process -----------------------------------------------------------


_pools: dict[int, urllib3.PoolManager] = {}
_pools_lock = threading.Lock()


def pool() -> urllib3.PoolManager:
    """Keep-alive connections to Ollama, one pool per process (gunicorn forks after loading the app).

    urllib3 directly, not `requests` on top of it: `requests` costs 1-2 ms of CPU per forwarded
    request on a small machine, most of the proxy's latency budget (see bench/proxy_bench.py)."""
    pid = os.getpid()
    found = _pools.get(pid)
    if found is None:
        with _pools_lock:
            found = _pools.get(pid)
            if found is None:
                found = _pools[pid] = urllib3.PoolManager(num_pools=4, maxsize=32, retries=False)
    return found


# --- forwarding -----------------------------------------------------------------------------------


def _connection_tokens(headers: Any) -> set[str]:
    return {token.strip().lower() for token in headers.get("Connection", "").split(",") if token.strip()}


def upstream_headers(content_type: str | None = None) -> dict[str, str]:
    """The client's headers that Ollama may care about; never our own API key."""
    drop = NOT_SENT_UP | _connection_tokens(request.headers)
    if settings().api_key:
        drop |= OUR_AUTH
    headers = {name: value for name, value in request.headers.items() if name.lower() not in drop}
    headers["Accept-Encoding"] = "identity"  # relay bytes as they come
    if content_type is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
    return headers


def _reason(exc: BaseException) -> str:
    text = str(exc)
    found = ERRNO.search(text)
    if found:
        return found.group(0).strip()
    return text.split(": ", 1)[-1] if ": " in text else type(exc).__name__


def send(method: str, path: str, body: Any = None, content_type: str | None = None,
         length: int | None = None) -> HTTPResponse | Response:
    """The upstream response (body not read yet), or our error response when Ollama cannot answer."""
    config = settings()
    url = config.ollama_url + path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    timeout = config.upstream_timeout
    headers = upstream_headers(content_type)
    if length is not None:  # a streamed body of known length goes as is, not chunked
        headers["Content-Length"] = str(length)
    try:
        return pool().request(
            method, url, body=body, headers=headers, preload_content=False,
            decode_content=False, redirect=False, retries=False,
            timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
        )
    except NewConnectionError as exc:  # refused, no route, unknown host (before any timeout check:
        log.warning("ollama unreachable: %s %s: %s", method, url, exc)  # it subclasses ConnectTimeoutError)
        return ollama_error(f"cannot reach Ollama at {config.ollama_url}: {_reason(exc)}", 502)
    except urllib3.exceptions.TimeoutError:
        log.warning("ollama timeout: %s %s after %ss", method, url, timeout)
        return ollama_error(f"Ollama at {config.ollama_url} did not answer within {timeout:g} s", 504)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning("ollama failed: %s %s: %s", method, url, exc)
        return ollama_error(f"cannot reach Ollama at {config.ollama_url}: {_reason(exc)}", 502)


def _chunks(upstream: HTTPResponse, ndjson: bool, ollama_url: str, timeout: float) -> Iterator[bytes]:
    """Upstream body chunks as they arrive. Closing this generator (the client went away) closes
    the upstream connection, which tells Ollama to stop."""
    complete = False
    try:
        for chunk in upstream.stream(None, decode_content=False):
            if chunk:
                yield chunk
        complete = True
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning("ollama broke off %s: %s", upstream.url, exc)
        if not ndjson:
            raise  # the client sees a cut connection, not a truncated body that looks complete
        # Ollama reports errors inside a stream as a line {"error": "..."}; its clients raise on it.
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            message = f"Ollama at {ollama_url} sent nothing for {timeout:g} s"
        else:
            message = f"the connection to Ollama at {ollama_url} broke: {_reason(exc)}"
        yield (json.dumps({"error": message}) + "\n").encode()
    finally:
        if not complete:
            upstream.close()  # never hand a half-read connection back to the pool
        upstream.release_conn()


def relay(upstream: HTTPResponse | Response) -> Response:
    """Ollama's answer to the client: status, headers that matter, body streamed through as is."""
    if isinstance(upstream, Response):
        return upstream
    drop = NOT_SENT_DOWN | _connection_tokens(upstream.headers)
    headers = [(name, value) for name, value in upstream.headers.items() if name.lower() not in drop]
    ndjson = "ndjson" in upstream.headers.get("Content-Type", "")
    config = settings()  # read now: the body is sent after this request's context is gone
    body = _chunks(upstream, ndjson, config.ollama_url, config.upstream_timeout)
    return Response(body, status=upstream.status, headers=headers, direct_passthrough=True)


def proxy_body() -> bytes:
    return read_body(settings().max_proxy_body_bytes)  # larger than the REST limit: images


def _upstream_json(upstream: HTTPResponse) -> Any:
    try:
        return json.loads(upstream.read())
    except (ValueError, urllib3.exceptions.HTTPError, OSError):
        return None
    finally:
        upstream.release_conn()


# --- routes ---------------------------------------------------------------------------------------


def _virtual(body: dict[str, Any]) -> VirtualModel | None:
    virtual = proxy.resolve_virtual(profiles(), body.get(proxy.model_field(body)))
    if virtual is not None:
        g.log.update(model=virtual.name, base=virtual.base, role=virtual.role)
    return virtual


def _context_policy() -> str | None:
    value = request.headers.get(POLICY_HEADER)
    if value is None:
        return None
    try:
        return policy_name(value.strip())
    except ValueError as exc:
        raise InvalidRequest(f"header {POLICY_HEADER} {exc}", details={"header": POLICY_HEADER}) from None


def _completion(path: str, rewrite: Any) -> Response:
    raw = proxy_body()
    body = parse_ollama_body(raw)
    virtual = _virtual(body)
    if virtual is None:
        return relay(send("POST", path, raw))  # a plain model: the client's bytes, untouched
    with metrics.injection(virtual.role) as record:
        upstream_body, injection = rewrite(body, roles(), profiles(), virtual, _context_policy())
        record(injection)
    g.log.update(system_tokens=injection.usage.system_tokens, trimmed=injection.fit.trimmed,
                 context_policy=injection.usage.context_policy, dropped_messages=injection.dropped_messages)
    response = relay(send("POST", path, encode_json(upstream_body), "application/json"))
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
    virtual = _virtual(body)
    if virtual is None:
        return relay(send("POST", "/api/show", raw))
    upstream = send("POST", "/api/show", encode_json(proxy.rewrite_show(body, virtual)), "application/json")
    if isinstance(upstream, Response) or upstream.status != 200:
        return relay(upstream)
    answer = _upstream_json(upstream)
    return Response(json.dumps(proxy.show_response(answer, roles(), profiles(), virtual), ensure_ascii=False),
                    200, mimetype="application/json")


@ollama.get("/api/tags")
def tags() -> Response:
    upstream = send("GET", "/api/tags")
    if isinstance(upstream, Response) or upstream.status != 200:
        return relay(upstream)
    answer = proxy.tags_response(_upstream_json(upstream), roles(), profiles())
    return Response(json.dumps(answer, ensure_ascii=False), 200, mimetype="application/json")


@ollama.route("/", methods=["GET", "HEAD"])
def heartbeat() -> Response:
    """Ollama answers "Ollama is running" here; the `ollama` CLI checks it before every command.
    A browser (it asks for text/html) is sent to the role studio instead."""
    if request.method == "GET" and wants_page():
        return redirect("studio/", 302)  # relative: right behind a proxy that mounts the worker on a sub-path
    return relay(send(request.method, "/"))


@ollama.route("/api/<path:rest>", methods=ALL_METHODS)
def passthrough(rest: str) -> Response:
    path = "/api/" + rest
    if request.method == "POST" and path.startswith("/api/blobs/"):
        # Model layers for `ollama create` can be gigabytes: stream them, never hold them.
        request.max_content_length = sys.maxsize  # (None would mean the app's limit)
        stream = request.stream
        return relay(send("POST", path, iter(lambda: stream.read(1 << 16), b""), length=request.content_length))
    return relay(send(request.method, path, proxy_body() or None))


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
