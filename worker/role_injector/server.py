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

Tokenising runs on the event loop: one fit costs milliseconds, a pathological body at most the time its
size limit allows; several worker processes (`--workers`, default 2) use more cores.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import logging
import os
import resource
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.app.base import BaseApplication

from role_injector.errors import RoleInjectorError

log = logging.getLogger("role_injector.server")

# Answers after which the connection is closed: the client stopped sending its body. (Not after a 413:
# a client still sending would get a reset instead of the answer; gunicorn reads the rest of that
# body, within the read timeout, before the next request.)
CLOSE_AFTER = ("408",)


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
    import gevent
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

        def timeout_ctx(self) -> Any:
            return gevent.Timeout(read_timeout, False)  # (gunicorn's own uses `keepalive`, whole seconds)

        def load_wsgi(self) -> None:
            super().load_wsgi()
            self.wsgi = with_write_timeout(self.wsgi, write_timeout)

        def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
            sock.settimeout(read_timeout)  # the body, read by the app
            try:
                return bool(super().handle_request(listener_name, req, sock, addr))
            except TimeoutError:
                self.log.info("closed the connection of %s: it took no data for longer than the timeout",
                              addr[0] if isinstance(addr, tuple) else addr)
                raise StopIteration from None  # gunicorn closes the connection
            finally:
                sock.settimeout(None)  # the wait for the next request is bounded by timeout_ctx

    return Worker


def with_write_timeout(app: Callable[..., Iterable[bytes]], write_timeout: float) -> Callable[..., Iterable[bytes]]:
    """The WSGI app, with the client's socket switched to the write timeout once the answer starts."""

    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if sock is not None:
                sock.settimeout(write_timeout)
            if status[:3] in CLOSE_AFTER:
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
        "child_exit": child_exit,
        "on_exit": remove_metrics_dir,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "control_socket_disable": True,  # several servers may run side by side (tests, replicas)
    }
    WorkerServer(options, app).run()
    return 0
