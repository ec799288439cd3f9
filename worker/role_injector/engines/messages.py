"""A conversation on a virtual model as chat templates print it: one rule for every field of every
message (and every tool definition), whatever the route (Ollama's /api/chat, OpenAI's Chat
Completions) and whatever the engine.

Templates print more than `content`. Qwen's print an assistant's tool calls (the function's name, its
arguments as JSON) and the tool definitions; Qwen3's also `reasoning_content` (and split a content at
`</think>`); Mistral's a tool call's `id`, a tool result's `tool_call_id` and the tools' descriptions
as they are; Llama 3's the `role` itself; Ollama's own print `thinking` and tool names. A control
token in any of them would open or close a frame of the model's chat format after the role. So:

- **text** (`content`, text parts, `thinking`, `reasoning`, `reasoning_content`, `refusal`,
  `description`, and every string value inside tool call arguments) is neutralised as content is
  (`formats.neutralise`: a zero-width space after the token's first character);
- **data** no template prints as text (`images`, `image_url`, `input_audio`, `file`) is left as it is;
- everything else is a **name** a program reads back (`role`, a function's `name`, `id`, `type`,
  `tool_name`, `tool_call_id`, the keys of arguments and schemas, fields the worker does not know):
  changing it would change what it names, so a name that holds a control token is a 400 naming the
  field.

A message's `role` is one of user, assistant and tool: the client's system messages give way to the
role before this, and any other role (`System`, `developer`, ...) could be printed as a frame of its
own. Arguments sent as a JSON string (OpenAI's shape) are read as JSON, so an escaped control token
(`\\u003c|im_start|>`) is found too; they keep their exact text unless something in them changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from role_injector.errors import InvalidRequest, shown
from role_injector.formats import CONTROL_TOKEN, neutralise

TEXT_FIELDS = frozenset({"content", "text", "thinking", "reasoning", "reasoning_content", "refusal",
                         "description"})
DATA_FIELDS = frozenset({"images", "image_url", "input_audio", "file"})
ARGUMENTS = "arguments"
CONVERSATION_ROLES = ("user", "assistant", "tool")
MAX_DEPTH = 64  # of a message's nested fields (tool arguments, content parts): deeper is refused


class _Walk:
    """One message or tool list through the rule, with the pattern of control tokens to look for."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def name(self, value: str, where: str) -> str:
        found = self.pattern.search(value) if "<" in value or "[" in value else None
        if found is not None:
            raise InvalidRequest(
                f"'{where}' holds the control token {shown(found.group(0))}: a name a program reads back "
                "cannot carry one (it would open or close a frame of the model's chat format)",
                details={"field": where})
        return value

    def value(self, value: Any, kind: str, where: str, depth: int) -> Any:
        """`value` of a field of `kind` (text, data, arguments, name)."""
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"'{where}' is nested more than {MAX_DEPTH} levels deep", details={"field": where})
        if kind == "data":
            return value
        if isinstance(value, str):
            if kind == "arguments":
                return self.arguments_text(value, where, depth)
            return neutralise(value, self.pattern) if kind in ("text", "argument") else self.name(value, where)
        if isinstance(value, list):
            return [self.value(item, kind, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
        if isinstance(value, dict):
            if kind in ("arguments", "argument"):  # inside arguments: keys are names, values text
                return {self.name(key, f"{where}.{key}"): self.value(item, "argument", f"{where}.{key}", depth + 1)
                        for key, item in value.items()}
            return self.fields(value, where, depth + 1)
        return value  # numbers, booleans, null

    def fields(self, value: Mapping[str, Any], where: str, depth: int) -> dict[str, Any]:
        out = {}
        for key, item in value.items():
            here = f"{where}.{key}"
            kind = ("text" if key in TEXT_FIELDS else "data" if key in DATA_FIELDS
                    else "arguments" if key == ARGUMENTS else "name")
            out[self.name(key, here)] = self.value(item, kind, here, depth)
        return out

    def arguments_text(self, text: str, where: str, depth: int) -> str:
        """Arguments as a JSON string: their values neutralised, their text kept when nothing changed."""
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return neutralise(text, self.pattern)
        if not isinstance(parsed, dict | list):
            return neutralise(text, self.pattern)
        checked = self.value(parsed, "argument", where, depth)
        return text if checked == parsed else json.dumps(checked, ensure_ascii=False)


def neutralise_message(message: Mapping[str, Any], where: str,
                       pattern: re.Pattern[str] = CONTROL_TOKEN) -> dict[str, Any]:
    """A message of the conversation (`where`: `messages[3]`) as the rule above makes it: a copy with
    its text neutralised; `InvalidRequest` for a name with a control token or a role other than user,
    assistant or tool. `pattern` may add an engine's own tokens (`template_tokens.control_pattern`)."""
    role = message.get("role")
    if role not in CONVERSATION_ROLES:
        raise InvalidRequest(f"'{where}.role' must be one of {', '.join(CONVERSATION_ROLES)} (system messages "
                             f"give way to the role), not {shown(role)}", details={"field": f"{where}.role"})
    return _Walk(pattern).fields(message, where, 1)


def neutralise_tools(tools: list[Any], where: str = "tools",
                     pattern: re.Pattern[str] = CONTROL_TOKEN) -> list[Any]:
    """Tool definitions as templates print them (names, descriptions, parameter schemas), by the same
    rule: descriptions neutralised, any other string with a control token a 400 naming it."""
    return _Walk(pattern).value(tools, "name", where, 1)
