"""A small client for Ollama's native API: models (tags, show, create, copy, delete), blobs, chat.

Used by the CLI and the REST API to create models from roles and to ask a teacher model for the
bake dataset. Every call has a connect and a read timeout; calls that can be repeated safely are
retried with exponential backoff when Ollama cannot be reached, times out, is busy (429, 5xx) or
breaks off a stream; streamed answers (NDJSON) are read line by line within a size bound.
Failures are `role_injector.errors` classes: `UpstreamUnreachable`, `UpstreamTimeout`,
`UpstreamError` (not Ollama's API), `UpstreamRefused` (Ollama's own error), `ModelNotFound`.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from urllib3 import HTTPResponse
from urllib3.exceptions import NewConnectionError

from role_injector.errors import (
    ModelNotFound,
    RoleInjectorError,
    UpstreamError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from role_injector.ollama_url import OllamaUrl

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_LINE_BYTES = 16 * 1024 * 1024  # one NDJSON line, or one JSON answer
BLOCK = 1 << 20

T = TypeVar("T")


@dataclass(frozen=True)
class ChatAnswer:
    content: str
    thinking: str
    prompt_tokens: int  # as Ollama counted them (prompt_eval_count, eval_count)
    output_tokens: int


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
    def __init__(self, url: str, *, timeout: float = 300.0, retries: int = 3, retry_delay: float = 1.0,
                 connections: int = 8) -> None:
        target = OllamaUrl.parse(url, "the Ollama URL")
        self.url = target.shown  # in every message: never the userinfo
        self._base = target.base
        self._authorization = target.authorization  # the userinfo, sent as Basic auth
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=connections, retries=False)

    def close(self) -> None:
        """Close the pooled connections to Ollama (a client made for one task)."""
        self.pool.clear()

    # --- plumbing -----------------------------------------------------------------------------

    def _open(self, method: str, path: str, body: Any = None, *, data: Any = None,
              headers: Mapping[str, str] | None = None) -> HTTPResponse:
        """One request; the response unread. Transport failures become library errors."""
        sent = dict(headers or {})
        if self._authorization:
            sent["Authorization"] = self._authorization
        if body is not None:
            data = json.dumps(body, ensure_ascii=False).encode()
            sent["Content-Type"] = "application/json"
        try:
            return self.pool.request(
                method, self._base + path, body=data, headers=sent, preload_content=False, redirect=False,
                timeout=urllib3.Timeout(connect=min(self.timeout, 10.0), read=self.timeout),
            )
        except NewConnectionError as exc:  # before TimeoutError: it is one
            reason = str(exc).split(">: ", 1)[-1]  # not the connection object's repr
            raise UpstreamUnreachable(f"cannot reach Ollama at {self.url}: {reason}",
                                      details={"url": self.url}) from None
        except urllib3.exceptions.TimeoutError:
            raise UpstreamTimeout(f"Ollama at {self.url} did not answer within {self.timeout:g} s",
                                  details={"url": self.url}) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamUnreachable(f"cannot reach Ollama at {self.url}: {exc}", details={"url": self.url}) from None

    def _broken(self, exc: Exception) -> RoleInjectorError:
        """The error for an answer that stopped coming."""
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            return UpstreamTimeout(f"Ollama at {self.url} sent nothing for {self.timeout:g} s",
                                   details={"url": self.url})
        return UpstreamUnreachable(f"the connection to Ollama at {self.url} broke: {exc}", details={"url": self.url})

    def _read(self, response: HTTPResponse) -> bytes:
        try:
            data = response.read(MAX_LINE_BYTES + 1)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._broken(exc) from None
        finally:
            response.release_conn()
        if len(data) > MAX_LINE_BYTES:
            raise UpstreamError(f"Ollama's answer is larger than {MAX_LINE_BYTES} bytes")
        return data

    def _refusal(self, response: HTTPResponse, what: str) -> RoleInjectorError:
        """The error for a response with an error status, with Ollama's own message."""
        text = self._read(response).decode("utf-8", "replace")
        try:
            message = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            message = text.strip() or f"HTTP {response.status}"
        details = {"status": response.status, "retriable": response.status in RETRIED_STATUSES}
        if response.status == 404 and "not found" in str(message):
            return ModelNotFound(f"Ollama at {self.url}: {message}", details=details)
        return UpstreamRefused(f"Ollama at {self.url} refused to {what}: {message}", details=details)

    def _request(self, method: str, path: str, body: Any = None, *, what: str,
                 accept: tuple[int, ...] = (200,)) -> HTTPResponse:
        response = self._open(method, path, body)
        if response.status not in accept:
            raise self._refusal(response, what)
        return response

    def _json(self, response: HTTPResponse) -> Any:
        try:
            return json.loads(self._read(response))
        except ValueError:
            raise UpstreamError(f"Ollama at {self.url} answered with something that is not JSON") from None

    def _lines(self, response: HTTPResponse) -> Iterator[dict[str, Any]]:
        """The objects of an NDJSON stream, as they arrive; the connection is closed if the reader stops."""
        pending = b""
        complete = False
        try:
            for chunk in response.stream(BLOCK):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise UpstreamError(f"a line of Ollama's stream is longer than {MAX_LINE_BYTES} bytes")
                for line in lines:
                    if line.strip():
                        yield self._line(line)
            if pending.strip():
                yield self._line(pending)
            complete = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._broken(exc) from None
        finally:
            if not complete:
                response.close()  # never hand a half-read connection back to the pool
            response.release_conn()

    def _line(self, line: bytes) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise UpstreamError(f"Ollama at {self.url} sent a stream line that is not a JSON object")
        return value

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
        answer = self.retrying(lambda: self._json(self._request("GET", "/api/tags", what="list its models")))
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise UpstreamError(f"Ollama at {self.url} answered /api/tags without a list of models")
        return [m for m in models if isinstance(m, dict) and isinstance(m.get("name") or m.get("model"), str)]

    def show(self, model: str) -> dict[str, Any]:
        """The model's details; `ModelNotFound` when Ollama does not have it."""
        answer = self.retrying(lambda: self._json(
            self._request("POST", "/api/show", {"model": model}, what=f"show model {model!r}")))
        if not isinstance(answer, dict):
            raise UpstreamError(f"Ollama at {self.url} answered /api/show with something that is not an object")
        return answer

    def copy(self, source: str, destination: str) -> None:
        self._read(self.retrying(lambda: self._request(
            "POST", "/api/copy", {"source": source, "destination": destination},
            what=f"copy {source!r} to {destination!r}")))

    def delete(self, model: str) -> None:
        self._read(self.retrying(lambda: self._request("DELETE", "/api/delete", {"model": model},
                                                       what=f"delete model {model!r}")))

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
            response = self._open("HEAD", "/api/blobs/" + digest)
            if response.status in (200, 404):
                self._read(response)
                return response.status == 200
            raise self._refusal(response, f"check blob {digest}")

        return self.retrying(ask)

    def push_blob(self, path: Path, digest: str) -> None:
        """Upload a file as the blob `digest` (streamed from disk, never held in memory)."""
        size = path.stat().st_size

        def push() -> None:
            with path.open("rb") as handle:
                response = self._open("POST", "/api/blobs/" + digest, data=handle,
                                      headers={"Content-Length": str(size),
                                               "Content-Type": "application/octet-stream"})
            if response.status not in (200, 201):
                raise self._refusal(response, f"store {path.name} as blob {digest}")
            self._read(response)

        self.retrying(push)

    # --- chat ---------------------------------------------------------------------------------

    def chat(self, body: Mapping[str, Any]) -> ChatAnswer:
        """POST /api/chat, streamed (the read timeout then bounds the gap between tokens, not the whole
        answer), collected into one answer; retried whole when it fails in a way that may pass."""
        model = body.get("model")

        def ask() -> ChatAnswer:
            response = self._request("POST", "/api/chat", {**body, "stream": True}, what=f"chat with {model!r}")
            content: list[str] = []
            thinking: list[str] = []
            for line in self._lines(response):
                if "error" in line:
                    raise UpstreamRefused(f"Ollama broke off the answer of {model!r}: {line['error']}",
                                          details={"status": response.status, "retriable": True})
                message = line.get("message") if isinstance(line.get("message"), dict) else {}
                content.append(str(message.get("content") or ""))
                thinking.append(str(message.get("thinking") or ""))
                if line.get("done"):
                    return ChatAnswer("".join(content), "".join(thinking), int(line.get("prompt_eval_count") or 0),
                                      int(line.get("eval_count") or 0))
            raise UpstreamUnreachable(f"Ollama's answer from {model!r} ended before it was done",
                                      details={"url": self.url})

        return self.retrying(ask)
