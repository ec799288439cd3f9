"""An OpenAI-compatible server as an engine: llama.cpp's `llama-server`, vLLM, SGLang, LM Studio,
text-generation-webui, or any server of OpenAI's Chat Completions (docs/engines.md has each one's API
and the source of each fact).

- The request: the client's own Chat Completions body goes to the engine's `/v1/chat/completions`
  (tools, JSON mode, images, every field the engine takes pass through). For a virtual model the
  client's system and developer messages give way to the fitted role, the context policy's dropped
  messages are left out, the rest and the tool definitions go through `engines.messages`' rule with
  the engine's own control strings (text neutralised, a name with a control token refused), and the
  role's and the virtual model's `params` fill the fields the client left unset (`PARAMS`; the others,
  such as `num_ctx`, are Ollama's and have no field here). Always streamed, with usage.
- The model's facts (`ModelFacts`, asked once a minute per model): its window (llama.cpp `/props`,
  vLLM's and SGLang's `/v1/models`, LM Studio's loaded context) where the profile file states none,
  the control strings of its chat template (llama.cpp `/props`), and whether the template frames
  a conversation as the profile's chat format does (llama.cpp `/apply-template`).
- Counts: a profile whose vocabulary is the model's (`exact`) counts with it; else an engine with a
  tokenize endpoint counts with the engine's own vocabulary (`EngineTokenizer`, exact, in the
  process's FitCache); else the profile's vocabulary with its margin, an estimate.
- The answer: SSE chunks (text, reasoning, tool calls in pieces, log probabilities) or one JSON
  answer, read as `Delta`s; the last carries the engine's usage with `prompt_tokens_details.cached_tokens`
  and llama.cpp's `timings`, passed on unchanged.

No HTTP here beyond what `Transport` does; errors are `role_injector.errors` classes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from role_injector.engine_tokens import EngineTokenizer, TokenizeApi
from role_injector.engine_window import (
    EngineWindow,
    FactsCache,
    llama_cpp_window,
    lm_studio_window,
    max_model_len_window,
)
from role_injector.engines.answer import Delta, ToolCall, count, mapping
from role_injector.engines.engine import ChatCall, Engine, chat_key
from role_injector.engines.kinds import EngineKind
from role_injector.engines.lines import read_lines
from role_injector.engines.messages import neutralise_message, neutralise_tools
from role_injector.engines.routing import DEFAULT_ROUTING_HEADERS, routing_key
from role_injector.engines.transport import Answer, Transport, encode_json
from role_injector.errors import BudgetTooSmall, ContextOverflow, UpstreamError, UpstreamRefused, VariableError
from role_injector.fitting import FitCache
from role_injector.formats import CONTROL_TOKEN, RENDERERS, Message, neutralise
from role_injector.injection import Counting, Injection, InjectRequest, VirtualRequest, inject
from role_injector.openai_compat import OWNER, ChatRequest, ModelEntry, invalid, json_object
from role_injector.options import MAX_MESSAGES, RoleOptions
from role_injector.profiles import ModelProfile, Profiles, VirtualModel
from role_injector.store import RoleSet
from role_injector.template_tokens import control_pattern, template_control_tokens
from role_injector.tokens import load_tokenizer

CHAT_PATH = "/v1/chat/completions"
# A role's and a virtual model's params are Ollama's option names; these have a Chat Completions field
# (top_k and min_p are llama.cpp's, vLLM's and SGLang's own). A field's OpenAI name is taken as it is.
PARAMS = {"temperature": "temperature", "top_p": "top_p", "num_predict": "max_tokens", "stop": "stop",
          "seed": "seed", "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty",
          "top_k": "top_k", "min_p": "min_p", "max_tokens": "max_tokens",
          "max_completion_tokens": "max_completion_tokens"}
REPEAT_PENALTY = {EngineKind.LLAMA_CPP: "repeat_penalty", EngineKind.VLLM: "repetition_penalty",
                  EngineKind.SGLANG: "repetition_penalty"}
ANSWER_LIMITS = ("max_tokens", "max_completion_tokens")  # either caps the answer: never both
GIVING_WAY = frozenset({"system", "developer"})  # the messages the role replaces
# A conversation each chat format frames differently: compared with the engine's own rendering.
PROBE_SYSTEM = "S"
PROBE_TURNS = (Message("user", "U"), Message("assistant", "A"), Message("user", "V"))


@dataclass(frozen=True)
class ServerApi:
    """What a kind of OpenAI-compatible server answers besides chat."""

    label: str
    tokenize: TokenizeApi | None  # exact counts
    facts: str | None  # GET: where its window (llama.cpp: and template) is


SERVERS: dict[EngineKind, ServerApi] = {
    EngineKind.LLAMA_CPP: ServerApi("llama.cpp", TokenizeApi.LLAMA_CPP, "/props"),
    EngineKind.VLLM: ServerApi("vLLM", TokenizeApi.VLLM, "/v1/models"),
    EngineKind.SGLANG: ServerApi("SGLang", TokenizeApi.VLLM, "/v1/models"),
    EngineKind.LM_STUDIO: ServerApi("LM Studio", None, "/api/v1/models"),
    EngineKind.TEXT_GENERATION_WEBUI: ServerApi("text-generation-webui", None, None),
    EngineKind.OPENAI: ServerApi("the OpenAI-compatible engine", None, None),
}
LM_STUDIO_V0 = "/api/v0/models"  # LM Studio before 0.4


@dataclass(frozen=True)
class ModelFacts:
    """What the engine says about one model."""

    window: EngineWindow | None  # None: it does not say (the profile's context_window applies)
    control: re.Pattern[str]  # its chat template's control strings and the chat formats' own
    model_id: str  # names the vocabulary in counts' keys (llama.cpp: the loaded file)
    probe: str | None  # its template's rendering of PROBE_TURNS (llama.cpp), None where unknown


# --- the request ---------------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    """The text of a message's content (text parts joined by newlines), for counting."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise invalid(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = json_object(part, f"{where}.content[{j}]").get("type")
        if not isinstance(kind, str):
            raise invalid(f"'{where}.content[{j}].type' must be a string", f"{where}.content[{j}].type")
        text = part.get(kind) if kind in ("text", "refusal") else None
        if kind in ("text", "refusal") and not isinstance(text, str):
            raise invalid(f"'{where}.content[{j}].{kind}' must be a string", f"{where}.content[{j}].{kind}")
        if isinstance(text, str):
            texts.append(text)
    return "\n".join(texts)


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's messages, each an object with a string role and readable text."""
    value = body.get("messages")
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list of messages", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"'messages' has more than {MAX_MESSAGES} entries", "messages")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(json_object(message, where).get("role"), str):
            raise invalid(f"'{where}.role' must be a string", f"{where}.role")
        _text(message.get("content"), where)
    return value


