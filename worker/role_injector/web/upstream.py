"""Forwarding a client's request to the engine, for every blueprint that does (the Ollama-compatible
proxy, the OpenAI-compatible route): the Flask side of `role_injector.engines.transport`.

    api_path()                                          # the client's path, if it is a plain /api/ path
    answer = send(engine, "POST", "/api/chat", body, forward_headers("application/json"))
    return relay(answer)                                # relayed as it arrives (a stream) or read whole

- `send` goes through the engine's transport (one of `state.engines()`) with the client watched
  (`client_watch`): when the client disconnects while the engine is silent, the connection to the
  engine is closed at once, which tells it to stop; the request ends with `ClientClosed` (499, logged).
- `relay(answer, body=None, ...)` is the Flask response. Before the status goes out it waits for the
  first piece of a stream (NDJSON, SSE) and reads any other answer whole (up to
  ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES; a larger one is relayed as it comes), so a failure until then
  is a proper error answer (JSON 502/504 in the blueprint's shape), never a 200 with a cut body. After
  that a failure of any kind ends the stream with the shape's stream line (Ollama's error line, an SSE
  error event) or, where the answer has no such line, cuts the connection: never a truncated body that
  looks complete. `body` may be any iterator made from `answer.chunks()` (e.g. a translated stream).
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from flask import Response, request

from role_injector.engines.engine import Engine
from role_injector.engines.lines import MAX_LINE_BYTES
from role_injector.engines.transport import Answer
from role_injector.engines.url import SEGMENT
from role_injector.errors import ClientClosed, InvalidRequest, RoleInjectorError
from role_injector.web.client_watch import ClientWatch
from role_injector.web.error_shapes import ErrorShape, InternalError
from role_injector.web.state import settings

log = logging.getLogger("role_injector.upstream")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "trailers", "transfer-encoding", "upgrade"})
NOT_SENT_UP = HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
NOT_SENT_DOWN = HOP_BY_HOP | {"date", "server"}  # gunicorn sets its own
OUR_AUTH = frozenset({"authorization", "x-api-key"})
STREAM_TYPES = ("application/x-ndjson", "text/event-stream")  # answers relayed piece by piece as they come


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


def forward_headers(content_type: str | None = None, over: Mapping[str, str] | None = None) -> dict[str, str]:
    """The client's headers that the engine may care about, with `over` (the engine's own: a routing
    key) in place of any of the client's of the same names; never this worker's own API key."""
    over = over or {}
    drop = NOT_SENT_UP | _connection_tokens(request.headers) | {name.lower() for name in over}
    if settings().api_key:
        drop |= OUR_AUTH
    if content_type is not None:
        drop |= {"content-type"}
    headers = {name: value for name, value in request.headers.items() if name.lower() not in drop}
    headers["Accept-Encoding"] = "identity"  # relay bytes as they come
    if content_type is not None:
        headers["Content-Type"] = content_type
    return {**headers, **over}


def send(engine: Engine, method: str, path: str, body: bytes | Iterable[bytes] | None = None,
         headers: dict[str, str] | None = None, length: int | None = None) -> Answer:
    """Send a request to `engine` (see `Transport.send`), the client watched while it waits."""
    return engine.transport.send(method, path, body, headers, length, watch=ClientWatch.start())


def _cut() -> BrokenPipeError:
    """What makes gunicorn drop the client's connection without another byte (it takes EPIPE quietly)."""
    return BrokenPipeError(errno.EPIPE, "answer cut off")


class WholeLines:
    """A line-by-line stream passed on in whole lines, so that an error line after a failure follows no
    half line of the engine's (a line longer than `lines.MAX_LINE_BYTES` goes on as it comes)."""

    def __init__(self) -> None:
        self.held = bytearray()  # the start of a line not complete yet
        self.mid_line = False  # what went out ends inside a line (one that was too long to hold)

    def feed(self, piece: bytes) -> bytes:
        end = piece.rfind(b"\n") + 1
        if end == 0:
            self.held += piece
            if len(self.held) <= MAX_LINE_BYTES:
                return b""
            out, self.mid_line = bytes(self.held), True
            self.held.clear()
            return out
        out = bytes(self.held) + piece[:end]
        self.held[:] = piece[end:]
        self.mid_line = False
        return out

    def rest(self) -> bytes:
        out = bytes(self.held)
        self.held.clear()
        return out

    def ending(self) -> bytes:
        """What goes before an error line: a newline if the last line went out unfinished (a line
        broken off halfway is dropped)."""
        self.held.clear()
        return b"\n" if self.mid_line else b""


def is_stream(answer: Answer) -> bool:
    """Whether the engine streams this answer (NDJSON, SSE), rather than sending one body."""
    return answer.headers.get("Content-Type", "").split(";")[0].strip().lower() in STREAM_TYPES


def _first(answer: Answer, pieces: Iterator[bytes], whole: bool) -> bytes:
    """What goes out with the status: the first piece, or (`whole`) the whole body when it ends within
    the transport's `max_json_bytes` (else as much, the rest relayed as it comes)."""
    if not whole:
        return next(pieces, b"")
    limit = answer.transport.max_json_bytes
    declared = answer.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        return next(pieces, b"")
    held = bytearray()
    for piece in pieces:
        held += piece
        if len(held) > limit:
            break
    return bytes(held)


def relay(answer: Answer, body: Iterable[bytes] | None = None, *, status: int | None = None,
          headers: list[tuple[str, str]] | None = None, shape: ErrorShape | None = None) -> Response:
    """The answer to the client: the engine's status and headers (or the given ones) and `body`
    (default: the engine's bytes, read whole first unless the engine streams them). A failure after
    the status went out ends a stream in `shape` with its stream line (without a shape: the
    connection is cut)."""
    pieces = iter(body if body is not None else answer.chunks())
    try:
        first = _first(answer, pieces, whole=body is None and not is_stream(answer))
    except BaseException:
        answer.close()
        raise
    if headers is None:
        drop = NOT_SENT_DOWN | _connection_tokens(answer.headers)
        if shape is not None:  # relayed chunked, so that a failure can still add its error line
            drop |= {"content-length"}
        headers = [(name, value) for name, value in answer.headers.items() if name.lower() not in drop]

    lines = WholeLines() if shape is not None else None

    def ending(exc: RoleInjectorError) -> bytes:
        if shape is None or lines is None:
            raise _cut() from None
        return lines.ending() + shape.stream_line(exc)

    def stream() -> Iterator[bytes]:
        try:
            for piece in itertools.chain((first,), pieces):
                out = lines.feed(piece) if lines is not None else piece
                if out:
                    yield out
            if lines is not None and lines.held:
                yield lines.rest()  # a last line without its newline, as it came
        except ClientClosed:
            raise _cut() from None
        except RoleInjectorError as exc:
            log.warning("%s: %s", answer.path, exc.message)
            yield ending(exc)
        except Exception:  # a defect: the client still learns the answer ended in an error
            log.exception("relaying the answer to %s failed", answer.path)
            yield ending(InternalError(shape.internal if shape is not None else ""))
        finally:
            answer.close()

    response = Response(stream(), status=status or answer.status, headers=headers, direct_passthrough=True)
    response.call_on_close(answer.close)  # also when the stream is never started
    return response
