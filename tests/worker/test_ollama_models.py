"""Roles made into Ollama models (library level, against the stand-in): what is sent to /api/create,
the label that records role and version, staleness after a role edit, and the printed Modelfile
read back by the port of Ollama's parser as `ollama create -f` would send it."""

from __future__ import annotations

from pathlib import Path

import pytest

from role_injector.engines.ollama import rewrite_chat
from role_injector.errors import InvalidRequest, ModelNotFound, RoleError, UpstreamRefused
from role_injector.fitting import FitCache
from role_injector.injection import VirtualRequest
from role_injector.modelfile import carried_text, read_modelfile
from role_injector.ollama_client import OllamaClient
from role_injector.ollama_models import (
    check_model_name,
    create_role_model,
    list_role_models,
    plan_baked_model,
    plan_role_model,
    prune_stale_labels,
    role_modelfile,
)
from role_injector.profiles import VirtualModel, load_profiles
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import load_tokenizer
from tests.ollama_standin import OllamaStandin
from tests.worker.conftest import BUNDLED_ROLES, RoleWriter

PROFILES = load_profiles()
CACHE = FitCache()
PARAGRAPH = "Check the edge case with an empty input before you blame the compiler. " * 6
ENGINEER = f"""---
description: Finds bugs
model: qwen3:8b
params: {{temperature: 0.3, top_k: 20, stop: ["<|im_end|>"]}}
variables:
  language: {{default: English}}
---
You are a careful test engineer. Never write <|im_end|> yourself.

## Mission {{required}}
Find the bug before it finds the users. Answer in {{{{language}}}}.

## Worked examples {{priority=10}}
{chr(10).join(PARAGRAPH for _ in range(120))}
"""


def roles_of(directory: Path) -> RoleSet:
    return RoleStore(directory).current()


@pytest.fixture
def engineer(write_role: RoleWriter, roles_dir: Path) -> RoleSet:
    write_role("engineer", ENGINEER)
    return roles_of(roles_dir)


def test_the_model_is_the_role_fitted_with_room_for_the_conversation(engineer: RoleSet) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer")
    assert (model.name, model.base) == ("engineer", "qwen3:8b")  # the role's name and model
    assert model.usage is not None and model.fit is not None
    assert model.parameters == {"temperature": 0.3, "top_k": 20, "stop": ["<|im_end|>"], "num_ctx": 8192,
                                "num_keep": model.usage.num_keep}
    # No budget from the caller or the role: keep_role's, a quarter of the 8192-token window left for
    # the conversation and 1024 tokens for the answer.
    assert model.usage.budget == 8192 - 2048 - 1024 and model.fit.trimmed
    assert load_tokenizer("qwen").count(model.system or "") == model.usage.system_tokens <= 5120
    assert model.usage.system_tokens < model.usage.num_keep < model.usage.system_tokens + 10  # plus the frame
    assert "<\u200b|im_end|>" in (model.system or "")  # neutralised, as in every injection
    body = model.create_body()
    assert body == {"model": "engineer", "from": "qwen3:8b", "system": model.system, "parameters": model.parameters}


def test_system_and_parameters_are_what_the_proxy_sends_for_the_virtual_model(engineer: RoleSet) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer")
    virtual = VirtualModel(name="qwen3:8b@engineer", base="qwen3:8b", role="engineer")
    body, _ = rewrite_chat({"model": virtual.name, "messages": [{"role": "user", "content": "Where is the bug?"}]},
                           VirtualRequest(virtual, engineer, PROFILES, CACHE))
    assert body["messages"][0] == {"role": "system", "content": model.system}
    assert body["options"] == model.parameters


def test_budget_name_base_and_variables_are_the_callers(engineer: RoleSet) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer", base="qwen3:0.6b", name="me/engineer:v2", budget=200,
                            variables={"language": "Deutsch"})
    assert (model.name, model.base) == ("me/engineer:v2", "qwen3:0.6b")
    assert model.usage is not None and model.usage.system_tokens <= 200
    assert "Answer in Deutsch." in (model.system or "")


