"""What the e2e tests share: the shipped samples, test-only variants of them, and the running stack."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.e2e.n8n import N8n
from tests.ollama_standin import OllamaStandin
from tests.servers import REPO, WorkerProcess

WORKFLOWS = REPO / "workflows"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
IMPORT_SCRIPT = REPO / "docker" / "import-samples.sh"

# Test-only variants of the shipped workflows, imported beside them.
UNKNOWN_ROLE_ID = "e2eUnknownRole"
WORKER_DOWN_ID = "e2eWorkerDown"
UNKNOWN_ROLE = "no-such-role"
DOWN_CREDENTIAL = {"id": "roleInjectorDown", "name": "Role Injector (stopped)"}

# Test-only workflows of their own (tests/e2e/fixtures/), imported in the same step.
# n8n's Ollama node on a virtual model, its Ollama credential pointing at the worker's proxy.
PROXY_WORKFLOW = "proxy-virtual-model.json"
PROXY_WORKFLOW_ID = "e2eProxyVirtualModel"
PROXY_CREDENTIAL = {"id": "ollamaViaWorker", "name": "Ollama via the Role Injector worker"}


def load_workflow(name: str, folder: Path = WORKFLOWS) -> dict[str, Any]:
    return json.loads((folder / name).read_text())


def node(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in workflow["nodes"] if n["name"] == name)


def assignment(workflow: dict[str, Any], node_name: str, field: str) -> str:
    """The value a Set node in a shipped workflow assigns to `field`."""
    assignments = node(workflow, node_name)["parameters"]["assignments"]["assignments"]
    return str(next(a["value"] for a in assignments if a["name"] == field))


@dataclass
class Stack:
    n8n: N8n
    worker: WorkerProcess
    ollama: OllamaStandin
    down_url: str  # where the "stopped worker" credential points: a port nobody listens on

    def inject(self, **body: Any) -> requests.Response:
        """Ask the worker directly, to know what n8n should have received from it."""
        return requests.post(self.worker.url + "/v1/inject", json=body, timeout=30)


def _variant(source: str, workflow_id: str, name: str) -> dict[str, Any]:
    workflow = copy.deepcopy(load_workflow(source))
    workflow.update(id=workflow_id, name=name)
    return workflow


def write_samples(folder: Path, down_url: str, worker_url: str) -> None:
    """The shipped samples plus the failure variants and the test-only fixtures, with the shipped
    default URLs left in place (the import script rewrites them)."""
    folder.mkdir()
    for path in [*WORKFLOWS.glob("*.json"), FIXTURES / PROXY_WORKFLOW]:
        (folder / path.name).write_text(path.read_text())

    credentials = json.loads((WORKFLOWS / "credentials.json").read_text())
    credentials.append({**DOWN_CREDENTIAL, "type": "roleInjectorApi", "data": {"url": down_url, "apiKey": ""}})
    credentials.append({**PROXY_CREDENTIAL, "type": "ollamaApi", "data": {"baseUrl": worker_url}})
    (folder / "credentials.json").write_text(json.dumps(credentials, indent=2))

    unknown = _variant("raw-chatml-generate.json", UNKNOWN_ROLE_ID, "e2e: unknown role")
    node(unknown, "Role Injector")["parameters"]["role"]["value"] = UNKNOWN_ROLE
    down = _variant("raw-chatml-generate.json", WORKER_DOWN_ID, "e2e: worker down")
    node(down, "Role Injector")["credentials"] = {"roleInjectorApi": DOWN_CREDENTIAL}
    for workflow in (unknown, down):
        (folder / f"{workflow['id']}.json").write_text(json.dumps(workflow, indent=2))
