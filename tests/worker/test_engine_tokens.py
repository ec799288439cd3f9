"""Counting with an engine's own vocabulary (`engine_tokens.EngineTokenizer`) against a real llama-server
with SmolLM2-135M: counts equal the engine's, fits stay within budget and exact, each text is sent
once, bounds and faults are clear errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from role_injector.engine_tokens import EngineTokenizer, PostJson, TokenizeApi
from role_injector.errors import InvalidRequest, UpstreamError, UpstreamTimeout, VocabularyError
from role_injector.fitting import BudgetTooSmall, FitCache, fit_budget
from role_injector.formats import Message, neutralise, render_chatml
from role_injector.injection import adds_up, count_messages
from role_injector.relevance import Query
from tests.engine import LlamaServer, post_json
from tests.ollama_standin import OllamaStandin
from tests.worker.test_fitting import make_role, role_texts
from tests.worker.test_relevance import queries

# The engine is real and shared by the session: few examples, no deadline (2 busy cores).
ENGINE_SETTINGS = settings(max_examples=25, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
contents = st.text(max_size=120).map(neutralise)


def smollm2(server: LlamaServer, cache: FitCache | None = None, post: PostJson | None = None,
            **options: Any) -> EngineTokenizer:
    return EngineTokenizer(post or post_json(server.url), TokenizeApi.LLAMA_CPP, "smollm2",
                           f"llama.cpp:{server.url}/smollm2", FitCache() if cache is None else cache, **options)


def engine_tokens(server: LlamaServer, text: str) -> list[int]:
    """What the engine says, asked directly."""
    answer = requests.post(server.url + "/tokenize", json={"content": text}, timeout=60)
    answer.raise_for_status()
    return answer.json()["tokens"]


def engine_prompt_tokens(server: LlamaServer, messages: list[dict[str, str]]) -> int:
    """The prompt tokens of a chat request as the engine counts them (its template, its tokenizer)."""
    answer = requests.post(server.url + "/v1/chat/completions/input_tokens", json={"messages": messages},
                           timeout=60)
    answer.raise_for_status()
    return answer.json()["input_tokens"]


class CountingPost:
    """A `PostJson` that counts what it sends."""

    def __init__(self, post: PostJson) -> None:
        self.post = post
        self.sent: list[Mapping[str, Any]] = []

    def __call__(self, path: str, body: Mapping[str, Any]) -> Any:
        self.sent.append(body)
        return self.post(path, body)


@ENGINE_SETTINGS
@given(text=st.text(max_size=300))
@example(text="\x06")  # a control character llama.cpp makes no token of
def test_a_count_is_the_number_of_tokens_the_engine_gives(llama_server: LlamaServer, text: str) -> None:
    assert smollm2(llama_server).count(text) == len(engine_tokens(llama_server, text))


@ENGINE_SETTINGS
@given(system=contents, turns=st.lists(st.tuples(st.sampled_from(["user", "assistant"]), contents), max_size=3),
       last=contents)
@example(system="", turns=[], last="\x06")
def test_a_prompt_counts_as_the_engine_counts_the_same_chat(llama_server: LlamaServer, system: str,
                                                            turns: list[tuple[str, str]], last: str) -> None:
    """A chat that ends with the user's turn (llama.cpp continues a final assistant turn instead)."""
    tokenizer = smollm2(llama_server)
    messages = [Message(role, content) for role, content in turns] + [Message("user", last)]  # type: ignore[arg-type]
    engine = engine_prompt_tokens(llama_server, [{"role": "system", "content": system}]
                                  + [{"role": m.role, "content": m.content} for m in messages])
    assert tokenizer.count_prompt(render_chatml(system, messages)) == engine
    # ChatML's special tokens frame every content, so the worker may add counts up instead of encoding
    # the prompt (injection.adds_up): true of SmolLM2's vocabulary under llama.cpp too.
    assert adds_up("chatml", tokenizer)
    if not system[:1].isspace() and not any(m.content[:1].isspace() for m in messages):
        assert count_messages("chatml", messages, tokenizer, FitCache()) + tokenizer.count(system) == engine


def test_control_tokens_count_as_the_engine_reads_them(llama_server: LlamaServer) -> None:
    tokenizer = smollm2(llama_server)
    assert tokenizer.is_special("<|im_start|>") and tokenizer.is_special("<|im_end|>")
    assert not tokenizer.is_special("Hello") and not tokenizer.is_special("<|no_such_token|>")
    assert tokenizer.count("<|im_end|>") == 1  # as in a prompt, where the engine parses it
    assert tokenizer.count(neutralise("<|im_end|>")) > 1


def test_the_heading_identity_of_relevance_selection_does_not_hold_for_smollm2(llama_server: LlamaServer) -> None:
    """A trailing blank line is one token ("\\n\\n") but two ("\\n", "\\n") before a '#': SmolLM2's
    split pattern has no `\\s+` after `\\s+(?!\\S)`, so relevance fits must verify by encoding."""
    tokenizer = smollm2(llama_server)
    assert tokenizer.count("word\n\n") + tokenizer.count("# Title") == tokenizer.count("word\n\n# Title") - 1
    assert not tokenizer.heading_joins_add_up


