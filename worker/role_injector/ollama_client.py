"""A small client for Ollama's native API: models (tags, show, create, copy, delete), blobs, chat.

Used by the CLI and the REST API to create models from roles and to ask a teacher model for the
bake dataset, on the engines' one transport (`engines.transport`: timeouts, bounded reads, the URL's
userinfo as Basic auth and never shown). Calls that can be repeated safely are retried with
exponential backoff when Ollama cannot be reached, times out, is busy (429, 5xx) or breaks off a
stream; streamed answers (NDJSON) are read line by line within a size bound. Failures are
`role_injector.errors` classes: `UpstreamUnreachable`, `UpstreamTimeout`, `UpstreamError` (not
Ollama's API), `UpstreamRefused` (Ollama's own error), `ModelNotFound`.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from role_injector.engines.answer import ChatAnswer
from role_injector.engines.lines import read_lines
from role_injector.engines.ollama import OllamaEngine, answer_delta
from role_injector.engines.transport import Answer, Transport, encode_json
from role_injector.engines.url import EngineUrl
from role_injector.errors import (
    ModelNotFound,
    RoleInjectorError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from role_injector.json_text import parse_engine_json

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_JSON_BYTES = 16 * 1024 * 1024  # one JSON answer (the default of ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES)
BLOCK = 1 << 20

T = TypeVar("T")


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def retriable(exc: RoleInjectorError) -> bool:
    return isinstance(exc, UpstreamUnreachable | UpstreamTimeout) or bool(exc.details.get("retriable"))


class OllamaClient:
    def __init__(self, transport: Transport, *, retries: int = 3, retry_delay: float = 1.0) -> None:
        self.transport = transport
        self.url = transport.url.shown  # in every message: never the userinfo
        self.retries = retries
        self.retry_delay = retry_delay

    @classmethod
    def at(cls, url: str, *, timeout: float = 300.0, retries: int = 3, retry_delay: float = 1.0,
           connections: int = 8, max_json_bytes: int = MAX_JSON_BYTES) -> OllamaClient:
        """A client with a transport of its own, to Ollama at `url` (the CLI's)."""
        transport = Transport(EngineUrl.parse(url, "the Ollama URL"), OllamaEngine.label, timeout=timeout,
                              max_json_bytes=max_json_bytes, pool_size=connections)
        return cls(transport, retries=retries, retry_delay=retry_delay)

    # --- plumbing -----------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None, *, what: str,
                 accept: tuple[int, ...] = (200,)) -> Answer:
        """One request, its body unread; an unaccepted status is Ollama's refusal."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        answer = self.transport.send(method, path, None if body is None else encode_json(body), headers)
        if answer.status not in accept:
            raise self._refusal(answer, what)
        return answer

    def _refusal(self, answer: Answer, what: str) -> RoleInjectorError:
        """The error for an answer with an error status, with Ollama's own message."""
        data = answer.body(f"{answer.path} error")
        text = data.decode("utf-8", "replace")
        try:
            message = parse_engine_json(data).get("error") or text
        except (ValueError, RecursionError, AttributeError):
            message = text.strip() or f"HTTP {answer.status}"
        details = {"status": answer.status, "retriable": answer.status in RETRIED_STATUSES}
        if answer.status == 404 and "not found" in str(message):
            return ModelNotFound(f"Ollama at {self.url}: {message}", details=details)
        return UpstreamRefused(f"Ollama at {self.url} refused to {what}: {message}", details=details)

    def _lines(self, answer: Answer) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON stream, as they arrive; the connection is closed if the reader stops."""
        return read_lines(answer.chunks(), "ndjson", f"Ollama at {self.url}")

    def retrying(self, operation: Callable[[], T]) -> T:
        """`operation()`, again after 1, 2, 4 … × retry_delay seconds (with jitter) while it fails in a
        way that may pass, at most `retries` more times."""
        for attempt in range(self.retries + 1):
            try:
                return operation()
            except RoleInjectorError as exc:
                if attempt == self.retries or not retriable(exc):
                    raise
                delay = self.retry_delay * 2**attempt
                time.sleep(delay + random.uniform(0, delay / 10))
        raise AssertionError("unreachable")

    # --- models -------------------------------------------------------------------------------

    def tags(self) -> list[dict[str, Any]]:
        answer = self.retrying(lambda: self._request("GET", "/api/tags", what="list its models").json("/api/tags"))
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise UpstreamError(f"Ollama at {self.url} answered /api/tags without a list of models")
        return [m for m in models if isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str)]

    def show(self, model: str) -> dict[str, Any]:
        """The model's details; `ModelNotFound` when Ollama does not have it."""
        answer = self.retrying(lambda: self._request("POST", "/api/show", {"model": model},
                                                     what=f"show model {model!r}").json("/api/show"))
        if not isinstance(answer, dict):
            raise UpstreamError(f"Ollama at {self.url} answered /api/show with something that is not an object")
        return answer

    def copy(self, source: str, destination: str) -> None:
        self.retrying(lambda: self._request(
            "POST", "/api/copy", {"source": source, "destination": destination},
            what=f"copy {source!r} to {destination!r}").body("/api/copy"))

    def delete(self, model: str) -> None:
        self.retrying(lambda: self._request("DELETE", "/api/delete", {"model": model},
                                            what=f"delete model {model!r}").body("/api/delete"))

    def create(self, body: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """POST /api/create, streamed: Ollama's status lines as they come, the last `success`. An error
        line raises `UpstreamRefused`; the request is sent when iteration starts."""
        name = body.get("model")
        response = self.retrying(lambda: self._request("POST", "/api/create", {**body, "stream": True},
                                                       what=f"create model {name!r}"))
        succeeded = False
        for line in self._lines(response):
            if "error" in line:
                raise UpstreamRefused(f"Ollama could not create model {name!r}: {line['error']}",
                                      details={"status": response.status})
            succeeded = line.get("status") == "success"
            yield line
        if not succeeded:
            raise UpstreamError(f"Ollama's stream for creating model {name!r} ended without 'success'")

    # --- blobs --------------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        """Whether Ollama has the blob `sha256:<hex>` (URL-safe as it is)."""

        def ask() -> bool:
            answer = self.transport.send("HEAD", "/api/blobs/" + digest)
            if answer.status in (200, 404):
                answer.body("/api/blobs")
                return answer.status == 200
            raise self._refusal(answer, f"check blob {digest}")

        return self.retrying(ask)

    def push_blob(self, path: Path, digest: str) -> None:
        """Upload a file as the blob `digest` (streamed from disk, never held in memory)."""
        size = path.stat().st_size

        def push() -> None:
            with path.open("rb") as handle:
                answer = self.transport.send("POST", "/api/blobs/" + digest, handle,
                                             {"Content-Type": "application/octet-stream"}, length=size)
            if answer.status not in (200, 201):
                raise self._refusal(answer, f"store {path.name} as blob {digest}")
            answer.body("/api/blobs")

        self.retrying(push)

    # --- chat ---------------------------------------------------------------------------------

    def chat(self, body: Mapping[str, Any]) -> ChatAnswer:
        """POST /api/chat, streamed (the read timeout then bounds the gap between tokens, not the whole
        answer), collected into one answer; retried whole when it fails in a way that may pass."""
        model = body.get("model")

        def ask() -> ChatAnswer:
            answer = self._request("POST", "/api/chat", {**body, "stream": True}, what=f"chat with {model!r}")
            collected = ChatAnswer(str(model))
            for line in self._lines(answer):
                if "error" in line:
                    raise UpstreamRefused(f"Ollama broke off the answer of {model!r}: {line['error']}",
                                          details={"status": answer.status, "retriable": True})
                collected.add(answer_delta(line))
                if collected.done:
                    return collected
            raise UpstreamUnreachable(f"Ollama's answer from {model!r} ended before it was done",
                                      details={"url": self.url})

        return self.retrying(ask)
