"""Forwarding requests to Ollama, for every blueprint that does (the Ollama-compatible proxy, and any
other route that answers with Ollama's help).

    api_path()                                          # the client's path, if it is a plain /api/ path
    answer = send("POST", "/api/chat", body, forward_headers("application/json"))
    return relay(answer)                                # streamed through as it arrives
    data = answer.json("/api/tags")                     # or: read a JSON answer, bounded

- `upstream()`: ROLE_INJECTOR_OLLAMA_URL as an `OllamaUrl` (`role_injector.ollama_url`): every path is
  sent under its base path, its userinfo as Basic auth, and only `shown` appears in messages and logs.
- `send` raises `UpstreamUnreachable` (502), `UpstreamTimeout` (504) or `ClientClosed` (the client
  went away meanwhile: 499, logged only); each blueprint shows these in its own error shape.
- `Answer.chunks()` yields the body in pieces of at most 64 KiB as they arrive (never the whole body
  at once) and raises `UpstreamTimeout` / `UpstreamError` (bad_upstream) when Ollama stalls or breaks
  off; `Answer.json()` reads at most ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES.
- `relay(answer, body=None, ...)` is the Flask response: it waits for the first piece, so a failure
  before any byte is a proper error answer; after that a failure ends the stream with `error_line(exc)`
  (Ollama's `{"error": ...}` line in an NDJSON stream) or cuts the connection, never a truncated body
  that looks complete. `body` may be any iterator made from `answer.chunks()` (e.g. a translated
  stream).

While a request waits on Ollama its client is watched (`client_watch`): when it disconnects, the
connection to Ollama is closed at once, which tells Ollama to stop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from http.client import IncompleteRead
from typing import Any

import urllib3
from flask import Response, request
from urllib3.exceptions import NewConnectionError

from role_injector.errors import (
    ClientClosed,
    InvalidRequest,
    RoleInjectorError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from role_injector.ollama_url import SEGMENT, OllamaUrl
from role_injector.web.client_watch import ClientGone, ClientWatch
from role_injector.web.state import settings

log = logging.getLogger("role_injector.upstream")
# A full pool is normal with many concurrent streams: the extra connection is closed, not kept.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

PIECE = 64 * 1024
POOL_SIZE = 64  # idle keep-alive connections kept per worker process
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade"})
NOT_SENT_UP = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
NOT_SENT_DOWN = HOP_BY_HOP | {"date", "server"}  # gunicorn sets its own
OUR_AUTH = frozenset({"authorization", "x-api-key"})
ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


# --- where Ollama is -------------------------------------------------------------------------------


_parsed: dict[str, OllamaUrl] = {}
_pools: dict[tuple[int, OllamaUrl], urllib3.HTTPConnectionPool] = {}
_pools_lock = threading.Lock()


def upstream() -> OllamaUrl:
    url = settings().ollama_url
    found = _parsed.get(url)
    if found is None:
        found = _parsed[url] = OllamaUrl.parse(url)
    return found


def _pool(target: OllamaUrl) -> urllib3.HTTPConnectionPool:
    """Keep-alive connections to Ollama, per process (gunicorn forks after loading the app).

    urllib3 directly, not `requests` on top of it: `requests` costs 1-2 ms of CPU per forwarded request
    on a small machine, most of the proxy's latency budget (see bench/proxy_bench.py)."""
    key = (os.getpid(), target)
    found = _pools.get(key)
    if found is None:
        with _pools_lock:
            found = _pools.get(key)
            if found is None:
                kind = urllib3.HTTPSConnectionPool if target.scheme == "https" else urllib3.HTTPConnectionPool
                found = _pools[key] = kind(target.host, target.port, maxsize=POOL_SIZE, block=False, retries=False)
    return found


# --- the client's request -------------------------------------------------------------------------


def _raw_path() -> str:
    """The path exactly as the client sent it (before any decoding of escapes)."""
    target = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.path
    if not target.startswith("/"):  # absolute form: http://host/path
        target = "/" + target.split("://", 1)[-1].partition("/")[2]
    return target.split("?", 1)[0].split("#", 1)[0]


