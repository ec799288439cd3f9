"""scripts/n8n-toolchain.sh: the one owner of the n8n toolchain picks what fits this machine."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

from tests.servers import REPO

TOOLCHAIN = REPO / "scripts" / "n8n-toolchain.sh"
# Node's name for the CPU (process.arch) by what the kernel reports.
NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def toolchain(*args: str) -> str:
    result = subprocess.run(["bash", str(TOOLCHAIN), *args], capture_output=True, text=True, timeout=1800,
                            check=True)
    return result.stdout.strip().splitlines()[-1]


def test_native_builds_use_the_node_headers_of_this_cpu() -> None:
    headers = Path(toolchain("node-headers"))
    assert headers.name == f"node-linux-{NODE_ARCH[platform.machine().lower()]}"
    assert (headers / "include" / "node" / "node.h").is_file()


def test_node_bin_is_node_24_or_newer() -> None:
    node = Path(toolchain("node-bin")) / "node"
    version = subprocess.run([str(node), "--version"], capture_output=True, text=True, check=True).stdout
    assert int(version.strip().lstrip("v").split(".")[0]) >= 24


def test_an_unknown_command_is_refused() -> None:
    result = subprocess.run(["bash", str(TOOLCHAIN), "nope"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "unknown command 'nope'" in result.stderr
