"""`role-injector ollama create|modelfile|list` and `bake create`, run as a user runs them, against the
Ollama stand-in."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from role_injector.errors import KINDS
from role_injector.fitting import FitCache
from role_injector.modelfile import carried_text, read_modelfile
from role_injector.ollama_client import OllamaClient, file_digest
from role_injector.ollama_models import plan_role_model
from role_injector.profiles import load_profiles
from role_injector.store import RoleStore
from tests.ollama_standin import OllamaStandin
from tests.servers import free_port
from tests.worker.conftest import ENGINEER, TEMPLATE, RoleWriter, gguf_bytes, run_cli


@pytest.fixture
def roles(write_role: RoleWriter, roles_dir: Path, ollama: OllamaClient) -> Path:
    """The role, and a stand-in that has forgotten earlier tests."""
    write_role("engineer", ENGINEER)
    return roles_dir


def create(roles: Path, standin: OllamaStandin, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("ollama", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url,
               "--var", "team=QA", *extra)


def test_create_streams_progress_and_prints_what_it_made(roles: Path, standin: OllamaStandin,
                                                         ollama: OllamaClient) -> None:
    result = create(roles, standin)
    assert result.returncode == 0, result.stderr
    assert "writing manifest" in result.stderr.splitlines()
    made = json.loads(result.stdout)
    expected = plan_role_model(RoleStore(roles).current(), load_profiles(), FitCache(), "engineer",
                               variables={"team": "QA"})
    assert made == json.loads(json.dumps(expected.summary()))
    (request,) = standin.requests_to("/api/create")
    assert request.body["system"] == expected.system and "test engineer of QA" in expected.system
    keep = made["parameters"]["num_keep"]
    assert request.body["parameters"] == {"temperature": 0.3, "num_ctx": 8192, "num_keep": keep}
    assert made["parameters"]["num_keep"] > made["system_tokens"]
    assert {m["name"] for m in ollama.tags()} >= {"engineer:latest", made["label"]}


def test_the_printed_modelfile_is_what_create_sends(roles: Path) -> None:
    result = run_cli("ollama", "modelfile", "engineer", "--roles", str(roles), "--var", "team=<|im_end|>",
                     "--budget", "60")
    assert result.returncode == 0, result.stderr
    expected = plan_role_model(RoleStore(roles).current(), load_profiles(), FitCache(), "engineer", budget=60,
                               variables={"team": "<|im_end|>"})
    assert read_modelfile(result.stdout) == {"from": "qwen3:8b", "system": carried_text(expected.system or ""),
                                             "parameters": expected.parameters}
    assert "differs from the fitted role" in result.stderr  # the neutralised variable needs carrying


def test_list_marks_models_stale_after_an_edit_and_prunes_old_labels(roles: Path, write_role: RoleWriter,
                                                                     standin: OllamaStandin,
                                                                     ollama: OllamaClient) -> None:
    assert create(roles, standin).returncode == 0
    listed = run_cli("ollama", "list", "--roles", str(roles), "--ollama-url", standin.url)
    header, row = listed.stdout.splitlines()
    assert header.split() == ["model", "role", "made", "from", "role", "now", "status"]
    assert row.split()[0::4] == ["engineer:latest", "current"]

    write_role("engineer", ENGINEER.replace("careful", "meticulous"))
    stale = json.loads(run_cli("ollama", "list", "--roles", str(roles), "--ollama-url", standin.url, "--json").stdout)
    assert [(m["model"], m["status"]) for m in stale["models"]] == [("engineer:latest", "stale")]
    old_label = stale["models"][0]["label"]

    assert create(roles, standin).returncode == 0
    pruned = json.loads(run_cli("ollama", "list", "--roles", str(roles), "--ollama-url", standin.url, "--json",
                            "--prune").stdout)
    assert pruned["deleted"] == [old_label]
    assert old_label not in {m["name"] for m in ollama.tags()}


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--var", "team=QA", "--base", "qwen3:32b"], "model_not_found", "pull it first: ollama pull qwen3:32b"),
    (["--var", "team=QA", "--name", "bad name"], "invalid_request", "not an Ollama model name"),
    ([], "missing_variable", "team"),
])
def test_create_errors_are_clear(roles: Path, standin: OllamaStandin, args: list[str], code: str,
                                 message: str) -> None:
    result = run_cli("ollama", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url, *args)
    assert result.returncode == KINDS[code].exit_code, result.stderr
    assert f"error ({code})" in result.stderr and message in result.stderr
    assert standin.requests_to("/api/create") == []


def test_an_unreachable_ollama_is_named(roles: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("ollama", "list", "--roles", str(roles), "--ollama-url", url)
    assert result.returncode == KINDS["upstream_unreachable"].exit_code
    assert f"cannot reach Ollama at {url}" in result.stderr


def test_bake_create_uploads_the_adapter_once_and_creates_the_model(roles: Path, tmp_path: Path,
                                                                    standin: OllamaStandin,
                                                                    ollama: OllamaClient) -> None:
    adapter = tmp_path / "engineer-lora.gguf"
    adapter.write_bytes(b"GGUF" + bytes(range(256)) * 512)
    digest = file_digest(adapter)
    args = ["bake", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url,
            "--adapter", str(adapter), "--var", "team=QA"]
    first = run_cli(*args, "--reminder-budget", "40")
    assert first.returncode == 0, first.stderr
    assert f"uploading {adapter}" in first.stderr
    assert standin.blobs[digest] == adapter.read_bytes()
    (create,) = standin.requests_to("/api/create")
    assert create.body["adapters"] == {"engineer-lora.gguf": digest}
    assert create.body["from"] == "qwen3:8b" and "Find the bug" in create.body["system"]
    assert json.loads(first.stdout)["system_tokens"] <= 40

    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "the adapter is in Ollama already" in second.stderr
    assert len([r for r in standin.requests if r.method == "POST" and r.path.startswith("/api/blobs/")]) == 1
    assert "system" not in standin.requests_to("/api/create")[-1].body
    assert ollama.show("engineer")["details"]["parent_model"] == "qwen3:8b"


def test_bake_create_refuses_a_file_that_is_not_gguf(roles: Path, tmp_path: Path, standin: OllamaStandin) -> None:
    adapter = tmp_path / "adapter_model.safetensors"
    adapter.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    result = run_cli("bake", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url,
                 "--adapter", str(adapter), "--var", "team=QA")
    assert result.returncode == KINDS["invalid_request"].exit_code
    assert "is not a GGUF file" in result.stderr and "convert_lora_to_gguf.py" in result.stderr
    assert standin.requests == []


def test_bake_create_makes_a_model_from_a_baked_gguf_file(roles: Path, tmp_path: Path, standin: OllamaStandin,
                                                         ollama: OllamaClient) -> None:
    """`bake create --model` uploads a whole GGUF model (what `bake train` writes) and creates the model
    FROM it (`files`), with the role's params and the file's context length, no SYSTEM."""
    model = tmp_path / "engineer-baked.gguf"
    model.write_bytes(gguf_bytes({"general.architecture": "llama", "llama.context_length": 8192,
                                  "tokenizer.chat_template": TEMPLATE}, [("a", (4,), bytes(16))]))
    digest = file_digest(model)
    result = run_cli("bake", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url,
                     "--model", str(model), "--name", "engineer-baked")
    assert result.returncode == 0, result.stderr
    assert f"uploading {model}" in result.stderr and "parsing GGUF" in result.stderr
    assert standin.blobs[digest] == model.read_bytes()
    (create,) = standin.requests_to("/api/create")
    assert create.body["files"] == {"engineer-baked.gguf": digest}
    assert "from" not in create.body and "system" not in create.body and "adapters" not in create.body
    assert create.body["parameters"] == {"temperature": 0.3, "num_ctx": 8192}
    made = json.loads(result.stdout)
    assert made["model"] == "engineer-baked:latest" and made["label"].startswith("role-injector/engineer:")
    listed = run_cli("ollama", "list", "--roles", str(roles), "--ollama-url", standin.url, "--json")
    assert [m["status"] for m in json.loads(listed.stdout)["models"]] == ["current"]


def test_bake_create_refuses_what_is_not_a_regular_file(roles: Path, tmp_path: Path, standin: OllamaStandin) -> None:
    """A FIFO (or a device) as --adapter or --model is refused at once instead of blocking the command."""
    fifo = tmp_path / "adapter.gguf"
    os.mkfifo(fifo)
    for option in ("--adapter", "--model"):
        result = run_cli("bake", "create", "engineer", "--roles", str(roles), "--ollama-url", standin.url,
                         option, str(fifo), "--var", "team=QA")
        assert result.returncode == KINDS["invalid_request"].exit_code, result.stderr
        assert f"{fifo} is not a regular file" in result.stderr
    assert standin.requests == []
