"""The context policy through POST /v1/inject, as an n8n workflow that sends the running conversation
uses it: the role stays byte-identical, dropped messages are reported in `trim.dropped_messages`, the
last message is always kept and the prompt always fits (Flask test client and real gunicorn)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from role_injector.tokens import load_tokenizer
from tests.worker.rest.support import Api, assert_error

QWEN = load_tokenizer("qwen")
WORDS = ["checklist", "deploy", "the", "rollback", "canary", "metrics", "alert", "owner", "runbook", "window"]
ADA = {"user_name": "Ada"}


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def post(api: Api, **body: Any) -> dict[str, Any]:
    reply = api.request("POST", "/v1/inject", json=body)
    assert reply.status == 200, reply
    return reply.json()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), window=st.sampled_from([3072, 4096]),
       share=st.sampled_from([None, 0.2, 0.5]),
       sizes=st.lists(st.tuples(st.integers(5, 200), st.integers(5, 300)), min_size=2, max_size=14))
def test_a_running_conversation_keeps_the_role_and_reports_what_it_drops(
    api: Api, seed: int, window: int, share: float | None, sizes: list[tuple[int, int]]
) -> None:
    rng = random.Random(seed)
    messages: list[dict[str, str]] = []
    systems, cut, previous = set(), 0, ""
    for question, answer in sizes:
        messages.append({"role": "user", "content": words(rng, question)})
        body: dict[str, Any] = {"role": "manifest", "messages": messages, "context_window": window,
                                "reserve_output": 512}
        if share is not None:
            body["history_share"] = share
        result = post(api, **body)
        dropped = result["trim"]["dropped_messages"]
        assert result["messages"][1:] == messages[dropped:], "exactly the reported oldest messages are left out"
        assert result["messages"][-1] == messages[-1] and result["messages"][1]["role"] == "user"
        assert result["usage"]["context_policy"] == "keep_role"
        assert result["usage"]["prompt_tokens"] == QWEN.count_prompt(result["prompt"])
        assert result["usage"]["prompt_tokens"] + 512 <= window == result["usage"]["num_ctx"]
        assert dropped >= cut
        if dropped == cut:
            assert result["prompt"].startswith(previous.removesuffix("<|im_start|>assistant\n"))
        systems.add(result["system"])
        cut, previous = dropped, result["prompt"]
        messages.append({"role": "assistant", "content": words(rng, answer)})
    assert len(systems) == 1


def test_shrink_role_keeps_every_message_and_the_role_gives_way(api: Api) -> None:
    rng = random.Random(1)
    messages = [{"role": "user", "content": words(rng, 600)}, {"role": "assistant", "content": words(rng, 600)},
                {"role": "user", "content": "and then?"}]
    kept = post(api, role="manifest", messages=messages, context_window=4096, reserve_output=512)
    shrunk = post(api, role="manifest", messages=messages, context_window=4096, reserve_output=512,
                  context_policy="shrink_role")
    assert kept["trim"]["dropped_messages"] == 2 and kept["messages"][1:] == messages[2:]
    assert shrunk["trim"]["dropped_messages"] == 0 and shrunk["messages"][1:] == messages
    assert shrunk["usage"]["system_tokens"] < kept["usage"]["system_tokens"]
    assert shrunk["usage"]["context_policy"] == "shrink_role"


def test_a_last_message_that_cannot_fit_beside_the_role_is_422(api: Api) -> None:
    prompt = words(random.Random(2), 1500)
    reply = api.request("POST", "/v1/inject", json={"role": "manifest", "prompt": prompt, "context_window": 4096})
    error = assert_error(reply, 422, "context_overflow")
    assert error["details"]["context_policy"] == "keep_role" and error["details"]["system_tokens"] > 0
    assert "the last message needs" in error["message"]
    assert post(api, role="manifest", prompt=prompt, context_window=4096, context_policy="shrink_role")


@pytest.mark.parametrize(("field", "value"), [
    ("context_policy", "trim_everything"), ("context_policy", 1), ("history_share", 0), ("history_share", 1),
    ("history_share", "0.3"), ("history_share", True), ("history_share", -0.5),
])
def test_wrong_policy_fields_are_400_naming_the_field(api: Api, field: str, value: Any) -> None:
    reply = api.request("POST", "/v1/inject", json={"role": "helper", "variables": ADA, field: value})
    error = assert_error(reply, 400, "invalid_request")
    assert error["details"] == {"field": field} and field in error["message"]
