"""n8n's own Ollama node on a virtual model, with its Ollama credential pointing at the worker's
Ollama-compatible proxy: the role reaches the model server although n8n knows nothing of roles."""

from __future__ import annotations

import pytest

from tests.e2e.stack import FIXTURES, PROXY_WORKFLOW, PROXY_WORKFLOW_ID, Stack, assignment, load_workflow, node
from tests.ollama_standin import DEFAULT_ANSWER

pytestmark = pytest.mark.e2e

OLLAMA_NODE = "Ollama via the worker"


def test_ollama_node_on_a_virtual_model_sends_the_role(e2e_stack: Stack) -> None:
    workflow = load_workflow(PROXY_WORKFLOW, FIXTURES)
    virtual_model = node(workflow, OLLAMA_NODE)["parameters"]["modelId"]["value"]
    assert virtual_model == "qwen3:8b@general-assistant"
    base, role = virtual_model.split("@")
    chat_input = assignment(workflow, "Sample chat input", "chatInput")
    answer = e2e_stack.inject(role=role, prompt=chat_input, model=base)
    assert answer.status_code == 200, answer.text
    expected = answer.json()
    e2e_stack.ollama.clear()

    run = e2e_stack.n8n.execute(PROXY_WORKFLOW_ID)

    assert run.status == "success", run.error_text
    assert run.node_items(OLLAMA_NODE) == [{"content": DEFAULT_ANSWER}]
    (chat,) = e2e_stack.ollama.requests_to("/api/chat")
    body = chat.body
    assert body["model"] == base
    assert body["messages"] == [
        {"role": "system", "content": expected["system"]},
        {"role": "user", "content": chat_input},
    ]
    assert body["options"]["num_ctx"] == expected["usage"]["num_ctx"]
    assert body["options"]["num_keep"] == expected["usage"]["num_keep"]  # a context shift keeps the role
    # The role's model options go along too (n8n's node set none of its own).
    assert {k: v for k, v in body["options"].items() if k not in ("num_ctx", "num_keep")} == expected["params"]
    assert body["stream"] is False
