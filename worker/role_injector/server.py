"""`role-injector serve`: the app under gunicorn with threaded workers."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any

from gunicorn.app.base import BaseApplication

from role_injector.errors import RoleInjectorError


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


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def serve(host: str, port: int, roles_dir: str, workers: int, threads: int = 8) -> int:
    # Metrics of all workers meet in one directory; set before prometheus_client is imported.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="role-injector-metrics-"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    from role_injector.settings import Settings
    from role_injector.tokens import VOCABULARIES, load_tokenizer
    from role_injector.web import create_app

    try:
        app = create_app(Settings.from_env(roles_dir=roles_dir))
        for name in VOCABULARIES:  # built once in the master, shared by the forked workers
            load_tokenizer(name)
    except RoleInjectorError as exc:
        print(f"role-injector: {exc.message}", file=sys.stderr)
        return exc.kind.exit_code
    options = {
        "bind": f"{host}:{port}",
        "workers": max(1, workers),
        "worker_class": "gthread",
        "threads": threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        "preload_app": True,
        "child_exit": child_exit,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "control_socket_disable": True,  # several servers may run side by side (tests, replicas)
    }
    WorkerServer(options, app).run()
    return 0
