"""A stand-in for an Ollama server: speaks enough of Ollama's HTTP API for n8n's Ollama node, the
`ollama` Python client and the worker's proxy, and records every request (images and all) so tests
can assert on exactly what a model server would have received. Answers are text, or a `Reply` with
tool calls and a `done_reason`, streamed as NDJSON or whole, as Ollama sends them.

    with run_ollama_standin() as ollama:
        ...  # point a client at ollama.url
        ollama.set_fault("/api/chat", status=500, body={"error": "boom"})
        assert ollama.requests_to("/api/chat")[0].body["options"]["num_ctx"] == 8192

Models can be created as Ollama creates them (`POST /api/create`, streamed status lines), copied,
shown (system, parameters, modelfile) and deleted; with `blob_store=True`, `/api/blobs/sha256:…`
keeps uploads and checks their digests, as Ollama does.
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_ANSWER = "stand-in answer"
VERSION = "0.12.6"
# name -> trained context length, as `/api/show` reports it in model_info["qwen3.context_length"].
DEFAULT_MODELS: dict[str, int] = {"qwen3:8b": 40960, "qwen3:0.6b": 40960, "qwen3:4b": 40960}



@dataclass(frozen=True)
class Reply:
    """An answer with more than text: tool calls (in Ollama's native shape, arguments as an object,
    e.g. {"function": {"name": "add", "arguments": {"a": 1}}}) and why the model stopped."""

    content: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    done_reason: str = "stop"  # "length" when num_predict cut the answer


Answer = str | Reply | Callable[[dict[str, Any]], str | Reply]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw: bytes
    client_port: int = 0  # the same for requests on one kept-alive connection


@dataclass
class Fault:
    """What to do wrong on a path (or on every path when set without one)."""

    delay: float = 0.0  # seconds to wait before answering at all
    chunk_delay: float = 0.0  # seconds between streamed chunks
    status: int | None = None  # answer this status with `body` instead of the real answer
    body: Any = None  # JSON value, a str sent as text/plain, or bytes sent as they are (NDJSON lines)
    model_not_found: bool = False  # 404 with Ollama's own message for the requested model
    chunks: int = 3  # how many pieces a streamed answer comes in (before the final `done` line)
    times: int | None = None  # how many requests it spoils before it goes away (None: all)
    # Fixed-length answers (with `status`): `length` pads the JSON body to that many bytes (made as it
    # is sent, never held); `cut_after` sends only that many bytes of it, then holds the connection
    # `stall` seconds and closes it, so the answer ends short of its Content-Length.
    length: int | None = None
    cut_after: int | None = None
    stall: float = 0.0


@dataclass(frozen=True)
class CreatedModel:
    """A model made by /api/create (or /api/copy of one): the create request as received."""

    name: str
    request: dict[str, Any]
    digest: str  # of its manifest: equal requests give equal digests, a copy shares it


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _split(text: str, parts: int) -> list[str]:
    """Split an answer into about `parts` stream chunks that concatenate back to it."""
    step = max(1, -(-len(text) // max(1, parts)))
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def _count(text: str) -> int:
    # Not a tokenizer: tests only need a plausible, deterministic positive number.
    return max(1, len(text.split()))


def full_name(name: str) -> str:
    """A model name with Ollama's default tag."""
    return name if name.rfind(":") > name.rfind("/") else name + ":latest"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _go_quote(value: str) -> str:
    """How `ollama show --modelfile` quotes a value (parser.quote in Ollama)."""
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        return f'"""{value}"""' if '"' in value else f'"{value}"'
    return value


