"""An OpenAI-compatible engine as a library (`engines.openai_server`): the client's request kept with the
role's params filling what it leaves unset, its text neutralised against the engine's template; the
engine's answer (SSE chunks with tool calls in pieces, or one JSON answer) read back into the same
completion and stream, its usage and cached tokens unchanged; the profile file's engines and the
settings that choose them. The engine's own behaviour is tested against a real llama-server in
tests/proxy/test_engine_route.py."""

from __future__ import annotations

import json
import re
from collections.abc import Generator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from role_injector.engines.answer import ChatAnswer, Delta
from role_injector.engines.configured import configured_engines
from role_injector.engines.kinds import EngineKind
from role_injector.engines.openai_server import (
    OpenAIServerEngine,
    answer_piece,
    chat_messages,
    read_answer,
    streamed,
    with_params,
)
from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.errors import ConfigError, InvalidRequest, ProfileError, UpstreamError
from role_injector.formats import CONTROL_TOKEN, neutralise
from role_injector.openai_compat import ChatStream, completion
from role_injector.profiles import Profiles, VirtualModel, load_profiles, parse_profiles
from role_injector.settings import Settings
from role_injector.template_tokens import control_pattern

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
arguments = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers() | text, max_size=3)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    """A chat.completion.chunk as llama.cpp sends it."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-engine", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": choices, **extra}


def objects(values: list[dict[str, Any]]) -> Generator[dict[str, Any], None, None]:
    yield from values


def pieces(value: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(value) + 1) for c in cuts})
    return [value[a:b] for a, b in zip([0, *points], [*points, len(value)], strict=True)]


@st.composite
def engine_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A streamed answer as an OpenAI-compatible engine sends it (text, reasoning, tool calls whose
    arguments come in pieces, the finish, then usage with cached tokens and timings), and what it says."""
    texts = draw(st.lists(text, max_size=4))
    reasoning = draw(st.lists(text, max_size=2))
    calls = draw(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), arguments), max_size=2))
    chunks = [chunk({"role": "assistant", "content": None})]
    chunks += [chunk({"reasoning_content": r}) for r in reasoning]
    chunks += [chunk({"content": t}) for t in texts]
    for index, (name, args) in enumerate(calls):
        encoded = json.dumps(args)
        first, *rest = pieces(encoded, draw(st.lists(st.integers(0, 100), max_size=3)))
        chunks.append(chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                             "function": {"name": name, "arguments": first}}]}))
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}) for piece in rest]
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    cached = draw(st.integers(0, 50))
    usage = {"prompt_tokens": 60, "completion_tokens": 9, "total_tokens": 69,
             "prompt_tokens_details": {"cached_tokens": cached}}
    timings = {"cache_n": cached, "prompt_n": 60 - cached}
    chunks += [chunk({}, finish), chunk(None, usage=usage, timings=timings)]
    said = {"text": "".join(texts), "reasoning": "".join(reasoning), "finish": finish, "usage": usage,
            "timings": timings, "calls": [(name, args) for name, args in calls]}
    return chunks, said


# --- the answer ------------------------------------------------------------------------------------------


