"""What the e2e and browser tests share: the shipped samples, test-only variants of them, and the
running stack, one per test session: `make run`'s own script (scripts/run-local.sh) with the
session's samples, in front of an Ollama stand-in, so the tests run n8n 2.41 with the packed node
and the worker exactly as a user's `make run` does (see `run_stack`).

To add a workflow to the e2e suite: put its JSON in tests/e2e/fixtures/ (give it a fixed `id`; use
the shipped credentials `roleInjectorLocal` / `ollamaLocal` and the samples' default URLs and model,
which the import rewrites) and list it in FIXTURE_WORKFLOWS; a test then runs it with
`e2e_stack.n8n.execute(<id>)`. A credential of its own goes into `write_samples`.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.e2e.n8n import N8n, N8nError
from tests.ollama_standin import DEFAULT_ANSWER, OllamaStandin, Reply, run_ollama_standin
from tests.servers import REPO, ROLE_INJECTOR, child_pids, free_port, stop_group, stop_process, wait_for_http

WORKFLOWS = REPO / "workflows"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RUN_LOCAL = REPO / "scripts" / "run-local.sh"

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
# role-agent-openai.json against a second worker, in front of a real llama-server (SmolLM2), which a
# test starts on the stack's `engine_worker_port`: the same workflow, its credential pointed there.
ENGINE_AGENT_ID = "e2eAgentOpenaiEngine"
ENGINE_CREDENTIAL = {"id": "openAiViaEngineWorker", "name": "OpenAI via the worker in front of llama.cpp"}
ENGINE_MODEL = "smollm2"
ENGINE_MAX_TOKENS = 48  # SmolLM2 may ramble; the agent's answer is read, not judged
# A Role Injector node as a new user adds it after a Manual Trigger: its Prompt left at the default,
# which reads a Chat Trigger's message (so n8n stores no `prompt` for it).
DEFAULT_PROMPT_WORKFLOW = "default-prompt.json"
DEFAULT_PROMPT_WORKFLOW_ID = "e2eDefaultPrompt"
FIXTURE_WORKFLOWS = [PROXY_WORKFLOW, AGENT_TOOL_WORKFLOW, DEFAULT_PROMPT_WORKFLOW]
# Published on import, so `n8n start` serves their webhooks.
PUBLISHED_IDS = ["roleApiWebhook"]


def load_workflow(name: str, folder: Path = WORKFLOWS) -> dict[str, Any]:
    return json.loads((folder / name).read_text())


def node(workflow: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in workflow["nodes"] if n["name"] == name)


def assignment(workflow: dict[str, Any], node_name: str, name: str) -> str:
    """The value a Set node in a shipped workflow assigns to `name`."""
    assignments = node(workflow, node_name)["parameters"]["assignments"]["assignments"]
    return str(next(a["value"] for a in assignments if a["name"] == name))


@dataclass
class WorkerEndpoint:
    """The worker as the tests see it: its URL, and the files its log went to."""

    url: str
    log_paths: list[Path]

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.log_paths if path.exists())


@dataclass
class Stack:
    n8n: N8n
    worker: WorkerEndpoint
    ollama: OllamaStandin
    down_url: str  # where the "stopped worker" credential points: a port nobody listens on
    local: LocalRun
    engine_worker_port: int  # where ENGINE_CREDENTIAL points: a worker a test starts in front of an engine
    replacements: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def restart_worker(self, log_dir: Path) -> None:
        """Start a worker again where run-local.sh's was (after a test stopped that one)."""
        log_path = log_dir / "worker-restarted.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(ROLE_INJECTOR), "serve", "--host", "127.0.0.1", "--port", str(self.local.worker_port),
                 "--roles", str(REPO / "roles")],
                env={**os.environ, **worker_env(self.ollama.url)}, stdout=log, stderr=subprocess.STDOUT)
        self.replacements.append(process)
        self.worker.log_paths.append(log_path)
        wait_for_http(self.worker.url + "/healthz", process=process)

    def stop_replacement_workers(self) -> None:
        """Stop the workers `restart_worker` started (they are not part of make run's process group)."""
        for replacement in self.replacements:
            stop_process(replacement, timeout=15)
        self.replacements.clear()

    def start_again(self, log_path: Path) -> None:
        """Run make run's script once more with the same settings (after a test stopped it): the samples
        are imported already, so it packs the node, starts the worker and n8n, and prints its banner."""
        self.local = LocalRun.start(self.local.env, log_path, self.local.worker_port)
        self.worker.log_paths.append(log_path)
        self.local.wait_for(BANNER_END, timeout=600)
        self.n8n.log_in()

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


