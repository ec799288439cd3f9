"""docker-compose.yml, the Dockerfiles and the sample import script, checked without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.engine import ROUTER_FAILOVER
from tests.servers import REPO

COMPOSE = REPO / "docker-compose.yml"
N8N_DOCKERFILE = REPO / "docker" / "n8n.Dockerfile"
IMPORT_SCRIPT = REPO / "docker" / "import-samples.sh"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def test_every_build_context_and_dockerfile_exists(compose: dict[str, Any]) -> None:
    built = {name: s["build"] for name, s in services(compose).items() if "build" in s}
    assert set(built) == {"worker", "n8n-import", "n8n", "engine-a", "engine-b", "router", "worker-scale"}
    for name, build in built.items():
        context = REPO / build["context"]
        assert context.is_dir(), name
        assert (context / build["dockerfile"]).is_file(), name


def test_every_bind_mount_exists(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in services(compose).items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: {source}"
            else:
                assert source in named, f"{name}: undeclared volume {source}"


def test_urls_name_the_services_that_serve_them(compose: dict[str, Any]) -> None:
    svc = services(compose)
    ports = {"worker": 8000, "ollama": 11434}
    urls = [
        svc["worker"]["environment"]["ROLE_INJECTOR_OLLAMA_URL"],
        svc["n8n-import"]["environment"]["ROLE_INJECTOR_URL"],
        svc["ollama-pull"]["environment"]["OLLAMA_HOST"],
    ]
    for url in urls:
        parts = urlsplit(url)
        assert parts.hostname in svc, url
        assert parts.port == ports[parts.hostname], url


def test_n8n_waits_for_the_import_and_a_healthy_worker(compose: dict[str, Any]) -> None:
    svc = services(compose)
    depends = svc["n8n"]["depends_on"]
    assert depends["n8n-import"]["condition"] == "service_completed_successfully"
    assert depends["worker"]["condition"] == "service_healthy"
    assert "healthz" in " ".join(svc["worker"]["healthcheck"]["test"])
    # The import and the server must read the same data volume with the same key.
    assert svc["n8n-import"]["volumes"][0] == svc["n8n"]["volumes"][0]
    key = svc["n8n"]["environment"]["N8N_ENCRYPTION_KEY"]
    assert key == svc["n8n-import"]["environment"]["N8N_ENCRYPTION_KEY"]
    assert key.startswith("${N8N_ENCRYPTION_KEY")
    assert "N8N_ENCRYPTION_KEY=" in (REPO / ".env.example").read_text()


def test_worker_serves_the_mounted_roles(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    assert "./roles:/roles:ro" in worker["volumes"]
    dockerfile = (REPO / worker["build"]["context"] / worker["build"]["dockerfile"]).read_text()
    assert '"serve", "--host", "0.0.0.0", "--port", "8000", "--roles", "/roles"' in dockerfile


# --- the profile `scale` (docs/scaling.md) ---------------------------------------------------------------

SCALE = {"engine-a", "engine-b", "router", "worker-scale"}


def option(command: list[str], name: str) -> list[str]:
    """The values after `name` in an argument list, up to the next option."""
    start = command.index(name) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("-")), len(command))
    return command[start:end]


def toolchain_pin(name: str) -> str:
    found = re.search(rf'^{name}="([^"]+)"$', (REPO / "scripts" / "engine-toolchain.sh").read_text(), re.MULTILINE)
    assert found is not None, name
    return found.group(1)


def test_the_scale_layout_is_a_profile_of_its_own(compose: dict[str, Any]) -> None:
    svc = services(compose)
    profiled = {name for name, service in svc.items() if "profiles" in service}
    assert profiled == SCALE  # a plain `docker compose up` starts what it started before
    for name in SCALE:
        assert svc[name]["profiles"] == ["scale"], name
    # `up worker-scale` starts the layout and nothing else, and no default service waits for it.
    for name, service in svc.items():
        for needed in service.get("depends_on", {}):
            assert (needed in SCALE) == (name in SCALE), f"{name} depends on {needed}"


def test_the_scale_urls_name_the_services_and_ports_that_serve_them(compose: dict[str, Any]) -> None:
    svc = services(compose)
    router = svc["router"]["command"]
    engines = option(router, "--worker-urls")
    assert len(engines) == 2
    for url in engines:
        parts = urlsplit(url)
        assert parts.hostname in SCALE and parts.hostname.startswith("engine-"), url
        engine = svc[parts.hostname]
        assert option(engine["command"], "--port") == [str(parts.port)], url
        assert option(engine["command"], "--host") == ["0.0.0.0"], url
        assert str(parts.port) in " ".join(engine["healthcheck"]["test"]), url
        assert svc["router"]["depends_on"][parts.hostname]["condition"] == "service_healthy"
    assert option(router, "--host") == ["0.0.0.0"]
    worker = svc["worker-scale"]
    upstream = urlsplit(worker["environment"]["ROLE_INJECTOR_ENGINE_URL"])
    assert upstream.hostname == "router" and option(router, "--port") == [str(upstream.port)]
    assert f"{upstream.port}/health" in " ".join(svc["router"]["healthcheck"]["test"])
    assert worker["depends_on"]["router"]["condition"] == "service_healthy"
    assert worker["environment"]["ROLE_INJECTOR_ENGINE"] == "llama.cpp"
    # Without an API key the worker answers only to names it knows: other services reach it by this one.
    assert worker["environment"]["ROLE_INJECTOR_ALLOWED_HOSTS"].split()[0] == "worker-scale"
    published = [port.rsplit(":", 2)[-2:] for port in worker["ports"] + svc["worker"]["ports"]]
    assert len({host for host, _ in published}) == 2  # two workers, two host ports
    assert worker["volumes"] == svc["worker"]["volumes"] and worker["image"] == svc["worker"]["image"]


def test_the_scale_router_routes_by_the_workers_key_as_tested(compose: dict[str, Any]) -> None:
    router = services(compose)["router"]["command"]
    assert option(router, "--policy") == ["consistent_hash"]  # reads X-Session-ID, the worker's default
    assert option(router, "--health-check-endpoint") == ["/health"]
    # The failover settings the tests run with (tests/engine.py), here and in make run-scale.
    script = (REPO / "scripts" / "run-scale.sh").read_text()
    for name, value in zip(ROUTER_FAILOVER[::2], ROUTER_FAILOVER[1::2], strict=True):
        assert option(router, name) == [value], name
        assert f"{name} {value}" in script, name


def test_the_scale_images_pin_the_tested_versions(compose: dict[str, Any]) -> None:
    svc = services(compose)
    engine = (REPO / svc["engine-a"]["build"]["dockerfile"]).read_text()
    assert f"ARG SMOLLM2_VERSION={toolchain_pin('SMOLLM2_VERSION')}\n" in engine
    model = option(svc["engine-a"]["command"], "-m")[0]
    assert re.search(rf"^COPY --from=model /model.gguf {re.escape(model)}$", engine, re.MULTILINE)
    assert svc["engine-a"]["command"] == svc["engine-b"]["command"]
    router = (REPO / svc["router"]["build"]["dockerfile"]).read_text()
    assert f"ARG VLLM_ROUTER_VERSION={toolchain_pin('VLLM_ROUTER_VERSION')}\n" in router
    assert 'ENTRYPOINT ["vllm-router"]' in router

def test_n8n_image_is_the_tested_version() -> None:
    text = N8N_DOCKERFILE.read_text()
    version = re.search(r"^ARG N8N_VERSION=(\S+)$", text, re.MULTILINE)
    assert version is not None
    assert re.fullmatch(r"2\.41\.\d+", version.group(1))
    assert "FROM n8nio/n8n:${N8N_VERSION}" in text
    # The e2e tests run the version the install script pins; the image must be the same one.
    install = (REPO / "scripts" / "n8n-toolchain.sh").read_text()
    assert f'N8N_VERSION="{version.group(1)}"' in install


@pytest.mark.parametrize("dockerfile", ["worker/Dockerfile", "docker/n8n.Dockerfile"])
def test_dockerfiles_copy_only_what_exists_and_is_not_ignored(dockerfile: str) -> None:
    ignored = [line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for line in (REPO / dockerfile).read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
        for source in sources:
            matches = list(REPO.glob(source.rstrip("/")))
            assert matches, f"{dockerfile}: COPY {source} matches nothing"
            top = source.split("/")[0]
            assert top not in ignored, f"{dockerfile}: COPY {source} but .dockerignore drops {top}"


def test_scripts_are_executable() -> None:
    for script in ["docker/import-samples.sh", "docker/n8n-entrypoint.sh", "scripts/run-local.sh",
                   "scripts/run-scale.sh"]:
        assert (REPO / script).stat().st_mode & stat.S_IXUSR, script


def test_compose_config_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True,
                                        check=False).returncode != 0:
        pytest.skip("docker compose is not installed")
    env = {**os.environ, "N8N_ENCRYPTION_KEY": "test"}
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


FAKE_N8N = """#!/bin/sh
# Records each call and keeps a copy of what it was given to import.
echo "$*" >> "$FAKE_OUT/calls"
case "$1" in
  import:credentials) cp "${2#--input=}" "$FAKE_OUT/credentials.json" ;;
  import:workflow) cp -R "${3#--input=}" "$FAKE_OUT/workflows" ;;