def counted_turn(message: Mapping[str, Any]) -> Message:
    """A message as the budget counts it: an assistant's text with its tool calls as JSON, everything
    else (user turns, tool results) as user text."""
    text = _text(message.get("content"), "message")
    if message["role"] == "assistant":
        if message.get("tool_calls"):
            text += "\n" + json.dumps(message["tool_calls"], ensure_ascii=False)
        return Message("assistant", text)
    return Message("user", text)


def with_params(body: dict[str, Any], params: Mapping[str, Any], kind: EngineKind) -> dict[str, Any]:
    """`body` with the params it leaves unset as Chat Completions fields (see `PARAMS`)."""
    fields = {**PARAMS, "repeat_penalty": REPEAT_PENALTY.get(kind, "repeat_penalty")}
    for name, value in params.items():
        field_name = fields.get(name)
        if field_name is None or field_name in body:
            continue
        if field_name in ANSWER_LIMITS and any(limit in body for limit in ANSWER_LIMITS):
            continue
        body[field_name] = value
    return body


def streamed(body: dict[str, Any]) -> dict[str, Any]:
    """Always a stream with usage: a long answer is never one silent wait, and the engine's counts
    (cached tokens) arrive at its end whatever the client asked."""
    options = body.get("stream_options")
    return {**body, "stream": True,
            "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}}


# --- the answer ----------------------------------------------------------------------------------------


def _error_message(value: Any) -> str | None:
    """The message of an error object in OpenAI's shapes: {"error": {"message"}}, {"error": "..."},
    vLLM's {"object": "error", "message"}, FastAPI's {"detail": ...}."""
    if not isinstance(value, dict):
        return None
    error = value.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    if value.get("object") == "error" and isinstance(value.get("message"), str):
        return str(value["message"])
    detail = value.get("detail")
    if detail is not None:
        return detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)[:300]
    return None


