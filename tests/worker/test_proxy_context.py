"""The context policy through the Ollama-compatible proxy: a real gunicorn worker in front of the
Ollama stand-in, which records what a model server would get. Each prompt is rendered with Qwen3's
own chat template and counted with the Qwen tokenizer, as Ollama would see it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import ollama
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from role_injector.tokens import load_tokenizer
from tests.ollama_standin import OllamaStandin, run_ollama_standin
from tests.servers import WorkerProcess, run_worker_at, write_place
from tests.worker.chat_templates.render_reference import render_reference

QWEN = load_tokenizer("qwen")
WINDOW, RESERVE = 2048, 256
POLICY, DROPPED = "X-Role-Injector-Context-Policy", "X-Role-Injector-Dropped-Messages"
WORDS = ["the", "build", "broke", "after", "cache", "was", "cleared", "so", "we", "pinned", "compiler", "and",
         "ran", "every", "test", "again"]
ROLE = "---\ndescription: Finds bugs\n---\nYou are a careful test engineer.\n\n## Mission {required}\n" \
    "Find the bug before it finds the users.\n\n" + "\n\n".join(
        f"## Lesson {i} {{priority={80 - i}}}\n" + " ".join(f"Check {w} {i}." for w in WORDS * 3)
        for i in range(10))
PROFILE = f"""\
models:
  - match: "small*"
    tokenizer: qwen
    format: chatml
    context_window: {WINDOW}
    reserve_output: {RESERVE}
virtual_models:
  tester: {{base: "small:1b", role: tester}}
  tester-all: {{base: "small:1b", role: tester, context_policy: shrink_role}}
  tester-roomy: {{base: "small:1b", role: tester, history_share: 0.5}}
"""


@pytest.fixture(scope="module")
def standin() -> Iterator[OllamaStandin]:
    with run_ollama_standin() as server:
        yield server


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    root = write_place(tmp_path_factory.mktemp("proxy-context"), {"tester": ROLE}, PROFILE)
    with run_worker_at(root, standin.url) as process:
        yield process


@pytest.fixture(autouse=True)
def fresh_standin(standin: OllamaStandin) -> None:
    standin.clear()


def chat(worker: WorkerProcess, standin: OllamaStandin, model: str, messages: list[dict[str, Any]],
         headers: dict[str, str] | None = None) -> tuple[requests.Response, dict[str, Any]]:
    """Send one /api/chat; return the answer and the body the stand-in received."""
    standin.clear()
    response = requests.post(worker.url + "/api/chat", timeout=30, headers=headers,
                             json={"model": model, "messages": messages, "stream": False})
    assert response.status_code == 200, response.text
    (received,) = standin.requests_to("/api/chat")
    return response, received.body


def rendered(body: dict[str, Any]) -> tuple[list[int], int]:
    """The prompt as Qwen3's template renders the received messages, and the tokens of its system part."""
    text = render_reference("qwen3", [{"role": m["role"], "content": m["content"]} for m in body["messages"]])
    system_end = text.index("<|im_end|>\n") + len("<|im_end|>\n")
    return QWEN.encoding.encode(text, allowed_special="all"), QWEN.count_prompt(text[:system_end])


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), sizes=st.lists(st.tuples(st.integers(5, 150), st.integers(5, 250)),
                                                 min_size=4, max_size=16))
def test_a_growing_conversation_keeps_the_role_and_drops_history_in_reported_chunks(
    worker: WorkerProcess, standin: OllamaStandin, seed: int, sizes: list[tuple[int, int]]
) -> None:
    rng = random.Random(seed)
    conversation: list[dict[str, Any]] = [{"role": "system", "content": "You are a pirate."}]
    systems, contexts, cut = set(), set(), 0
    previous: list[int] | None = None
    for question, answer in sizes:
        conversation.append({"role": "user", "content": words(rng, question)})
        response, body = chat(worker, standin, "tester", conversation)
        sent = body["messages"]
        client_turns = conversation[1:]
        dropped = int(response.headers[DROPPED])
        assert sent[0]["role"] == "system" and "pirate" not in sent[0]["content"]
        assert sent[1:] == client_turns[dropped:], "exactly the reported number of the oldest messages is left out"
        assert sent[-1] == conversation[-1] and sent[1]["role"] == "user"
        systems.add(sent[0]["content"])
        contexts.add(body["options"]["num_ctx"])
        tokens, system_tokens = rendered(body)
        assert body["options"]["num_keep"] == system_tokens
        assert len(tokens) + RESERVE <= body["options"]["num_ctx"] == WINDOW, "the prompt and the answer fit"
        assert dropped >= cut
        if previous is not None and dropped == cut:  # nothing newly dropped: the prompt only grew at its end
            generation_prompt = len(QWEN.encoding.encode("<|im_start|>assistant\n", allowed_special="all"))
            assert tokens[: len(previous) - generation_prompt] == previous[:-generation_prompt]
        cut, previous = dropped, tokens
        conversation.append({"role": "assistant", "content": words(rng, answer)})
    assert len(systems) == 1, "the role is byte-identical on every turn"
    assert contexts == {WINDOW}, "num_ctx never changes (a change reloads the model)"


