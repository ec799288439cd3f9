"""A real engine for tests and benchmarks: llama.cpp's `llama-server` with SmolLM2-135M-Instruct, both
installed by scripts/engine-toolchain.sh into the tools folder (built once; nothing is downloaded at
run time). Each server listens on a free loopback port and logs to a file of the caller's."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import requests

from role_injector.engine_tokens import PostJson
from role_injector.errors import UpstreamError, UpstreamRefused, UpstreamTimeout, UpstreamUnreachable
from tests.servers import REPO, free_port, stop_process

TOOLCHAIN = REPO / "scripts" / "engine-toolchain.sh"
SMOLLM2_WINDOW = 8192  # SmolLM2-135M-Instruct's trained context


def _toolchain(command: str) -> Path:
    """What engine-toolchain.sh prints for `command` (it builds or unpacks on first use)."""
    result = subprocess.run(["bash", str(TOOLCHAIN), command], capture_output=True, text=True, timeout=3600,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"engine-toolchain.sh {command} failed ({result.returncode}):\n{result.stderr}")
    return Path(result.stdout.strip().splitlines()[-1])


@cache
def llama_bin() -> Path:
    """The folder of llama-server, llama-finetune, llama-quantize and llama-perplexity."""
    return _toolchain("bin")


@cache
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF (ChatML, 8,192-token window)."""
    return _toolchain("model")


@cache
def vllm_router() -> Path:
    return _toolchain("router")


@dataclass
class LlamaServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until `GET /health` answers 200 (llama-server answers 503 while it loads the model)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode} before it was healthy")
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}/health was not ok within {timeout}s")


def post_json(url: str, timeout: float = 30.0) -> PostJson:
    """The library's `PostJson` for an engine at `url`, on requests, with its error contract (the
    worker's own transport is the engine layer's; tests need only this)."""
    session = requests.Session()

    def post(path: str, body: Mapping[str, Any]) -> Any:
        try:
            response = session.post(url + path, json=body, timeout=timeout)
        except requests.Timeout:
            raise UpstreamTimeout(f"{url} did not answer {path} within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            raise UpstreamUnreachable(f"cannot reach {url}: {exc}") from None
        if response.status_code >= 400:
            raise UpstreamRefused(f"{url}{path} answered {response.status_code}: {response.text[:200]}",
                                  details={"status": response.status_code})
        try:
            return response.json()
        except ValueError:
            raise UpstreamError(f"{url}{path} answered with something that is not JSON") from None

    return post


@contextmanager
def run_llama_server(
    log_dir: Path,
    model: Path | None = None,
    context: int = SMOLLM2_WINDOW,
    slots: int = 1,
    extra: Sequence[str] = (),
) -> Iterator[LlamaServer]:
    """`llama-server` on a free port with `model` (default SmolLM2), `slots` parallel slots sharing
    `context` tokens, 2 threads; stopped afterwards."""
    port = free_port()
    log_path = log_dir / f"llama-server-{port}.log"
    binary = llama_bin() / "llama-server"
    command = [str(binary), "-m", str(model or smollm2()), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(context), "-np", str(slots), "-t", "2", "--no-ui", *extra]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={"LD_LIBRARY_PATH": str(binary.parent), "PATH": "/usr/bin:/bin"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield LlamaServer(url=url, process=process, log_path=log_path)
    finally:
        stop_process(process, timeout=10)