@ENGINE_SETTINGS
@given(text=role_texts(), budget=st.integers(1, 300), question=st.none() | queries)
def test_a_role_fitted_with_the_engines_counts_is_within_budget_and_exact(
    llama_server: LlamaServer, text: str, budget: int, question: str | None
) -> None:
    role = make_role(text)
    tokenizer = smollm2(llama_server)
    query = None if question is None else Query.from_text(question)
    try:
        fit = fit_budget(role, {}, budget, tokenizer, FitCache(), query)
    except BudgetTooSmall:
        required = "\n\n".join(s.text for s in role.sections if s.required)
        assert len(engine_tokens(llama_server, required)) > budget
        return
    assert fit.tokens == len(engine_tokens(llama_server, fit.system)) <= budget
    assert {s.label for s in role.sections if s.required} <= set(fit.kept)
    assert "\n\n".join(role.sections[i].text[: fit.kept_chars[i]] for i in fit.layout) == fit.system


def test_each_distinct_text_is_sent_once(llama_server: LlamaServer) -> None:
    cache = FitCache()
    post = CountingPost(post_json(llama_server.url))
    tokenizer = smollm2(llama_server, cache, post)
    assert tokenizer.count("Hello, world!") == tokenizer.count("Hello, world!") == 4
    tokenizer.count_prompt("<|im_start|>user\nHi<|im_end|>\n")
    tokenizer.count_prompt("<|im_start|>user\nHi<|im_end|>\n")
    assert len(post.sent) == 3  # the text, the prompt, and once what the engine adds around any text
    # Another tokenizer of the same engine and model (a new request) finds the counts in the cache.
    again = smollm2(llama_server, cache, post)
    assert again.count("Hello, world!") == 4 and len(post.sent) == 3
    # A role's sections are measured once per role version: a second budget sends only the fitted text.
    role = make_role("## A\n" + "First part. " * 40 + "\n\n## B\n" + "Second part. " * 40 + "\n")
    fit_budget(role, {}, 100, tokenizer, cache)
    sent = len(post.sent)
    fit_budget(role, {}, 150, tokenizer, cache)
    new = post.sent[sent:]
    assert new and not [b for b in new if not b["with_pieces"] and b["content"] in {s.text for s in role.sections}]


def test_a_text_over_the_limit_is_refused_before_it_is_sent(llama_server: LlamaServer) -> None:
    post = CountingPost(post_json(llama_server.url))
    tokenizer = smollm2(llama_server, post=post, max_text_bytes=1000)
    assert tokenizer.count("é" * 500) == len(engine_tokens(llama_server, "é" * 500))  # 1000 bytes: counted
    with pytest.raises(InvalidRequest, match="1002 bytes") as refused:
        tokenizer.count("é" * 501)
    assert refused.value.details == {"bytes": 1002, "limit": 1000}
    assert len(post.sent) == 1


def test_a_mebibyte_of_blanks_is_counted_by_the_engine(llama_server: LlamaServer) -> None:
    """llama.cpp tokenizes a 1 MiB blank run (one piece of its split pattern) in about a second here:
    within the default bound, counted like any text."""
    blanks = " " * (1 << 20)
    assert smollm2(llama_server).count(blanks) == len(engine_tokens(llama_server, blanks))


def test_token_boundaries_are_the_bytes_of_the_engines_pieces(llama_server: LlamaServer) -> None:
    tokenizer = smollm2(llama_server)
    text = "Héllo 😀 world\n\n# Title"
    boundaries = tokenizer.token_boundaries(text)
    assert boundaries[0] == 0 and boundaries[-1] == len(text.encode())
    assert len(boundaries) == tokenizer.count(text) + 1
    assert list(boundaries) == sorted(boundaries)


def test_an_engine_without_tokenize_is_a_clear_error(standin: OllamaStandin) -> None:
    tokenizer = EngineTokenizer(post_json(standin.url), TokenizeApi.LLAMA_CPP, "m", "ollama:m", FitCache())
    with pytest.raises(VocabularyError, match="ollama:m cannot tokenize") as error:
        tokenizer.count("Hello")
    assert error.value.details["status"] == 404


def test_another_engines_api_is_not_taken_for_a_count(llama_server: LlamaServer) -> None:
    """vLLM's request sent to llama.cpp: it reads no `content` and answers no tokens."""
    tokenizer = EngineTokenizer(post_json(llama_server.url), TokenizeApi.VLLM, "smollm2", "vllm:x", FitCache())
    with pytest.raises(UpstreamError, match="no tokens for a text of 5 characters"):
        tokenizer.count("Hello")


@pytest.mark.parametrize("answer", [
    [1, 2], {"tokens": "1 2"}, {"tokens": [1, "2"]}, {"tokens": [1, -2]}, {"tokens": [True]}, {"token": [1]},
    {"tokens": [1, 2], "count": 3},
])
def test_an_answer_that_is_not_the_tokenize_api_is_a_clear_error(standin: OllamaStandin, answer: Any) -> None:
    standin.clear()
    standin.set_fault("/tokenize", status=200, body=answer)
    tokenizer = EngineTokenizer(post_json(standin.url), TokenizeApi.VLLM, "m", "vllm:m", FitCache())
    with pytest.raises(UpstreamError, match="vllm:m answered /tokenize"):
        tokenizer.count("Hello")


def test_a_silent_engine_is_a_timeout(standin: OllamaStandin) -> None:
    standin.clear()
    standin.set_fault("/tokenize", delay=3)
    tokenizer = EngineTokenizer(post_json(standin.url, timeout=0.3), TokenizeApi.LLAMA_CPP, "m", "l:m", FitCache())
    with pytest.raises(UpstreamTimeout):
        tokenizer.count("Hello")
    assert len(tokenizer.cache) == 0  # nothing is remembered in place of a count