def test_the_label_records_role_and_version(engineer: RoleSet) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer")
    version = engineer.roles["engineer"].version
    assert model.label.startswith(f"role-injector/engineer:{version[7:19]}-")
    assert len(model.label.split(":")[1]) == 21
    assert plan_role_model(engineer, PROFILES, CACHE, "engineer", budget=300).label != model.label
    check_model_name(model.label, "label")


@pytest.mark.parametrize("name", ["engineer", "engineer:latest", "me/engineer:v2", "host.local:8080/me/x:1.0",
                                  "_x", "a.b-c_d"])
def test_ollama_model_names(name: str) -> None:
    assert check_model_name(name, "name") == name


@pytest.mark.parametrize("name", ["", "bad name", "a/b/c/d:e:f", "-x", "x:", ":x", "me./x", "a//b", "x@sha256:00",
                                  "x" * 81, "ü"])
def test_names_ollama_would_refuse_are_refused_first(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"not an Ollama model name|non-empty"):
        check_model_name(name, "name")


def test_params_ollama_does_not_know_are_a_role_error(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("thinker", "---\nmodel: qwen3:8b\nparams: {think: true}\n---\nThink.")
    with pytest.raises(RoleError, match="'think' is not an Ollama model parameter"):
        plan_role_model(roles_of(roles_dir), PROFILES, CACHE, "thinker")


@pytest.mark.parametrize("asked", ["32768", "32768.0"])  # a whole float counts, as the proxy reads it
def test_a_larger_num_ctx_of_the_role_is_kept(write_role: RoleWriter, roles_dir: Path, asked: str) -> None:
    write_role("wide", f"---\nmodel: qwen3:8b\nparams: {{num_ctx: {asked}, num_keep: 1}}\n---\nWide.")
    assert plan_role_model(roles_of(roles_dir), PROFILES, CACHE, "wide").parameters == {"num_ctx": 32768, "num_keep": 1}


def test_a_num_ctx_that_is_no_number_of_tokens_is_a_role_error(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("odd", "---\nmodel: qwen3:8b\nparams: {num_ctx: 1.5}\n---\nOdd.")
    with pytest.raises(RoleError, match="num_ctx in the params of role 'odd'"):
        plan_role_model(roles_of(roles_dir), PROFILES, CACHE, "odd")


def test_a_role_without_a_model_needs_a_base(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("plain", "Plain.")
    with pytest.raises(InvalidRequest, match="name the base model"):
        plan_role_model(roles_of(roles_dir), PROFILES, CACHE, "plain")


def test_create_sends_the_fitted_role_and_labels_the_model(engineer: RoleSet, ollama: OllamaClient,
                                                           standin: OllamaStandin) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer")
    lines = list(create_role_model(ollama, model))
    assert [line["status"] for line in lines[:-1]][-1] == "writing manifest"
    assert lines[-1] == model.summary() and lines[-1]["model"] == "engineer:latest"
    (create,) = standin.requests_to("/api/create")
    assert create.body == {**model.create_body(), "stream": True}
    shown = ollama.show("engineer")
    assert shown["system"] == model.system
    assert shown["details"]["parent_model"] == "qwen3:8b"
    digests = {m["name"]: m["digest"] for m in ollama.tags()}
    assert digests["engineer:latest"] == digests[model.label]


def test_a_missing_base_model_is_named_before_anything_is_created(engineer: RoleSet, ollama: OllamaClient,
                                                                  standin: OllamaStandin) -> None:
    model = plan_role_model(engineer, PROFILES, CACHE, "engineer", base="qwen3:32b")
    with pytest.raises(ModelNotFound, match="pull it first: ollama pull qwen3:32b"):
        next(create_role_model(ollama, model))
    assert standin.requests_to("/api/create") == []


def test_a_refused_create_leaves_no_label(engineer: RoleSet, ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/create", status=500, body={"error": "no space left on device"})
    with pytest.raises(UpstreamRefused, match="no space left on device"):
        list(create_role_model(ollama, plan_role_model(engineer, PROFILES, CACHE, "engineer")))
    assert standin.requests_to("/api/copy") == [] and not list_role_models(ollama, engineer)


def test_list_shows_which_models_are_stale_after_a_role_edit(write_role: RoleWriter, roles_dir: Path,
                                                             ollama: OllamaClient) -> None:
    write_role("engineer", ENGINEER)
    before = roles_of(roles_dir)
    first = plan_role_model(before, PROFILES, CACHE, "engineer")
    list(create_role_model(ollama, first))
    list(create_role_model(ollama, plan_role_model(before, PROFILES, CACHE, "engineer", name="pinned", budget=100)))
    assert {(m.name, m.status) for m in list_role_models(ollama, before)} == {
        ("engineer:latest", "current"), ("pinned:latest", "current")}

    write_role("engineer", ENGINEER.replace("careful", "meticulous"))
    after = roles_of(roles_dir)
    assert {(m.name, m.status) for m in list_role_models(ollama, after)} == {
        ("engineer:latest", "stale"), ("pinned:latest", "stale")}

    second = plan_role_model(after, PROFILES, CACHE, "engineer")
    list(create_role_model(ollama, second))
    listed = {m.name: m for m in list_role_models(ollama, after)}
    assert {name: m.status for name, m in listed.items()} == {
        "engineer:latest": "current", "pinned:latest": "stale", first.label: "stale"}  # the old label, alone
    assert listed["engineer:latest"].version == after.roles["engineer"].version[7:19]
    assert listed["engineer:latest"].base == "qwen3:8b"

    assert prune_stale_labels(ollama, list(listed.values())) == [first.label]
    assert {m.name for m in list_role_models(ollama, after)} == {"engineer:latest", "pinned:latest"}

    (roles_dir / "engineer.md").unlink()
    assert {m.status for m in list_role_models(ollama, roles_of(roles_dir))} == {"role missing"}


def test_a_baked_model_has_the_adapter_and_an_optional_short_reminder(engineer: RoleSet) -> None:
    adapter = ("adapter.gguf", "sha256:" + "ab" * 32)
    bare = plan_baked_model(engineer, PROFILES, CACHE, "engineer", adapter=adapter)
    assert bare.create_body() == {"model": "engineer", "from": "qwen3:8b", "adapters": dict([adapter]),
                                  "parameters": {"temperature": 0.3, "top_k": 20, "stop": ["<|im_end|>"],
                                                 "num_ctx": 8192}}  # no SYSTEM, so no num_keep
    reminded = plan_baked_model(engineer, PROFILES, CACHE, "engineer", adapter=adapter, reminder_budget=40)
    assert reminded.usage is not None and reminded.usage.system_tokens <= 40
    assert "Find the bug" in (reminded.system or "")  # the required section comes first
    assert reminded.label != bare.label


def bundled_models() -> list[tuple[str, dict[str, str]]]:
    return [("agi-engineer", {"user_name": "Анна"}), ("general-assistant", {}), ("code-reviewer", {}),
            ("manifest", {}), ("base-assistant", {})]


@pytest.mark.parametrize(("role", "variables"), bundled_models())
def test_the_modelfile_reads_back_as_the_create_request(role: str, variables: dict[str, str]) -> None:
    roles = roles_of(BUNDLED_ROLES)
    model = plan_role_model(roles, PROFILES, CACHE, role, base="qwen3:8b", variables=variables)
    text, changed = role_modelfile(model)
    read = read_modelfile(text)  # what `ollama create -f` would send
    body = model.create_body()
    assert read == {"from": body["from"], "system": carried_text(body["system"]), "parameters": body["parameters"]}
    assert changed == (read["system"] != body["system"])
    assert f"ollama cp {model.name} {model.label}" in text


def test_the_modelfile_of_a_role_with_a_docstring_and_control_tokens(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("coder", '---\nmodel: qwen3:8b\n---\nWrite docstrings like this:\n\n    def f():\n'
                        '        """Return nothing."""\n\nNever print <|im_start|>.\n')
    model = plan_role_model(roles_of(roles_dir), PROFILES, CACHE, "coder")
    text, changed = role_modelfile(model)
    assert changed
    system = read_modelfile(text)["system"]
    assert system == model.system.replace("\u200b", "\u034f").replace('"""\n', '"""\u034f\n')
    assert "differs from the exact text" in text