def test_what_was_dropped_is_in_the_request_log(worker: WorkerProcess, standin: OllamaStandin) -> None:
    rng = random.Random(1)
    conversation = []
    for _ in range(8):
        conversation += [{"role": "user", "content": words(rng, 120)},
                         {"role": "assistant", "content": words(rng, 200)}]
    response, body = chat(worker, standin, "tester", conversation[:-1])
    dropped = int(response.headers[DROPPED])
    assert dropped > 0 and len(body["messages"]) == len(conversation) - dropped  # system in, last answer out
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith('{"route": "/api/chat"')]
    assert lines[-1]["dropped_messages"] == dropped and lines[-1]["context_policy"] == "keep_role"


def test_the_policy_comes_from_the_header_else_the_virtual_model(worker: WorkerProcess,
                                                                  standin: OllamaStandin) -> None:
    rng = random.Random(2)
    conversation = [{"role": "user", "content": words(rng, 300)}, {"role": "assistant", "content": words(rng, 300)},
                    {"role": "user", "content": words(rng, 20)}]
    kept_role, body = chat(worker, standin, "tester", conversation)
    role = body["messages"][0]["content"]
    assert kept_role.headers[DROPPED] == "2"
    # shrink_role, by header or by the virtual model: every message goes, the role gives way
    for model, headers in (("tester", {POLICY: "shrink_role"}), ("tester-all", None)):
        response, body = chat(worker, standin, model, conversation, headers)
        assert response.headers[DROPPED] == "0" and body["messages"][1:] == conversation
        assert len(body["messages"][0]["content"]) < len(role)
    # the header wins over the virtual model
    response, body = chat(worker, standin, "tester-all", conversation, {POLICY: "keep_role"})
    assert response.headers[DROPPED] == "2" and body["messages"][0]["content"] == role
    # a larger history share: a smaller role, more of the conversation
    response, body = chat(worker, standin, "tester-roomy", conversation)
    assert len(body["messages"][0]["content"]) < len(role)


def test_the_official_client_can_send_the_policy_header(worker: WorkerProcess, standin: OllamaStandin) -> None:
    client = ollama.Client(host=worker.url, headers={POLICY: "shrink_role"})
    client.chat(model="tester", messages=[{"role": "user", "content": "hi"}])
    assert standin.requests_to("/api/chat")[0].body["messages"][1:] == [{"role": "user", "content": "hi"}]


def test_a_wrong_policy_header_is_an_ollama_400(worker: WorkerProcess, standin: OllamaStandin) -> None:
    response = requests.post(worker.url + "/api/chat", timeout=10, headers={POLICY: "drop_everything"},
                             json={"model": "tester", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400
    assert POLICY in response.json()["error"] and "keep_role, shrink_role" in response.json()["error"]
    assert standin.requests == []


def test_tool_results_stay_with_their_exchange(worker: WorkerProcess, standin: OllamaStandin) -> None:
    rng = random.Random(3)
    call = {"function": {"name": "grep_logs", "arguments": {"pattern": "error"}}}
    conversation: list[dict[str, Any]] = []
    for _ in range(4):
        conversation += [
            {"role": "user", "content": words(rng, 40)},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": words(rng, 150), "tool_name": "grep_logs"},
            {"role": "assistant", "content": words(rng, 60)},
        ]
    conversation.append({"role": "user", "content": "and now?"})
    response, body = chat(worker, standin, "tester", conversation)
    assert int(response.headers[DROPPED]) > 0
    assert body["messages"][1]["role"] == "user", "never cut between a tool call and its result"


def test_a_last_message_too_long_for_the_role_is_an_ollama_400(worker: WorkerProcess, standin: OllamaStandin) -> None:
    long = [{"role": "user", "content": words(random.Random(4), 900)}]
    response = requests.post(worker.url + "/api/chat", timeout=10, json={"model": "tester", "messages": long})
    assert response.status_code == 400
    error = response.json()["error"]
    assert "the last message needs" in error and "keep_role never cuts it" in error and "shrink_role" in error
    assert standin.requests == []
    response = requests.post(worker.url + "/api/chat", timeout=10, headers={POLICY: "shrink_role"},
                             json={"model": "tester", "messages": long, "stream": False})
    assert response.status_code == 200, response.text


def test_the_clients_num_keep_wins(worker: WorkerProcess, standin: OllamaStandin) -> None:
    client = ollama.Client(host=worker.url)
    client.chat(model="tester", messages=[{"role": "user", "content": "hi"}], options={"num_keep": 10})
    assert standin.requests_to("/api/chat")[0].body["options"]["num_keep"] == 10


def test_generate_gets_num_keep_too(worker: WorkerProcess, standin: OllamaStandin) -> None:
    ollama.Client(host=worker.url).generate(model="tester", prompt="hi")
    body = standin.requests_to("/api/generate")[0].body
    text = render_reference("qwen3", [{"role": "system", "content": body["system"]}, {"role": "user", "content": "hi"}])
    assert body["options"]["num_keep"] == QWEN.count_prompt(text[: text.index("<|im_start|>user")])