def write_samples(folder: Path, down_url: str, worker_url: str, engine_worker_url: str) -> None:
    """The shipped samples plus the failure variants and the test-only fixtures, with the shipped
    default URLs left in place (the import script rewrites them)."""
    folder.mkdir()
    for path in [*WORKFLOWS.glob("*.json"), *(FIXTURES / name for name in FIXTURE_WORKFLOWS)]:
        (folder / path.name).write_text(path.read_text())

    credentials = json.loads((WORKFLOWS / "credentials.json").read_text())
    credentials.append({**DOWN_CREDENTIAL, "type": "roleInjectorApi", "data": {"url": down_url, "apiKey": ""}})
    credentials.append({**PROXY_CREDENTIAL, "type": "ollamaApi", "data": {"baseUrl": worker_url}})
    credentials.append({**ENGINE_CREDENTIAL, "type": "openAiApi",
                        "data": {"apiKey": "no-key", "url": engine_worker_url + "/v1"}})
    (folder / "credentials.json").write_text(json.dumps(credentials, indent=2))

    unknown = _variant("raw-chatml-generate.json", UNKNOWN_ROLE_ID, "e2e: unknown role")
    node(unknown, "Role Injector")["parameters"]["role"]["value"] = UNKNOWN_ROLE
    down = _variant("raw-chatml-generate.json", WORKER_DOWN_ID, "e2e: worker down")
    node(down, "Role Injector")["credentials"] = {"roleInjectorApi": DOWN_CREDENTIAL}
    on_engine = _variant("role-agent-openai.json", ENGINE_AGENT_ID, "e2e: AI Agent on a real engine")
    model = node(on_engine, "OpenAI Chat Model via the worker")
    model["credentials"] = {"openAiApi": ENGINE_CREDENTIAL}
    model["parameters"]["options"] |= {"maxTokens": ENGINE_MAX_TOKENS, "temperature": 0}
    settings = node(on_engine, "Settings")["parameters"]["assignments"]["assignments"]
    next(a for a in settings if a["name"] == "model")["value"] = ENGINE_MODEL
    for workflow in (unknown, down, on_engine):
        (folder / f"{workflow['id']}.json").write_text(json.dumps(workflow, indent=2))


def worker_env(ollama_url: str) -> dict[str, str]:
    """The worker's proxy forwards to the stand-in; a developer's own key or profile file never leaks in."""
    return {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_API_KEY": "", "ROLE_INJECTOR_MODELS": ""}


@dataclass
class LocalRun:
    """scripts/run-local.sh running, its terminal output in `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    worker_port: int
    env: dict[str, str]
    banner_status: int = 0  # what GET / answered the moment the banner was printed

    @classmethod
    def start(cls, env: dict[str, str], log_path: Path, worker_port: int) -> LocalRun:
        with log_path.open("wb") as log:
            # Its own process group, so that nothing it started outlives the session.
            process = subprocess.Popen(["bash", str(RUN_LOCAL)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(process=process, log_path=log_path, worker_port=worker_port, env=env)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pid(self) -> int | None:
        """The worker (`role-injector serve`, gunicorn's master) that the script started."""
        for pid in child_pids(self.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile
                continue
            if b"serve" in cmdline and any(part.endswith(b"role-injector") for part in cmdline):
                return pid
        return None

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise N8nError(f"run-local.sh exited with {self.process.returncode}:\n{self.log()[-5000:]}")
            if time.monotonic() > deadline:
                raise N8nError(f"run-local.sh did not print {text!r} within {timeout}s:\n{self.log()[-5000:]}")
            time.sleep(0.2)


BANNER_END = "Press Ctrl-C to stop."


@contextmanager
def run_stack(base: Path) -> Iterator[Stack]:
    """`make run` (scripts/run-local.sh) on free ports with the session's samples and an Ollama
    stand-in; yields once its banner is out and the owner is logged in; Ctrl-C at the end."""
    n8n = N8n(user_folder=base / "n8n-home")
    worker_port = free_port()
    worker_url = f"http://127.0.0.1:{worker_port}"
    down_url = f"http://127.0.0.1:{free_port()}"
    engine_worker_port = free_port()
    samples = base / "samples"
    write_samples(samples, down_url, worker_url, f"http://127.0.0.1:{engine_worker_port}")
    with run_ollama_standin() as ollama:
        env = {
            **os.environ, **n8n.env(), **worker_env(ollama.url),
            "WORKER_PORT": str(worker_port), "N8N_HOME": str(n8n.user_folder), "SAMPLES_DIR": str(samples),
            "OLLAMA_URL": ollama.url, "PUBLISH_IDS": " ".join(PUBLISHED_IDS), "FORCE_IMPORT": "false",
            # Pinned, so a developer's own settings for run-local.sh never leak into the test.
            "OLLAMA_MODEL": "qwen3:8b",
        }
        log_path = base / "run-local.log"
        local = LocalRun.start(env, log_path, worker_port)
        stack = Stack(n8n=n8n, worker=WorkerEndpoint(worker_url, [log_path]), ollama=ollama, down_url=down_url,
                      local=local, engine_worker_port=engine_worker_port)
        try:
            local.wait_for(BANNER_END, timeout=1800)  # the first run installs n8n
            local.banner_status = requests.get(n8n.url + "/", timeout=30).status_code
            n8n.log_in()
            yield stack
        finally:
            stop_group(stack.local.process)
            stack.stop_replacement_workers()
