"""A real n8n (2.41.x) for the end-to-end and browser tests: one `n8n start` per test session.

The toolchain (Node 24, n8n, the node package's build, pack and install) comes from
scripts/n8n-toolchain.sh, the same script that `make run` and the Docker image use. The samples are
imported with docker/import-samples.sh (n8n's CLI) before the server starts; after that everything
goes through the running server:

- Owner account, headless: a fresh n8n has no user; `POST /rest/owner/setup` (no auth needed while
  no owner exists) creates the owner and answers with the `n8n-auth` session cookie; later
  sessions log in with `POST /rest/login`. The cookie is sent over plain HTTP only because the
  server runs with N8N_SECURE_COOKIE=false. The browser tests log in through the sign-in page.
- Manual runs: `POST /rest/workflows/<id>/run` with `triggerToStartFrom` (a trigger's name, and
  for a Chat Trigger the message as that trigger's output data, which is what the editor's chat
  panel sends), then `GET /rest/executions/<id>` until the run has finished. The execution's data
  comes back serialised with `flatted` (see `unflatten`).
- Webhooks: published workflows are served on `/webhook/<path>` once n8n has activated them.

Every process writes to its own log file under `log_dir`; `N8n.logs()` gathers them for failures.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.servers import REPO, free_port, stop_process, wait_for_http

TOOLCHAIN = REPO / "scripts" / "n8n-toolchain.sh"
NODE_PACKAGE = "n8n-nodes-role-injector"
# The owner account the tests create on their own fresh n8n (never a real one).
OWNER = {"email": "owner@role-injector.test", "firstName": "Test", "lastName": "Owner",
         "password": "Role-Injector-1"}


class N8nError(RuntimeError):
    """An n8n step failed; the message carries the tail of its log."""


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def toolchain(*args: str, log_path: Path, timeout: float = 1800) -> str:
    """Run scripts/n8n-toolchain.sh; return the last line it printed (a path). stderr goes to the log."""
    with log_path.open("ab") as log:
        log.write(f"$ n8n-toolchain.sh {' '.join(args)}\n".encode())
        log.flush()
        result = subprocess.run(["bash", str(TOOLCHAIN), *args], stdout=subprocess.PIPE, stderr=log,
                                timeout=timeout, check=False)
    if result.returncode != 0:
        raise N8nError(f"n8n-toolchain.sh {' '.join(args)} failed ({result.returncode}):\n{_tail(log_path)}")
    return result.stdout.decode().strip().splitlines()[-1]


def unflatten(text: str) -> Any:
    """Parse the `flatted` serialisation n8n uses for execution data.

    flatted writes a JSON array whose first entry is the root value; inside objects and arrays
    every string is the index (written as a string) of another entry, which is how shared and
    circular references survive. Numbers, booleans and null stay in place.
    """
    entries = json.loads(text)
    revived: dict[int, Any] = {}

    def resolve(index: int) -> Any:
        if index in revived:
            return revived[index]
        entry = entries[index]
        if isinstance(entry, dict):
            mapping: dict[str, Any] = {}
            revived[index] = mapping  # before the children, so a cycle finds it
            mapping.update({key: revive(value) for key, value in entry.items()})
            return mapping
        if isinstance(entry, list):
            sequence: list[Any] = []
            revived[index] = sequence
            sequence.extend(revive(value) for value in entry)
            return sequence
        revived[index] = entry
        return entry

    def revive(value: Any) -> Any:
        return resolve(int(value)) if isinstance(value, str) else value

    return resolve(0)


@dataclass
class Run:
    """One finished manual run: the execution's status and its run data."""

    status: str
    data: dict[str, Any]
    execution_id: str

    @property
    def result(self) -> dict[str, Any]:
        return dict(self.data.get("resultData") or {})

    @property
    def error(self) -> dict[str, Any] | None:
        error = self.result.get("error")
        return error if isinstance(error, dict) else None

    @property
    def error_text(self) -> str:
        """Message and description of the execution's error, as the editor shows them."""
        error = self.error or {}
        return "\n".join(str(error.get(key) or "") for key in ("message", "description"))

    def node_items(self, node: str, output: int = 0, connection: str = "main") -> list[dict[str, Any]]:
        """The json of each item that `node` emitted on `output` (in its last run)."""
        runs = self.result["runData"][node]
        return [item["json"] for item in runs[-1]["data"][connection][output] or []]

    def node_runs(self, node: str) -> list[dict[str, Any]]:
        return list(self.result["runData"].get(node) or [])

    def last_node(self) -> str:
        return str(self.result.get("lastNodeExecuted"))