esac
"""


def run_import(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "n8n"
    fake.write_text(FAKE_N8N)
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    full_env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "N8N_USER_FOLDER": str(tmp_path / "home"),
        "SAMPLES_DIR": str(REPO / "workflows"), "N8N_BIN": str(fake), "FAKE_OUT": str(out), **env,
    }
    return subprocess.run(["sh", str(IMPORT_SCRIPT)], env=full_env, capture_output=True, text=True,
                          check=True)


def test_import_script_points_the_samples_at_the_stack(tmp_path: Path) -> None:
    run_import(tmp_path, ROLE_INJECTOR_URL="http://worker:8000", OLLAMA_MODEL="qwen3:0.6b",
               ROLE_INJECTOR_API_KEY="s3cr&t#key")
    out = tmp_path / "out"

    credentials = {c["type"]: c["data"] for c in json.loads((out / "credentials.json").read_text())}
    assert credentials["roleInjectorApi"] == {"url": "http://worker:8000", "apiKey": "s3cr&t#key"}
    # The samples reach Ollama through the worker, whose proxy knows where Ollama is.
    assert credentials["ollamaApi"] == {"baseUrl": "http://worker:8000"}
    assert credentials["openAiApi"] == {"url": "http://worker:8000/v1", "apiKey": "s3cr&t#key"}

    imported = sorted(p.name for p in (out / "workflows").iterdir())
    assert imported == sorted(p.name for p in (REPO / "workflows").glob("*.json")
                              if not p.name.startswith("credentials"))
    defaults = {"http://localhost:8000", "qwen3:8b"}
    for path in (out / "workflows").iterdir():
        workflow = json.loads(path.read_text())
        for node in workflow["nodes"]:
            values = set(strings(node["parameters"]))
            if node["type"] == "n8n-nodes-base.stickyNote":
                # Prose that mentions a default is left as it is.
                assert values == set(strings(original_node(path.name, node["name"])["parameters"]))
            else:
                assert not values & defaults, f"{path.name}: {node['name']}"
    raw = json.loads((out / "workflows" / "raw-chatml-generate.json").read_text())
    settings = next(n for n in raw["nodes"] if n["name"] == "Settings")
    values = {a["name"]: a["value"] for a in settings["parameters"]["assignments"]["assignments"]}
    assert values["ollama_api"] == "http://worker:8000"
    assert values["model"] == "qwen3:0.6b"

    calls = (out / "calls").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["import:credentials", "import:workflow", "publish:workflow"]
    assert calls[-1] == "publish:workflow --id=roleApiWebhook"


def strings(value: Any) -> list[str]:
    """Every string inside a JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for inner in value.values() for s in strings(inner)]
    if isinstance(value, list):
        return [s for inner in value for s in strings(inner)]
    return []