@dataclass(frozen=True)
class Piece:
    """One object of the engine's answer: what it adds, and what it says about the end."""

    delta: Delta
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None
    timings: Mapping[str, Any] | None = None


def _tool_calls(value: Any) -> tuple[ToolCall, ...]:
    calls = []
    for call in value if isinstance(value, list) else ():
        if not isinstance(call, dict):
            continue
        function = mapping(call.get("function"))
        index = call.get("index")
        calls.append(ToolCall(name=str(function.get("name") or ""), arguments=function.get("arguments"),
                              id=call["id"] if isinstance(call.get("id"), str) and call["id"] else None,
                              index=index if isinstance(index, int) and not isinstance(index, bool) else None))
    return tuple(calls)


def answer_piece(value: Mapping[str, Any], label: str) -> Piece:
    """A `chat.completion.chunk` of the stream, or a whole `chat.completion` (its tool calls whole);
    an error object is `UpstreamError`."""
    message = _error_message(value) if "error" in value or value.get("object") == "error" else None
    if message is not None or "error" in value:
        raise UpstreamError(f"{label}: {message or 'an error without a message'}")
    choices = value.get("choices")
    choice = next((c for c in choices if isinstance(c, dict)), {}) if isinstance(choices, list) else {}
    whole = "message" in choice
    said = mapping(choice.get("message") if whole else choice.get("delta"))
    text = said.get("content")
    reasoning = said.get("reasoning_content", said.get("reasoning"))
    logprobs = mapping(choice.get("logprobs")).get("content")
    calls = _tool_calls(said.get("tool_calls"))
    finish = choice.get("finish_reason")
    usage, timings = value.get("usage"), value.get("timings")
    return Piece(
        delta=Delta(content=text if isinstance(text, str) else "",
                    reasoning=reasoning if isinstance(reasoning, str) else "",
                    tool_calls=tuple(ToolCall(c.name, c.arguments, c.id) for c in calls) if whole else calls,
                    logprobs=tuple(logprobs) if isinstance(logprobs, list) else ()),
        finish_reason=finish if isinstance(finish, str) and finish else None,
        usage=usage if isinstance(usage, dict) else None,
        timings=timings if isinstance(timings, dict) else None,
    )


def read_answer(objects: Generator[Mapping[str, Any], None, None], label: str) -> Iterator[Delta]:
    """The deltas of an answer's objects: each piece as it comes, then, once the answer ends after the
    engine said why it finished, the last delta with the usage and timings (which come with the finish
    or after it, in a chunk of their own)."""
    finish: str | None = None
    usage: Mapping[str, Any] = {}
    timings: Mapping[str, Any] | None = None
    with closing(objects):
        for value in objects:
            piece = answer_piece(value, label)
            if piece.delta != Delta():
                yield piece.delta
            finish = piece.finish_reason or finish
            usage = piece.usage or usage
            timings = piece.timings or timings
    if finish is None:
        return  # cut: the caller reports an incomplete answer
    cached = mapping(usage.get("prompt_tokens_details")).get("cached_tokens")
    yield Delta(done=True, stop_reason=finish, prompt_tokens=count(usage.get("prompt_tokens")),
                completion_tokens=count(usage.get("completion_tokens")),
                cached_tokens=count(cached) if isinstance(cached, int) else None, timings=timings)


# --- the engine ------------------------------------------------------------------------------------------


