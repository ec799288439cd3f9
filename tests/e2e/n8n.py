"""A real n8n (2.41.x) driven through its CLI, for the end-to-end tests.

Each CLI command starts a whole n8n (10-20 s), so callers should batch: one credentials file,
one folder of workflows. Every process writes to its own log file under `log_dir`, which
`N8n.logs()` gathers for failure messages.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.servers import REPO, free_port, stop_process, wait_for_http

INSTALL_SCRIPT = REPO / "scripts" / "install-n8n.sh"
NODE_PACKAGE_DIR = REPO / "n8n-node"
NODE_PACKAGE = "n8n-nodes-role-injector"


class N8nError(RuntimeError):
    """An n8n command failed; the message carries the tail of its log."""


def install_n8n(log_path: Path) -> Path:
    """Run the install script (a no-op when the cached install is there); return the tools folder."""
    with log_path.open("wb") as log:
        result = subprocess.run(["bash", str(INSTALL_SCRIPT)], stdout=subprocess.PIPE, stderr=log,
                                timeout=1800, check=False)
    if result.returncode != 0:
        raise N8nError(f"install-n8n.sh failed ({result.returncode}):\n{_tail(log_path)}")
    return Path(result.stdout.decode().strip().splitlines()[-1])


def node_bin(tools: Path) -> Path:
    return tools / "node24" / "node_modules" / "node" / "bin"


def _tail(path: Path, lines: int = 80) -> str:
    if not path.exists():
        return f"({path} missing)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _node_env(tools: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{node_bin(tools)}:{os.environ['PATH']}"}


def _step(command: list[str], cwd: Path, env: Mapping[str, str], log_path: Path, timeout: float) -> None:
    """Run one build step, appending its output to `log_path`; raise with the log's tail on failure."""
    with log_path.open("ab") as log:
        log.write(f"$ (cd {cwd} && {' '.join(command)})\n".encode())
        log.flush()
        code = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False).returncode
    if code != 0:
        raise N8nError(f"`{' '.join(command)}` failed ({code}) in {cwd}:\n{_tail(log_path)}")


