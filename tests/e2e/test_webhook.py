"""The published webhook workflow, served by the session's n8n and called over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.e2e.stack import UNKNOWN_ROLE, Stack
from tests.ollama_standin import DEFAULT_ANSWER

pytestmark = pytest.mark.e2e

WEBHOOK_PATH = "role-chat"


@pytest.fixture(scope="module")
def n8n_url(e2e_stack: Stack) -> str:
    e2e_stack.n8n.wait_for_webhook(WEBHOOK_PATH)
    return e2e_stack.n8n.url


@pytest.mark.parametrize(
    "request_body",
    [
        pytest.param({"role": "agi-engineer", "prompt": "What should we measure first?",
                      "variables": {"user_name": "Грета"}}, id="variables-from-the-body"),
        # No variables: the role's defaults apply.
        pytest.param({"role": "general-assistant", "prompt": "Hi!"}, id="no-variables"),
    ],
)
def test_webhook_answers_with_the_roles_reply(e2e_stack: Stack, n8n_url: str, request_body: dict[str, Any]) -> None:
    answer = e2e_stack.inject(**request_body, model="qwen3:8b")
    assert answer.status_code == 200, answer.text
    expected = answer.json()
    for value in request_body.get("variables", {}).values():
        assert value in expected["system"]
    e2e_stack.ollama.clear()

    response = requests.post(f"{n8n_url}/webhook/{WEBHOOK_PATH}", json=request_body, timeout=120)

    assert response.status_code == 200, response.text
    assert response.json() == {"answer": DEFAULT_ANSWER, "role": expected["role"], "usage": expected["usage"]}
    (chat,) = e2e_stack.ollama.requests_to("/api/chat")
    assert chat.body["messages"] == [
        {"role": "system", "content": expected["system"]},
        {"role": "user", "content": request_body["prompt"]},
    ]
    assert chat.body["options"] == {"num_ctx": expected["usage"]["num_ctx"], **expected["params"]}


def test_webhook_reports_a_worker_error(e2e_stack: Stack, n8n_url: str) -> None:
    expected = e2e_stack.inject(role=UNKNOWN_ROLE, prompt="hi", model="qwen3:8b").json()["error"]
    e2e_stack.ollama.clear()

    response = requests.post(f"{n8n_url}/webhook/{WEBHOOK_PATH}", json={"role": UNKNOWN_ROLE, "prompt": "hi"},
                             timeout=120)

    assert response.status_code == 422, response.text
    assert expected["message"] in response.json()["error"]["message"]
    assert e2e_stack.ollama.requests == []


def test_webhook_reports_an_ollama_failure(e2e_stack: Stack, n8n_url: str) -> None:
    e2e_stack.ollama.clear()
    e2e_stack.ollama.set_fault("/api/chat", model_not_found=True)
    try:
        response = requests.post(f"{n8n_url}/webhook/{WEBHOOK_PATH}", timeout=120,
                                 json={"role": "agi-engineer", "prompt": "hi", "variables": {"user_name": "Bob"}})
    finally:
        e2e_stack.ollama.clear()

    assert response.status_code == 502, response.text
    assert response.json()["error"]["message"]


def test_webhook_without_ollama_answers_502_naming_it_and_its_url(e2e_stack: Stack, n8n_url: str) -> None:
    with e2e_stack.ollama.stopped():
        response = requests.post(f"{n8n_url}/webhook/{WEBHOOK_PATH}", timeout=120,
                                 json={"role": "agi-engineer", "prompt": "hi", "variables": {"user_name": "Bob"}})

    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert message.startswith(f"cannot reach Ollama at {e2e_stack.ollama.url}: "), message
    assert "Start Ollama there, or point the worker at it" in message
