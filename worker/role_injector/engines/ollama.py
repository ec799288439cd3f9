"""Ollama's native API as an engine: its transport, the translation of an OpenAI chat request into
/api/chat, the role put into Ollama's own bodies, and its streamed answers read back.

- `/api/chat` (from an Ollama client, or translated from an OpenAI client by `chat_body`): the
  client's system messages give way to the fitted role; the other messages keep every field (images,
  tool_calls, ...), each treated as templates print it (`engines.messages`: text neutralised, a name
  with a control token refused), and so are the tool definitions;
- `/api/generate`: the role becomes `system`, or, with `raw: true`, the whole prompt is rendered in
  the model's chat format with the role in front and the client's prompt as the user turn; `prompt`
  and `suffix` are neutralised; a `template` of the client's own (which would replace the one that
  frames the role) and a non-empty `context` (token ids, detokenised in front of the role, unchecked)
  are refused;
- both: the role and the conversation share the context by the context policy (`inject`; the oldest
  messages may be left out), `options` = the role's params, then the virtual model's, then the
  client's own options (the client wins); `options.num_ctx` is the context window (never lower than
  the client asked, the same on every turn) and `options.num_keep` covers the system part, so
  Ollama never cuts the prompt and a context shift keeps the role;
- `/api/tags` and `/api/show` answers are completed with the virtual models;
- OpenAI's Chat Completions (`chat_body`): `developer`/`system`/`user`/`assistant`/`tool` messages
  (text and image content parts, tool calls with JSON-string arguments, tool results named by
  `tool_call_id`), `temperature`, `top_p`, `max_tokens`/`max_completion_tokens` → `num_predict`,
  `stop`, `seed`, the penalties, `response_format` → `format`, `tools`/`tool_choice`,
  `reasoning_effort` → `think`, `logprobs`. What Ollama cannot do (`n` > 1, audio, functions, remote
  image URLs) is a clear `InvalidRequest`; hints with no effect on a local model (`user`, `store`,
  `metadata`, ...) are ignored, as Ollama's own OpenAI route does. Unset sampling options are left to
  the role, the virtual model and the model's own defaults (Ollama's /v1 route forces OpenAI's 1.0).
  OpenAI clients cannot set `num_ctx`, so the worker never uses Ollama's own /v1 route: a request
  always goes to /api/chat with `num_ctx`, always streamed (a long answer is never one silent wait).

No HTTP here beyond what `Transport` does; errors are `role_injector.errors` classes, which the web
layer shows in each client's shape.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from role_injector.engines.answer import Delta, ToolCall, count, mapping
from role_injector.engines.engine import ChatCall, Engine, chat_key
from role_injector.engines.kinds import EngineKind
from role_injector.engines.lines import read_lines
from role_injector.engines.messages import neutralise_message, neutralise_tools
from role_injector.engines.routing import opening, routing_key
from role_injector.engines.transport import Answer, encode_json
from role_injector.errors import ContextOverflow, InvalidRequest, UpstreamError, VariableError, shown
from role_injector.fitting import FitCache
from role_injector.formats import Message, neutralise
from role_injector.injection import Injection, InjectRequest, VirtualRequest, count_messages, find_role, inject
from role_injector.openai_compat import OWNER, ChatRequest, ModelEntry, flag, invalid, json_object
from role_injector.options import MAX_MESSAGES, MAX_TOKENS, tokens
from role_injector.profiles import Profiles, VirtualModel
from role_injector.roles import Role
from role_injector.store import RoleSet
from role_injector.tokens import load_tokenizer

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Ollama sends for "never"; Go clients parse it
MAX_TOOLS = 128  # OpenAI's own limit
MAX_STOP = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# OpenAI's reasoning efforts on Ollama's `think` (false, or a level for models that take one).
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
         "max": "high"}
IMAGE_URL = re.compile(r"data:(?:image/(?:png|jpeg|jpg|webp|gif))?;base64,", re.IGNORECASE)


def model_field(body: Mapping[str, Any]) -> str:
    """Where the body names its model: `model`, or `name` in older clients' /api/show."""
    return "model" if body.get("model") or not body.get("name") else "name"


# --- the role in Ollama's bodies ---------------------------------------------------------------------


