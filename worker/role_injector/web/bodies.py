"""Request bodies: read within a limit, parsed as JSON, checked; every wrong shape is a 400 naming the field."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from flask import g, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from role_injector.errors import (
    ClientClosed,
    InvalidRequest,
    RequestTimeout,
    RoleInjectorError,
    UnsupportedMediaType,
    shown,
)
from role_injector.formats import FORMATS, Message
from role_injector.injection import InjectRequest
from role_injector.json_text import SURROGATE_ESCAPE, has_lone_surrogate
from role_injector.options import MAX_MESSAGES, REQUEST_FIELDS, parse_options, tokens
from role_injector.profiles import check_model_length
from role_injector.roles import NAME_PATTERN
from role_injector.web.state import settings

INJECT_FIELDS = {"role", "messages", "prompt", "variables", "model", "budget", "context_window",
                 "reserve_output", "format", "context_policy", "history_share", "selection", "query"}
ROLE_MODEL_FIELDS = {"base", "name", "budget", "variables", "replace"}


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


def read_proxy_body() -> bytes:
    """A body for the proxy routes, within their larger limit (images: ROLE_INJECTOR_MAX_PROXY_BODY_BYTES)."""
    return read_body(settings().max_proxy_body_bytes)


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
    if SURROGATE_ESCAPE.search(text) and has_lone_surrogate(body):
        raise invalid("the body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not text")
    return body


def check_role_name(name: Any, field: str = "role") -> str:
    if not isinstance(name, str) or not name:
        raise invalid(f"'{field}' must be a non-empty string", field=field)
    if not NAME_PATTERN.fullmatch(name):
        raise invalid(
            f"'{field}' must be a role name: lower-case letters, digits, '.', '_', '-', at most 64 characters",
            field=field,
        )
    return name


def _tokens(body: Mapping[str, Any], field: str, minimum: int = 1) -> int | None:
    value = body.get(field)
    return None if value is None else tokens(value, field, minimum)


def _string(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(f"'{field}' must be a string", field=field)
    return value


def _model(body: Mapping[str, Any]) -> str | None:
    model = _string(body, "model")
    check_model_length(model)
    return model


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
            raise invalid(f"{where}.role must be 'user' or 'assistant', not {shown(role)}", field=where)
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
    options = parse_options(body, REQUEST_FIELDS)
    format_name = _string(body, "format")
    if format_name is not None and format_name not in FORMATS:
        raise invalid(f"'format' must be one of {', '.join(FORMATS)}", field="format")
    return InjectRequest(
        role=role,
        turns=turns,
        options=options,
        model=_model(body),
        context_window=_tokens(body, "context_window"),
        reserve_output=_tokens(body, "reserve_output", minimum=0),
        format=format_name,
        query=_string(body, "query"),
    )


def parse_count(body: Mapping[str, Any]) -> tuple[str, str | None]:
    _unknown(body, {"text", "model"})
    text = body.get("text")
    if not isinstance(text, str):
        raise invalid("'text' must be a string", field="text")
    return text, _model(body)


def parse_role_model(body: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The options of `ollama_models.plan_role_model` from a POST /v1/roles/<name>/ollama-model body,
    and whether an existing model that Role Injector did not make may be replaced."""
    _unknown(body, ROLE_MODEL_FIELDS)
    options = parse_options(body, {"budget", "variables"})
    replace = body.get("replace", False)
    if not isinstance(replace, bool):
        raise invalid("'replace' must be true or false", field="replace")
    return {"base": _string(body, "base"), "name": _string(body, "name"), "budget": options.budget,
            "variables": options.variables}, replace