class OpenAIServerEngine(Engine):
    """An OpenAI-compatible server of one kind (`SERVERS`) at the transport's URL."""

    models_path = "/v1/models"
    asks_while_building = True  # /props, /tokenize

    def __init__(self, name: str, kind: EngineKind, transport: Transport,
                 facts: FactsCache[ModelFacts] | None = None,
                 routing_headers: tuple[str, ...] = DEFAULT_ROUTING_HEADERS) -> None:
        super().__init__(name, transport, routing_headers)
        self.kind = kind
        self.server = SERVERS[kind]
        self.label = self.server.label
        self.facts_cache: FactsCache[ModelFacts] = facts or FactsCache()

    # --- what the engine says about a model ---

    def facts(self, model: str) -> ModelFacts:
        """The model's facts, asked at most once a minute (`FactsCache`)."""
        found = self.facts_cache.get(self.name, model, lambda: self._read_facts(model))
        assert found is not None  # _read_facts always answers
        return found

    def _exchange(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON exchange of the worker's own (facts, counts) under a routing key of its path and body:
        a router logs that key rather than the body (vllm-router logs a short body whole, conversation
        text included, when a request has no key), and spreads these requests as it would by the body.
        A 502 is asked once more: these requests only read, and a router answers 502 when its connection
        to an engine failed, where vllm-router retries chat requests but not these."""
        encoded = None if body is None else encode_json(body)  # once: a /tokenize body may be a MiB
        key = routing_key(path, None, hashlib.sha256(encoded or b"").hexdigest())
        headers = dict.fromkeys(self.routing_headers, key)
        try:
            return self.transport.request_json(method, path, encoded, headers)
        except UpstreamRefused as exc:
            if exc.details.get("status") != 502:
                raise
            return self.transport.request_json(method, path, encoded, headers)

    def _asked(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON exchange with the engine, a missing endpoint said plainly (is the engine's kind right?)."""
        try:
            return self._exchange(method, path, body)
        except UpstreamRefused as exc:
            if exc.details.get("status") not in (404, 405, 501):
                raise
            raise UpstreamError(f"{self.where} has no {path} (it answered {exc.details['status']}), which a "
                                f"{self.label} server has: is the engine's kind right? (kind openai asks for "
                                "nothing but chat)", details=exc.details) from None

    def _read_facts(self, model: str) -> ModelFacts:
        path = self.server.facts
        if path is None:
            return ModelFacts(None, CONTROL_TOKEN, model, None)
        if self.kind is EngineKind.LLAMA_CPP:
            props = self._object(self._asked("GET", path), path)
            template = props.get("chat_template")
            control = CONTROL_TOKEN
            if isinstance(template, str) and template:
                bos, eos = props.get("bos_token"), props.get("eos_token")
                control = control_pattern(template_control_tokens(
                    template, bos if isinstance(bos, str) else None, eos if isinstance(eos, str) else None))
            loaded = props.get("model_path") or props.get("model_alias")
            model_id = PurePosixPath(loaded).name if isinstance(loaded, str) and loaded else model
            return ModelFacts(llama_cpp_window(props), control, model_id, self._probe())
        if self.kind is EngineKind.LM_STUDIO:
            try:
                listed = self._asked("GET", path)
            except UpstreamError as exc:
                if exc.details.get("status") != 404:
                    raise
                listed = self._asked("GET", LM_STUDIO_V0)
            return ModelFacts(lm_studio_window(listed, model), CONTROL_TOKEN, model, None)
        return ModelFacts(max_model_len_window(self._asked("GET", path), model), CONTROL_TOKEN, model, None)

    def _probe(self) -> str | None:
        """llama.cpp's rendering of PROBE_TURNS with its own template, or None if it cannot say."""
        messages = [{"role": "system", "content": PROBE_SYSTEM}] + [
            {"role": m.role, "content": m.content} for m in PROBE_TURNS]
        try:
            answer = self._exchange("POST", "/apply-template", {"messages": messages})
        except UpstreamRefused:
            return None
        prompt = answer.get("prompt") if isinstance(answer, dict) else None
        return prompt if isinstance(prompt, str) else None

    def counting(self, model: str, profile: ModelProfile, facts: ModelFacts, cache: FitCache) -> Counting | None:
        """How `model` is counted: None for the profile's own vocabulary (exact ones, and the estimate
        where the engine cannot tokenize), else the engine's, exact when its template frames a
        conversation as the profile's chat format does."""
        if profile.exact or self.server.tokenize is None:
            return None
        tokenizer = EngineTokenizer(lambda path, body: self._exchange("POST", path, body),
                                    self.server.tokenize, model, f"{self.label}:{self.name}/{facts.model_id}", cache)
        if facts.probe is not None and facts.probe != RENDERERS[profile.format](PROBE_SYSTEM, PROBE_TURNS):
            return Counting(tokenizer, exact=False, margin=profile.margin)
        return Counting(tokenizer, exact=True, margin=1.0)

    # --- the request ---

    def chat_call(self, request: ChatRequest, virtual: VirtualRequest | None, profiles: Profiles,
                  cache: FitCache) -> ChatCall:
        body = dict(request.body)
        messages = chat_messages(body)
        if body.get("n") not in (None, 1):
            raise invalid("'n' must be 1: the worker relays one answer per request", "n")
        injection = None
        if virtual is not None:
            body, injection = self._with_role(body, messages, virtual, profiles, cache)
        return self.call(CHAT_PATH, encode_json(streamed(body)), injection, chat_key(request))

    def _with_role(self, body: dict[str, Any], messages: list[dict[str, Any]], request: VirtualRequest,
                   profiles: Profiles, cache: FitCache) -> tuple[dict[str, Any], Injection]:
        virtual = request.virtual
        profile = profiles.for_model(virtual.base)
        facts = self.facts(virtual.base)
        window = profile.context_window
        if facts.window is not None and not profile.window_stated:
            window = facts.window.tokens
        control = facts.control
        turns = [neutralise_message(m, f"messages[{i}]", control) for i, m in enumerate(messages)
                 if m["role"] not in GIVING_WAY]
        options = request.options.over(virtual.options)
        options = RoleOptions(variables={k: neutralise(v, control) for k, v in options.variables.items()}).over(options)
        counting = self.counting(virtual.base, profile, facts, cache)
        tokenizer = counting.tokenizer if counting is not None else load_tokenizer(profile.tokenizer)
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise invalid("'tools' must be a list", "tools")
            body["tools"] = tools = neutralise_tools(tools, "tools", control)
        attached = tokenizer.count(json.dumps(tools, ensure_ascii=False)) if tools else 0
        try:
            injection = inject(request.roles, profiles, InjectRequest(
                role=virtual.role,
                turns=tuple(counted_turn(m) for m in turns),
                options=options,
                model=virtual.base,
                context_window=window,
                attached_tokens=attached,
                exchange_starts=frozenset(i for i, m in enumerate(turns) if m["role"] == "user"),
                counting=counting,
            ), cache)
        except (ContextOverflow, BudgetTooSmall) as exc:
            said = self._window_said(window, facts, profile)
            raise type(exc)(f"{exc.message}; {said}", details=exc.details) from None
        except VariableError as exc:
            raise VariableError(f"{exc.message}: OpenAI clients cannot send variables, so declare a virtual model "
                                "with 'variables:' in the profile file (ROLE_INJECTOR_MODELS) or give them a "
                                "default in the role file", details=exc.details) from None
        body["model"] = virtual.base
        body["messages"] = [{"role": "system", "content": injection.system}, *turns[injection.dropped_messages:]]
        return with_params(body, injection.params, self.kind), injection

    def _window_said(self, window: int, facts: ModelFacts, profile: ModelProfile) -> str:
        if facts.window is not None and window == facts.window.tokens and not profile.window_stated:
            return f"the context window of {window} tokens is what {self.where} says ({facts.window.source})"
        return f"the context window of {window} tokens is the profile's context_window"

    # --- the answer ---

    def deltas(self, answer: Answer) -> Iterator[Delta]:
        if "application/json" in answer.headers.get("Content-Type", ""):  # one answer, not a stream
            return read_answer(self._whole(answer), self.label)
        return read_answer(read_lines(answer.chunks(), "sse", self.label), self.label)

    def _whole(self, answer: Answer) -> Generator[dict[str, Any], None, None]:
        yield self._object(answer.json(CHAT_PATH), CHAT_PATH)

    def _object(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise UpstreamError(f"{self.where} answered {path} with JSON that is not an object")
        return value

    def model_list(self, listed: Any, roles: RoleSet, declared: Mapping[str, VirtualModel]) -> list[ModelEntry]:
        data = listed.get("data") if isinstance(listed, dict) else None
        if not isinstance(data, list):
            raise UpstreamError(f"{self.label}'s /v1/models answer has no list 'data'")
        real = {}
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"] not in declared:
                created, owner = entry.get("created"), entry.get("owned_by")
                real[entry["id"]] = ModelEntry(entry["id"], count(created), owner if isinstance(owner, str) else "")
        virtual = [ModelEntry(name, real[model.base].created if model.base in real else 0, OWNER)
                   for name, model in sorted(declared.items())]
        return [*real.values(), *virtual]

    def refusal(self, answer: Any, status: int) -> str:
        message = _error_message(answer)
        return f"{self.label}: {message}" if message else f"{self.label} answered {status}"