@dataclass(frozen=True)
class Conversation:
    """What the role shares the context window with, and the client's own model options."""

    turns: tuple[Message, ...] = ()
    exchange_starts: frozenset[int] | None = None  # None: at every user turn
    attached_tokens: int = 0  # tool definitions
    attached_what: str = ""  # what they are, for an overflow's message
    client_options: Mapping[str, Any] = field(default_factory=dict)


def client_options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise invalid("'options' must be an object of model options", "options")
    return options


def num_ctx_option(value: Any, where: str) -> int | None:
    """A `num_ctx` option as a whole number of tokens (whole floats too), or None when it is not set."""
    if value is None:
        return None
    try:
        return tokens(value, "options.num_ctx", whole_floats=True)
    except InvalidRequest:
        raise invalid(f"{where} must be a whole number of tokens from 1 to {MAX_TOKENS}, not {shown(value)}",
                      "options.num_ctx") from None


def _window(request: VirtualRequest, role: Role, client_options: Mapping[str, Any]) -> int:
    """The context window: the base model's, or the num_ctx of the topmost layer that sets one if larger."""
    virtual = request.virtual
    for where, options in (("options.num_ctx", client_options),
                           (f"num_ctx in the params of virtual model {virtual.name!r}", virtual.options.params),
                           (f"num_ctx in the params of role {role.name!r}", role.params)):
        if "num_ctx" in options:
            asked = num_ctx_option(options["num_ctx"], where)
            break
    else:
        asked = None
    return max(request.profiles.for_model(virtual.base).context_window, asked or 0)


def _inject_virtual(request: VirtualRequest, conversation: Conversation) -> tuple[Injection, dict[str, Any]]:
    """Fit the role by the context policy (the request's, else the virtual model's, else the role's);
    return the injection, whose `turns` may have lost the oldest of the conversation's
    (`dropped_messages`), with the options to send: every layer's params, then the client's own."""
    virtual = request.virtual
    role = find_role(request.roles, virtual.role)
    inject_request = InjectRequest(
        role=virtual.role,
        turns=conversation.turns,
        options=request.options.over(virtual.options),
        model=virtual.base,
        context_window=_window(request, role, conversation.client_options),
        attached_tokens=conversation.attached_tokens,
        exchange_starts=conversation.exchange_starts,
    )
    try:
        injection = inject(request.roles, request.profiles, inject_request, request.cache)
    except ContextOverflow as exc:
        attached = f" ({conversation.attached_what})" if conversation.attached_tokens else ""
        raise ContextOverflow(
            f"{exc.message}{attached}, for {virtual.base}; shorten the conversation or raise options.num_ctx"
            + ("" if exc.details.get("context_policy") == "shrink_role" else
               ", or let the role give way (context policy shrink_role)"),
            details=exc.details,
        ) from None
    except VariableError as exc:
        raise VariableError(
            f"{exc.message}: Ollama clients cannot send variables, so declare a virtual model with "
            "'variables:' in the profile file (ROLE_INJECTOR_MODELS) or give them a default in the role file",
            details=exc.details,
        ) from None
    # The client's own options win over the role's and the virtual model's params.
    options = {**injection.params, **conversation.client_options}
    options["num_ctx"] = injection.usage.num_ctx  # the window: the same on every turn
    if injection.usage.num_keep is not None:  # a context shift in Ollama then keeps the role
        options.setdefault("num_keep", injection.usage.num_keep)
    return injection, options


def count_json(profiles: Profiles, model: str, value: Any) -> int:
    """Tokens of a JSON value (tool definitions) in the model's vocabulary."""
    tokenizer = load_tokenizer(profiles.for_model(model).tokenizer)
    return tokenizer.count(json.dumps(value, ensure_ascii=False))


# --- /api/chat -------------------------------------------------------------------------------------


