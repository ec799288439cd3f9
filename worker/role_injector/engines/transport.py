"""HTTP to an engine, for every caller (the proxies, the OpenAI route, model creation, the CLI): one
way to send a request and read its answer within bounds.

    transport = Transport(EngineUrl.parse(url), "Ollama", timeout=300, max_json_bytes=16 << 20)
    answer = transport.send("POST", "/api/chat", body, {"Content-Type": "application/json"})
    for piece in answer.chunks(): ...                   # at most 64 KiB each, as they arrive
    data = answer.json("/api/tags")                     # or the whole body, bounded
    props = transport.request_json("GET", "/props")     # a whole JSON exchange; an error status raises

- Every path goes under the URL's base path; the URL's userinfo is sent as Basic auth (an API key,
  when given, as a Bearer token instead), and only `EngineUrl.shown` appears in messages, logs and
  details.
- `send` raises `UpstreamUnreachable` (refused, no route, unknown host), `UpstreamTimeout` (no status
  within the timeout) or `ClientClosed` (the caller's client went away meanwhile, as its `Watch` says).
  A request whose connection the engine closes before answering is sent once more on a new connection
  when its body can be sent again (bytes): a kept-alive connection the engine dropped without saying so.
- `Answer.chunks()` raises `UpstreamTimeout` when the engine falls silent for the timeout and
  `UpstreamError` (bad_upstream, retriable) when it breaks off; `Answer.body()`/`json()` read at most
  `max_json_bytes` (ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES). A connection goes back to the pool only
  after a complete body; closing an answer early closes its connection, which tells the engine to stop.
- `Watch`: whoever waits may be interrupted while the transport waits on the engine (the web layer's
  `client_watch` raises into the request when its client disconnects); by default nothing watches.

urllib3 directly, not `requests` on top of it: `requests` costs 1-2 ms of CPU per forwarded request on a
small machine, most of the proxy's latency budget (see bench/proxy_bench.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from http.client import IncompleteRead, RemoteDisconnected
from typing import Any, Protocol

import orjson
import urllib3
from urllib3.exceptions import NewConnectionError

from role_injector.engines.url import EngineUrl
from role_injector.errors import (
    ClientClosed,
    RoleInjectorError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from role_injector.json_text import parse_engine_json

log = logging.getLogger("role_injector.upstream")
# A full pool is normal with many concurrent streams: the extra connection is closed, not kept.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

PIECE = 64 * 1024
REFUSAL_CHARS = 300  # of an engine's error answer, in a message
ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")


def encode_json(body: Any) -> bytes:
    """A JSON body to send on: compact, UTF-8. orjson is ten times faster than the stdlib on the large
    bodies the proxy re-encodes (images); integers beyond 64 bits, which it refuses, take the stdlib."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class Watch(Protocol):
    """Someone who may stop waiting for the engine: `gone` once they did (set before anything is raised
    into the waiting code)."""

    gone: bool

    def waiting(self) -> AbstractContextManager[None]: ...

    def stop(self) -> None: ...


class Unwatched:
    """Nobody to watch: a caller that waits for the engine as long as the timeout allows."""

    gone = False

    def waiting(self) -> AbstractContextManager[None]:
        return nullcontext()

    def stop(self) -> None:
        return None


def _closed_before_answering(exc: BaseException) -> bool:
    """The engine closed the connection before a byte of its answer: what a pooled keep-alive connection
    does when the engine dropped it after its last answer without saying so (llama-server closes every
    connection after a streamed answer, with no `Connection: close`), racing its reuse."""
    cause = exc.args[1] if isinstance(exc, urllib3.exceptions.ProtocolError) and len(exc.args) > 1 else None
    return isinstance(cause, RemoteDisconnected | ConnectionResetError | BrokenPipeError)


def _reason(exc: BaseException) -> str:
    short = next((arg for arg in exc.args if isinstance(arg, IncompleteRead)), None)
    if short is not None and short.expected is not None:
        return f"the answer ended {short.expected} bytes short of its length"
    text = str(exc)
    found = ERRNO.search(text)
    if found:
        return found.group(0).strip()
    return text.split(": ", 1)[-1] if ": " in text else type(exc).__name__


