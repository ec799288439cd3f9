"""The shipped workflows, run as the editor runs them, against the real worker and an Ollama stand-in."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.stack import (
    UNKNOWN_ROLE,
    UNKNOWN_ROLE_ID,
    WORKER_DOWN_ID,
    Stack,
    assignment,
    load_workflow,
)
from tests.ollama_standin import DEFAULT_ANSWER

pytestmark = pytest.mark.e2e


def expected_injection(stack: Stack, workflow: dict[str, Any], input_node: str, input_field: str) -> dict[str, Any]:
    """What the worker answers for the request the workflow's Role Injector node makes."""
    response = stack.inject(
        role="agi-engineer",
        prompt=assignment(workflow, input_node, input_field),
        model=assignment(workflow, "Settings", "model"),
        variables={"user_name": assignment(workflow, "Settings", "user_name")},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_role_chat_sends_the_fitted_role_as_system_message(e2e_stack: Stack) -> None:
    workflow = load_workflow("role-chat-ollama.json")
    expected = expected_injection(e2e_stack, workflow, "Sample chat input", "chatInput")
    e2e_stack.ollama.clear()

    run = e2e_stack.n8n.execute("roleChatOllama")

    assert run.status == "success", run.error_text
    assert run.node_items("Role Injector")[0]["system"] == expected["system"]
    (request,) = e2e_stack.ollama.requests_to("/api/chat")
    body = request.body
    assert body["model"] == assignment(workflow, "Settings", "model")
    assert body["messages"][0] == {"role": "system", "content": expected["system"]}
    assert body["messages"][1:] == [
        {"role": "user", "content": assignment(workflow, "Sample chat input", "chatInput")}
    ]
    # What the role says reaches Ollama: num_ctx from the worker, and the role's params.
    assert body["options"] == {"num_ctx": expected["usage"]["num_ctx"], **expected["params"]}
    assert expected["params"] == {"temperature": 0.3}
    assert body["stream"] is False
    assert run.node_items("Chat reply") == [{"output": DEFAULT_ANSWER}]


def test_raw_chatml_posts_the_rendered_prompt_to_generate(e2e_stack: Stack) -> None:
    workflow = load_workflow("raw-chatml-generate.json")
    expected = expected_injection(e2e_stack, workflow, "Settings", "prompt")
    assert expected["prompt"].startswith("<|im_start|>system\n")
    assert expected["prompt"].endswith("<|im_start|>assistant\n")
    e2e_stack.ollama.clear()

    run = e2e_stack.n8n.execute("rawChatmlGenerate")

    assert run.status == "success", run.error_text
    (request,) = e2e_stack.ollama.requests_to("/api/generate")
    assert request.body == {
        "model": assignment(workflow, "Settings", "model"),
        "prompt": expected["prompt"],
        "raw": True,
        "stream": False,
        "options": {"num_ctx": expected["usage"]["num_ctx"]},
    }
    (answer,) = run.node_items("Answer")
    assert answer["answer"] == DEFAULT_ANSWER
    assert answer["role"] == expected["role"]
    assert answer["usage"] == expected["usage"]


def test_unknown_role_fails_with_the_workers_message(e2e_stack: Stack) -> None:
    worker_answer = e2e_stack.inject(role=UNKNOWN_ROLE, prompt="hi", model="qwen3:8b")
    assert worker_answer.status_code == 404
    error = worker_answer.json()["error"]
    assert error["code"] == "role_not_found"
    e2e_stack.ollama.clear()

    run = e2e_stack.n8n.execute(UNKNOWN_ROLE_ID)

    assert run.status == "error"
    assert run.last_node() == "Role Injector"
    assert error["message"] in run.error_text
    assert "role_not_found" in run.error_text
    assert e2e_stack.ollama.requests == []


def test_stopped_worker_fails_naming_the_url(e2e_stack: Stack) -> None:
    e2e_stack.ollama.clear()

    run = e2e_stack.n8n.execute(WORKER_DOWN_ID)

    assert run.status == "error"
    assert run.last_node() == "Role Injector"
    assert e2e_stack.down_url in run.error_text
    assert e2e_stack.ollama.requests == []
