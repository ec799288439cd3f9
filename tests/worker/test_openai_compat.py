"""OpenAI's Chat Completions in front of Ollama, as a library: the request translated into /api/chat
(`engines.ollama.chat_body`), Ollama's lines read back (`engines.lines`, `engines.ollama.answer_delta`)
and shaped as OpenAI's answers (`openai_compat`): properties of both mappings, the SSE stream as a
golden file, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from role_injector.engines.answer import ChatAnswer
from role_injector.engines.lines import LineReader
from role_injector.engines.ollama import answer_delta, chat_body, model_entries, plain_chat
from role_injector.errors import ContextOverflow, InvalidRequest, UpstreamError
from role_injector.fitting import FitCache
from role_injector.openai_compat import ChatStream, completion, model_list, parse_chat_request
from role_injector.profiles import load_profiles

GOLDEN = Path(__file__).parent / "goldens" / "openai-stream.txt"
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)


# --- Ollama's lines, in any chunks ------------------------------------------------------------------


@given(st.lists(st.dictionaries(text, json_values, max_size=4), max_size=6), st.data())
def test_ndjson_lines_are_the_same_however_the_bytes_are_cut(objects: list[dict[str, Any]],
                                                            data: st.DataObject) -> None:
    objects = [o for o in objects if "error" not in o]
    stream = b"".join(json.dumps(o, ensure_ascii=False).encode() + b"\n" for o in objects)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    lines = LineReader("ndjson", "Ollama", limit=1 << 20)
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(lines.feed(stream[start:end]))
    got.extend(lines.end())
    assert got == objects


@given(st.lists(st.dictionaries(text, json_values, max_size=4), max_size=6), st.data(), st.booleans())
def test_sse_events_are_the_same_however_the_bytes_are_cut(objects: list[dict[str, Any]], data: st.DataObject,
                                                            crlf: bool) -> None:
    """An OpenAI-compatible server's stream: `data:` lines, comments and other fields skipped, `[DONE]` last."""
    events = [b": keep-alive\n\n"] + [b"event: chunk\ndata: " + json.dumps(o, ensure_ascii=False).encode() + b"\n\n"
                                      for o in objects] + [b"data: [DONE]\n\n"]
    stream = b"".join(events).replace(b"\n", b"\r\n" if crlf else b"\n")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    lines = LineReader("sse", "llama-server", limit=1 << 20)
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(lines.feed(stream[start:end]))
    got.extend(lines.end())
    assert got == objects and lines.done


def test_bad_lines_are_upstream_errors() -> None:
    with pytest.raises(UpstreamError, match="not a JSON object"):
        list(LineReader("ndjson", "Ollama", 100).feed(b"[1]\n"))
    with pytest.raises(UpstreamError, match="Ollama: out of memory"):
        [answer_delta(line) for line in LineReader("ndjson", "Ollama", 100).feed(b'{"error": "out of memory"}\n')]
    with pytest.raises(UpstreamError, match="longer than 100 bytes"):
        list(LineReader("ndjson", "Ollama", 100).feed(b"{" + b" " * 200))


# --- the answer: a stream and a completion that agree -------------------------------------------------

tool_calls = st.lists(st.fixed_dictionaries(
    {"function": st.fixed_dictionaries({"name": st.from_regex(r"[a-z_]{1,12}", fullmatch=True),
                                        "arguments": st.dictionaries(text, json_values, max_size=3)})},
    optional={"id": st.from_regex(r"call_[a-z0-9]{4}", fullmatch=True)}), max_size=3)
native_line = st.fixed_dictionaries({"message": st.fixed_dictionaries(
    {"role": st.just("assistant"), "content": text},
    optional={"thinking": text, "tool_calls": tool_calls})})


