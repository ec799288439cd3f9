"""OpenAI's Chat Completions API in terms of Ollama's native /api/chat, both ways, with no HTTP in it.

OpenAI clients cannot set `num_ctx`, so the worker does not forward them to Ollama's own /v1 route:
the web layer (`role_injector.web.openai`) parses the client's body here into an Ollama /api/chat body,
gives virtual models their role exactly as the Ollama proxy does (`ollama_proxy.rewrite_chat`) or
checks a plain model's conversation against its profile's window (`plain_chat`), sends it upstream
(always streamed, so a long answer is never one silent wait and every read is bounded), and turns
Ollama's NDJSON lines back into OpenAI's shapes:

- request: `developer`/`system`/`user`/`assistant`/`tool` messages (text and image content parts,
  tool calls with JSON-string arguments, tool results named by `tool_call_id`), `temperature`,
  `top_p`, `max_tokens`/`max_completion_tokens` → `num_predict`, `stop`, `seed`, the penalties,
  `response_format` → `format`, `tools`/`tool_choice`, `reasoning_effort` → `think`, `logprobs`;
- answer: one `chat.completion` object, or `chat.completion.chunk` events for SSE with `data: [DONE]`
  and, on request, a last chunk with `usage`; `finish_reason` `stop`, `length` or `tool_calls`;
  tool calls get ids and their arguments as a JSON string.

What OpenAI's API has and Ollama's cannot do (`n` > 1, audio, functions, remote image URLs) is a
clear `InvalidRequest`; hints with no effect on a local model (`user`, `store`, `metadata`, ...) are
ignored, as Ollama's own OpenAI route does. Unset sampling options are left to the role, the
virtual model and the model's own defaults (Ollama's /v1 route forces OpenAI's 1.0 instead).
"""

from __future__ import annotations

import binascii
import json
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from role_injector.errors import ContextOverflow, InvalidRequest, UpstreamError
from role_injector.fitting import FitCache
from role_injector.injection import count_messages
from role_injector.ollama_proxy import count_json, counted_turn
from role_injector.options import MAX_MESSAGES, MAX_TOKENS
from role_injector.profiles import Profiles
from role_injector.tokens import load_tokenizer

MAX_TOOLS = 128  # OpenAI's own limit
MAX_STOP = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# OpenAI's reasoning efforts on Ollama's `think` (false, or a level for models that take one).
THINK = {"none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high", "xhigh": "high",
         "max": "high"}
IMAGE_URL = re.compile(r"data:(?:image/(?:png|jpeg|jpg|webp|gif))?;base64,", re.IGNORECASE)
OWNER = "role-injector"  # `owned_by` of virtual models in /v1/models


def invalid(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, details={"field": param} if param else {})


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape; `kind` is OpenAI's `type` (see `errors.KINDS`)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# --- the request -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatCompletionRequest:
    model: str
    stream: bool  # what the client asked; upstream is always streamed
    include_usage: bool  # stream_options.include_usage
    chat: dict[str, Any]  # the Ollama /api/chat body