@given(engine_streams(), st.booleans())
def test_a_stream_reads_back_as_the_engine_said_it(stream: tuple[list[dict[str, Any]], dict[str, Any]],
                                                    include_usage: bool) -> None:
    chunks, said = stream
    whole = ChatAnswer("model@role", id="chatcmpl-1", created=2)
    for delta in read_answer(objects(chunks), "llama.cpp"):
        whole.add(delta)
    assert whole.done
    completed = completion(whole)
    message = completed["choices"][0]["message"]
    assert (message["content"] or "") == said["text"]
    assert message.get("reasoning", "") == said["reasoning"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in message.get("tool_calls", [])] == [(f"call_{i}", n, a) for i, (n, a) in enumerate(said["calls"])]
    assert completed["usage"] == said["usage"]  # the engine's figures, cached tokens unchanged
    assert completed["timings"] == said["timings"]
    assert completed["choices"][0]["finish_reason"] == said["finish"]

    # The same stream relayed as chunks: the pieces a client adds up give the same calls and text.
    relay = ChatStream(ChatAnswer("model@role", id="chatcmpl-1", created=2), include_usage)
    raw = b"".join(relay.events(delta) for delta in read_answer(objects(chunks), "llama.cpp")).decode()
    events = [json.loads(e.removeprefix("data: ")) for e in raw.split("\n\n")[:-2]]
    assert raw.endswith("data: [DONE]\n\n")
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert "".join(d.get("content", "") for d in deltas) == said["text"]
    added: dict[int, dict[str, str]] = {}
    for piece in (call for d in deltas for call in d.get("tool_calls", ())):
        call = added.setdefault(piece["index"], {"name": "", "arguments": ""})
        call["name"] += piece["function"].get("name", "")
        call["arguments"] += piece["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in added.values()] == said["calls"]
    last = events[-1]
    assert last["timings"] == said["timings"]
    if include_usage:
        assert last["choices"] == [] and last["usage"] == said["usage"]
    else:
        assert all("usage" not in e for e in events)


@given(engine_streams())
def test_one_json_answer_reads_as_the_stream_does(stream: tuple[list[dict[str, Any]], dict[str, Any]]) -> None:
    _, said = stream
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
             for i, (n, a) in enumerate(said["calls"])]
    answer = {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": said["finish"], "message": {
        "role": "assistant", "content": said["text"] or None, "reasoning_content": said["reasoning"] or None,
        **({"tool_calls": calls} if calls else {})}}], "usage": said["usage"], "timings": said["timings"]}
    whole = ChatAnswer("m", id="chatcmpl-1", created=2)
    for delta in read_answer(objects([answer]), "vLLM"):
        whole.add(delta)
    completed = completion(whole)
    assert completed["usage"] == said["usage"] and completed["timings"] == said["timings"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in completed["choices"][0]["message"].get("tool_calls", [])] == said["calls"]


def test_an_answer_cut_before_its_finish_has_no_last_delta() -> None:
    cut = list(read_answer(objects([chunk({"role": "assistant"}), chunk({"content": "Hel"})]), "llama.cpp"))
    assert cut == [Delta(content="Hel")]
    # Usage without a finish is no end either; a finish without usage is (some engines send none).
    assert not any(d.done for d in read_answer(objects([chunk(None, usage={"prompt_tokens": 3})]), "x"))
    (last,) = read_answer(objects([chunk({}, "stop")]), "x")
    assert last == Delta(done=True, stop_reason="stop", cached_tokens=None)


@pytest.mark.parametrize("line", [
    {"error": {"code": 500, "message": "slot unavailable", "type": "server_error"}},
    {"error": "slot unavailable"},
    {"object": "error", "message": "slot unavailable", "type": "BadRequestError", "code": 400},
])
def test_an_error_in_the_answer_is_an_upstream_error(line: dict[str, Any]) -> None:
    with pytest.raises(UpstreamError, match=re.escape("llama.cpp: slot unavailable")):
        answer_piece(line, "llama.cpp")


def test_garbage_pieces_say_nothing_rather_than_fail() -> None:
    """Fields of the wrong type are ignored, as Ollama's are: the answer ends without a finish."""
    odd = [{"choices": "x"}, {"choices": [None, 5]}, {"choices": [{"delta": {"content": 5, "tool_calls": "no"}}]},
           {"usage": [], "timings": 3}]
    assert list(read_answer(objects(odd), "x")) == []


def test_the_engines_refusals_are_read_in_each_shape() -> None:
    engine = OpenAIServerEngine("default", EngineKind.VLLM, Transport(EngineUrl.parse("http://e:1"), "vLLM",
                                                                      timeout=1, max_json_bytes=100))
    assert engine.refusal({"object": "error", "message": "The model `x` does not exist.", "code": 404}, 404) \
        == "vLLM: The model `x` does not exist."
    assert engine.refusal({"error": {"message": "context too long", "n_ctx": 4}}, 400) == "vLLM: context too long"
    assert engine.refusal({"detail": [{"loc": ["body"], "msg": "bad"}]}, 422).startswith("vLLM: [{")
    assert engine.refusal(None, 503) == "vLLM answered 503"