@given(st.lists(native_line, max_size=6), st.sampled_from(["stop", "length", ""]), st.booleans())
def test_the_stream_adds_up_to_the_completion(lines: list[dict[str, Any]], reason: str, include_usage: bool) -> None:
    done = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason,
            "prompt_eval_count": 11, "eval_count": 7}
    whole = ChatAnswer("m", id="chatcmpl-1", created=5)
    for line in [*lines, done]:
        whole.add(answer_delta(line))
    completed = completion(whole)

    stream = ChatStream(ChatAnswer("m", id="chatcmpl-1", created=5), include_usage)
    raw = b"".join(stream.events(answer_delta(line)) for line in [*lines, done]).decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    if include_usage:
        *chunks, last = chunks
        assert last["choices"] == [] and last["usage"] == completed["usage"] == {
            "prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        assert all(c["usage"] is None for c in chunks)
    else:
        assert all("usage" not in c for c in chunks)
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-1", 5, "m", "chat.completion.chunk")}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and all("role" not in d for d in deltas[1:])
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == completed["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])

    message = completed["choices"][0]["message"]
    streamed = "".join(d.get("content", "") for d in deltas)
    assert streamed == (message["content"] or "") == "".join(line["message"]["content"] for line in lines)
    assert "".join(d.get("reasoning", "") for d in deltas) == message.get("reasoning", "")
    calls = [call for d in deltas for call in d.get("tool_calls", ())]
    sent = [call for line in lines for call in line["message"].get("tool_calls", ())]
    assert [c["index"] for c in calls] == list(range(len(calls)))

    def same(call: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:  # ids made up here differ
        return {k: v for k, v in call.items() if k != "index" and (k != "id" or "id" in original)}

    assert [same(c, s) for c, s in zip(calls, sent, strict=True)] == [
        same(c, s) for c, s in zip(message.get("tool_calls", []), sent, strict=True)]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in sent]
    assert all(c["id"] == s.get("id", c["id"]) and c["id"].startswith("call_")
               for c, s in zip(calls, sent, strict=True))
    expected = "length" if reason == "length" else "tool_calls" if sent else "stop"
    assert completed["choices"][0]["finish_reason"] == expected
    if sent:
        assert message["content"] == (streamed or None)


def test_the_event_stream_matches_the_golden() -> None:
    """The exact bytes of a streamed answer with reasoning, text, a tool call, logprobs and usage."""
    logprob = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
    lines = [
        {"message": {"role": "assistant", "content": "", "thinking": "The user greets."}},
        {"message": {"role": "assistant", "content": "Hi"}, "logprobs": [logprob]},
        {"message": {"role": "assistant", "content": " — ✓"}},
        {"message": {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_7", "function": {"index": 0, "name": "add", "arguments": {"a": 1, "b": "двa"}}}]}},
        {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
         "prompt_eval_count": 20, "eval_count": 9},
    ]
    stream = ChatStream(ChatAnswer("qwen3:8b@engineer", id="chatcmpl-golden", created=1700000000), True)
    got = b"".join(stream.events(answer_delta(line)) for line in lines).decode()
    assert got == GOLDEN.read_text(encoding="utf-8")


def test_a_completion_carries_logprobs_and_reasoning() -> None:
    answer = ChatAnswer("m", id="chatcmpl-1", created=1)
    answer.add(answer_delta({"message": {"content": "ok", "thinking": "hmm"},
                             "logprobs": [{"token": "ok", "logprob": 0.0}]}))
    answer.add(answer_delta({"message": {"content": ""}, "done": True, "done_reason": "stop"}))
    assert completion(answer) == {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok", "refusal": None, "reasoning": "hmm"},
                     "logprobs": {"content": [{"token": "ok", "logprob": 0.0}]}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }


# --- the request --------------------------------------------------------------------------------------

parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), min_size=1, max_size=3)
openai_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]), "content": text | parts}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": text | st.none()}),
)


