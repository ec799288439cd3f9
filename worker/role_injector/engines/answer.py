"""One chat answer as an engine streams it, in neutral terms: each engine turns a line of its stream
into a `Delta`, and `ChatAnswer` adds them up (text, reasoning, tool calls, log probabilities, counts),
for the OpenAI route's stream and completion and for the CLI's teacher alike."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A call of one of the request's tools, as the engine sent it."""

    name: str
    arguments: Any  # a JSON object in a string, or the object itself (Ollama sends the object)
    id: str | None = None


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

    def add(self, delta: Delta) -> list[dict[str, Any]]:
        """Add one delta; return its tool calls as numbered here (index, id, JSON-text arguments)."""
        if delta.content:
            self.content.append(delta.content)
        if delta.reasoning:
            self.reasoning.append(delta.reasoning)
        calls = [self._number(call) for call in delta.tool_calls]
        self.logprobs.extend(delta.logprobs)
        if delta.done:
            self.done = True
            self.stop_reason = delta.stop_reason
            self.prompt_tokens = delta.prompt_tokens
            self.completion_tokens = delta.completion_tokens
        return calls

    def _number(self, call: ToolCall) -> dict[str, Any]:
        numbered = {
            "index": len(self.tool_calls),
            "id": call.id or "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": call.name,
                         "arguments": call.arguments if isinstance(call.arguments, str)
                         else compact(call.arguments if call.arguments is not None else {})},
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
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def count(value: Any) -> int:
    """A token count an engine reported, or 0 when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}
