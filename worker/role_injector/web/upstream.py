"""Forwarding a client's request to the engine, for every blueprint that does (the Ollama-compatible
proxy, the OpenAI-compatible route): the Flask side of `role_injector.engines.transport`.

    api_path()                                          # the client's path, if it is a plain /api/ path
    answer = send("POST", "/api/chat", body, forward_headers("application/json"))
    return relay(answer)                                # streamed through as it arrives

- `send` goes through the app's engine's transport (`state.engine()`) with the client watched
  (`client_watch`): when the client disconnects while the engine is silent, the connection to the
  engine is closed at once, which tells it to stop; the request ends with `ClientClosed` (499, logged).
- `relay(answer, body=None, ...)` is the Flask response: it waits for the first piece, so a failure
  before any byte is a proper error answer (JSON 502/504 in the blueprint's shape); after that a
  failure ends the stream with `error_line(exc)` (the shape's stream line) or cuts the connection,
  never a truncated body that looks complete. `body` may be any iterator made from `answer.chunks()`
  (e.g. a translated stream).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Response, request

from role_injector.engines.transport import Answer
from role_injector.engines.url import SEGMENT
from role_injector.errors import ClientClosed, InvalidRequest, RoleInjectorError
from role_injector.web.client_watch import ClientWatch
from role_injector.web.state import engine, settings

log = logging.getLogger("role_injector.upstream")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade"})
NOT_SENT_UP = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
NOT_SENT_DOWN = HOP_BY_HOP | {"date", "server"}  # gunicorn sets its own
OUR_AUTH = frozenset({"authorization", "x-api-key"})


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
    """The client's headers that the engine may care about; never this worker's own API key."""
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


def send(method: str, path: str, body: bytes | Iterable[bytes] | None = None,
         headers: dict[str, str] | None = None, length: int | None = None) -> Answer:
    """Send a request to the engine (see `Transport.send`), the client watched while it waits."""
    return engine().transport.send(method, path, body, headers, length, watch=ClientWatch.start())


def _cut() -> BrokenPipeError:
    """What makes gunicorn drop the client's connection without another byte (it takes EPIPE quietly)."""
    return BrokenPipeError(errno.EPIPE, "answer cut off")


def relay(answer: Answer, body: Iterable[bytes] | None = None, *, status: int | None = None,
          headers: list[tuple[str, str]] | None = None,
          error_line: Callable[[RoleInjectorError], bytes | None] | None = None) -> Response:
    """The answer to the client, streamed: the engine's status and headers (or the given ones) and
    `body` (default: the engine's bytes as they come)."""
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