def test_the_model_list_has_the_engines_models_and_the_virtual_ones_it_serves() -> None:
    engine = OpenAIServerEngine("default", EngineKind.LLAMA_CPP, Transport(EngineUrl.parse("http://e:1"),
                                                                           "llama.cpp", timeout=1, max_json_bytes=9))
    listed = {"object": "list", "data": [{"id": "smollm2", "created": 7, "owned_by": "llamacpp"}, {"no": "id"}]}
    declared = {"helper": VirtualModel("helper", "smollm2", "general-assistant"),
                "other": VirtualModel("other", "missing", "general-assistant")}
    entries = engine.model_list(listed, None, declared)  # type: ignore[arg-type]
    assert [(e.id, e.created, e.owned_by) for e in entries] == [
        ("smollm2", 7, "llamacpp"), ("helper", 7, "role-injector"), ("other", 0, "role-injector")]
    with pytest.raises(UpstreamError, match="no list 'data'"):
        engine.model_list({"models": []}, None, {})  # type: ignore[arg-type]


# --- the request -------------------------------------------------------------------------------------------


def test_params_fill_what_the_client_left_unset() -> None:
    params = {"temperature": 0.3, "num_predict": 64, "top_k": 20, "repeat_penalty": 1.1, "num_ctx": 32768,
              "num_keep": 5, "stop": ["###"], "seed": 7}
    body = with_params({"temperature": 0.9, "max_completion_tokens": 10}, params, EngineKind.VLLM)
    # The client's own values win; max_tokens is never sent beside max_completion_tokens; num_ctx and
    # num_keep are Ollama's (an engine's window is its own) and have no field here.
    assert body == {"temperature": 0.9, "max_completion_tokens": 10, "top_k": 20, "repetition_penalty": 1.1,
                    "stop": ["###"], "seed": 7}
    assert with_params({}, params, EngineKind.LLAMA_CPP)["repeat_penalty"] == 1.1
    assert with_params({}, params, EngineKind.LLAMA_CPP)["max_tokens"] == 64


