"""Fixtures shared by the worker tests: role directories written in tmp_path, an Ollama stand-in, the
command line run as a user runs it."""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from role_injector.ollama_client import OllamaClient
from tests.ollama_standin import OllamaStandin, run_ollama_standin
from tests.servers import CLEAN_ENV, ROLE_INJECTOR

REPO = Path(__file__).resolve().parents[2]
BUNDLED_ROLES = REPO / "roles"

RoleWriter = Callable[..., Path]

# A role for the Ollama and bake commands: a required variable, params, sections of each kind.
ENGINEER = """---
description: Finds bugs
model: qwen3:8b
params: {temperature: 0.3}
variables:
  team: {required: true}
---
You are the careful test engineer of {{team}}.

## Mission {required}
Find the bug before it finds the users.

## Стиль {priority=60}
Короткие предложения. Одна мысль в строке.
"""


def run_cli(*args: str, stderr: Any = subprocess.PIPE, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`role-injector ARGS` of this venv, with none of the developer's ROLE_INJECTOR_* settings."""
    env = {**os.environ, **CLEAN_ENV}
    return subprocess.run([str(ROLE_INJECTOR), *args], stdout=subprocess.PIPE, stderr=stderr, text=True,
                          timeout=timeout, check=False, env=env)


@pytest.fixture
def roles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "roles"
    (directory / "_partials").mkdir(parents=True)
    return directory


@pytest.fixture
def write_role(roles_dir: Path) -> RoleWriter:
    """write_role("name", "text") writes roles/name.md; partial=True writes roles/_partials/name.md."""

    def write(name: str, text: str, partial: bool = False) -> Path:
        path = roles_dir / ("_partials" if partial else "") / f"{name}.md"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="module")
def standin() -> Iterator[OllamaStandin]:
    """An Ollama stand-in that knows only its default models and keeps uploaded blobs."""
    with run_ollama_standin(strict_models=True, blob_store=True) as server:
        yield server


@pytest.fixture
def ollama(standin: OllamaStandin) -> OllamaClient:
    """A client of the stand-in, which has forgotten earlier tests; retries come quickly."""
    standin.clear()
    return OllamaClient.at(standin.url, timeout=5, retries=3, retry_delay=0.01)


# A chat template for small GGUF files written by tests (ChatML, no default system message).
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def gguf_bytes(metadata: dict[str, Any], tensors: list[tuple[str, tuple[int, ...], bytes]] = ()) -> bytes:
    """A small GGUF v3 file: string, int and string-array values; F32 tensors."""

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata))
    for key, value in metadata.items():
        out += string(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + string(value)
        elif isinstance(value, list):
            out += struct.pack("<IIQ", 9, 8, len(value)) + b"".join(string(v) for v in value)
        else:
            out += struct.pack("<Ii", 5, value)
    offset = 0
    for name, shape, data in tensors:
        out += string(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", 0, offset)
        offset += len(data)
    out += b"\0" * (-len(out) % 32)
    return out + b"".join(data for _, _, data in tensors)
