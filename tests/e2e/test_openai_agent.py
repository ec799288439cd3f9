"""n8n's AI Agent with n8n's OpenAI Chat Model pointed at the worker's OpenAI-compatible route
(`workflows/role-agent-openai.json`): the role reaches the model server with a safe num_ctx though n8n
only speaks OpenAI's API, the agent's tool call goes round through the translation both ways, and the
chat's session id keys its routing; and
the same workflow against a worker in front of a real engine (llama-server with SmolLM2) answers with
the model's own words."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from role_injector.engines.routing import routing_key
from tests.e2e.stack import ENGINE_AGENT_ID, ENGINE_MODEL, Stack, assignment, load_workflow
from tests.engine import LlamaServer
from tests.ollama_standin import DEFAULT_ANSWER, Reply
from tests.servers import REPO, WorkerProcess, run_worker

pytestmark = pytest.mark.e2e

WORKFLOW = "role-agent-openai.json"
WORKFLOW_ID = "roleAgentOpenai"
CALCULATION = "3 * 12 - 5"
TOOL = "Calculator"  # n8n names an agent's tool after its node
ANSWER = "31 eggs are left: enough for an omelette."


def agent_model(body: dict[str, Any]) -> str | Reply:
    """The stand-in as a model that first calls the agent's tool (the Calculator), then answers with its result."""
    last = body["messages"][-1]
    if last["role"] == "tool":
        return ANSWER
    (tool,) = body["tools"]
    return Reply(tool_calls=({"function": {"name": tool["function"]["name"], "arguments": {"input": CALCULATION}}},))


def test_ai_agent_with_the_openai_chat_model_gets_the_role_and_a_safe_num_ctx(e2e_stack: Stack) -> None:
    workflow = load_workflow(WORKFLOW)
    chat_input = assignment(workflow, "Sample chat input", "chatInput")
    session = assignment(workflow, "Sample chat input", "sessionId")
    model, role = assignment(workflow, "Settings", "model"), assignment(workflow, "Settings", "role")
    answer = e2e_stack.inject(role=role, prompt=chat_input, model=model)
    assert answer.status_code == 200, answer.text
    expected = answer.json()
    e2e_stack.ollama.clear()
    e2e_stack.ollama.answer = agent_model
    try:
        run = e2e_stack.n8n.execute(WORKFLOW_ID)
    finally:
        e2e_stack.ollama.answer = DEFAULT_ANSWER

    assert run.status == "success", run.error_text
    assert run.node_items("Chat reply") == [{"output": ANSWER}]
    requests = e2e_stack.ollama.requests_to("/api/chat")
    # Both turns of the agent carry one routing key, made from n8n's chat session id (the model node's
    # Extra Body sends it as `user`), not from the opening message
    key = routing_key(f"{model}@{role}", session, chat_input)
    assert key != routing_key(f"{model}@{role}", None, chat_input)
    assert [r.headers.get("X-Session-ID") for r in requests] == [key, key]
    calling, answering = (r.body for r in requests)
    for body in (calling, answering):
        assert body["model"] == model  # the base model, natively: the worker, not Ollama's /v1, spoke to it
        # The fitted role replaced the agent's own system message ("You are a helpful assistant").
        assert body["messages"][0] == {"role": "system", "content": expected["system"]}
        assert body["options"]["num_ctx"] >= expected["usage"]["num_ctx"]
        assert [t["function"]["name"] for t in body["tools"]] == [TOOL]
    assert calling["messages"][1:] == [{"role": "user", "content": chat_input}]
    user, call, result = answering["messages"][1:]
    assert user == {"role": "user", "content": chat_input}
    (tool_call,) = call["tool_calls"]
    assert tool_call["function"]["name"] == TOOL  # arguments back as an object (n8n adds the call's id to them)
    assert tool_call["function"]["arguments"]["input"] == CALCULATION
    assert result == {"role": "tool", "content": result["content"], "tool_call_id": tool_call["id"], "tool_name": TOOL}
    assert "31" in result["content"]  # the Calculator's result, as n8n words it ('[{"response":"31"}]')


@pytest.fixture(scope="module")
def engine_worker(e2e_stack: Stack, llama_server: LlamaServer,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The shipped roles served in front of the real engine, where the stack's engine credential points."""
    with run_worker(REPO / "roles", tmp_path_factory.mktemp("engine-worker"), workers=1,
                    port=e2e_stack.engine_worker_port,
                    env={"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": llama_server.url}) as process:
        yield process


def test_the_openai_agent_answers_through_a_real_engine(e2e_stack: Stack, engine_worker: WorkerProcess) -> None:
    run = e2e_stack.n8n.execute(ENGINE_AGENT_ID)

    assert run.status == "success", run.error_text + engine_worker.log()[-3000:]
    ((reply,),) = [run.node_items("Chat reply")]
    assert isinstance(reply["output"], str) and reply["output"].strip()
    # The worker put the role in for the agent's model; the engine answered with its own counts.
    routed = [json.loads(line) for line in engine_worker.log().splitlines() if line.startswith('{"route"')]
    chats = [line for line in routed if line["route"] == "/v1/chat/completions"]
    assert chats and all(c["status"] == 200 and c["role"] == "general-assistant" and c["base"] == ENGINE_MODEL
                         for c in chats)
    answered = [json.loads(line) for line in engine_worker.log().splitlines() if line.startswith('{"engine"')]
    assert answered and all(a["prompt_tokens"] > 0 for a in answered)
