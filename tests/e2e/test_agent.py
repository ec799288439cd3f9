"""AI Agent workflows: the shipped role chat with memory, and the Role Injector as an agent's tool."""

from __future__ import annotations

import json

import pytest

from tests.e2e.stack import (
    AGENT_TOOL_WORKFLOW,
    AGENT_TOOL_WORKFLOW_ID,
    FIXTURES,
    Stack,
    assignment,
    load_workflow,
    node,
    tool_calling_model,
)
from tests.ollama_standin import DEFAULT_ANSWER

pytestmark = pytest.mark.e2e

CHAT_TRIGGER = "When chat message received"


def chat_message(session: str, text: str) -> dict[str, str]:
    """What the Chat Trigger emits for one message (the editor's chat panel sends the same)."""
    return {"sessionId": session, "action": "sendMessage", "chatInput": text}


def test_agent_chat_keeps_the_role_num_ctx_and_the_earlier_turns(e2e_stack: Stack) -> None:
    workflow = load_workflow("role-agent-chat.json")
    model = assignment(workflow, "Settings", "model")
    user_name = assignment(workflow, "Settings", "user_name")
    role = node(workflow, "Role Injector")["parameters"]["role"]["value"]
    turns = ["Help me plan a weekend in Lisbon.", "And if it rains on Sunday?"]
    expected = [e2e_stack.inject(role=role, prompt=text, model=model, variables={"user_name": user_name}).json()
                for text in turns]
    e2e_stack.ollama.clear()

    runs = [e2e_stack.n8n.execute("roleAgentChat", trigger=CHAT_TRIGGER,
                                  trigger_output=chat_message("e2e-agent-chat", text)) for text in turns]

    for run in runs:
        assert run.status == "success", run.error_text
        assert run.node_items("AI Agent") == [{"output": DEFAULT_ANSWER}]
    first, second = (request.body for request in e2e_stack.ollama.requests_to("/api/chat"))
    assert first["model"] == second["model"] == model
    assert first["messages"] == [
        {"role": "system", "content": expected[0]["system"]},
        {"role": "user", "content": turns[0]},
    ]
    # Simple Memory: the second turn carries the first one.
    assert second["messages"] == [
        {"role": "system", "content": expected[1]["system"]},
        {"role": "user", "content": turns[0]},
        {"role": "assistant", "content": DEFAULT_ANSWER},
        {"role": "user", "content": turns[1]},
    ]
    for body, injection in zip((first, second), expected, strict=True):
        assert body["options"]["num_ctx"] == injection["usage"]["num_ctx"]
        assert body["options"]["temperature"] == injection["params"]["temperature"]


def test_the_node_runs_as_an_agents_tool_and_answers_with_the_fitted_role(e2e_stack: Stack) -> None:
    workflow = load_workflow(AGENT_TOOL_WORKFLOW, FIXTURES)
    tool_node = node(workflow, "Role Injector Tool")["parameters"]
    expected = e2e_stack.inject(role=tool_node["role"]["value"], prompt="thank-you note",
                                model=tool_node["model"], budget=tool_node["toolBudget"]).json()
    e2e_stack.ollama.clear()
    e2e_stack.ollama.answer = tool_calling_model

    run = e2e_stack.n8n.execute(AGENT_TOOL_WORKFLOW_ID)

    assert run.status == "success", run.error_text
    assert run.node_items("AI Agent") == [{"output": DEFAULT_ANSWER}]
    asking, answering = (request.body for request in e2e_stack.ollama.requests_to("/api/chat"))
    (tool,) = asking["tools"]
    # The agent is told which role the tool consults, and that it takes a question.
    assert "general-assistant" in tool["function"]["description"]
    assert list(tool["function"]["parameters"]["properties"]) == ["question"]
    (tool_message,) = [m for m in answering["messages"] if m["role"] == "tool"]
    assert tool_message["content"]
    # n8n passes the tool's items to the agent as JSON: the compact answer, nothing more.
    (answer,) = json.loads(tool_message["content"])
    assert answer == {"role": "general-assistant", "instructions": expected["system"],
                      "tokens": expected["usage"]["system_tokens"], "shortened": expected["trim"]["trimmed"]}
    (tool_run,) = run.node_runs("Role Injector Tool")
    assert tool_run["executionStatus"] == "success"
