"""An engine's window (`engine_window`): llama.cpp's from a real llama-server (one slot and two), the
others' from answers shaped as their code and docs show them (docs/engines.md cites each), and the cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from role_injector.engine_window import (
    EngineWindow,
    FactsCache,
    llama_cpp_window,
    lm_studio_window,
    max_model_len_window,
)
from role_injector.errors import UpstreamError
from tests.engine import SMOLLM2_WINDOW, LlamaServer, run_llama_server


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    with run_llama_server(tmp_path_factory.mktemp("llama-np2"), slots=2) as server:
        yield server


def props(server: LlamaServer) -> Any:
    return requests.get(server.url + "/props", timeout=30).json()


def test_llama_cpp_states_its_window_in_props(llama_server: LlamaServer) -> None:
    assert llama_cpp_window(props(llama_server)) == EngineWindow(
        SMOLLM2_WINDOW, "llama.cpp /props default_generation_settings.n_ctx")


def test_with_two_slots_a_request_gets_half_the_context_and_props_says_so(two_slots: LlamaServer) -> None:
    window = llama_cpp_window(props(two_slots))
    assert window.tokens == SMOLLM2_WINDOW // 2
    # A prompt over one slot's context is refused before it is evaluated, naming that same figure.
    text = "word " * (window.tokens + 100)
    answer = requests.post(two_slots.url + "/v1/chat/completions", timeout=120,
                           json={"messages": [{"role": "user", "content": text}], "max_tokens": 1})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "exceed_context_size_error" and error["n_ctx"] == window.tokens


@pytest.mark.parametrize("answer", [None, [], {}, {"default_generation_settings": {}},
                                    {"default_generation_settings": {"n_ctx": 0}},
                                    {"default_generation_settings": {"n_ctx": "8192"}},
                                    {"default_generation_settings": {"n_ctx": True}}])
def test_props_without_a_window_is_not_the_api(answer: Any) -> None:
    with pytest.raises(UpstreamError, match="n_ctx"):
        llama_cpp_window(answer)


# vLLM's and SGLang's ModelCard (vllm entrypoints/openai protocol.py, sglang srt/entrypoints/openai/protocol.py).
VLLM_MODELS = {"object": "list", "data": [
    {"id": "Qwen/Qwen2.5-7B-Instruct", "object": "model", "created": 1, "owned_by": "vllm",
     "root": "Qwen/Qwen2.5-7B-Instruct", "parent": None, "max_model_len": 32768, "permission": []},
    {"id": "my-lora", "object": "model", "owned_by": "vllm", "root": "/adapters/my-lora",
     "parent": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 32768},
    {"id": "old-build", "object": "model", "owned_by": "sglang"},
]}


def test_vllm_and_sglang_state_max_model_len_per_model() -> None:
    assert max_model_len_window(VLLM_MODELS, "Qwen/Qwen2.5-7B-Instruct") == EngineWindow(
        32768, "/v1/models max_model_len")
    assert max_model_len_window(VLLM_MODELS, "my-lora") == EngineWindow(32768, "/v1/models max_model_len")
    assert max_model_len_window(VLLM_MODELS, "old-build") is None
    assert max_model_len_window(VLLM_MODELS, "not-served") is None


@pytest.mark.parametrize("answer", [None, {"data": "x"}, {"object": "list"},
                                    {"data": [{"id": "m", "max_model_len": -1}]},
                                    {"data": [{"id": "m", "max_model_len": 1.5}]}])
def test_models_that_are_not_the_api_are_an_error(answer: Any) -> None:
    with pytest.raises(UpstreamError):
        max_model_len_window(answer, "m")


# LM Studio's GET /api/v1/models (lmstudio-ai/docs 1_developer/2_rest/list.md) and GET /api/v0/models.
LM_STUDIO_V1 = {"models": [
    {"type": "llm", "key": "gemma-3-270m-it-qat", "loaded_instances": [
        {"id": "gemma-3-270m-it-qat", "config": {"context_length": 4096}},
        {"id": "gemma-3-270m-it-qat:2", "config": {"context_length": 8192}}],
     "max_context_length": 32768, "format": "gguf"},
    {"type": "llm", "key": "qwen3-8b", "loaded_instances": [], "max_context_length": 40960},
]}
LM_STUDIO_V0 = {"object": "list", "data": [
    {"id": "meta-llama-3.1-8b-instruct", "type": "llm", "state": "loaded", "max_context_length": 131072,
     "loaded_context_length": 8192},
    {"id": "qwen2-vl-7b-instruct", "type": "vlm", "state": "not-loaded", "max_context_length": 32768},
]}


def test_lm_studio_states_the_context_of_a_loaded_model_only() -> None:
    assert lm_studio_window(LM_STUDIO_V1, "gemma-3-270m-it-qat") == EngineWindow(
        4096, "LM Studio /api/v1/models loaded_instances[].config.context_length")
    assert lm_studio_window(LM_STUDIO_V1, "qwen3-8b") is None  # not loaded: not its max_context_length
    assert lm_studio_window(LM_STUDIO_V0, "meta-llama-3.1-8b-instruct") == EngineWindow(
        8192, "LM Studio /api/v0/models loaded_context_length")
    assert lm_studio_window(LM_STUDIO_V0, "qwen2-vl-7b-instruct") is None
    with pytest.raises(UpstreamError):
        lm_studio_window({"models": [{"key": "m", "loaded_instances": [{"config": {"context_length": "4k"}}]}]}, "m")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_asks_once_per_ttl_and_forgets_on_request() -> None:
    clock = Clock()
    cache = FactsCache(ttl=60, max_entries=2, clock=clock)
    asked: list[str] = []

    def read(model: str, tokens: int | None) -> Any:
        def ask() -> EngineWindow | None:
            asked.append(model)
            return None if tokens is None else EngineWindow(tokens, "test")
        return ask

    assert cache.get("http://e", "a", read("a", 4096)) == EngineWindow(4096, "test")
    assert cache.get("http://e", "a", read("a", 1)) == EngineWindow(4096, "test")
    assert cache.get("http://e", "b", read("b", None)) is None
    assert cache.get("http://e", "b", read("b", 1)) is None  # "not stated" is remembered too
    assert asked == ["a", "b"]
    clock.now = 61
    assert cache.get("http://e", "a", read("a", 2048)).tokens == 2048  # type: ignore[union-attr]
    cache.forget("http://e", "a")
    assert cache.get("http://e", "a", read("a", 1024)).tokens == 1024  # type: ignore[union-attr]
    cache.forget("http://e")
    cache.get("http://e", "c", read("c", 1))
    cache.get("http://other", "c", read("c", 1))
    cache.get("http://e", "d", read("d", 1))  # beyond two entries the least recently used goes
    cache.get("http://other", "c", read("c", 1))
    cache.get("http://e", "c", read("e/c", 1))
    assert asked == ["a", "b", "a", "a", "c", "c", "d", "e/c"]


def test_a_failed_read_is_not_cached() -> None:
    cache = FactsCache()

    def fail() -> EngineWindow | None:
        raise UpstreamError("garbage")

    with pytest.raises(UpstreamError):
        cache.get("http://e", "a", fail)
    assert cache.get("http://e", "a", lambda: EngineWindow(8, "test")) == EngineWindow(8, "test")
