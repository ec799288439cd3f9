"""What the e2e and browser tests share: the shipped samples, test-only variants of them, and the
running stack (one per test session: n8n 2.41 serving with the packed node, the worker, an Ollama
stand-in; see `run_stack`).

To add a workflow to the e2e suite: put its JSON in tests/e2e/fixtures/ (give it a fixed `id`; use
the shipped credentials `roleInjectorLocal` / `ollamaLocal` and the samples' default URLs and model,
which the import rewrites) and list it in FIXTURE_WORKFLOWS; a test then runs it with
`e2e_stack.n8n.execute(<id>)`. A credential of its own goes into `write_samples`.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.e2e.n8n import N8n, N8nError
from tests.ollama_standin import DEFAULT_ANSWER, OllamaStandin, Reply, run_ollama_standin
from tests.servers import REPO, WorkerProcess, free_port, run_worker

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
# An AI Agent whose tool is the Role Injector node (its tool variant, `roleInjectorTool`).
AGENT_TOOL_WORKFLOW = "agent-role-tool.json"
AGENT_TOOL_WORKFLOW_ID = "e2eAgentRoleTool"
FIXTURE_WORKFLOWS = [PROXY_WORKFLOW, AGENT_TOOL_WORKFLOW]
# Published on import, so `n8n start` serves their webhooks.
PUBLISHED_IDS = ["roleApiWebhook"]


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

    def worker_roles(self) -> list[dict[str, Any]]:
        response = requests.get(self.worker.url + "/v1/roles", timeout=30)
        response.raise_for_status()
        return list(response.json()["roles"])


def tool_calling_model(body: dict[str, Any]) -> str | Reply:
    """A stand-in model that first asks its one tool (the role) for guidance, then answers."""
    if any(message.get("role") == "tool" for message in body["messages"]):
        return DEFAULT_ANSWER
    (tool,) = body["tools"]
    call = {"function": {"name": tool["function"]["name"], "arguments": {"question": "thank-you note"}}}
    return Reply(tool_calls=(call,))


def _variant(source: str, workflow_id: str, name: str) -> dict[str, Any]:
    workflow = copy.deepcopy(load_workflow(source))
    workflow.update(id=workflow_id, name=name)
    return workflow


def write_samples(folder: Path, down_url: str, worker_url: str) -> None:
    """The shipped samples plus the failure variants and the test-only fixtures, with the shipped
    default URLs left in place (the import script rewrites them)."""
    folder.mkdir()
    for path in [*WORKFLOWS.glob("*.json"), *(FIXTURES / name for name in FIXTURE_WORKFLOWS)]:
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


def worker_env(ollama_url: str) -> dict[str, str]:
    """The worker's proxy forwards to the stand-in; a developer's own key or profile file never leaks in."""
    return {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_API_KEY": "", "ROLE_INJECTOR_MODELS": ""}


def import_samples(n8n: N8n, samples: Path, worker_url: str, ollama_url: str) -> None:
    """docker/import-samples.sh, as Docker Compose and `make run` use it, into the n8n user folder."""
    env = {
        **n8n.env(),
        "SAMPLES_DIR": str(samples),
        "ROLE_INJECTOR_URL": worker_url,
        "OLLAMA_URL": ollama_url,
        "N8N_BIN": str(n8n.binary),
        "PUBLISH_IDS": " ".join(PUBLISHED_IDS),
        # Pinned, so a developer's own settings for run-local.sh never leak into the test.
        "OLLAMA_MODEL": "qwen3:8b",
        "ROLE_INJECTOR_API_KEY": "",
        "FORCE_IMPORT": "false",
    }
    log_path = n8n.log_path("import-samples")
    with log_path.open("wb") as log:
        code = subprocess.run(["sh", str(IMPORT_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=600, check=False).returncode
    if code != 0:
        raise N8nError(f"import-samples.sh failed ({code}):\n{log_path.read_text(errors='replace')}")


@contextmanager
def run_stack(base: Path) -> Iterator[Stack]:
    """Install n8n and the packed node, start the stand-in and the worker, import the samples, then
    serve n8n (one `n8n start`) until the block ends."""
    logs = base / "logs"
    logs.mkdir(parents=True)
    n8n = N8n.install(base, logs)
    down_url = f"http://127.0.0.1:{free_port()}"
    with run_ollama_standin() as ollama, run_worker(REPO / "roles", logs, env=worker_env(ollama.url)) as worker:
        samples = base / "samples"
        write_samples(samples, down_url, worker.url)
        import_samples(n8n, samples, worker.url, ollama.url)
        with n8n.serve():
            yield Stack(n8n=n8n, worker=worker, ollama=ollama, down_url=down_url)
