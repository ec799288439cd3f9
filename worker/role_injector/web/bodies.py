"""Request bodies: read within a limit, parsed as JSON, checked; every wrong shape is a 400 naming the field."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from flask import g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from role_injector.context import PolicyFieldError, policy_fields
from role_injector.errors import (
    ClientClosed,
    InvalidRequest,
    RequestTimeout,
    RoleInjectorError,
    UnsupportedMediaType,
)
from role_injector.formats import FORMATS, Message
from role_injector.injection import InjectRequest
from role_injector.roles import NAME_PATTERN, SELECTIONS

MAX_TOKENS = 10_000_000
MAX_MESSAGES = 10_000
# A JSON escape of a UTF-16 surrogate (\ud800-\udfff); paired ones decode to one character, lone ones
# become strings that cannot be encoded as UTF-8 (and so could not be answered or logged).
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
INJECT_FIELDS = {"role", "messages", "prompt", "variables", "model", "budget", "context_window",
                 "reserve_output", "format", "context_policy", "history_share", "selection", "query"}
ROLE_MODEL_FIELDS = {"base", "name", "budget", "variables"}


def invalid(message: str, **details: Any) -> InvalidRequest:
    return InvalidRequest(message, details=details)


def read_body(limit: int | None = None) -> bytes:
    """The request body, at most `limit` bytes (default: the app's MAX_CONTENT_LENGTH), else 413."""
    if limit is not None:
        request.max_content_length = limit
    try:
        data = request.get_data(cache=False)
        limit = request.max_content_length
        # A body without Content-Length (chunked) is cut at the limit by Werkzeug, silently: if the
        # server's stream has more, the body was too large.
        if request.content_length is None and limit is not None and len(data) >= limit \
                and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    except (ClientDisconnected, OSError) as exc:
        raise _client_failure(exc) from None
    g.body_bytes = len(data)  # what the request's CPU work is admitted by (web/state.compute)
    return data


def stream_body(piece: int = 1 << 16) -> Iterator[bytes]:
    """The request body in pieces as it arrives, without the size limit (model layers for `ollama
    create` can be gigabytes), with the client's failures told apart from those of whoever reads it."""
    request.max_content_length = sys.maxsize  # (None would mean the app's limit)
    stream = request.stream
    while True:
        try:
            data = stream.read(piece)
        except (ClientDisconnected, OSError) as exc:
            raise _client_failure(exc) from None
        if not data:
            return
        yield data


def _client_failure(exc: BaseException) -> RoleInjectorError:
    cause = exc.__context__ if isinstance(exc, ClientDisconnected) else exc
    if isinstance(cause, TimeoutError):  # the server's read timeout (ROLE_INJECTOR_READ_TIMEOUT)
        return RequestTimeout("the client stopped sending its request body (read timeout)")
    return ClientClosed("the client closed the connection while sending its body")


def parse_json_object(data: bytes, content_type: str | None) -> dict[str, Any]:
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType(
            "send the body as JSON with 'Content-Type: application/json'",
            details={"content_type": content_type},
        )
    return _json_object(data)


def parse_ollama_body(data: bytes) -> dict[str, Any]:
    """A body as Ollama reads it: a JSON object, whatever the Content-Type says."""
    if not data.strip():
        raise invalid("missing request body: send a JSON object")
    return _json_object(data)


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        # Strict UTF-8 (RFC 8259): json.loads(bytes) would let encoded lone surrogates through.
        text = data.decode("utf-8-sig")
        body = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise invalid("the body is not valid JSON in UTF-8 (or is nested too deeply)") from None
    if not isinstance(body, dict):
        raise invalid(f"the body must be a JSON object, not {type(body).__name__}")
    if SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(body):
        raise invalid("the body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not text")
    return body


def encode_json(body: Any) -> bytes:
    """A JSON body to send on: compact, UTF-8. orjson is ten times faster than the stdlib on the large
    bodies the proxy re-encodes (images); integers beyond 64 bits, which it refuses, take the stdlib."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def check_role_name(name: Any, field: str = "role") -> str:
    if not isinstance(name, str) or not name:
        raise invalid(f"'{field}' must be a non-empty string", field=field)
    if not NAME_PATTERN.fullmatch(name):
        raise invalid(
            f"'{field}' must be a role name: lower-case letters, digits, '.', '_', '-', at most 64 characters",
            field=field,
        )
    return name


def _integer(body: Mapping[str, Any], field: str, minimum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{field}' must be a whole number of tokens", field=field)
    if not minimum <= value <= MAX_TOKENS:
        raise invalid(f"'{field}' must be from {minimum} to {MAX_TOKENS}", field=field)
    return value


def _string(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(f"'{field}' must be a string", field=field)
    return value


def _variables(body: Mapping[str, Any]) -> dict[str, str]:
    variables = body.get("variables")
    if variables is None:
        return {}
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise invalid("'variables' must be an object whose values are strings", field="variables")
    return variables


def _unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
                      unknown=unknown)


def parse_messages(value: Any) -> tuple[Message, ...]:
    if not isinstance(value, list):
        raise invalid("'messages' must be a list of {role, content} objects", field="messages")
    if len(value) > MAX_MESSAGES:
        raise invalid(f"'messages' has more than {MAX_MESSAGES} entries", field="messages")
    turns = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise invalid(f"{where} must be an object with 'role' and 'content'", field=where)
        role, content = item.get("role"), item.get("content")
        if role == "system":
            raise invalid(
                f"{where} is a system message: the role provides the system message; "
                "pass extra instructions as a variable or a user message",
                field=where,
            )
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role must be 'user' or 'assistant', not {role!r}", field=where)
        if not isinstance(content, str):
            raise invalid(f"{where}.content must be a string", field=where)
        turns.append(Message(role, content))
    return tuple(turns)


def parse_inject(body: Mapping[str, Any]) -> InjectRequest:
    _unknown(body, INJECT_FIELDS)
    role = check_role_name(body.get("role"))
    if body.get("messages") is not None and body.get("prompt") is not None:
        raise invalid("send either 'messages' or 'prompt', not both")
    turns: tuple[Message, ...] = ()
    if body.get("messages") is not None:
        turns = parse_messages(body["messages"])
    prompt = _string(body, "prompt")
    if prompt is not None:
        turns = (Message("user", prompt),)
    variables = _variables(body)
    format_name = _string(body, "format")
    if format_name is not None and format_name not in FORMATS:
        raise invalid(f"'format' must be one of {', '.join(FORMATS)}", field="format")
    try:
        policy = policy_fields(body)
    except PolicyFieldError as exc:
        raise invalid(str(exc), field=exc.field) from None
    selection = _string(body, "selection")
    if selection is not None and selection not in SELECTIONS:
        raise invalid(f"'selection' must be one of {', '.join(SELECTIONS)}", field="selection")
    return InjectRequest(
        role=role,
        turns=turns,
        variables=variables,
        model=_string(body, "model"),
        budget=_integer(body, "budget", 1),
        context_window=_integer(body, "context_window", 1),
        reserve_output=_integer(body, "reserve_output", 0),
        format=format_name,
        **policy,
        selection=selection,
        query=_string(body, "query"),
    )


def parse_count(body: Mapping[str, Any]) -> tuple[str, str | None]:
    _unknown(body, {"text", "model"})
    text = body.get("text")
    if not isinstance(text, str):
        raise invalid("'text' must be a string", field="text")
    return text, _string(body, "model")


def parse_role_model(body: Mapping[str, Any]) -> dict[str, Any]:
    """The options of `ollama_models.plan_role_model` from a POST /v1/roles/<name>/ollama-model body."""
    _unknown(body, ROLE_MODEL_FIELDS)
    return {"base": _string(body, "base"), "name": _string(body, "name"), "budget": _integer(body, "budget", 1),
            "variables": _variables(body)}
