"""A real n8n (2.41.x) for the end-to-end and browser tests, driven over its REST API.

The session's n8n is started by `make run`'s own script (see tests/e2e/stack.py), which installs the
toolchain, packs and installs the node, imports the samples with docker/import-samples.sh and runs
one `n8n start`. After that everything goes through the running server:

- Owner account, headless: a fresh n8n has no user; `POST /rest/owner/setup` (no auth needed while
  no owner exists) creates the owner and answers with the `n8n-auth` session cookie; later
  sessions log in with `POST /rest/login`. The cookie is sent over plain HTTP only because the
  server runs with N8N_SECURE_COOKIE=false. The browser tests log in through the sign-in page.
- Manual runs: `POST /rest/workflows/<id>/run` with `triggerToStartFrom` (a trigger's name, and
  for a Chat Trigger the message as that trigger's output data, which is what the editor's chat
  panel sends), then `GET /rest/executions/<id>` until the run has finished. The execution's data
  comes back serialised with `flatted` (see `unflatten`).
- Webhooks: published workflows are served on `/webhook/<path>` once n8n has activated them.

`N8n.logs()` gathers the logs of the session's n8n (under its user folder) for failure reports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.servers import free_port

# The owner account the tests create on their own fresh n8n (never a real one).
OWNER = {"email": "owner@role-injector.test", "firstName": "Test", "lastName": "Owner",
         "password": "Role-Injector-1"}


class N8nError(RuntimeError):
    """An n8n step failed; the message carries the tail of its log."""


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


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
    user_folder: Path
    encryption_key: str = "role-injector-e2e-key"
    port: int = field(default_factory=free_port)
    _session: requests.Session | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """n8n's settings for the tests (on top of what scripts/run-local.sh sets)."""
        return {
            "N8N_ENCRYPTION_KEY": self.encryption_key,
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

    def log_in(self, timeout: float = 120) -> None:
        """Create the owner on a fresh n8n (or log in as it); later requests carry its session cookie.
        n8n serves its page and /rest/settings a moment before its other routes: while /rest/login is
        404, it is still starting."""
        deadline = time.monotonic() + timeout
        while True:
            session = requests.Session()
            setup = session.post(f"{self.url}/rest/owner/setup", json=OWNER, timeout=30)
            if setup.status_code == 200:
                break
            login = session.post(f"{self.url}/rest/login", timeout=30,  # the owner exists already: log in
                                 json={"emailOrLdapLoginId": OWNER["email"], "password": OWNER["password"]})
            if login.status_code == 200:
                break
            if login.status_code != 404 or time.monotonic() > deadline:
                raise N8nError(f"cannot log in to n8n: {setup.status_code} {setup.text[:300]} / "
                               f"{login.status_code} {login.text[:300]}")
            time.sleep(0.5)
        self._session = session

    @property
    def rest(self) -> requests.Session:
        if self._session is None:
            raise N8nError("n8n is not serving")
        return self._session

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
        """The logs of this n8n (run-local.sh writes them to <user folder>/logs), for a failure report."""
        parts = [f"===== {p.name} =====\n{_tail(p, 200)}" for p in sorted((self.user_folder / "logs").glob("*.log"))]
        return "\n".join(parts)
