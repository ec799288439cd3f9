"""Routing keys (engines/routing.py) and where they go: one key per conversation, the same on every turn
and in every process, from the client's session id or the first user message, never their text; the
engine's routing headers, validated where they are configured; on every chat request of both engines
and of the Ollama proxy's completions (`Engine.call`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.engines.configured import configured_engines
from role_injector.engines.engine import chat_key
from role_injector.engines.kinds import EngineKind
from role_injector.engines.ollama import OllamaEngine, completion_call
from role_injector.engines.routing import (
    DEFAULT_ROUTING_HEADERS,
    KEY_HEX_DIGITS,
    client_session,
    opening,
    routing_headers,
    routing_key,
)
from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.errors import ConfigError, ProfileError
from role_injector.fitting import FitCache
from role_injector.injection import VirtualRequest
from role_injector.openai_compat import ChatRequest, parse_chat_request
from role_injector.profiles import VirtualModel, load_profiles, parse_profiles
from role_injector.settings import Settings
from role_injector.store import RoleStore
from tests.worker.conftest import RoleWriter

KEY = re.compile(rf"[0-9a-f]{{{KEY_HEX_DIGITS}}}")
any_text = st.text(max_size=60)  # lone surrogates too: a client's JSON may carry them escaped
ROLE = "---\ndescription: Ships\n---\nYou talk about ships.\n\n## Rules {required}\nAnswer in one line.\n"


def ollama_engine(headers: tuple[str, ...] = DEFAULT_ROUTING_HEADERS) -> OllamaEngine:
    transport = Transport(EngineUrl.parse("http://127.0.0.1:9"), "Ollama", timeout=1, max_json_bytes=1 << 20)
    return OllamaEngine("default", transport, headers)


def chat(messages: list[dict[str, Any]], model: str = "qwen3:8b", session: str | None = None,
         **extra: Any) -> ChatRequest:
    asked = parse_chat_request({"model": model, "messages": messages, **extra})
    return ChatRequest(asked.model, asked.stream, asked.include_usage, asked.body, session)


FIRST = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where do ships go?"}]
LATER = [*FIRST, {"role": "assistant", "content": "To sea."}, {"role": "user", "content": "And then?"}]


# --- the key --------------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(any_text, st.none() | any_text, any_text)
def test_a_key_is_32_hex_digits_the_same_for_the_same_conversation(model: str, session: str | None,
                                                                   first: str) -> None:
    key = routing_key(model, session, first)
    assert KEY.fullmatch(key)
    assert routing_key(model, session, first) == key


@given(st.tuples(any_text, st.none() | any_text.filter(bool), any_text),
       st.tuples(any_text, st.none() | any_text.filter(bool), any_text))
def test_different_conversations_get_different_keys(one: tuple[str, str | None, str],
                                                    other: tuple[str, str | None, str]) -> None:
    def used(model: str, session: str | None, first: str) -> tuple[str, str, str]:
        return (model, "session", session) if session else (model, "opening", first)  # what the key is made of

    if used(*one) != used(*other):
        assert routing_key(*one) != routing_key(*other)


def test_the_key_is_pinned() -> None:
    """Replicas of different releases must agree: a change of the recipe is a choice, made here."""
    assert routing_key("support", None, "Where do ships go?") == "61d2e7f0464870f79bbb596e9092adcb"
    assert routing_key("support", "chat-42", "ignored") == routing_key("support", "chat-42", "")
    assert routing_key("support", "chat-42", "") != routing_key("other", "chat-42", "")


def test_the_key_does_not_depend_on_the_processes_hash_seed() -> None:
    code = "from role_injector.engines.routing import routing_key; print(routing_key('m', None, 'hi ☃'))"
    keys = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2", "3")}
    assert keys == {routing_key("m", None, "hi ☃")}


@given(st.text(min_size=8, max_size=60))
def test_no_text_of_the_conversation_is_in_its_key(secret: str) -> None:
    for key in (routing_key("m", secret, ""), routing_key("m", None, secret)):
        assert secret not in key and secret.lower() not in key


def test_the_opening_is_the_first_user_message_in_either_shape() -> None:
    assert opening(LATER) == "Where do ships go?"
    parts = [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:,"}},
             {"type": "text", "text": "here"}]
    assert opening([{"role": "user", "content": parts}]) == "Look\nhere"
    assert opening([{"role": "user", "content": "Look", "images": ["aGk="]}]) == "Look"  # Ollama's
    assert opening([{"role": "system", "content": "x"}]) == opening(None) == opening("x") == ""


# --- the client's own session ------------------------------------------------------------------------


def test_the_clients_session_comes_first_then_its_fields_then_the_opening() -> None:
    assert chat_key(chat(FIRST)) == chat_key(chat(LATER)) == routing_key("qwen3:8b", None, "Where do ships go?")
    assert chat_key(chat(FIRST, session="s1")) == chat_key(chat(LATER, session="s1")) \
        == routing_key("qwen3:8b", "s1", "")
    assert chat_key(chat(FIRST, user="ann")) == routing_key("qwen3:8b", "ann", "")
    assert chat_key(chat(FIRST, user="ann", prompt_cache_key="c9")) == routing_key("qwen3:8b", "c9", "")
    assert chat_key(chat(FIRST, session="s1", user="ann")) == routing_key("qwen3:8b", "s1", "")
    assert chat_key(chat(FIRST, user=5)) == chat_key(chat(FIRST, user=" ")) == chat_key(chat(FIRST))


def test_a_session_header_is_found_without_case_in_order() -> None:
    names = ("X-Session-ID", "X-SMG-Routing-Key", "X-Custom")
    assert client_session({"x-smg-routing-key": "b", "X-SESSION-ID": " a "}, names) == "a"
    assert client_session({"X-Session-ID": "  ", "x-custom": "c"}, names) == "c"
    assert client_session({"X-User-ID": "u"}, names) is None


# --- where it goes --------------------------------------------------------------------------------------


def test_every_routing_header_carries_the_key_on_the_openai_route() -> None:
    call = ollama_engine().chat_call(chat(LATER), None, load_profiles(), FitCache())
    assert call.routing_key == chat_key(chat(FIRST))
    assert call.headers == dict.fromkeys(DEFAULT_ROUTING_HEADERS, call.routing_key)
    assert ollama_engine(()).chat_call(chat(LATER), None, load_profiles(), FitCache()).headers == {}


def test_the_ollama_proxy_keys_a_chat_by_its_first_user_message_and_a_generate_by_its_prompt() -> None:
    engine = ollama_engine(("X-Session-ID",))
    body = {"model": "qwen3:8b", "messages": LATER}
    raw = json.dumps(body).encode()
    call = completion_call(engine, "/api/chat", raw, body, None, None)
    assert call.body == raw  # a plain model's bytes, untouched
    # The same conversation on both routes goes to the same engine.
    assert call.headers == {"X-Session-ID": chat_key(chat(LATER))}
    generate = {"model": "qwen3:8b", "prompt": "Where do ships go?"}
    assert completion_call(engine, "/api/generate", b"{}", generate, None, None).routing_key == chat_key(chat(FIRST))
    assert completion_call(engine, "/api/generate", b"{}", generate, None, "s1").routing_key \
        == routing_key("qwen3:8b", "s1", "")


def test_a_virtual_models_key_stays_when_its_role_changes(write_role: RoleWriter, roles_dir: Path) -> None:
    """A reload must not move a conversation to another engine: the prompt changes, the key does not
    (two replicas, one on each version, for the seconds a reload takes)."""
    virtual = VirtualModel("ships", "qwen3:8b", "ships")
    body = {"model": "ships", "messages": LATER}
    calls = []
    for text in (ROLE, ROLE.replace("one line", "two lines")):
        write_role("ships", text)
        request = VirtualRequest(virtual, RoleStore(str(roles_dir)).current(), load_profiles(), FitCache())
        calls.append(completion_call(ollama_engine(), "/api/chat", b"", body, request, None))
    assert calls[0].body != calls[1].body
    assert calls[0].routing_key == calls[1].routing_key == routing_key("ships", None, "Where do ships go?")


# --- the headers a setting names --------------------------------------------------------------------------


def test_routing_headers_are_read_from_a_list_or_a_string() -> None:
    assert routing_headers(["X-Session-ID", "x-session-id", "X-Tenant"], "s") == ("X-Session-ID", "X-Tenant")
    assert routing_headers("X-A, X-B  X-C", "s") == ("X-A", "X-B", "X-C")
    assert routing_headers("none", "s") == routing_headers([], "s") == ()


@pytest.mark.parametrize(("value", "said"), [
    (["Authorization"], "not a header a routing key may take"),
    (["content-length"], "not a header a routing key may take"),
    (["X Session"], "is not a header name"),
    (["X-A\r\nX-B: 1"], "is not a header name"),
    ([5], "is not a header name"),
    (["x" * 65], "is not a header name"),
    ([f"X-{i}" for i in range(9)], "more than 8"),
    ({"X-A": 1}, "must be a list"),
])
def test_wrong_routing_headers_are_refused(value: Any, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        routing_headers(value, "s")


def test_each_engine_has_the_routing_headers_its_setting_names() -> None:
    settings_ = Settings.from_env({"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": "http://e:1",
                                   "ROLE_INJECTOR_ENGINE_ROUTING_HEADERS": "X-Session-ID,X-Tenant"})
    profiles = load_profiles()
    file = parse_profiles("engines:\n  a: {kind: vllm, url: 'http://a:1', routing_headers: [x-smg-routing-key]}\n"
                          "  b: {kind: ollama, url: 'http://b:1', routing_headers: []}\n"
                          "  c: {kind: sglang, url: 'http://c:1'}\n", "models.yaml")
    engines = configured_engines(settings_, type(profiles)(profiles.models, {}, file.engines), env={})
    assert engines.default.kind is EngineKind.LLAMA_CPP
    assert engines.default.routing_headers == ("X-Session-ID", "X-Tenant")
    assert [engines.named[n].routing_headers for n in "abc"] == [("x-smg-routing-key",), (), DEFAULT_ROUTING_HEADERS]
    assert Settings.from_env({}).engine_routing_headers == DEFAULT_ROUTING_HEADERS
    assert Settings.from_env({"ROLE_INJECTOR_ENGINE_ROUTING_HEADERS": "none"}).engine_routing_headers == ()
    with pytest.raises(ConfigError, match="ROLE_INJECTOR_ENGINE_ROUTING_HEADERS: 'Cookie' is not a header"):
        Settings.from_env({"ROLE_INJECTOR_ENGINE_ROUTING_HEADERS": "Cookie"})
    with pytest.raises(ProfileError, match="engine 'a': routing_headers: 'Host' is not a header"):
        parse_profiles("engines:\n  a: {kind: vllm, url: 'http://a:1', routing_headers: [Host]}\n", "m.yaml")
