"""OpenAI's Chat Completions API as the worker's clients speak it, whatever engine answers: the head of
a request (model, stream, usage in the stream), the answer's shapes (one `chat.completion`, or
`chat.completion.chunk` events for SSE with `data: [DONE]` and, on request, a last chunk with `usage`;
`finish_reason` `stop`, `length` or `tool_calls`; tool calls with ids and their arguments as a JSON
string), the model list and the error body. No HTTP in it.

The rest of a request is the engine's to read: each engine translates it into its own request
(`Engine.chat_call`; Ollama's in `role_injector.engines.ollama`) and says what it cannot do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from role_injector.engines.answer import ChatAnswer, Delta, compact
from role_injector.errors import MAX_MESSAGE_CHARS, InvalidRequest, bounded, shown

OWNER = "role-injector"  # `owned_by` of virtual models in /v1/models


def invalid(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, details={"field": param} if param else {})


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape; `kind` is OpenAI's `type` (see `errors.KINDS`). The message is
    bounded, as every error's is (an engine's refusal may repeat a client's value whole)."""
    return {"error": {"message": bounded(message, MAX_MESSAGE_CHARS), "type": kind, "param": param, "code": code}}


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """A Chat Completions request: what every engine needs of it, and the client's body for the rest."""

    model: str
    stream: bool  # what the client asked; engines are always asked for a stream
    include_usage: bool  # stream_options.include_usage
    body: Mapping[str, Any]
    session: str | None = None  # the client's own session id, from a routing header (engines/routing.py)


def flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'{name}' must be true or false, not {shown(value)}", name)
    return bool(value)


def json_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"'{where}' must be an object", where)
    return value


def parse_chat_request(body: Mapping[str, Any]) -> ChatRequest:
    """The head of a Chat Completions request body; the engine reads the rest (`Engine.chat_call`)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string: an Ollama model or a virtual model (base@role)", "model")
    stream = flag(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = stream_options is not None and flag(json_object(stream_options, "stream_options"), "include_usage")
    return ChatRequest(model, stream, include_usage and stream, body)


# --- the answer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelEntry:
    """A model an engine serves (or a declared virtual model in front of one), as OpenAI lists models."""

    id: str
    created: int  # seconds since the epoch; 0 when unknown
    owned_by: str


def model_list(entries: Iterable[ModelEntry]) -> dict[str, Any]:
    """Model entries as OpenAI's model list."""
    return {"object": "list", "data": [{"id": e.id, "object": "model", "created": e.created, "owned_by": e.owned_by}
                                       for e in entries]}


def completion(answer: ChatAnswer) -> dict[str, Any]:
    """The whole answer as one `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool_calls:
        message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in answer.tool_calls]
        message["content"] = message["content"] or None
    if answer.reasoning:
        message["reasoning"] = answer.reasoning_text
    whole = {
        "id": answer.id, "object": "chat.completion", "created": answer.created, "model": answer.model,
        "choices": [{"index": 0, "message": message,
                     "logprobs": {"content": answer.logprobs} if answer.logprobs else None,
                     "finish_reason": answer.finish_reason}],
        "usage": answer.usage,
    }
    return with_timings(whole, answer)


def with_timings(value: dict[str, Any], answer: ChatAnswer) -> dict[str, Any]:
    """llama.cpp's `timings` (evaluated and reused prompt tokens, speeds), where the engine sent them,
    on the answer's last object as llama.cpp puts them."""
    if answer.timings is not None:
        value["timings"] = dict(answer.timings)
    return value


def chunk(answer: ChatAnswer, delta: dict[str, Any], logprobs: list[Any] | None = None,
          finish_reason: str | None = None) -> dict[str, Any]:
    return {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                         "finish_reason": finish_reason}]}


def sse(value: Any) -> bytes:
    """One server-sent event with a JSON payload, as OpenAI streams them."""
    return b"data: " + compact(value).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatStream:
    """An engine's deltas → OpenAI's SSE events for one streamed answer."""

    def __init__(self, answer: ChatAnswer, include_usage: bool) -> None:
        self.answer = answer
        self.include_usage = include_usage
        self._started = False

    def _event(self, value: dict[str, Any]) -> bytes:
        if self.include_usage:  # null on every chunk but the last, as OpenAI sends it
            value["usage"] = None
        return sse(value)

    def events(self, delta: Delta) -> bytes:
        """The events one delta gives (after the last: the finish, usage and [DONE])."""
        answer = self.answer
        calls = answer.add(delta)
        shown: dict[str, Any] = {}
        if not self._started:
            shown["role"] = "assistant"
            self._started = True
        if delta.content:
            shown["content"] = delta.content
        if delta.reasoning:
            shown["reasoning"] = delta.reasoning
        if calls:
            shown["tool_calls"] = calls
        if "role" in shown:
            shown.setdefault("content", "")  # as OpenAI's first chunk has it
        logprobs = list(delta.logprobs)
        out = self._event(chunk(answer, shown, logprobs)) if shown or logprobs else b""
        if answer.done:
            finish = chunk(answer, {}, finish_reason=answer.finish_reason)
            if self.include_usage:
                out += self._event(finish)
                out += sse(with_timings({**chunk(answer, {}), "choices": [], "usage": answer.usage}, answer))
            else:
                out += self._event(with_timings(finish, answer))
            out += SSE_DONE
        return out