def _number(body: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number from {low:g} to {high:g}, not {value!r}", name)
    return value


def _integer(body: Mapping[str, Any], name: str, low: int, high: int = MAX_TOKENS) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(f"'{name}' must be a whole number from {low} to {high}, not {value!r}", name)
    return value


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'{name}' must be true or false, not {value!r}", name)
    return bool(value)


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"'{where}' must be an object", where)
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
        kind = _object(part, here).get("type")
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
            raise invalid(f"'{here}.type' {kind!r} is not a content part a {role} message can have", here)
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
        function = _object(_object(call, here).get("function"), f"{here}.function")
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
        role = ROLES.get(_object(message, where).get("role"))
        if role is None:
            hint = "; the 'function' role is deprecated: send tool results as 'tool'" \
                if message.get("role") == "function" else ""
            raise invalid(f"'{where}.role' must be one of {', '.join(ROLES)}, not {message.get('role')!r}{hint}",
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
        if _object(tool, where).get("type") != "function":
            raise invalid(f"'{where}.type' must be 'function' (Ollama has no custom tools)", f"{where}.type")
        function = _object(tool.get("function"), f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise invalid(f"'{where}.function.name' must be a non-empty string", f"{where}.function.name")
        native: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            native["description"] = function["description"]
        if function.get("parameters") is not None:
            native["parameters"] = _object(function["parameters"], f"{where}.function.parameters")
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
            raise invalid(f"'tool_choice' names the function {name!r}, which is not in 'tools'", "tool_choice")
        return chosen
    raise invalid("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                  "\"function\": {\"name\": ...}}", "tool_choice")


def _format(value: Any) -> Any:
    """`response_format` as Ollama's `format`: "json", a JSON schema, or None for plain text."""
    if value is None:
        return None
    kind = _object(value, "response_format").get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = _object(value.get("json_schema"), "response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            return "json"
        return _object(schema, "response_format.json_schema.schema")
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


def parse_chat_request(body: Mapping[str, Any]) -> ChatCompletionRequest:
    """A Chat Completions request body as the Ollama /api/chat body to send (see the module's docstring)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string: an Ollama model or a virtual model (base@role)", "model")
    _unsupported(body)
    stream = _flag(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = stream_options is not None and _flag(_object(stream_options, "stream_options"), "include_usage")
    chat: dict[str, Any] = {"model": model, "messages": _messages(body.get("messages")), "stream": True}
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
    if _flag(body, "logprobs"):
        chat["logprobs"] = True
        top = _integer(body, "top_logprobs", 0, 20)
        if top:
            chat["top_logprobs"] = top
    return ChatCompletionRequest(model, stream, include_usage and stream, chat)


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


# --- the answer ------------------------------------------------------------------------------------


class NdjsonLines:
    """Ollama's streamed answer, fed in chunks as they arrive, as parsed JSON lines; a line longer
    than `limit` bytes or one that is not a JSON object is an `UpstreamError`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pending = b""

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        data = self._pending + data
        *lines, self._pending = data.split(b"\n")
        if len(self._pending) > self.limit:
            raise UpstreamError(f"Ollama sent a line longer than {self.limit} bytes")
        for line in lines:
            if line.strip():
                yield self._parse(line)

    def end(self) -> Iterator[dict[str, Any]]:
        if self._pending.strip():
            yield self._parse(self._pending)
        self._pending = b""

    @staticmethod
    def _parse(line: bytes) -> dict[str, Any]:
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, dict):
            raise UpstreamError("Ollama's answer has a line that is not a JSON object")
        if "error" in value:  # Ollama reports a failure inside a stream this way
            raise UpstreamError(f"Ollama: {value['error']}")
        return value


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


def model_list(tags: Any) -> dict[str, Any]:
    """/api/tags (completed with the virtual models) as OpenAI's model list."""
    if not isinstance(tags, dict) or not isinstance(tags.get("models"), list):
        raise UpstreamError("Ollama's /api/tags answer has no list of models")
    data = []
    for entry in tags["models"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name") or entry.get("model"), str):
            continue
        name = entry.get("name") or entry["model"]
        virtual = "description" in entry  # what ollama_proxy.virtual_entry adds
        data.append({"id": name, "object": "model", "created": _unix(entry.get("modified_at")),
                     "owned_by": OWNER if virtual else _owner(name)})
    return {"object": "list", "data": data}


def completion_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


@dataclass
class ChatAnswer:
    """Ollama's answer to one request, line by line, and what OpenAI's shapes need of it.

    `add` takes each native line and returns the OpenAI `delta` it carries (None when it carries
    nothing to show); the totals build the whole `chat.completion` and the last chunks."""

    model: str  # the name the client asked for (a virtual model's, not its base's)
    id: str = field(default_factory=completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)
    done: bool = False
    done_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    _started: bool = False

    def add(self, line: Mapping[str, Any]) -> tuple[dict[str, Any] | None, list[Any] | None]:
        """The OpenAI delta and logprobs of one native line."""
        message = line.get("message")
        if not isinstance(message, dict):
            message = {}
        delta: dict[str, Any] = {}
        if not self._started:
            delta["role"] = "assistant"
            self._started = True
        text = message.get("content")
        if isinstance(text, str) and text:
            delta["content"] = text
            self.content.append(text)
        thinking = message.get("thinking")
        if isinstance(thinking, str) and thinking:
            delta["reasoning"] = thinking
            self.reasoning.append(thinking)
        calls = [self._tool_call(call) for call in message.get("tool_calls") or () if isinstance(call, dict)]
        if calls:
            delta["tool_calls"] = calls
        logprobs = line.get("logprobs") if isinstance(line.get("logprobs"), list) else None
        if logprobs:
            self.logprobs.extend(logprobs)
        if line.get("done") is True:
            self.done = True
            self.done_reason = str(line.get("done_reason") or "")
            self.prompt_tokens = _count(line.get("prompt_eval_count"))
            self.completion_tokens = _count(line.get("eval_count"))
        if "role" in delta:
            delta.setdefault("content", "")  # as OpenAI's first chunk has it
        return (delta or None), logprobs

    def _tool_call(self, call: Mapping[str, Any]) -> dict[str, Any]:
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = function.get("arguments")
        out = {
            "index": len(self.tool_calls),
            "id": call["id"] if isinstance(call.get("id"), str) and call["id"] else "call_" + secrets.token_hex(12),
            "type": "function",
            "function": {"name": str(function.get("name") or ""),
                         "arguments": arguments if isinstance(arguments, str)
                         else _compact(arguments if arguments is not None else {})},
        }
        self.tool_calls.append(out)
        return out

    @property
    def finish_reason(self) -> str:
        if self.done_reason == "length":
            return "length"
        return "tool_calls" if self.tool_calls else "stop"

    @property
    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def completion(self) -> dict[str, Any]:
        """The whole answer as one `chat.completion` object."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content), "refusal": None}
        if self.tool_calls:
            message["tool_calls"] = [{k: v for k, v in call.items() if k != "index"} for call in self.tool_calls]
            message["content"] = message["content"] or None
        if self.reasoning:
            message["reasoning"] = "".join(self.reasoning)
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message,
                         "logprobs": {"content": self.logprobs} if self.logprobs else None,
                         "finish_reason": self.finish_reason}],
            "usage": self.usage,
        }

    def chunk(self, delta: dict[str, Any], logprobs: list[Any] | None = None,
              finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": {"content": logprobs} if logprobs else None,
                             "finish_reason": finish_reason}]}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def sse(value: Any) -> bytes:
    """One server-sent event with a JSON payload, as OpenAI streams them."""
    return b"data: " + _compact(value).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatStream:
    """Ollama's native lines → OpenAI's SSE events for one streamed answer."""

    def __init__(self, answer: ChatAnswer, include_usage: bool) -> None:
        self.answer = answer
        self.include_usage = include_usage

    def _event(self, chunk: dict[str, Any]) -> bytes:
        if self.include_usage:  # null on every chunk but the last, as OpenAI sends it
            chunk["usage"] = None
        return sse(chunk)

    def events(self, line: Mapping[str, Any]) -> bytes:
        """The events one native line gives (after the last line: the finish, usage and [DONE])."""
        answer = self.answer
        delta, logprobs = answer.add(line)
        out = b"" if delta is None and not logprobs else self._event(answer.chunk(delta or {}, logprobs))
        if answer.done:
            out += self._event(answer.chunk({}, finish_reason=answer.finish_reason))
            if self.include_usage:
                out += sse({**answer.chunk({}), "choices": [], "usage": answer.usage})
            out += SSE_DONE
        return out
