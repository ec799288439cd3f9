"""One real stack for the whole e2e session: n8n 2.41 with the packed node, the worker, an Ollama stand-in.

Setup costs about a minute (n8n CLI commands are slow to start), so it is built once and the
tests share it; each test clears the stand-in's record first.
"""

from __future__ import annotations

import subprocess
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.e2e.n8n import (
    N8n,
    N8nError,
    build_node_package,
    install_n8n,
    install_node_package,
)
from tests.e2e.stack import IMPORT_SCRIPT, Stack, write_samples
from tests.ollama_standin import run_ollama_standin
from tests.servers import REPO, free_port, run_worker


@pytest.fixture(scope="session")
def e2e_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e")
    logs = base / "logs"
    logs.mkdir()
    tools = install_n8n(logs / "install-n8n.log")
    tgz = build_node_package(tools, base / "pack", logs / "node-package.log")
    n8n = N8n(tools=tools, user_folder=base / "n8n-home", log_dir=logs)
    install_node_package(tools, tgz, n8n.user_folder, logs / "node-package.log")

    down_url = f"http://127.0.0.1:{free_port()}"
    with run_ollama_standin() as ollama, run_worker(REPO / "roles", logs, env=worker_env(ollama.url)) as worker:
        samples = base / "samples"
        write_samples(samples, down_url, worker.url)
        env = {
            **n8n.env(),
            "SAMPLES_DIR": str(samples),
            "ROLE_INJECTOR_URL": worker.url,
            "OLLAMA_URL": ollama.url,
            "N8N_BIN": str(n8n.binary),
            "PUBLISH_IDS": "roleApiWebhook",
            # Pinned, so a developer's own settings for run-local.sh never leak into the test.
            "OLLAMA_MODEL": "qwen3:8b",
            "ROLE_INJECTOR_API_KEY": "",
            "FORCE_IMPORT": "false",
        }
        log_path = logs / "import-samples.log"
        with log_path.open("wb") as log:
            code = subprocess.run(["sh", str(IMPORT_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=600, check=False).returncode
        if code != 0:
            raise N8nError(f"import-samples.sh failed ({code}):\n{log_path.read_text(errors='replace')}")
        yield Stack(n8n=n8n, worker=worker, ollama=ollama, down_url=down_url)


def worker_env(ollama_url: str) -> dict[str, str]:
    """The worker's proxy forwards to the stand-in; a developer's own key or profile file never leaks in."""
    return {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_API_KEY": "", "ROLE_INJECTOR_MODELS": ""}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the n8n and worker logs to a failing e2e test's report."""
    outcome = yield
    report = outcome.get_result()
    stack = getattr(item, "funcargs", {}).get("e2e_stack")
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("n8n logs", stack.n8n.logs()))
        report.sections.append(("worker log", stack.worker.log()[-20000:]))