def _chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise invalid("'messages' must be a list of {role, content} objects", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with 'role' and 'content'", where)
        if not isinstance(message.get("role"), str):
            raise invalid(f"{where}.role must be a string", where)
        if message.get("content") is not None and not isinstance(message["content"], str):
            raise invalid(f"{where}.content must be a string", where)
    return messages


def counted_turn(message: Mapping[str, Any]) -> Message:
    """The message as the budget counts it: tool results and other turns as user text, tool calls
    as JSON beside the assistant's text."""
    content = message.get("content") or ""
    if message["role"] == "assistant":
        if message.get("tool_calls"):
            content += "\n" + json.dumps(message["tool_calls"], ensure_ascii=False)
        return Message("assistant", content)
    return Message("user", content)


def rewrite_chat(body: Mapping[str, Any], request: VirtualRequest) -> tuple[dict[str, Any], Injection]:
    """The body to send upstream for an /api/chat request on a virtual model, and the injection.
    Messages the context policy dropped (the oldest, `injection.dropped_messages`) are not sent."""
    messages = _chat_messages(body)
    options_asked = client_options(body)
    turns = [neutralise_message(m, f"messages[{i}]") for i, m in enumerate(messages) if m["role"] != "system"]
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("'tools' must be a list", "tools")
    if tools:
        tools = neutralise_tools(tools)
    base = request.virtual.base
    # An exchange starts at a user message; tool results belong to the exchange before them.
    injection, options = _inject_virtual(request, Conversation(
        turns=tuple(counted_turn(m) for m in turns),
        exchange_starts=frozenset(i for i, m in enumerate(turns) if m["role"] == "user"),
        attached_tokens=count_json(request.profiles, base, tools) if tools else 0,
        attached_what="the tool definitions",
        client_options=options_asked,
    ))
    out = dict(body)
    out["model"] = base
    out["options"] = options
    if tools:
        out["tools"] = tools
    if messages:  # an empty list asks Ollama to load the model: keep it empty
        out["messages"] = [{"role": "system", "content": injection.system}, *turns[injection.dropped_messages:]]
    return out, injection


# --- /api/generate ---------------------------------------------------------------------------------


def rewrite_generate(body: Mapping[str, Any], request: VirtualRequest) -> tuple[dict[str, Any], Injection]:
    """The body to send upstream for an /api/generate request on a virtual model, and the injection."""
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string", "prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("'suffix' must be a string", "suffix")
    if body.get("template") not in (None, ""):
        raise invalid(f"'template' is not taken on virtual model {request.virtual.name!r}: the client's own "
                      "template would replace the model's, and the role would never reach the model", "template")
    if body.get("context") not in (None, []):
        raise invalid(f"'context' (token ids of earlier turns) is not taken on virtual model "
                      f"{request.virtual.name!r}: Ollama would put them, unchecked, in front of the role; send "
                      "the conversation as messages to /api/chat", "context")
    raw = body.get("raw") is True
    options_asked = client_options(body)
    # In raw mode Ollama applies no template, so a suffix plays no part.
    turns = (Message("user", prompt if raw else prompt + (suffix or "")),) if prompt else ()
    injection, options = _inject_virtual(request, Conversation(turns=turns, client_options=options_asked))
    out = dict(body)
    out["model"] = request.virtual.base
    out["options"] = options
    out.pop("system", None)  # the role is the system prompt
    if suffix:
        out["suffix"] = neutralise(suffix)  # templates print it after the prompt
    if not prompt:  # an empty prompt asks Ollama to load the model: keep it empty
        return out, injection
    if raw:
        out["prompt"] = injection.prompt  # rendered in the model's format, content neutralised
    else:
        out["prompt"] = neutralise(prompt)
        out["system"] = injection.system
    return out, injection


REWRITES = {"/api/chat": rewrite_chat, "/api/generate": rewrite_generate}


def completion_call(engine: Engine, path: str, raw: bytes, body: Mapping[str, Any], virtual: VirtualRequest | None,
                    session: str | None) -> ChatCall:
    """An Ollama client's /api/chat or /api/generate request (`path`) as the engine's: a plain model's
    bytes as they came, a virtual model's body rewritten (`REWRITES`); with the routing key of its
    conversation (its first user message, or a generate request's prompt), or of the client's `session`."""
    prompt = body.get("prompt")
    first = opening(body.get("messages")) if path == "/api/chat" else prompt if isinstance(prompt, str) else ""
    model = body.get(model_field(body))
    key = routing_key(model if isinstance(model, str) else "", session, first)
    if virtual is None:
        return engine.call(path, raw, None, key)
    out, injection = REWRITES[path](body, virtual)
    return engine.call(path, encode_json(out), injection, key)


# --- /api/show and /api/tags -----------------------------------------------------------------------


def rewrite_show(body: Mapping[str, Any], virtual: VirtualModel) -> dict[str, Any]:
    """The /api/show body to send upstream for a virtual model: the same, about the base model."""
    out = dict(body)
    out[model_field(body)] = virtual.base
    return out


def _parameter_lines(options: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, value in options.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {json.dumps(item, ensure_ascii=False)}")
    return lines


def show_response(upstream: Any, request: VirtualRequest) -> dict[str, Any]:
    """The base model's /api/show answer, with the role's fitted system prompt and the options the
    proxy sends by default (a conversation that has not started yet)."""
    if not isinstance(upstream, dict):
        raise UpstreamError("Ollama's /api/show answer is not a JSON object")
    injection, options = _inject_virtual(request, Conversation())
    out = dict(upstream)
    out["system"] = injection.system
    kept = [line for line in str(upstream.get("parameters") or "").splitlines()
            if line.split(maxsplit=1)[:1] and line.split(maxsplit=1)[0] not in options]
    out["parameters"] = "\n".join(kept + _parameter_lines(options))
    return out


def _same_model(entry: Mapping[str, Any], name: str) -> bool:
    names = {entry.get("name"), entry.get("model")}
    return name in names or (":" not in name.rsplit("/", 1)[-1] and f"{name}:latest" in names)


def virtual_entry(virtual: VirtualModel, base: Mapping[str, Any] | None, role_version: str | None) -> dict[str, Any]:
    """A /api/tags entry for a virtual model: the base model's entry under the virtual name."""
    base = base or {}
    details = base.get("details")
    seed = json.dumps([virtual.name, virtual.base, base.get("digest"), virtual.role, role_version,
                       virtual.options.budget, dict(virtual.options.params)], sort_keys=True, default=str)
    return {
        "name": virtual.name,
        "model": virtual.name,
        "modified_at": base.get("modified_at") or ZERO_TIME,
        "size": base.get("size") or 0,
        "digest": hashlib.sha256(seed.encode()).hexdigest(),  # changes with the role's version
        "details": dict(details) if isinstance(details, dict) else {
            "parent_model": "", "format": "", "family": "", "families": None,
            "parameter_size": "", "quantization_level": "",
        },
        "description": f"{virtual.base} with role {virtual.role}"
        + ("" if role_version else " (role not found)"),
    }


def tags_response(upstream: Any, roles: RoleSet, declared: Mapping[str, VirtualModel]) -> dict[str, Any]:
    """Ollama's model list plus `declared`, the virtual models it serves (after the real ones, by name)."""
    if not isinstance(upstream, dict) or not isinstance(upstream.get("models"), list):
        raise UpstreamError("Ollama's /api/tags answer is not an object with a 'models' list")
    real = [m for m in upstream["models"]
            if not (isinstance(m, dict) and (m.get("name") in declared or m.get("model") in declared))]
    virtual = []
    for name in sorted(declared):
        model = declared[name]
        base = next((m for m in real if isinstance(m, dict) and _same_model(m, model.base)), None)
        role = roles.roles.get(model.role)
        virtual.append(virtual_entry(model, base, role.version if role else None))
    return {**upstream, "models": real + virtual}


# --- OpenAI's chat request as /api/chat ---------------------------------------------------------------


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number from {low:g} to {high:g}, not {shown(value)}", name)
    return value


def _integer(body: Mapping[str, Any], name: str, low: int, high: int = MAX_TOKENS) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"'{name}' must be a whole number from {low} to {high}, not {shown(value)}", name)
    return value


def _image(url: Any, where: str) -> str:
    """The base64 data of an inline image, as Ollama's `images` take it."""
    if not isinstance(url, str):
        raise invalid(f"'{where}' must be a string", where)
    prefix = IMAGE_URL.match(url)
    if prefix is None:
        if url.startswith(("http://", "https://")):
            raise invalid(f"'{where}': the worker does not download images; send the image inline as "
                          "a data: URL (data:image/png;base64,...)", where)
        raise invalid(f"'{where}' must be a data: URL of a PNG, JPEG, WebP or GIF image in base64", where)
    data = url[prefix.end():]
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{where}' is not valid base64", where) from None
    return data


def _content(value: Any, role: str, where: str) -> tuple[str, list[str]]:
    """A message's text (text parts joined by newlines) and its inline images."""
    if isinstance(value, str):
        return value, []
    if value is None:
        if role == "assistant":  # an assistant turn that only called tools
            return "", []
        raise invalid(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    if not isinstance(value, list):
        raise invalid(f"'{where}.content' must be a string or a list of content parts", f"{where}.content")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(value):
        here = f"{where}.content[{j}]"
        kind = json_object(part, here).get("type")
        if kind == "text" or (kind == "refusal" and role == "assistant"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise invalid(f"'{here}.{kind}' must be a string", f"{here}.{kind}")
            texts.append(text)
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            images.append(_image(image.get("url") if isinstance(image, dict) else image, f"{here}.image_url.url"))
        elif kind in ("input_audio", "file"):
            raise invalid(f"'{here}': {kind} parts are not supported by Ollama's chat API", here)
        else:
            raise invalid(f"'{here}.type' {shown(kind)} is not a content part a {role} message can have", here)
    return "\n".join(texts), images


def _arguments(value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, dict):  # some clients send the object itself
        return value
    if value is None or value == "":
        return {}
    if not isinstance(value, str):
        raise invalid(f"'{where}' must be a JSON object in a string", where)
    try:
        arguments = json.loads(value)
    except (ValueError, RecursionError):
        raise invalid(f"'{where}' is not valid JSON", where) from None
    if not isinstance(arguments, dict):
        raise invalid(f"'{where}' must be a JSON object", where)
    return arguments


def _tool_calls_in(value: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """An assistant message's tool calls in Ollama's shape (arguments as an object); records their names by id."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"'{where}.tool_calls' must be a list", f"{where}.tool_calls")
    calls = []
    for j, call in enumerate(value):
        here = f"{where}.tool_calls[{j}]"
        function = json_object(json_object(call, here).get("function"), f"{here}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"'{here}.function.name' must be a non-empty string", f"{here}.function.name")
        native: dict[str, Any] = {"function": {"name": name,
                                               "arguments": _arguments(function.get("arguments"),
                                                                       f"{here}.function.arguments")}}
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            native["id"] = call_id
            names[call_id] = name
        calls.append(native)
    return calls


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty list of messages", "messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"'messages' has more than {MAX_MESSAGES} entries", "messages")
    names: dict[str, str] = {}  # tool call id -> function name, so a tool result can name its tool
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        role = ROLES.get(json_object(message, where).get("role"))
        if role is None:
            hint = "; the 'function' role is deprecated: send tool results as 'tool'" \
                if message.get("role") == "function" else ""
            raise invalid(f"'{where}.role' must be one of {', '.join(ROLES)}, not {shown(message.get('role'))}{hint}",
                          f"{where}.role")
        text, images = _content(message.get("content"), role, where)
        native: dict[str, Any] = {"role": role, "content": text}
        if images:
            native["images"] = images
        if role == "assistant":
            calls = _tool_calls_in(message.get("tool_calls"), where, names)
            if calls:
                native["tool_calls"] = calls
            reasoning = message.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                native["thinking"] = reasoning
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str):
                raise invalid(f"'{where}.tool_call_id' must be the id of the tool call this answers",
                              f"{where}.tool_call_id")
            native["tool_call_id"] = call_id
            name = message.get("name") if isinstance(message.get("name"), str) else names.get(call_id)
            if name:
                native["tool_name"] = name
        out.append(native)
    return out


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tools in Ollama's shape, narrowed by `tool_choice` ("none": none; a named function: that one)."""
    value = body.get("tools")
    if value is None:
        value = []
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise invalid(f"'tools' must be a list of at most {MAX_TOOLS} tools", "tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if json_object(tool, where).get("type") != "function":
            raise invalid(f"'{where}.type' must be 'function' (Ollama has no custom tools)", f"{where}.type")
        function = json_object(tool.get("function"), f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"'{where}.function.name' must be a non-empty string", f"{where}.function.name")
        native: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            native["description"] = function["description"]
        if function.get("parameters") is not None:
            native["parameters"] = json_object(function["parameters"], f"{where}.function.parameters")
        tools.append({"type": "function", "function": native})
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "required"):  # "required" cannot be enforced by Ollama
        return tools
    if choice == "none":
        return []
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise invalid(f"'tool_choice' names the function {shown(name)}, which is not in 'tools'", "tool_choice")
        return chosen
    raise invalid("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                  "\"function\": {\"name\": ...}}", "tool_choice")


def _format(value: Any) -> Any:
    """`response_format` as Ollama's `format`: "json", a JSON schema, or None for plain text."""
    if value is None:
        return None
    kind = json_object(value, "response_format").get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = json_object(value.get("json_schema"), "response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            return "json"
        return json_object(schema, "response_format.json_schema.schema")
    raise invalid("'response_format.type' must be 'text', 'json_object' or 'json_schema'", "response_format.type")


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and len(value) <= MAX_STOP and all(isinstance(s, str) for s in value):
        return value
    raise invalid(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("frequency_penalty", -2, 2),
                            ("presence_penalty", -2, 2)):
        value = _number(body, name, low, high)
        if value is not None:
            options[name] = value
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    if seed is not None:
        options["seed"] = seed
    # max_completion_tokens replaces the deprecated max_tokens; either caps the answer.
    limit = _integer(body, "max_completion_tokens", 1)
    if limit is None:
        limit = _integer(body, "max_tokens", 1)
    if limit is not None:
        options["num_predict"] = limit
    stop = _stop(body.get("stop"))
    if stop:
        options["stop"] = stop
    return options


def _unsupported(body: Mapping[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise invalid("'n' must be 1: Ollama gives one answer per request", "n")
    if body.get("functions") is not None or body.get("function_call") is not None:
        raise invalid("'functions' and 'function_call' are deprecated: send 'tools' and 'tool_choice'", "functions")
    if body.get("audio") is not None or "audio" in (body.get("modalities") or ()):
        raise invalid("audio output is not supported by Ollama's chat API", "modalities")


def chat_body(request: ChatRequest) -> dict[str, Any]:
    """The /api/chat body for a Chat Completions request (see the module's docstring); always streamed."""
    body = request.body
    _unsupported(body)
    chat: dict[str, Any] = {"model": request.model, "messages": _messages(body.get("messages")), "stream": True}
    options = _options(body)
    if options:
        chat["options"] = options
    tools = _tools(body)
    if tools:
        chat["tools"] = tools
    response_format = _format(body.get("response_format"))
    if response_format is not None:
        chat["format"] = response_format
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in THINK:
            raise invalid(f"'reasoning_effort' must be one of {', '.join(THINK)}", "reasoning_effort")
        chat["think"] = THINK[effort]
    if flag(body, "logprobs"):
        chat["logprobs"] = True
        top = _integer(body, "top_logprobs", 0, 20)
        if top:
            chat["top_logprobs"] = top
    return chat


def plain_chat(chat: Mapping[str, Any], profiles: Profiles, cache: FitCache) -> dict[str, Any]:
    """The /api/chat body for a plain model: `num_ctx` from its profile, once the conversation is known
    to fit it with the answer's reserve (else `ContextOverflow`, before anything is sent)."""
    model = chat["model"]
    profile = profiles.for_model(model)
    tokenizer = load_tokenizer(profile.tokenizer)
    turns = [counted_turn(m) for m in chat["messages"]]
    needed = count_messages(profile.format, turns, tokenizer, cache)
    tools = chat.get("tools")
    tool_tokens = count_json(profiles, model, tools) if tools else 0
    window = profile.context_window
    if needed + tool_tokens + profile.reserve_output > profile.usable_window(window):
        extra = f" plus {tool_tokens} for the tool definitions" if tool_tokens else ""
        raise ContextOverflow(
            f"the conversation needs {needed} tokens{extra} and {profile.reserve_output} are kept for the answer: "
            f"more than the context window of {window} tokens for {model}"
            + ("" if profile.exact else f" (estimated counts, with a margin of {profile.margin})")
            + "; shorten the conversation or give the model a larger context_window in the profile file "
              "(ROLE_INJECTOR_MODELS)",
            details={"messages_tokens": needed, "attached_tokens": tool_tokens,
                     "reserve_output": profile.reserve_output, "context_window": window},
        )
    return {**chat, "options": {**chat.get("options", {}), "num_ctx": window}}




# --- its answers ---------------------------------------------------------------------------------------


def answer_delta(line: Mapping[str, Any]) -> Delta:
    """One line of Ollama's streamed /api/chat answer; an error line (how Ollama reports a failure
    inside a stream) is an `UpstreamError`."""
    if "error" in line:
        raise UpstreamError(f"Ollama: {line['error']}")
    message = mapping(line.get("message"))
    listed = message.get("tool_calls") or []
    if not isinstance(listed, list):
        raise UpstreamError("Ollama's answer has tool_calls that are not a list")
    calls = tuple(
        ToolCall(name=str(function.get("name") or ""), arguments=function.get("arguments"),
                 id=call["id"] if isinstance(call.get("id"), str) and call["id"] else None)
        for call in listed if isinstance(call, dict)
        for function in (mapping(call.get("function")),)
    )
    text, thinking = message.get("content"), message.get("thinking")
    logprobs = line.get("logprobs")
    done = line.get("done") is True
    return Delta(
        content=text if isinstance(text, str) else "",
        reasoning=thinking if isinstance(thinking, str) else "",
        tool_calls=calls,
        logprobs=tuple(logprobs) if isinstance(logprobs, list) else (),
        done=done,
        stop_reason=str(line.get("done_reason") or "") if done else "",
        prompt_tokens=count(line.get("prompt_eval_count")) if done else 0,
        completion_tokens=count(line.get("eval_count")) if done else 0,
    )


def _unix(timestamp: Any) -> int:
    """Seconds since the epoch of Ollama's RFC 3339 times (nanoseconds and all); 0 when unknown."""
    if not isinstance(timestamp, str):
        return 0
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)", timestamp)
    if match is None:
        return 0
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    try:
        return max(0, int(datetime.fromisoformat(match.group(1) + zone).timestamp()))
    except ValueError:
        return 0


def _owner(name: str) -> str:
    """Ollama's namespace of a model name: `library` for `qwen3:8b`, `org` for `hf.co/org/model`."""
    parts = name.split("/")
    return "library" if len(parts) == 1 else parts[-2]


def model_entries(tags: Any) -> list[ModelEntry]:
    """/api/tags (completed with the virtual models) as model entries."""
    if not isinstance(tags, dict) or not isinstance(tags.get("models"), list):
        raise UpstreamError("Ollama's /api/tags answer has no list of models")
    entries = []
    for entry in tags["models"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name") or entry.get("model"), str):
            continue
        name = entry.get("name") or entry["model"]
        virtual = "description" in entry  # what virtual_entry adds
        entries.append(ModelEntry(name, _unix(entry.get("modified_at")), OWNER if virtual else _owner(name)))
    return entries


# --- the engine ------------------------------------------------------------------------------------------


class OllamaEngine(Engine):
    """Ollama's native API (ROLE_INJECTOR_OLLAMA_URL, or an `engines:` entry of kind ollama)."""

    kind = EngineKind.OLLAMA
    label = "Ollama"
    models_path = "/api/tags"

    def chat_call(self, request: ChatRequest, virtual: VirtualRequest | None, profiles: Profiles,
                  cache: FitCache) -> ChatCall:
        chat = chat_body(request)
        if virtual is None:
            return self.call("/api/chat", encode_json(plain_chat(chat, profiles, cache)), None, chat_key(request))
        body, injection = rewrite_chat(chat, virtual)
        return self.call("/api/chat", encode_json(body), injection, chat_key(request))

    def deltas(self, answer: Answer) -> Iterator[Delta]:
        lines = read_lines(answer.chunks(), "ndjson", self.label)
        with closing(lines):
            for line in lines:
                yield answer_delta(line)

    def model_list(self, listed: Any, roles: RoleSet, declared: Mapping[str, VirtualModel]) -> list[ModelEntry]:
        return model_entries(tags_response(listed, roles, declared))

    def refusal(self, answer: Any, status: int) -> str:
        message = answer.get("error") if isinstance(answer, dict) else None
        return message if isinstance(message, str) else f"Ollama answered {status}"