class OllamaStandin:
    """The server's state; the HTTP handler below reads it. Thread-safe."""

    def __init__(self, answer: Answer = DEFAULT_ANSWER, models: dict[str, int] | None = None,
                 strict_models: bool = False, blob_store: bool = False) -> None:
        self.url = ""
        self.serving: _Serving | None = None  # set by run_ollama_standin
        self.answer: Answer = answer
        self.models = dict(DEFAULT_MODELS if models is None else models)
        self._first_models = dict(self.models)  # what `clear` goes back to
        # When strict, a model not in `models` gets Ollama's 404; otherwise any name is served.
        self.strict_models = strict_models
        # Without a blob store, /api/blobs/* is only recorded (and answered 404).
        self.blob_store = blob_store
        self.blobs: dict[str, bytes] = {}
        self.created: dict[str, CreatedModel] = {}
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: dict[str | None, Fault] = {}
        self._interrupted = 0
        self._in_flight = 0
        self.most_in_flight = 0  # the most requests it was answering at one time

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in order of arrival."""
        with self._lock:
            return list(self._requests)

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Inside the block nothing listens at `url`, as when Ollama is not running (connections are
        refused, open ones dropped); then the stand-in serves at the same URL again."""
        if self.serving is None:
            raise RuntimeError("the stand-in is not serving")
        port = self.serving.port
        self.serving.close()
        try:
            yield
        finally:
            self.serving = _Serving(self, port)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def set_fault(self, path: str | None = None, *, delay: float = 0.0, chunk_delay: float = 0.0,
                  status: int | None = None, body: Any = None, model_not_found: bool = False,
                  chunks: int = 3, times: int | None = None, length: int | None = None,
                  cut_after: int | None = None, stall: float = 0.0) -> None:
        """Misbehave on `path` (e.g. "/api/chat"), or on every path when `path` is None; with `times`,
        only on that many requests."""
        with self._lock:
            self._faults[path] = Fault(delay, chunk_delay, status, body, model_not_found, chunks, times, length,
                                       cut_after, stall)

    @property
    def interrupted(self) -> int:
        """How many answers the client broke off (closed the connection) before the end: while a
        stream was sent, or while the stand-in was still waiting (`delay`) to answer at all."""
        with self._lock:
            return self._interrupted

    def note_interrupted(self) -> None:
        with self._lock:
            self._interrupted += 1

    def clear(self) -> None:
        """Forget recorded requests, faults and interruptions, created models and blobs, and restore
        the default answer and the models it started with (also one a test created over)."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._interrupted = 0
            self.most_in_flight = 0
            self.answer = DEFAULT_ANSWER
            self.models = dict(self._first_models)
            self.created.clear()
            self.blobs.clear()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def answering(self, change: int) -> None:
        with self._lock:
            self._in_flight += change
            self.most_in_flight = max(self.most_in_flight, self._in_flight)

    def fault_for(self, path: str) -> Fault:
        with self._lock:
            key = path if path in self._faults else None
            fault = self._faults.get(key)
            if fault is None:
                return Fault()
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[key]
            return fault

    def answer_for(self, body: dict[str, Any]) -> Reply:
        answer = self.answer(body) if callable(self.answer) else self.answer
        return answer if isinstance(answer, Reply) else Reply(answer)

    def knows(self, model: str) -> bool:
        return not self.strict_models or model in self.models or full_name(model) in self.models

    def add_created(self, model: CreatedModel, context: int) -> None:
        with self._lock:
            self.created[model.name] = model
            self.models[model.name] = context

    def remove(self, name: str) -> bool:
        """Delete a model by name (with or without its tag); whether there was one."""
        with self._lock:
            found = [n for n in (name, full_name(name)) if n in self.models]
            for n in found:
                self.models.pop(n, None)
                self.created.pop(n, None)
            return bool(found)

    def created_model(self, name: str) -> CreatedModel | None:
        with self._lock:
            return self.created.get(name) or self.created.get(full_name(name))


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so streams go out chunked, as Ollama's do, and clients may keep connections alive.
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as Go's servers set: without it the body after the headers waits for a delayed ACK
    # (about 40 ms on loopback), which would swamp every latency measurement made through the stand-in.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests`; stderr noise would only hide failures

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.server.state.answering(+1)
        try:
            self._answer()
        finally:
            self.server.state.answering(-1)

    def _answer(self) -> None:
        state = self.server.state
        raw = self._read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = self.path.split("?", 1)[0]
        state.record(RecordedRequest(self.command, path, dict(self.headers.items()), body, raw, self.client_address[1]))

        fault = state.fault_for(path)
        if fault.delay and self._client_left_within(fault.delay):
            self.close_connection = True  # as Ollama does: a request whose client left is dropped
            state.note_interrupted()
            return
        if fault.status is not None:
            body = fault.body if fault.body is not None else {"error": "injected fault"}
            if fault.length is not None or fault.cut_after is not None or isinstance(body, bytes):
                self._send_fixed_length(fault, body)
            else:
                self._send(fault.status, body)
            return
        request = body if isinstance(body, dict) else {}
        model = str(request.get("model") or request.get("name") or "")
        if path in ("/api/chat", "/api/generate", "/api/show", "/api/embed") and (
            fault.model_not_found or not state.knows(model)
        ):
            self._send(404, {"error": f'model "{model}" not found, try pulling it first'})
            return
        if path.startswith("/api/blobs/") and state.blob_store and self.command in ("HEAD", "POST"):
            self._blob(path[len("/api/blobs/"):], raw)
            return

        route = {
            ("GET", "/"): lambda: self._send(200, "Ollama is running"),
            ("HEAD", "/"): lambda: self._send(200, ""),
            ("GET", "/api/version"): lambda: self._send(200, {"version": VERSION}),
            ("GET", "/api/tags"): lambda: self._send(200, {"models": [self._model(n) for n in state.models]}),
            ("GET", "/api/ps"): lambda: self._send(200, {"models": self._running()}),
            ("POST", "/api/show"): lambda: self._send(200, self._show(model)),
            ("POST", "/api/chat"): lambda: self._complete(request, model, fault, chat=True),
            ("POST", "/api/generate"): lambda: self._complete(request, model, fault, chat=False),
            ("POST", "/api/create"): lambda: self._create(request, model),
            ("POST", "/api/copy"): lambda: self._copy(request),
            ("DELETE", "/api/delete"): lambda: self._delete(model),
        }.get((self.command, path))
        if route is None:
            self._send(404, "404 page not found")  # what Ollama's router answers
        else:
            route()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # e.g. a streamed blob upload
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _complete(self, request: dict[str, Any], model: str, fault: Fault, *, chat: bool) -> None:
        state = self.server.state
        reply = state.answer_for(request)
        text = reply.content
        if chat:
            messages = request.get("messages") or []
            prompt_text = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        else:
            prompt_text = str(request.get("prompt") or "")

        def chunk(piece: str, done: bool, tool_calls: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
            out: dict[str, Any] = {"model": model, "created_at": _now()}
            if chat:
                out["message"] = {"role": "assistant", "content": piece}
                if tool_calls:
                    out["message"]["tool_calls"] = list(tool_calls)
            else:
                out["response"] = piece
            out["done"] = done
            if done:
                out |= {
                    "done_reason": reply.done_reason, "total_duration": 1_000_000, "load_duration": 100_000,
                    "prompt_eval_count": _count(prompt_text), "prompt_eval_duration": 300_000,
                    "eval_count": _count(text), "eval_duration": 600_000,
                }
                if not chat:
                    out["context"] = [1, 2, 3]
            return out

        calls = reply.tool_calls if chat else ()
        if request.get("stream") is False:
            self._send(200, chunk(text, done=True, tool_calls=calls))
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for piece in _split(text, fault.chunks) if text or not calls else ():
                self._write_chunk(chunk(piece, done=False))
                if fault.chunk_delay and self._client_left_within(fault.chunk_delay):
                    raise BrokenPipeError  # noticed during the pause, as Ollama notices a cancelled request
            if calls:  # Ollama streams the calls whole, in a chunk of their own, before the last line
                self._write_chunk(chunk("", done=False, tool_calls=calls))
            self._write_chunk(chunk("", done=True))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-stream; `interrupted` counts it
            state.note_interrupted()

    def _client_left_within(self, seconds: float) -> bool:
        """Wait `seconds`, unless the client closes its connection first (then True)."""
        deadline = time.monotonic() + seconds
        poll = select.poll()  # (select.select cannot take descriptors above 1023)
        poll.register(self.connection, select.POLLIN)
        while (left := deadline - time.monotonic()) > 0:
            if poll.poll(left * 1000):
                try:
                    if not self.connection.recv(1, socket.MSG_PEEK):
                        return True
                except OSError:
                    return True
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))  # data, not a hang-up
        return False

    def _send_fixed_length(self, fault: Fault, body: Any) -> None:
        encoded = (body if isinstance(body, bytes) else body.encode() if isinstance(body, str)
                   else json.dumps(body).encode())
        if fault.length is not None and isinstance(body, dict) and fault.length > len(encoded) + 12:
            opening = b'{"pad": "'  # {"pad": "xxx…", ...the body's own fields}
            closing = b'"' + (b", " + encoded[1:] if body else b"}")
            padding = fault.length - len(opening) - len(closing)
        else:
            opening, closing, padding = encoded, b"", 0
        length = len(opening) + padding + len(closing)
        limit = length if fault.cut_after is None else min(fault.cut_after, length)
        self.send_response(fault.status or 200)
        kind = ("application/x-ndjson" if isinstance(body, bytes) else "text/plain" if isinstance(body, str)
                else "application/json")
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        sent = 0
        try:
            for piece in self._pieces(opening, padding, closing):
                piece = piece[: limit - sent]
                if not piece:
                    break
                self.wfile.write(piece)
                sent += len(piece)
            self.wfile.flush()
            if sent < length:
                time.sleep(fault.stall)
                self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self.server.state.note_interrupted()

    @staticmethod
    def _pieces(opening: bytes, padding: int, rest: bytes) -> Iterator[bytes]:
        yield opening
        block = b"x" * 65536
        while padding > 0:
            yield block[:padding]
            padding -= len(block)
        yield rest

    def _write_chunk(self, value: dict[str, Any]) -> None:
        data = json.dumps(value).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send(self, status: int, body: Any) -> None:
        if isinstance(body, str):
            data, kind = body.encode(), "text/plain; charset=utf-8"
        else:
            data, kind = json.dumps(body).encode(), "application/json; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _model(self, name: str) -> dict[str, Any]:
        entry = {
            "name": name, "model": name, "modified_at": _now(), "size": 5_225_376_047,
            "digest": "0" * 64, "details": self._details(),
        }
        created = self.server.state.created_model(name)
        if created is not None:
            entry["digest"] = created.digest.removeprefix("sha256:")
            entry["details"]["parent_model"] = created.request.get("from", "")
        return entry

    def _running(self) -> list[dict[str, Any]]:
        return [
            self._model(name) | {"expires_at": _now(), "size_vram": 0, "context_length": 4096}
            for name in list(self.server.state.models)[:1]
        ]

    @staticmethod
    def _details() -> dict[str, Any]:
        return {
            "parent_model": "", "format": "gguf", "family": "qwen3", "families": ["qwen3"],
            "parameter_size": "8.2B", "quantization_level": "Q4_K_M",
        }

    def _show(self, model: str) -> dict[str, Any]:
        created = self.server.state.created_model(model)
        if created is not None:
            return self._show_created(created)
        context = self.server.state.models.get(model, 40960)
        return {
            "license": "", "modelfile": f"FROM {model}\n", "parameters": "", "template": "{{ .Prompt }}",
            "details": self._details(),
            "model_info": {
                "general.architecture": "qwen3", "general.parameter_count": 8_190_735_360,
                "qwen3.context_length": context, "qwen3.embedding_length": 4096,
            },
            "capabilities": ["completion", "tools", "thinking"], "modified_at": _now(),
        }


    # --- models made by /api/create ---------------------------------------------------------------

    def _show_created(self, created: CreatedModel) -> dict[str, Any]:
        request = created.request
        base = str(request.get("from", ""))
        info = self._show(base)
        parameters = [(key, item) for key, value in (request.get("parameters") or {}).items()
                      for item in (value if isinstance(value, list) else [value])]
        lines = ["# Modelfile generated by \"ollama show\"", f"# FROM {created.name}", "", f"FROM {base}"]
        lines += [f"ADAPTER {digest}" for digest in (request.get("adapters") or {}).values()]
        if request.get("system"):
            lines.append(f"SYSTEM {_go_quote(request['system'])}")
        lines += [f"PARAMETER {key} {_go_quote(str(item))}" for key, item in parameters]
        shown = [f"{key:<30} {json.dumps(item) if isinstance(item, str) else item}" for key, item in parameters]
        info.update(system=request.get("system", ""), parameters="\n".join(shown), modelfile="\n".join(lines) + "\n")
        info["details"]["parent_model"] = base
        return info

    def _create(self, request: dict[str, Any], name: str) -> None:
        """Ollama's CreateHandler, for `from` a model (with adapters from stored blobs) or `files` (a GGUF
        model from a stored blob)."""
        state = self.server.state
        if not name or not re.fullmatch(r"[\w][\w.:/-]*", name):
            self._send(400, {"error": "invalid model name"})
            return
        base = request.get("from")
        files = request.get("files") or {}
        if not base and not files:
            self._send(400, {"error": "neither 'from' or 'files' was specified"})
            return
        lines: list[dict[str, Any]] = []
        error = None
        if files:
            for digest in files.values():
                lines.append({"status": "parsing GGUF"})
                if state.blob_store and not state.blobs.get(digest, b"").startswith(b"GGUF"):
                    error = f"open {digest}: no such GGUF blob"
                    break
                lines.append({"status": f"using existing layer {digest}"})
        elif not state.knows(str(base)):
            lines.append({"status": "pulling manifest"})
            error = "pull model manifest: file does not exist"
        else:
            lines.append({"status": f"using existing layer {_sha256(str(base).encode())}"})
            for digest in (request.get("adapters") or {}).values():
                lines.append({"status": "parsing GGUF"})
                if state.blob_store and not state.blobs.get(digest, b"").startswith(b"GGUF"):
                    error = f"open {digest}: no such GGUF blob"
                    break
                lines.append({"status": f"using existing layer {digest}"})
        if error is None:
            for part in ("system", "parameters"):
                if request.get(part):
                    layer = _sha256(json.dumps(request[part], sort_keys=True).encode())
                    lines.append({"status": f"creating new layer {layer}"})
            lines += [{"status": "writing manifest"}, {"status": "success"}]
            content = {k: request.get(k) for k in ("from", "files", "system", "parameters", "adapters", "template",
                                                   "messages")}
            digest = _sha256(json.dumps(content, sort_keys=True).encode())
            context = state.models.get(str(base), state.models.get(full_name(str(base)), 40960))
            state.add_created(CreatedModel(full_name(name), request, digest), context)
        if request.get("stream") is False:
            self._send(500 if error else 200, {"error": error} if error else {"status": "success"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in lines + ([{"error": error}] if error else []):
            self._write_chunk(line)
        self.wfile.write(b"0\r\n\r\n")

    def _copy(self, request: dict[str, Any]) -> None:
        state = self.server.state
        source, destination = str(request.get("source") or ""), str(request.get("destination") or "")
        if not state.knows(source) or not destination:
            self._send(404, {"error": f"model '{source}' not found"})
            return
        created = state.created_model(source)
        context = state.models.get(source, state.models.get(full_name(source), 40960))
        request_copy = created.request if created else {"from": source}
        digest = created.digest if created else _sha256(source.encode())
        state.add_created(CreatedModel(full_name(destination), request_copy, digest), context)
        self._send(200, "")

    def _delete(self, name: str) -> None:
        if not self.server.state.remove(name):
            self._send(404, {"error": f"model '{name}' not found"})
            return
        self._send(200, "")

    def _blob(self, digest: str, raw: bytes) -> None:
        """HEAD: 200 if stored, else 404. POST: store the body if its sha256 is `digest` (201)."""
        state = self.server.state
        if not re.fullmatch(r"sha256[:-][0-9a-f]{64}", digest):
            self._send(400, {"error": "invalid digest format"})
            return
        digest = digest.replace("-", ":", 1)
        if self.command == "HEAD":
            self._send(200 if digest in state.blobs else 404, "")
            return
        if digest in state.blobs:
            self._send(200, "")
            return
        actual = _sha256(raw)
        if actual != digest:
            self._send(400, {"error": f'digest mismatch, expected "{digest}", got "{actual}"'})
            return
        state.blobs[digest] = raw
        self._send(201, "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # many connections may open at once (a proxy under load)

    def __init__(self, state: OllamaStandin, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.state = state
        self.connections: set[socket.socket] = set()  # open ones, so that stopping can drop them
        self.connections_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError | ConnectionResetError):
            return  # a client that gave up (a timeout under test): nothing to report
        super().handle_error(request, client_address)


class _Serving:
    """The stand-in's server on a port, answering from a thread until `close`."""

    def __init__(self, state: OllamaStandin, port: int = 0) -> None:
        self.server = _Server(state, port)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="ollama-standin", daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop listening and drop every open connection, as a stopped Ollama does."""
        self.server.shutdown()
        self.server.server_close()
        with self.server.connections_lock:
            for connection in self.server.connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        self.thread.join(timeout=5)


@contextmanager
def run_ollama_standin(answer: Answer = DEFAULT_ANSWER, models: dict[str, int] | None = None,
                       strict_models: bool = False, blob_store: bool = False) -> Iterator[OllamaStandin]:
    """Serve an Ollama stand-in on a free loopback port for the duration of the block."""
    state = OllamaStandin(answer, models, strict_models, blob_store)
    state.serving = _Serving(state)
    state.url = f"http://127.0.0.1:{state.serving.port}"
    try:
        yield state
    finally:
        state.serving.close()
