"""A real engine for tests and benchmarks: llama.cpp's `llama-server` with SmolLM2-135M-Instruct, both
installed by scripts/engine-toolchain.sh into the tools folder (built once; nothing is downloaded at
run time). Each server listens on a free loopback port and logs to a file of the caller's.

`FaultyEngine` passes requests through to a real engine, records them and misbehaves where a test
says (an endpoint gone, garbage, a stall, a cut stream, another window): the faults a real
llama-server cannot be made to show."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from role_injector.engine_tokens import PostJson
from role_injector.errors import UpstreamError, UpstreamRefused, UpstreamTimeout, UpstreamUnreachable
from tests.servers import REPO, ServerProcess, free_port, stop_process

TOOLCHAIN = REPO / "scripts" / "engine-toolchain.sh"
SMOLLM2_WINDOW = 8192  # SmolLM2-135M-Instruct's trained context


def _toolchain(command: str) -> Path:
    """What engine-toolchain.sh prints for `command` (it builds or unpacks on first use)."""
    result = subprocess.run(["bash", str(TOOLCHAIN), command], capture_output=True, text=True, timeout=3600,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"engine-toolchain.sh {command} failed ({result.returncode}):\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@cache
def llama_bin() -> Path:
    """The folder of llama-server, llama-finetune, llama-quantize and llama-perplexity."""
    return _toolchain("bin")


@cache
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (ChatML, 8,192-token window)."""
    return _toolchain("model")


@cache
def vllm_router() -> Path:
    return _toolchain("router")


class LlamaServer(ServerProcess):
    """A llama-server the suite started."""


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0,
                 what: str = "llama-server") -> None:
    """Until `GET /health` answers 200 (llama-server answers 503 while it loads the model)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was healthy")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/health was not ok within {timeout}s")


def post_json(url: str, timeout: float = 30.0) -> PostJson:
    """The library's `PostJson` for an engine at `url`, on requests, with its error contract (the
    worker's own transport is the engine layer's; tests need only this)."""
    session = requests.Session()

    def post(path: str, body: Mapping[str, Any]) -> Any:
        try:
            response = session.post(url + path, json=body, timeout=timeout)
        except requests.Timeout:
            raise UpstreamTimeout(f"{url} did not answer {path} within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise UpstreamUnreachable(f"cannot reach {url}: {exc}") from None
        if response.status_code >= 400:
            raise UpstreamRefused(f"{url}{path} answered {response.status_code}: {response.text[:200]}",
                                  details={"status": response.status_code})
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"{url}{path} answered with something that is not JSON") from None

    return post


@contextmanager
def run_llama_server(
    log_dir: Path,
    model: Path | None = None,
    context: int = SMOLLM2_WINDOW,
    slots: int = 1,
    extra: Sequence[str] = (),
    threads: int = 2,
) -> Iterator[LlamaServer]:
    """`llama-server` on a free port with `model` (default SmolLM2), `slots` parallel slots sharing
    `context` tokens, `threads` threads; stopped afterwards."""
    port = free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    binary = llama_bin() / "llama-server"
    command = [str(binary), "-m", str(model or smollm2()), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context), "-np", str(slots), "-t", str(threads), "--no-ui", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={"LD_LIBRARY_PATH": str(binary.parent), "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield LlamaServer(url=url, process=process, log_path=log_path)
    finally:
        stop_process(process, timeout=10)


# --- a router in front of several engines ---------------------------------------------------------------

# How vllm-router gives up on a dead engine within one request (docs/scaling.md): after 2 failures its
# circuit opens, and the request's next retry (of up to 4, 20 ms apart at first) goes to another engine.
ROUTER_FAILOVER = ("--cb-failure-threshold", "2", "--retry-max-retries", "4", "--retry-initial-backoff-ms", "20")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Router(ServerProcess):
    """vllm-router, started by `run_vllm_router`."""

    def log(self) -> str:
        """Its log without colours (it colours its lines whatever NO_COLOR says)."""
        return ANSI.sub("", super().log())


@contextmanager
def run_vllm_router(log_dir: Path, engines: Sequence[str], policy: str = "consistent_hash",
                    extra: Sequence[str] = ROUTER_FAILOVER) -> Iterator[Router]:
    """vllm-router (installed by scripts/engine-toolchain.sh) on a free port in front of `engines` (their
    URLs), with `policy`; its Prometheus exporter on another free port; stopped afterwards."""
    port = free_port()
    log_path = log_dir / f"vllm-router-{port}.log"
    command = [str(vllm_router()), "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
               "--worker-urls", *engines, "--policy", policy, "--health-check-endpoint", "/health",
               "--log-level", "info", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, what="vllm-router")  # 200 once every engine behind it is healthy
        yield Router(url=url, process=process, log_path=log_path)
    finally:
        stop_process(process, timeout=10)


# --- a pass-through in front of a real engine, which records what it is sent and can misbehave ------------


@dataclass
class EngineFault:
    """What to do wrong on one path: answer `status` with `body` (a JSON value, or bytes as they are)
    as `content_type` instead of asking the engine; wait `delay` seconds before anything; relay only the
    first `cut_after` bytes of the engine's answer, then hold the connection `stall` seconds and drop
    it; or pass the engine's JSON answer through `rewrite`."""

    status: int | None = None
    body: Any = None
    content_type: str = "application/json"
    delay: float = 0.0
    cut_after: int | None = None
    stall: float = 0.0
    rewrite: Callable[[Any], Any] | None = None
    times: int | None = None  # on this many requests, then none (None: on every request)


