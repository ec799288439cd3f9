"""Real processes for tests: the worker under gunicorn, started on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
ROLE_INJECTOR = Path(sys.executable).parent / "role-injector"
# Whatever the developer's shell exports, a server under test starts from the defaults: every
# ROLE_INJECTOR_* variable is blanked (an empty value means "the default" in Settings.from_env) and
# no metrics folder is shared (`serve` makes and removes its own). Callers add what they test.
CLEAN_ENV = {name: "" for name in os.environ if name.startswith("ROLE_INJECTOR_")} | {"PROMETHEUS_MULTIPROC_DIR": ""}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A server the suite started: where it answers, its process and its log."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class WorkerProcess(ServerProcess):
    """A `role-injector serve` the suite started (gunicorn's master)."""

    def worker_pids(self) -> list[int]:
        """gunicorn's worker processes: the children of its master."""
        return child_pids(self.process.pid)


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def proc_status_kib(pid: int, field: str) -> int:
    """A figure in kB of /proc/<pid>/status, e.g. VmRSS (memory now) or VmHWM (its peak)."""
    found = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if found is None:
        raise LookupError(f"no {field} in /proc/{pid}/status")
    return int(found.group(1))


def wait_for_http(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            requests.get(url, timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):  # a worker may still be booting (busy machine)
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """`sig` (SIGTERM), then SIGKILL if it has not exited within `timeout` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_group(process: subprocess.Popen[bytes]) -> int:
    """Ctrl-C to the process group of a script started in a session of its own (`make run`, `make
    run-scale`), as a terminal sends it; then SIGKILL to the whole group if it lingers. The script's exit
    status (-9 when it had to be killed)."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=60)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


@contextmanager
def run_worker(
    roles_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    port: int | None = None,
) -> Iterator[WorkerProcess]:
    """Start `role-injector serve` (gunicorn) on CLEAN_ENV plus `env`, on `port` (default: a free one),
    and stop it afterwards."""
    port = port or free_port()
    log_path = log_dir / f"worker-{port}.log"
    full_env = {**os.environ, **CLEAN_ENV, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ROLE_INJECTOR), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--roles", str(roles_dir), "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, env=full_env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/healthz", process=process)
        yield WorkerProcess(url=url, process=process, log_path=log_path)
    finally:
        # gunicorn's quick shutdown: a graceful one (SIGTERM) waits up to its graceful timeout (10 s)
        # for the idle keep-alive connections that the tests' HTTP clients keep in their pools.
        stop_process(process, timeout=15, sig=signal.SIGINT)


def write_place(root: Path, roles: Mapping[str, str], profile: str) -> Path:
    """A place for `run_worker_at`: `root/roles/<name>.md` for each role text and the profile file
    `root/models.yaml`."""
    (root / "roles").mkdir(parents=True, exist_ok=True)
    for name, text in roles.items():
        (root / "roles" / f"{name}.md").write_text(text, encoding="utf-8")
    (root / "models.yaml").write_text(profile, encoding="utf-8")
    return root


def run_worker_at(place: Path, ollama_url: str, **env: str) -> AbstractContextManager[WorkerProcess]:
    """One worker process serving `place/roles` with the profile file `place/models.yaml`, its proxy
    forwarding to `ollama_url`."""
    return run_worker(place / "roles", place, workers=1, env={
        "ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_MODELS": str(place / "models.yaml"), **env,
    })