def api_path(prefix: str = "/api/") -> str:
    """The request's path, when it is a plain path under `prefix`; else InvalidRequest (400).

    Checked on the raw request target: a dot segment, an escape (`%2e`, `%2f`, `%5c`, `%23`, `%3f`, any
    '%'), a backslash or an empty segment could otherwise name another path upstream than the one
    routed here (skipping a virtual model's role) or leave the configured base path."""
    raw = _raw_path()
    plain = raw.startswith(prefix) and all(SEGMENT.fullmatch(s) for s in raw[1:].split("/"))
    if not plain or raw != request.path:
        raise InvalidRequest(
            f"not an Ollama API path: {raw[:200]!r} (plain segments only: no '.' or '..', '%' escapes, "
            "backslashes or empty segments)",
            details={"path": raw[:200]},
        )
    return raw


def _connection_tokens(headers: Any) -> set[str]:
    return {token.strip().lower() for token in headers.get("Connection", "").split(",") if token.strip()}


def forward_headers(content_type: str | None = None) -> dict[str, str]:
    """The client's headers that Ollama may care about; never this worker's own API key."""
    drop = NOT_SENT_UP | _connection_tokens(request.headers)
    if settings().api_key:
        drop |= OUR_AUTH
    if content_type is not None:
        drop |= {"content-type"}
    headers = {name: value for name, value in request.headers.items() if name.lower() not in drop}
    headers["Accept-Encoding"] = "identity"  # relay bytes as they come
    if content_type is not None:
        headers["Content-Type"] = content_type
    return headers


# --- Ollama's answer ------------------------------------------------------------------------------


# What the person who reads "cannot reach Ollama" can do about it (`make run` sets the variable from OLLAMA_URL).
START_IT = ". Start Ollama there, or point the worker at it: ROLE_INJECTOR_OLLAMA_URL (OLLAMA_URL for make run)"


def _reason(exc: BaseException) -> str:
    short = next((arg for arg in exc.args if isinstance(arg, IncompleteRead)), None)
    if short is not None and short.expected is not None:
        return f"the answer ended {short.expected} bytes short of its length"
    text = str(exc)
    found = ERRNO.search(text)
    if found:
        return found.group(0).strip()
    return text.split(": ", 1)[-1] if ": " in text else type(exc).__name__