@given(st.lists(openai_message, min_size=1, max_size=6))
def test_messages_keep_their_text_and_order(messages: list[dict[str, Any]]) -> None:
    chat = chat_body(parse_chat_request({"model": "m", "messages": messages}))
    assert [m["role"] for m in chat["messages"]] == [
        {"developer": "system"}.get(m["role"], m["role"]) for m in messages]
    for native, sent in zip(chat["messages"], messages, strict=True):
        content = sent["content"]
        expected = "\n".join(p["text"] for p in content) if isinstance(content, list) else content or ""
        assert native["content"] == expected


@given(st.fixed_dictionaries({}, optional={
    "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "seed": st.integers(-(2**63), 2**63 - 1),
    "max_tokens": st.integers(1, 10_000_000), "frequency_penalty": st.floats(-2, 2),
    "presence_penalty": st.floats(-2, 2), "stop": text | st.lists(text, max_size=4)}))
def test_sampling_options_map_one_to_one(options: dict[str, Any]) -> None:
    chat = chat_body(parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **options}))
    renamed = {"max_tokens": "num_predict"}
    expected = {renamed.get(k, k): v for k, v in options.items()}
    if isinstance(expected.get("stop"), str):
        expected["stop"] = [expected["stop"]]
    if expected.get("stop") == []:
        del expected["stop"]
    assert chat.get("options", {}) == expected


def test_defaults_are_left_to_the_model() -> None:
    asked = parse_chat_request({"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}],
                                "stream_options": {"include_usage": True}, "user": "x", "store": True})
    assert chat_body(asked) == {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    assert (asked.stream, asked.include_usage) == (False, False)  # usage chunks only come with a stream


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "data:;base64,"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,!!"}}]}]},
     "messages[0].content[0].image_url.url"),
    ({"stream": "yes"}, "stream"),
    ({"stream": True, "stream_options": []}, "stream_options"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"seed": 1.5}, "seed"),
    ({"stop": ["a"] * 17}, "stop"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tool_choice": "any"}, "tool_choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
     "response_format.json_schema.schema"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_what_cannot_be_done_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_body(parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}))
    assert caught.value.details == {"field": param}


def test_formats_tools_reasoning_and_logprobs() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": schema, "strict": True}}
    chat = chat_body(parse_chat_request({
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [tool], "tool_choice": "required",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
        "reasoning_effort": "xhigh", "logprobs": True, "top_logprobs": 2,
    }))
    assert chat["tools"] == [{"type": "function", "function": {"name": "f", "description": "d", "parameters": schema}}]
    assert (chat["format"], chat["think"], chat["logprobs"], chat["top_logprobs"]) == (schema, "high", True, 2)


def test_a_plain_model_gets_its_profiles_window_when_the_conversation_fits() -> None:
    profiles = load_profiles(None)
    chat = chat_body(parse_chat_request({"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}))
    assert plain_chat(chat, profiles, FitCache())["options"] == {"num_ctx": 8192}
    words = [{"role": "user", "content": "word " * 8000}]
    long = chat_body(parse_chat_request({"model": "qwen3:8b", "messages": words}))
    with pytest.raises(ContextOverflow) as caught:
        plain_chat(long, profiles, FitCache())
    assert caught.value.details["context_window"] == 8192 and caught.value.details["messages_tokens"] > 7000


def test_model_list_is_openais_shape() -> None:
    tags = {"models": [
        {"name": "qwen3:8b", "modified_at": "2025-05-01T10:20:30.123456789+02:00"},
        {"name": "hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M", "modified_at": "2025-05-01T08:20:30Z"},
        {"name": "keel", "modified_at": "0001-01-01T00:00:00Z", "description": "qwen3:8b with role manifest"},
        "junk",
    ]}
    assert model_list(model_entries(tags)) == {"object": "list", "data": [
        {"id": "qwen3:8b", "object": "model", "created": 1746087630, "owned_by": "library"},
        {"id": "hf.co/unsloth/Qwen3-8B-GGUF:Q4_K_M", "object": "model", "created": 1746087630, "owned_by": "unsloth"},
        {"id": "keel", "object": "model", "created": 0, "owned_by": "role-injector"},
    ]}
    with pytest.raises(UpstreamError):
        model_entries(None)