def _node_package_deps(tools: Path, log_path: Path) -> Path:
    """The package's dev dependencies, installed once per lock file into the tools cache.

    Tests never install into n8n-node/ itself: its owner may be running npm there at the same time.
    """
    manifest = [NODE_PACKAGE_DIR / "package.json", NODE_PACKAGE_DIR / "package-lock.json"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in manifest if p.exists())).hexdigest()[:16]
    deps = tools / "node-package-deps" / digest
    if (deps / "node_modules" / ".bin" / "n8n-node").exists():
        return deps / "node_modules"
    staging = deps.with_name(f"{digest}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path in manifest:
        if path.exists():
            shutil.copy2(path, staging / path.name)
    verb = "ci" if (staging / "package-lock.json").exists() else "install"
    # --ignore-scripts: a dev dependency runs `npx only-allow pnpm`, which waits for a yes.
    _step(["npm", verb, "--ignore-scripts", "--no-audit", "--no-fund"], staging, _node_env(tools), log_path, 900)
    try:
        staging.rename(deps)
    except OSError:  # another session finished the same install first
        shutil.rmtree(staging, ignore_errors=True)
    return deps / "node_modules"


def build_node_package(tools: Path, out_dir: Path, log_path: Path) -> Path:
    """Build and pack the community node package with Node 24, from a copy of n8n-node/; return the .tgz."""
    env, source = _node_env(tools), out_dir / "source"
    shutil.copytree(NODE_PACKAGE_DIR, source,
                    ignore=shutil.ignore_patterns("node_modules", "dist", "*.tgz", ".turbo"))
    (source / "node_modules").symlink_to(_node_package_deps(tools, log_path))
    _step(["npx", "--no-install", "n8n-node", "build"], source, env, log_path, 600)
    _step(["npm", "pack", "--pack-destination", str(out_dir)], source, env, log_path, 300)
    (tgz,) = out_dir.glob(f"{NODE_PACKAGE}-*.tgz")
    return tgz


def install_node_package(tools: Path, tgz: Path, user_folder: Path, log_path: Path) -> None:
    """Install the packed node where n8n looks for community packages: <user folder>/.n8n/nodes."""
    nodes = user_folder / ".n8n" / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    if not (nodes / "package.json").exists():
        (nodes / "package.json").write_text(json.dumps({"name": "installed-nodes", "private": True}) + "\n")
    installed = nodes / "node_modules" / NODE_PACKAGE
    if installed.exists():
        shutil.rmtree(installed)  # npm keeps a same-version package it already has; take the new build
    # --omit=peer: the node must see n8n's own n8n-workflow, not a second copy.
    _step(["npm", "install", "--omit=peer", "--ignore-scripts", "--no-audit", "--no-fund", str(tgz)],
          nodes, _node_env(tools), log_path, 300)


def parse_run(output: str) -> dict[str, Any]:
    """The execution JSON that `n8n execute` prints after its banner lines.

    Parsing starts at the first line that is exactly "{"; log lines may follow the JSON.
    """
    lines = output.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.rstrip("\r\n") == "{":
            text = "".join(lines[index:])
            value, _ = json.JSONDecoder().raw_decode(text)
            if isinstance(value, dict):
                return value
    raise N8nError("no execution JSON in the output of n8n execute")


def _wait_for_line(log_path: Path, marker: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    # /healthz answers before published workflows are activated; n8n logs this line after that.
    deadline = time.monotonic() + timeout
    while marker not in log_path.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(f"n8n exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"n8n did not log {marker!r} within {timeout}s")
        time.sleep(0.2)


@dataclass
class Run:
    """One `n8n execute` result."""

    data: dict[str, Any]
    returncode: int
    log_path: Path

    @property
    def status(self) -> str:
        return str(self.data.get("status"))

    @property
    def error(self) -> dict[str, Any] | None:
        error = self.data["data"]["resultData"].get("error")
        return error if isinstance(error, dict) else None

    @property
    def error_text(self) -> str:
        """Message and description of the execution's error, as the editor shows them."""
        error = self.error or {}
        return "\n".join(str(error.get(key) or "") for key in ("message", "description"))

    def node_items(self, node: str, output: int = 0) -> list[dict[str, Any]]:
        """The json of each item that `node` emitted on `output` (in its last run)."""
        runs = self.data["data"]["resultData"]["runData"][node]
        return [item["json"] for item in runs[-1]["data"]["main"][output] or []]

    def last_node(self) -> str:
        return str(self.data["data"]["resultData"].get("lastNodeExecuted"))


@dataclass
class N8n:
    tools: Path
    user_folder: Path
    log_dir: Path
    encryption_key: str = "role-injector-e2e-key"
    port: int = field(default_factory=free_port)
    extra_env: Mapping[str, str] = field(default_factory=dict)
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def binary(self) -> Path:
        return self.tools / "n8n" / "node_modules" / ".bin" / "n8n"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {
            **_node_env(self.tools),
            "N8N_USER_FOLDER": str(self.user_folder),
            "DB_TYPE": "sqlite",
            "N8N_ENCRYPTION_KEY": self.encryption_key,
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PORT": str(self.port),
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            # Every n8n process starts a task broker; a fresh port lets a CLI run beside `n8n start`.
            "N8N_RUNNERS_BROKER_PORT": str(free_port()),
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "false",
            # `n8n start` activates published workflows from a background poll (15 s by default).
            "N8N_WORKFLOW_PUBLICATION_OUTBOX_POLL_INTERVAL_MS": "1000",
            "N8N_WORKFLOW_PUBLICATION_RECONCILE_INTERVAL_SECONDS": "1",
        }
        return {**env, **self.extra_env}

    def _log_path(self, name: str) -> Path:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"n8n-{next(self._counter):02d}-{name}.log"

    def run(self, *args: str, timeout: float = 240, check: bool = True) -> tuple[int, str, Path]:
        """Run one n8n CLI command; return (exit code, stdout, log path). stderr goes to the log."""
        log_path = self._log_path(args[0].replace(":", "-"))
        with log_path.open("wb") as log:
            log.write(f"$ n8n {' '.join(args)}\n".encode())
            log.flush()
            result = subprocess.run([str(self.binary), *args], env=self.env(), stdout=subprocess.PIPE,
                                    stderr=log, timeout=timeout, check=False)
        stdout = result.stdout.decode(errors="replace")
        with log_path.open("a", encoding="utf-8") as log:
            log.write("\n--- stdout ---\n" + stdout)
        if check and result.returncode != 0:
            raise N8nError(f"n8n {' '.join(args)} exited {result.returncode}:\n{_tail(log_path)}")
        return result.returncode, stdout, log_path

    def import_credentials(self, path: Path) -> None:
        self.run("import:credentials", f"--input={path}")

    def import_workflows(self, folder: Path) -> None:
        """Import every *.json in `folder` (one process for all of them)."""
        self.run("import:workflow", "--separate", f"--input={folder}")

    def execute(self, workflow_id: str, timeout: float = 240) -> Run:
        # The exit code alone says little (a failed run may still exit 0); the JSON says it all.
        code, stdout, log_path = self.run("execute", f"--id={workflow_id}", timeout=timeout, check=False)
        try:
            data = parse_run(stdout)
        except (N8nError, ValueError) as exc:
            message = f"n8n execute --id={workflow_id} printed no run ({exc}):\n{_tail(log_path)}"
            raise N8nError(message) from exc
        return Run(data=data, returncode=code, log_path=log_path)

    def publish(self, workflow_id: str) -> None:
        self.run("publish:workflow", f"--id={workflow_id}")

    @contextmanager
    def serve(self, timeout: float = 120) -> Iterator[str]:
        """`n8n start` until the block ends; yields the base URL once /healthz answers."""
        log_path = self._log_path("start")
        with log_path.open("wb") as log:
            process = subprocess.Popen([str(self.binary), "start"], env=self.env(), stdout=log,
                                       stderr=subprocess.STDOUT)
        try:
            try:
                wait_for_http(self.url + "/healthz", timeout=timeout, process=process)
                _wait_for_line(log_path, "Editor is now accessible", process, timeout)
            except (TimeoutError, RuntimeError) as exc:
                raise N8nError(f"n8n start did not come up ({exc}):\n{_tail(log_path)}") from exc
            yield self.url
        finally:
            stop_process(process, timeout=30)

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
        parts = [f"===== {p.name} =====\n{_tail(p, 200)}" for p in sorted(self.log_dir.glob("n8n-*.log"))]
        return "\n".join(parts)
