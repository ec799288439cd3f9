"""One chat answer as an engine streams it, in neutral terms: each engine turns its stream into
`Delta`s, and `ChatAnswer` adds them up (text, reasoning, tool calls whole or in pieces, log
probabilities, counts, the prompt tokens the engine reused from its cache, its timings), for the
OpenAI route's stream and completion and for the CLI's teacher alike."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A call of one of the request's tools, as the engine sent it: whole (Ollama), or a piece of the
    call numbered `index` (OpenAI's stream: the name and id come first, the arguments in pieces)."""

    name: str
    arguments: Any  # a JSON object in a string, or the object itself (Ollama sends the object)
    id: str | None = None
    index: int | None = None  # the engine's number of the call this is a piece of


@dataclass(frozen=True)
class Delta:
    """What one line of an engine's streamed answer adds."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[Any, ...] = ()  # OpenAI's `logprobs.content` entries
    done: bool = False  # the last line
    stop_reason: str = ""  # why the engine stopped ("stop", "length", …), on the last line
    prompt_tokens: int = 0  # the engine's counts, on the last line
    completion_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens the engine reused from its cache, where it says
    timings: Mapping[str, Any] | None = None  # llama.cpp's `timings`, passed on as they are


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass
class ChatAnswer:
    """The answer to one request so far: `add` each delta as it comes."""

    model: str  # the name the client asked for (a virtual model's, not its base's)
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # numbered, with ids, arguments as JSON text
    logprobs: list[Any] = field(default_factory=list)
    done: bool = False
    stop_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None
    timings: Mapping[str, Any] | None = None
    _pieces: dict[int, int] = field(default_factory=dict, repr=False)  # the engine's call index -> ours

    def add(self, delta: Delta) -> list[dict[str, Any]]:
        """Add one delta; return its tool calls as a stream shows them: a whole call or a call's first
        piece numbered here (index, id, type, name, JSON-text arguments), a later piece as its index
        and arguments."""
        if delta.content:
            self.content.append(delta.content)
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        calls = [self._call(call) for call in delta.tool_calls]
        self.logprobs.extend(delta.logprobs)
        if delta.done:
            self.done = True
            self.stop_reason = delta.stop_reason
            self.prompt_tokens = delta.prompt_tokens
            self.completion_tokens = delta.completion_tokens
            self.cached_tokens = delta.cached_tokens
            self.timings = delta.timings
        return calls

    def _call(self, call: ToolCall) -> dict[str, Any]:
        ours = self._pieces.get(call.index) if call.index is not None else None
        if ours is None:
            numbered = self._number(call)
            return {**numbered, "function": dict(numbered["function"])}  # as it is now: later pieces add to it
        piece = call.arguments if isinstance(call.arguments, str) else ""
        function = self.tool_calls[ours]["function"]
        function["arguments"] += piece
        if call.name and not function["name"]:
            function["name"] = call.name
        return {"index": ours, "function": {"arguments": piece}}

    def _number(self, call: ToolCall) -> dict[str, Any]:
        if call.index is not None:  # a call's first piece: its arguments start here
            arguments = call.arguments if isinstance(call.arguments, str) else ""
            self._pieces[call.index] = len(self.tool_calls)
        else:
            arguments = call.arguments if isinstance(call.arguments, str) \
                else compact(call.arguments if call.arguments is not None else {})
        numbered = {
            "index": len(self.tool_calls),
            "id": call.id or "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call.name, "arguments": arguments},
        }
        self.tool_calls.append(numbered)
        return numbered

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def finish_reason(self) -> str:
        if self.stop_reason == "length":
            return "length"
        return "tool_calls" if self.tool_calls else "stop"

    @property
    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        if self.cached_tokens is not None:  # the engine's figure, unchanged
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage


def count(value: Any) -> int:
    """A token count an engine reported, or 0 when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