@dataclass
class N8n:
    tools: Path
    user_folder: Path
    log_dir: Path
    encryption_key: str = "role-injector-e2e-key"
    port: int = field(default_factory=free_port)
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)
    _session: requests.Session | None = field(default=None, repr=False)

    @classmethod
    def install(cls, base: Path, log_dir: Path) -> N8n:
        """n8n from the tools folder, with the node package built, packed and installed in a new user folder."""
        log_path = log_dir / "toolchain.log"
        tools = Path(toolchain("install", log_path=log_path))
        tgz = toolchain("pack", str(base / "pack"), log_path=log_path)
        n8n = cls(tools=tools, user_folder=base / "n8n-home", log_dir=log_dir)
        toolchain("install-package", tgz, str(n8n.user_folder / ".n8n" / "nodes"), log_path=log_path)
        return n8n

    @property
    def binary(self) -> Path:
        return self.tools / "n8n" / "node_modules" / ".bin" / "n8n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        node_bin = self.tools / "node24" / "node_modules" / "node" / "bin"
        return {
            **os.environ,
            "PATH": f"{node_bin}:{os.environ['PATH']}",
            "N8N_USER_FOLDER": str(self.user_folder),
            "DB_TYPE": "sqlite",
            "N8N_ENCRYPTION_KEY": self.encryption_key,
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_SECURE_COOKIE": "false",
            # Every n8n process starts a task broker; a fresh port keeps it off other sessions' brokers.
            "N8N_RUNNERS_BROKER_PORT": str(free_port()),
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
            # `n8n start` activates published workflows from a background poll (15 s by default).
            "N8N_WORKFLOW_PUBLICATION_OUTBOX_POLL_INTERVAL_MS": "1000",
            "N8N_WORKFLOW_PUBLICATION_RECONCILE_INTERVAL_SECONDS": "1",
        }

    def log_path(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"n8n-{next(self._counter):02d}-{name}.log"

    @contextmanager
    def serve(self, timeout: float = 180) -> Iterator[N8n]:
        """`n8n start` until the block ends; yields once the editor serves and the owner is logged in."""
        log_path = self.log_path("start")
        with log_path.open("wb") as log:
            process = subprocess.Popen([str(self.binary), "start"], env=self.env(), stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_http(self.url + "/healthz", timeout=timeout, process=process)
                _wait_for_line(log_path, "Editor is now accessible", process, timeout)
            except (TimeoutError, RuntimeError) as exc:
                raise N8nError(f"n8n start did not come up ({exc}):\n{_tail(log_path)}") from exc
            self._session = self._log_in()
            yield self
        finally:
            stop_process(process, timeout=30)

    def _log_in(self) -> requests.Session:
        session = requests.Session()
        setup = session.post(f"{self.url}/rest/owner/setup", json=OWNER, timeout=30)
        if setup.status_code != 200:  # the owner exists already: log in
            login = session.post(f"{self.url}/rest/login", timeout=30,
                                 json={"emailOrLdapLoginId": OWNER["email"], "password": OWNER["password"]})
            if login.status_code != 200:
                raise N8nError(f"cannot log in to n8n: {setup.status_code} {setup.text[:300]} / "
                               f"{login.status_code} {login.text[:300]}")
        return session

    @property
    def rest(self) -> requests.Session:
        if self._session is None:
            raise N8nError("n8n is not serving")
        return self._session

    def cookies(self) -> list[dict[str, Any]]:
        """The owner's session cookies, in Playwright's `add_cookies` shape."""
        return [{"name": c.name, "value": c.value or "", "url": self.url} for c in self.rest.cookies]

    def workflow(self, workflow_id: str) -> dict[str, Any]:
        response = self.rest.get(f"{self.url}/rest/workflows/{workflow_id}", timeout=30)
        response.raise_for_status()
        return dict(response.json()["data"])

    def execute(self, workflow_id: str, trigger: str = "Run manually", trigger_output: Mapping[str, Any] | None = None,
                timeout: float = 120) -> Run:
        """Run a workflow as the editor's "Execute workflow" does, from `trigger`; wait until it ends.

        `trigger_output` is the json of the one item the trigger emits, e.g. a Chat Trigger's
        `{"sessionId", "action": "sendMessage", "chatInput"}`; without it the trigger runs itself.
        """
        start: dict[str, Any] = {"name": trigger}
        if trigger_output is not None:
            start["data"] = {
                "startTime": int(time.time() * 1000), "executionTime": 0, "executionIndex": 0,
                "executionStatus": "success", "source": [],
                "data": {"main": [[{"json": dict(trigger_output)}]]},
            }
        response = self.rest.post(f"{self.url}/rest/workflows/{workflow_id}/run", timeout=60,
                                  json={"triggerToStartFrom": start})
        if response.status_code != 200:
            raise N8nError(f"run of {workflow_id} refused: {response.status_code} {response.text[:1000]}")
        execution_id = str(response.json()["data"]["executionId"])
        return self.wait_for_execution(execution_id, timeout)

    def wait_for_execution(self, execution_id: str, timeout: float = 120) -> Run:
        deadline = time.monotonic() + timeout
        while True:
            response = self.rest.get(f"{self.url}/rest/executions/{execution_id}", timeout=30)
            response.raise_for_status()
            execution = response.json()["data"]
            if execution.get("status") not in ("new", "running", "waiting", None):
                return Run(status=str(execution["status"]), data=unflatten(execution["data"]),
                           execution_id=execution_id)
            if time.monotonic() > deadline:
                raise N8nError(f"execution {execution_id} still {execution.get('status')} after {timeout}s")
            time.sleep(0.2)

    def wait_for_webhook(self, path: str, method: str = "POST", timeout: float = 60) -> None:
        """Wait until a published workflow's webhook is registered (activation runs after start-up).

        A CORS preflight asks without running the workflow: 404 until the path is registered.
        """
        deadline = time.monotonic() + timeout
        headers = {"Origin": "http://localhost", "Access-Control-Request-Method": method}
        while True:
            status = requests.options(f"{self.url}/webhook/{path}", headers=headers, timeout=5).status_code
            if status < 300:
                return
            if time.monotonic() > deadline:
                raise N8nError(f"webhook {method} /webhook/{path} not registered after {timeout}s "
                               f"(last status {status}):\n{self.logs()}")
            time.sleep(0.3)

    def logs(self) -> str:
        """Every n8n log of this instance, for a failing test's report."""
        parts = [f"===== {p.name} =====\n{_tail(p, 200)}" for p in sorted(self.log_dir.glob("*.log"))
                 if not p.name.startswith("worker-")]
        return "\n".join(parts)


def _wait_for_line(log_path: Path, marker: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    # /healthz answers before the editor and the published workflows are ready; n8n logs this after.
    deadline = time.monotonic() + timeout
    while marker not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(f"n8n exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"n8n did not log {marker!r} within {timeout}s")
        time.sleep(0.2)