def test_the_engine_is_always_asked_for_a_stream_with_usage() -> None:
    assert streamed({"stream": False, "stream_options": {"x": 1}}) == {
        "stream": True, "stream_options": {"x": 1, "include_usage": True}}
    assert streamed({"stream_options": "odd"})["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("messages", "field"), [
    (None, "messages"), ([], "messages"), ("hi", "messages"), ([5], "messages[0]"),
    ([{"content": "hi"}], "messages[0].role"), ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "text", "text": 5}]}], "messages[0].content[0].text"),
    ([{"role": "user", "content": [{"text": "no type"}]}], "messages[0].content[0].type"),
    ([{"role": "user", "content": "x"}] * 10_001, "messages"),
])
def test_malformed_messages_are_400s_naming_the_field(messages: Any, field: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        chat_messages({"messages": messages})
    assert raised.value.details["field"] == field


SMOLLM2_CONTROL = control_pattern(["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>"])
controlish = st.lists(st.sampled_from(["<|im_start|>", "<|im_end|>", "<think>", "</tool_call>", "<", "|", "[",
                                       "INST]", "a", " ", "\u200b", "<s>", ">"]), max_size=12).map("".join)


@given(controlish)
def test_text_neutralised_for_the_engine_is_what_the_worker_counts(content: str) -> None:
    """The engine gets text neutralised with its template's control strings; `inject` neutralises the
    same text again with the formats' own, which must change nothing (else the count is of other text)."""
    sent = neutralise(content, SMOLLM2_CONTROL)
    assert neutralise(sent, CONTROL_TOKEN) == sent
    assert not re.search(SMOLLM2_CONTROL, sent)


# --- choosing engines ---------------------------------------------------------------------------------------


PROFILE = """\
engines:
  local: {kind: llama.cpp, url: "http://127.0.0.1:8080"}
  gpu: {kind: vllm, url: "http://user:pw@gpu:8000/base", api_key_env: GPU_KEY}
models:
  - {match: "smollm2*", engine: local}
  - {match: "qwen2.5*", engine: gpu, context_window: 32768}
virtual_models:
  helper: {base: smollm2, role: general-assistant}
  elsewhere: {base: smollm2, role: general-assistant, engine: default}
"""


def test_the_profile_file_names_engines_per_model_and_virtual_model(tmp_path: Any) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(PROFILE)
    profiles = load_profiles(path)
    assert profiles.engine_of("smollm2") == "local"
    assert profiles.engine_of("qwen3:8b") == "default"
    assert profiles.engine_of("smollm2", profiles.virtual_models["elsewhere"]) == "default"
    assert profiles.for_model("qwen2.5-7b").window_stated and not profiles.for_model("smollm2").window_stated
    assert not profiles.for_model("qwen3:8b").window_stated  # the defaults' windows: the engine's first
    engines = configured_engines(Settings.from_env({}), profiles, {"GPU_KEY": "k3y"})
    assert [(e.name, e.kind.value) for e in engines.all()] == [
        ("default", "ollama"), ("local", "llama.cpp"), ("gpu", "vllm")]
    assert engines.serving(profiles, "smollm2", profiles.virtual_models["helper"]).name == "local"
    assert engines.ollama is engines.default
    assert list(engines.declared(engines.get("local"), profiles)) == ["helper"]
    gpu = engines.get("gpu").transport
    assert gpu.where == "vLLM at http://***@gpu:8000/base" and "k3y" not in repr(gpu)
    with pytest.raises(ConfigError, match="GPU_KEY, which is not set"):
        configured_engines(Settings.from_env({}), profiles, {})


@pytest.mark.parametrize(("text", "message"), [
    ("engines: {local: {kind: koboldcpp, url: 'http://h'}}", "kind must be one of ollama, openai, llama.cpp"),
    ("engines: {local: {kind: vllm}}", "needs 'kind' and 'url'"),
    ("engines: {local: {kind: vllm, url: 'ftp://h'}}", "must start with http"),
    ("engines: {default: {kind: vllm, url: 'http://h'}}", "which is ROLE_INJECTOR_ENGINE's"),
    ("engines: {local: {kind: vllm, url: 'http://h', api_key: s3cret}}", "unknown key"),
    ("engines: {local: {kind: vllm, url: 'http://h', api_key_env: 'not a name'}}", "api_key_env"),
    ("models: [{match: '*', engine: nowhere}]", "engine 'nowhere' is not one of the file's engines (default)"),
    ("virtual_models: {v: {base: b, role: r, engine: nowhere}}", "engine 'nowhere'"),
])
def test_a_wrong_engine_in_the_profile_file_is_named(text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=re.escape(message)):
        parse_profiles(text, "models.yaml")


@pytest.mark.parametrize(("env", "message"), [
    ({"ROLE_INJECTOR_ENGINE": "kobold"}, "ROLE_INJECTOR_ENGINE must be one of"),
    ({"ROLE_INJECTOR_ENGINE": "llama.cpp"}, "needs ROLE_INJECTOR_ENGINE_URL"),
    ({"ROLE_INJECTOR_ENGINE_URL": "http://h:8080"}, "Ollama's is ROLE_INJECTOR_OLLAMA_URL"),
])
def test_a_wrong_engine_setting_stops_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_the_default_engine_from_the_settings_keeps_its_key_out_of_sight() -> None:
    settings = Settings.from_env({"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": "http://h:8080/",
                                  "ROLE_INJECTOR_ENGINE_API_KEY": "sk-secret"})
    assert "sk-secret" not in repr(settings) and "h:8080" not in repr(settings)
    engines = configured_engines(settings, Profiles(load_profiles().models, {}))
    assert engines.default.kind is EngineKind.LLAMA_CPP and engines.ollama is None
    assert engines.default.where == "llama.cpp at http://h:8080"