class Transport:
    """Requests to one engine, over keep-alive connections kept per process (gunicorn forks after
    loading the app, so each worker makes its own pool on first use)."""

    def __init__(self, url: EngineUrl, label: str, *, timeout: float, max_json_bytes: int,
                 pool_size: int = 64, api_key: str | None = None, unreachable_hint: str = "") -> None:
        self.url = url
        self.label = label  # how messages name the engine: "Ollama"
        self._authorization = f"Bearer {api_key}" if api_key else url.authorization  # never shown
        # What the person who reads "cannot reach ..." can do about it, e.g. the setting to change.
        self.unreachable_hint = unreachable_hint
        self.timeout = timeout
        self.max_json_bytes = max_json_bytes
        self.pool_size = pool_size
        self._pools: dict[int, urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Transport({self.label} at {self.url.shown})"

    @property
    def where(self) -> str:
        """The engine in messages: `Ollama at http://host:11434` (never the URL's userinfo)."""
        return f"{self.label} at {self.url.shown}"

    def _pool(self) -> urllib3.HTTPConnectionPool:
        pid = os.getpid()
        found = self._pools.get(pid)
        if found is None:
            with self._lock:
                found = self._pools.get(pid)
                if found is None:
                    kind = urllib3.HTTPSConnectionPool if self.url.scheme == "https" else urllib3.HTTPConnectionPool
                    found = self._pools[pid] = kind(self.url.host, self.url.port, maxsize=self.pool_size,
                                                    block=False, retries=False)
        return found

    def close(self) -> None:
        """Close this process's pooled connections (a transport made for one task)."""
        found = self._pools.pop(os.getpid(), None)
        if found is not None:
            found.close()

    def send(self, method: str, path: str, body: bytes | Iterable[bytes] | Any = None,
             headers: Mapping[str, str] | None = None, length: int | None = None,
             watch: Watch | None = None) -> Answer:
        """Send a request (`path` under the base path, e.g. '/api/chat', may carry a query) and return
        the answer once its status and headers are in. A streamed `body` (an iterable or a file) of
        known `length` goes as it is, not chunked."""
        watch = watch or Unwatched()
        sent = dict(headers or {})
        if self._authorization:
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            sent["Authorization"] = self._authorization
        if length is not None:
            sent["Content-Length"] = str(length)
        replayable = body is None or isinstance(body, bytes)
        for attempt in (1, 2):
            try:
                with watch.waiting():
                    response = self._pool().urlopen(
                        method, self.url.base_path + path, body=body, headers=sent, preload_content=False,
                        decode_content=False, redirect=False, retries=False, release_conn=False,
                        assert_same_host=False, timeout=urllib3.Timeout(connect=min(self.timeout, 10.0),
                                                                        read=self.timeout),
                    )
                return Answer(response, self, path, watch)
            except BaseException as exc:
                if attempt == 1 and replayable and _closed_before_answering(exc) and not watch.gone:
                    continue  # a kept-alive connection the engine had closed: once more, on a new one
                watch.stop()
                raise self._send_failure(exc, method, path, watch) from None
        raise AssertionError("unreachable")

    def request_json(self, method: str, path: str, body: bytes | None = None,
                     headers: Mapping[str, str] | None = None) -> Any:
        """One JSON exchange (an engine's /props, /tokenize) of a body already encoded (`encode_json`),
        with `headers` besides its content type: the parsed JSON of a 2xx answer, read within
        `max_json_bytes`. An error status is `UpstreamRefused` with the start of the engine's message and
        `details["status"]`; the rest as `send` and `Answer.json`."""
        sent = {**(headers or {}), **({"Content-Type": "application/json"} if body is not None else {})}
        answer = self.send(method, path, body, sent)
        if not 200 <= answer.status < 300:
            text = answer.body(f"{path} error").decode("utf-8", "replace").strip()
            log.warning("%s refused %s %s%s: %s %s", self.label, method, self.url.shown, path, answer.status,
                        text[:REFUSAL_CHARS])
            raise UpstreamRefused(f"{self.where} answered {method} {path} with {answer.status}"
                                  + (f": {text[:REFUSAL_CHARS]}" if text else ""),
                                  details={"status": answer.status, "url": self.url.shown})
        return answer.json(path)

    def _send_failure(self, exc: BaseException, method: str, path: str, watch: Watch) -> BaseException:
        if watch.gone:
            return ClientClosed(f"the client closed the connection while waiting for {self.label}")
        if isinstance(exc, NewConnectionError):  # refused, no route, unknown host (before the timeout
            # check: it subclasses ConnectTimeoutError)
            log.warning("%s unreachable: %s %s%s: %s", self.label, method, self.url.shown, path, _reason(exc))
            return UpstreamUnreachable(f"cannot reach {self.where}: {_reason(exc)}{self.unreachable_hint}",
                                       details={"url": self.url.shown})
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            log.warning("%s timeout: %s %s%s after %ss", self.label, method, self.url.shown, path, self.timeout)
            return UpstreamTimeout(f"{self.where} did not answer within {self.timeout:g} s",
                                   details={"url": self.url.shown})
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            log.warning("%s failed: %s %s%s: %s", self.label, method, self.url.shown, path, _reason(exc))
            return UpstreamUnreachable(f"cannot reach {self.where}: {_reason(exc)}{self.unreachable_hint}",
                                       details={"url": self.url.shown})
        return exc


class Answer:
    """An engine's answer: status and headers; the body not read yet."""

    def __init__(self, response: urllib3.BaseHTTPResponse, transport: Transport, path: str, watch: Watch) -> None:
        self.response = response
        self.status = response.status
        self.headers = response.headers
        self.transport = transport
        self.path = path
        self._watch = watch
        self._closed = False

    def close(self, complete: bool = False) -> None:
        """Stop watching; hand the connection back to the pool only after a complete body."""
        if self._closed:
            return
        self._closed = True
        self._watch.stop()
        if not complete:
            self.response.close()  # never hand a half-read connection back; closing it tells the engine to stop
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
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._failure(exc) from None
        except Exception:  # what a watch raises into the waiting code when its client left
            if self._watch.gone:
                raise self._failure(None) from None
            raise
        finally:
            self.close(complete)

    def body(self, what: str) -> bytes:
        """The whole body, at most the transport's `max_json_bytes`; else UpstreamError."""
        limit = self.transport.max_json_bytes
        declared = self.headers.get("Content-Length", "")
        label = self.transport.label
        if declared.isdigit() and int(declared) > limit:
            self.close()
            raise UpstreamError(f"{label}'s {what} answer has {declared} bytes, more than the "
                                f"{limit} that ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES allows")
        data = bytearray()
        for piece in self.chunks():
            data += piece
            if len(data) > limit:
                self.close()
                raise UpstreamError(f"{label}'s {what} answer is larger than the {limit} bytes that "
                                    "ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES allows")
        return bytes(data)

    def json(self, what: str) -> Any:
        """The whole body as JSON, bounded as `body`; else UpstreamError."""
        data = self.body(what)
        try:
            return parse_engine_json(data)
        except (ValueError, RecursionError):
            raise UpstreamError(f"{self.transport.label}'s {what} answer is not JSON "
                                f"(from {self.transport.url.shown})") from None

    def _failure(self, exc: BaseException | None) -> RoleInjectorError:
        transport = self.transport
        if exc is None or self._watch.gone:
            return ClientClosed(f"the client closed the connection while {transport.label} answered")
        if isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError):
            return UpstreamTimeout(f"{transport.where} sent nothing for {transport.timeout:g} s",
                                   details={"url": transport.url.shown})
        return UpstreamError(f"the connection to {transport.where} broke off in the answer to {self.path}: "
                             f"{_reason(exc)}", details={"url": transport.url.shown, "retriable": True})