def original_node(file: str, name: str) -> dict[str, Any]:
    workflow = json.loads((REPO / "workflows" / file).read_text())
    return next(n for n in workflow["nodes"] if n["name"] == name)


def test_import_script_runs_once_unless_forced(tmp_path: Path) -> None:
    run_import(tmp_path)
    credentials = {c["type"]: c["data"] for c in json.loads((tmp_path / "out" / "credentials.json").read_text())}
    assert credentials["openAiApi"]["apiKey"] == "no-key"  # without a worker key: OpenAI clients refuse ""
    calls = tmp_path / "out" / "calls"
    assert len(calls.read_text().splitlines()) == 3
    assert "already imported" in run_import(tmp_path).stdout
    assert len(calls.read_text().splitlines()) == 3
    run_import(tmp_path, FORCE_IMPORT="true")
    assert len(calls.read_text().splitlines()) == 6


def test_shipped_workflows_reference_the_shipped_credentials() -> None:
    credentials = {(c["type"], c["id"], c["name"])
                   for c in json.loads((REPO / "workflows" / "credentials.json").read_text())}
    ids = set()
    for path in (REPO / "workflows").glob("*.json"):
        if path.name.startswith("credentials"):
            continue
        workflow = json.loads(path.read_text())
        ids.add(workflow["id"])
        assert any(n["type"] == "n8n-nodes-base.stickyNote" for n in workflow["nodes"]), path.name
        for node in workflow["nodes"]:
            for kind, ref in node.get("credentials", {}).items():
                assert (kind, ref["id"], ref["name"]) in credentials, f"{path.name}: {node['name']}"
    assert ids == {"roleChatOllama", "roleAgentChat", "rawChatmlGenerate", "roleApiWebhook", "roleAgentOpenai"}