@dataclass(frozen=True)
class EngineExchange:
    method: str
    path: str
    body: Any  # the request's JSON (None when empty)
    answer: bytes  # what went back to the worker (at most 1 MiB)
    raw: bytes = b""  # the request's body as it came
    headers: Mapping[str, str] = field(default_factory=dict)  # the request's, as they came


class FaultyEngine:
    """An HTTP server that passes every request through to a real engine (`target`), records each
    exchange, and misbehaves on paths given a fault: for what a real llama-server cannot be made to do
    (lose an endpoint, answer garbage, stall, cut a stream, report another window)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = ""
        self.faults: dict[str, EngineFault] = {}
        self.exchanges: list[EngineExchange] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def fail(self, path: str, **fault: Any) -> None:
        self.faults[path] = EngineFault(**fault)

    def fault(self, path: str) -> EngineFault:
        """The fault of a request on `path` (none: EngineFault()), one of its `times` used up."""
        with self._lock:
            fault = self.faults.get(path, EngineFault())
            if fault.times is not None:
                if fault.times <= 1:
                    del self.faults[path]
                else:
                    self.faults[path] = replace(fault, times=fault.times - 1)
            return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.exchanges.clear()

    def sent_to(self, path: str) -> list[EngineExchange]:
        with self._lock:
            return [e for e in self.exchanges if e.path == path]

    def _record(self, exchange: EngineExchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _pass(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                fault = engine.fault(path)
                time.sleep(fault.delay)
                if fault.status is not None:
                    body = fault.body if isinstance(fault.body, bytes) else json.dumps(fault.body).encode()
                    engine._record(EngineExchange(self.command, path, _json(raw), body, raw, dict(self.headers)))
                    self.send_response(fault.status)
                    self.send_header("Content-Type", fault.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                connection = http.client.HTTPConnection(urlsplit(engine.target).netloc, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                connection.request(self.command, self.path, raw or None, headers)
                upstream = connection.getresponse()
                sent = bytearray()

                def record() -> None:  # before the answer's last bytes: a test reads it once its answer is in
                    engine._record(EngineExchange(self.command, path, _json(raw), bytes(sent), raw,
                                                  dict(self.headers)))

                try:
                    if fault.rewrite is not None:
                        body = json.dumps(fault.rewrite(json.loads(upstream.read()))).encode()
                        sent += body
                        record()
                        self.send_response(upstream.status)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    self.send_response(upstream.status)
                    self.send_header("Content-Type", upstream.getheader("Content-Type", "application/json"))
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while piece := upstream.read1(65536):
                        if fault.cut_after is not None and len(sent) + len(piece) >= fault.cut_after:
                            piece = piece[: fault.cut_after - len(sent)]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b"")
                            self.wfile.flush()
                            sent += piece
                            record()
                            time.sleep(fault.stall)
                            self.close_connection = True
                            return
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
                        if len(sent) < 1 << 20:
                            sent += piece
                    record()
                    self.wfile.write(b"0\r\n\r\n")
                finally:
                    connection.close()

            do_GET = do_POST = _pass

        return Handler


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


@contextmanager
def run_faulty_engine(target: str) -> Iterator[FaultyEngine]:
    """A `FaultyEngine` in front of the engine at `target`, on a free loopback port."""
    engine = FaultyEngine(target)
    server = ThreadingHTTPServer(("127.0.0.1", 0), engine.handler())
    server.daemon_threads = True
    engine.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        server.shutdown()
        server.server_close()
