"""`role-injector serve`: the app under gunicorn, one gevent event loop per worker process.

Why gevent: the proxy carries model streams that last minutes, and clients may be slow, idle or gone.
With threads, each of them held one of a handful of threads; with gevent each connection is a
greenlet, so one worker process holds thousands of open connections while `/healthz` still answers at
once (bench/connections_bench.py). What a slow client may hold is bounded by timeouts:

- headers: a request's headers must arrive complete within ROLE_INJECTOR_READ_TIMEOUT of the worker
  starting to wait for them (also the idle time of a keep-alive connection);
- body: each read of a request body waits at most ROLE_INJECTOR_READ_TIMEOUT (then 408, and the
  connection is closed);
- answer: each write to a client waits at most ROLE_INJECTOR_WRITE_TIMEOUT (then the connection is
  closed and, for a proxied answer, the connection to Ollama too).

CPU work (counting, fitting, ranking, listing roles) runs in each worker's pool of OS threads
(`cpu_pool`, through `web.state.compute`), never on the event loop, so a worker that counts a body of
64 MiB still answers everyone else and still heartbeats to gunicorn's master; admission bounds the work
in flight (503 beyond it). A body over the limit is answered 413 before it is read, and what the client
still sends is skipped in pieces that let the loop go (`drained`). Gunicorn's own refusals of malformed
requests are JSON (`write_json_error`). Each worker starts its role store's watcher after the fork.
Several worker processes (`--workers`, default 2) use more cores.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import gevent
from gevent.local import local as gevent_local
from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import BadRequest

from role_injector.errors import RoleInjectorError, code_of_status

log = logging.getLogger("role_injector.server")

# Answers after which the connection is closed: the client stopped sending its body. (Not after a 413:
# a client still sending would get a reset instead of the answer; `drained` reads the rest of that
# body, within the read timeout, before the next request.)
CLOSE_AFTER = ("408",)
DRAIN_PIECE = 1 << 16  # what a body is read and skipped in, the event loop serving others in between
MAX_ECHOED_CHARS = 200  # of what gunicorn quotes from a refused request (a header name can be 8 KiB)


class WorkerServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], app: Any) -> None:
        self.options = options
        self.app = app
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.app


def patch_for_gevent() -> None:
    """Make sockets, ssl, select, time and locks cooperative before the app (urllib3, ssl) is imported,
    so the workers forked from this process with the app preloaded use gevent's versions throughout.
    `os` and `signal` stay as they are here: gunicorn's arbiter reaps its workers with its own SIGCHLD
    handler; each worker patches them after the fork (gunicorn's GeventWorker.patch)."""
    from gevent import monkey

    monkey.patch_all(os=False, signal=False, subprocess=False)


def worker_class(read_timeout: float, write_timeout: float) -> type:
    from gunicorn.workers.ggevent import GeventWorker

    class Worker(GeventWorker):  # type: ignore[misc]
        """gunicorn's gevent worker with a deadline for a request's headers, a read timeout for request
        bodies, a write timeout for answers, and no keep-alive after an answer that leaves the request
        body unread."""

        def patch(self) -> None:
            import warnings

            from gevent.monkey import MonkeyPatchWarning

            with warnings.catch_warnings():  # patched already in the master (patch_for_gevent); now the rest
                warnings.simplefilter("ignore", MonkeyPatchWarning)
                super().patch()

        def handle_quit(self, sig: int, frame: Any) -> None:
            # Ctrl-C reaches each worker twice: SIGINT from the terminal, then SIGQUIT from the master.
            # gunicorn quits from a greenlet each time, and the second one, run while the interpreter
            # shuts down, printed a SystemExit traceback: quit once.
            if self.alive:
                self.alive = False
                super().handle_quit(sig, frame)
        def init_process(self) -> None:
            gunicorn_util.write_error = write_json_error  # its one call is in handle_error, below
            super().init_process()

        def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            """A request gunicorn itself refuses (a malformed request line or header, a request line over
            4 KiB) never reaches the app: its answer is written by `write_json_error`, in the shape of
            the surface its path names, when the path was read."""
            refused.path = refused_path(req, exc)
            try:
                super().handle_error(req, client, addr, exc)
            finally:
                refused.path = None

        def timeout_ctx(self) -> Any:
            return gevent.Timeout(read_timeout, False)  # (gunicorn's own uses `keepalive`, whole seconds)

        def load_wsgi(self) -> None:
            super().load_wsgi()
            self.wsgi = with_connection_rules(self.wsgi, write_timeout)

        def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
            sock.settimeout(read_timeout)  # the body, read by the app
            try:
                super().handle_request(listener_name, req, sock, addr)  # StopIteration: the connection closes
                if not drained(req.body):
                    raise StopIteration
                return True
            except TimeoutError:
                self.log.info("closed the connection of %s: it took no data for longer than the timeout",
                              addr[0] if isinstance(addr, tuple) else addr)
                raise StopIteration from None  # gunicorn closes the connection
            finally:
                sock.settimeout(None)  # the wait for the next request is bounded by timeout_ctx

    return Worker


def drained(body: Any) -> bool:
    """Read what the app left of a request body (a body over the limit: 413 before a byte was read), in
    pieces, letting the event loop serve others between them; each read waits at most the read timeout.
    gunicorn itself skips it in 1 KiB reads that never yield: 64 MiB held every connection for 1.5-2 s.
    False when the body is malformed: the next request's start is unknown, so the connection closes
    (and no second answer follows the one the app gave)."""
    try:
        while body.read(DRAIN_PIECE):
            gevent.sleep(0)
    except ParseException:
        return False
    return True


refused = gevent_local()  # per connection (greenlet): the path of the request gunicorn refuses


def refused_path(req: Any, exc: BaseException) -> str | None:
    """The path of a request gunicorn refused, when its request line was read: on the request, on the
    error (a bad header value), or on the request being parsed when the error was raised (a bad header
    name), which only the traceback still holds."""
    from gunicorn.http.message import Request

    found = req or getattr(exc, "req", None)
    frame = exc.__traceback__
    while found is None and frame is not None:
        candidate = frame.tb_frame.f_locals.get("self")
        found = candidate if isinstance(candidate, Request) else None
        frame = frame.tb_next
    path = getattr(found, "path", None)
    return path if isinstance(path, str) else None


def protocol_error_body(status: int, message: str, path: str | None) -> dict[str, Any]:
    """The JSON of an error gunicorn answers itself: REST's envelope, or Ollama's or OpenAI's shape by path."""
    from role_injector.web.error_shapes import REST, shape_of_path

    error = RoleInjectorError(message)
    # 501 is gunicorn's answer to a transfer coding the client should not have sent: the client's error.
    error.code = "internal_error" if status == 500 else code_of_status(status) if status < 500 else "invalid_request"
    return (REST if path is None else shape_of_path(path)).body(error)


def write_json_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's `util.write_error`, in JSON: the same status, the message bounded (it may quote the request)."""
    if len(message) > MAX_ECHOED_CHARS:
        message = message[:MAX_ECHOED_CHARS] + "…"
    body = json.dumps(protocol_error_body(status, message or reason, refused.path), ensure_ascii=False).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


class RequestBody:
    """gunicorn's request body stream, read in pieces that let the event loop serve others between them
    (from a fast client a socket always has data, so reading 64 MiB at once held every connection of the
    worker for most of a second), and where a malformed chunked body is the client's error: a 400 in the
    shape of the route (werkzeug's BadRequest reaches the app's error handlers), never a 500."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.broken = False  # then the connection is closed after the answer: the stream cannot go on

    def _call(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except ParseException as exc:
            self.broken = True
            raise BadRequest(f"the request body is malformed: {str(exc)[:MAX_ECHOED_CHARS]}") from None

    def read(self, size: int | None = None) -> bytes:
        pieces, wanted = [], -1 if size is None or size < 0 else size
        while wanted:
            piece = bytes(self._call(self._stream.read, DRAIN_PIECE if wanted < 0 else min(wanted, DRAIN_PIECE)))
            if not piece:
                break
            pieces.append(piece)
            wanted -= len(piece) if wanted > 0 else 0
            gevent.sleep(0)
        return b"".join(pieces)

    def readline(self, size: int | None = None) -> bytes:
        return bytes(self._call(self._stream.readline, size))

    def readlines(self, size: int | None = None) -> list[bytes]:
        return list(self._call(self._stream.readlines, size))

    def __iter__(self) -> RequestBody:
        return self

    def __next__(self) -> bytes:
        return bytes(self._call(self._stream.__next__))


def with_connection_rules(app: Callable[..., Iterable[bytes]], write_timeout: float) -> Callable[..., Iterable[bytes]]:
    """The WSGI app, with the client's socket switched to the write timeout once the answer starts, the
    connection closed after an answer that leaves the body unread (408) or broken, and the body read
    through `RequestBody`."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        body = environ["wsgi.input"] = RequestBody(environ["wsgi.input"])

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if sock is not None:
                sock.settimeout(write_timeout)
            if status[:3] in CLOSE_AFTER or body.broken:
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if response is not None and hasattr(response, "force_close"):
                    response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return application


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


EXPOSED_WITHOUT_KEY = """\
role-injector: WARNING: serving on {host} without an API key.
  Anyone who can reach this address can use /v1/* and /api/* (your roles, your Ollama).
  Set ROLE_INJECTOR_API_KEY, or serve on 127.0.0.1 (the default) behind your own access control.
"""


def raise_file_limit(needed: int) -> None:
    """Each connection is a file descriptor, a proxied one two: lift the soft limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("the open-file limit (%s) is below the %s that ROLE_INJECTOR_MAX_CONNECTIONS needs", hard, needed)


def serve(host: str, port: int, roles_dir: str, workers: int) -> int:
    patch_for_gevent()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # Metrics of all workers meet in one directory; set before prometheus_client is imported. Ours is
    # removed when the server stops; one given in the environment is the caller's.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="role-injector-metrics-")

    def remove_metrics_dir(_server: Any = None) -> None:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)

    from role_injector.engines.url import EngineUrl
    from role_injector.settings import Settings
    from role_injector.tokens import VOCABULARIES, load_tokenizer
    from role_injector.web import create_app
    from role_injector.web.hosts import is_address

    try:
        settings = Settings.from_env(roles_dir=roles_dir)
        if not is_address(host):  # the name it listens on is a name it answers to (web/hosts.py)
            settings = dataclasses.replace(settings, allowed_hosts=settings.allowed_hosts | {host.lower()})
        app = create_app(settings)
        for name in VOCABULARIES:  # built once in the master, shared by the forked workers
            load_tokenizer(name)
    except RoleInjectorError as exc:
        remove_metrics_dir()
        print(f"role-injector: {exc.message}", file=sys.stderr)
        return exc.kind.exit_code
    if not settings.api_key and not is_loopback(host):
        print(EXPOSED_WITHOUT_KEY.format(host=host), file=sys.stderr, end="", flush=True)
    raise_file_limit(2 * settings.max_connections + 256)
    # What is loaded now lives as long as the workers: keep the garbage collector from walking it in
    # each worker (a full pass over it paused every connection of a worker for 15-40 ms) and from
    # touching its pages, which the forked workers share.
    gc.freeze()
    log.info("role-injector: roles from %s; the Ollama proxy forwards to %s", settings.roles_dir,
             EngineUrl.parse(settings.ollama_url).shown)

    def post_fork(server: Any, worker: Any) -> None:
        from role_injector.web.state import start_worker

        start_worker(app)

    def child_exit(server: Any, worker: Any) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

    options = {
        "bind": f"{host}:{port}",
        "workers": max(1, workers),
        "worker_class": worker_class(settings.read_timeout, settings.write_timeout),
        "worker_connections": settings.max_connections,
        "keepalive": max(1, round(settings.read_timeout)),  # on; how long is the worker's timeout_ctx
        "timeout": 120,
        "graceful_timeout": 10,
        "preload_app": True,
        "post_fork": post_fork,
        "child_exit": child_exit,
        "on_exit": remove_metrics_dir,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "control_socket_disable": True,  # several servers may run side by side (tests, replicas)
    }
    WorkerServer(options, app).run()
    return 0