class Answer:
    """Ollama's answer: status and headers; the body not read yet."""

    def __init__(self, response: urllib3.BaseHTTPResponse, target: OllamaUrl, path: str,
                 watch: ClientWatch, read_timeout: float) -> None:
        self.response = response
        self.status = response.status
        self.headers = response.headers
        self.target = target
        self.path = path
        self._watch = watch
        self._read_timeout = read_timeout
        self._closed = False

    def close(self, complete: bool = False) -> None:
        """Stop watching the client; hand the connection back to the pool only after a complete body."""
        if self._closed:
            return
        self._closed = True
        self._watch.stop()
        if not complete:
            self.response.close()  # never hand a half-read connection back; closing it tells Ollama to stop
        self.response.release_conn()

    def chunks(self) -> Iterator[bytes]:
        """The body in pieces of at most 64 KiB, each passed on as soon as it arrives."""
        complete = False
        try:
            while self.response.length_remaining != 0:  # (None: chunked, or a body that ends at close)
                with self._watch.waiting():
                    piece = self.response.read1(PIECE)
                if not piece:
                    break
                yield piece
            complete = True
        except (ClientGone, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failure(exc) from None
        finally:
            self.close(complete)

    def json(self, what: str) -> Any:
        """The whole body as JSON, at most ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES; else UpstreamError."""
        limit = settings().max_upstream_json_bytes
        declared = self.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            self.close()
            raise UpstreamError(f"Ollama's {what} answer has {declared} bytes, more than the "
                                f"{limit} that ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES allows")
        data = bytearray()
        for piece in self.chunks():
            data += piece
            if len(data) > limit:
                self.close()
                raise UpstreamError(f"Ollama's {what} answer is larger than the {limit} bytes that "
                                    "ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES allows")
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise UpstreamError(f"Ollama's {what} answer is not JSON (from {self.target.shown})") from None

    def _failure(self, exc: BaseException) -> RoleInjectorError:
        if isinstance(exc, ClientGone) or self._watch.gone:
            return ClientClosed("the client closed the connection while Ollama answered")
        if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
            return UpstreamTimeout(f"Ollama at {self.target.shown} sent nothing for {self._read_timeout:g} s")
        return UpstreamError(f"the connection to Ollama at {self.target.shown} broke off in the answer to "
                             f"{self.path}: {_reason(exc)}")


def send(method: str, path: str, body: bytes | Iterable[bytes] | None = None,
         headers: dict[str, str] | None = None, length: int | None = None) -> Answer:
    """Send a request to Ollama (`path` under the configured base, e.g. '/api/chat', may carry a query)
    and return its answer once the status and headers are in. A streamed `body` of known `length` goes
    as is, not chunked."""
    target = upstream()
    timeout = settings().upstream_timeout
    headers = dict(headers or {})
    if target.authorization:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = target.authorization
    if length is not None:
        headers["Content-Length"] = str(length)
    watch = ClientWatch.start()
    try:
        with watch.waiting():
            response = _pool(target).urlopen(
                method, target.base_path + path, body=body, headers=headers, preload_content=False,
                decode_content=False, redirect=False, retries=False, release_conn=False,
                assert_same_host=False, timeout=urllib3.Timeout(connect=min(timeout, 10.0), read=timeout),
            )
    except BaseException as exc:
        watch.stop()
        if isinstance(exc, ClientGone) or watch.gone:
            raise ClientClosed("the client closed the connection while waiting for Ollama") from None
        if isinstance(exc, NewConnectionError):  # refused, no route, unknown host (before the timeout
            # check: it subclasses ConnectTimeoutError)
            log.warning("ollama unreachable: %s %s%s: %s", method, target.shown, path, _reason(exc))
            raise UpstreamUnreachable(f"cannot reach Ollama at {target.shown}: {_reason(exc)}{START_IT}") from None
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            log.warning("ollama timeout: %s %s%s after %ss", method, target.shown, path, timeout)
            raise UpstreamTimeout(f"Ollama at {target.shown} did not answer within {timeout:g} s") from None
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            log.warning("ollama failed: %s %s%s: %s", method, target.shown, path, _reason(exc))
            raise UpstreamUnreachable(f"cannot reach Ollama at {target.shown}: {_reason(exc)}{START_IT}") from None
        raise
    return Answer(response, target, path, watch, timeout)


def _cut() -> BrokenPipeError:
    """What makes gunicorn drop the client's connection without another byte (it takes EPIPE quietly)."""
    return BrokenPipeError(errno.EPIPE, "answer cut off")


def relay(answer: Answer, body: Iterable[bytes] | None = None, *, status: int | None = None,
          headers: list[tuple[str, str]] | None = None,
          error_line: Callable[[RoleInjectorError], bytes | None] | None = None) -> Response:
    """The answer to the client, streamed: Ollama's status and headers (or the given ones) and `body`
    (default: Ollama's bytes as they come)."""
    pieces = iter(body if body is not None else answer.chunks())
    try:
        first = next(pieces, b"")  # a failure before the first byte is still a proper error answer
    except BaseException:
        answer.close()
        raise
    if headers is None:
        drop = NOT_SENT_DOWN | _connection_tokens(answer.headers)
        headers = [(name, value) for name, value in answer.headers.items() if name.lower() not in drop]

    def stream() -> Iterator[bytes]:
        try:
            if first:
                yield first
            for piece in pieces:
                if piece:
                    yield piece
        except ClientClosed:
            raise _cut() from None
        except RoleInjectorError as exc:
            log.warning("%s: %s", answer.path, exc.message)
            line = error_line(exc) if error_line is not None else None
            if line is None:
                raise _cut() from None
            yield line
        finally:
            answer.close()

    response = Response(stream(), status=status or answer.status, headers=headers, direct_passthrough=True)
    response.call_on_close(answer.close)  # also when the stream is never started
    return response
