"""An engine's streamed answer as JSON objects, line by line, whatever pieces the bytes arrive in:
NDJSON (Ollama: one object a line) or server-sent events (OpenAI-compatible servers: `data: {…}`
lines, `data: [DONE]` last). Every line is bounded; what is not a JSON object is an `UpstreamError`; strings are text
(`json_text.parse_engine_json`: a lone surrogate is U+FFFD).
The engine decides what an object means (an error line, the last one)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

from role_injector.errors import UpstreamError
from role_injector.json_text import parse_engine_json

LineFormat = Literal["ndjson", "sse"]
MAX_LINE_BYTES = 8 * 1024 * 1024  # one line of a stream: a piece of the answer
SSE_DONE = b"[DONE]"


class LineReader:
    """Fed an answer's bytes in pieces as they arrive, yields its JSON objects; a line longer than
    `limit` bytes or one that is not a JSON object is an `UpstreamError` naming `label`."""

    def __init__(self, format: LineFormat, label: str, limit: int = MAX_LINE_BYTES) -> None:
        self.format = format
        self.label = label
        self.limit = limit
        self.done = False  # SSE: `data: [DONE]` was read
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        if len(self._pending) > self.limit:
            raise UpstreamError(f"{self.label} sent a line longer than {self.limit} bytes")
        for line in lines:
            yield from self._line(line)

    def end(self) -> Iterator[dict[str, Any]]:
        """What is left after the last piece (a last line without its newline)."""
        pending, self._pending = self._pending, b""
        yield from self._line(pending)

    def _line(self, line: bytes) -> Iterator[dict[str, Any]]:
        if self.format == "sse":
            line = line.rstrip(b"\r")
            if not line.startswith(b"data:"):
                return  # a blank line ends an event; comments, `event:`, `id:`, `retry:` carry no data
            line = line[5:].strip()
            if line == SSE_DONE:
                self.done = True
                return
        if not line.strip():
            return
        try:
            value = parse_engine_json(line)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise UpstreamError(f"{self.label}'s answer has a line that is not a JSON object")
        yield value


def read_lines(chunks: Iterable[bytes], format: LineFormat, label: str,
               limit: int = MAX_LINE_BYTES) -> Iterator[dict[str, Any]]:
    """The JSON objects of a streamed answer; closing this closes `chunks` (and so the connection)."""
    reader = LineReader(format, label, limit)
    pieces = iter(chunks)
    try:
        for piece in pieces:
            yield from reader.feed(piece)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    yield from reader.end()
