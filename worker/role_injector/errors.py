"""Every error of Role Injector, in one place: its code, what it means and how each surface shows it.

The library raises these; nothing else decides a status. `KINDS` is the one table: the REST API
(`{"error": {"code", "message", "details"}}`), the Ollama-compatible proxy (`{"error": "..."}`), the
OpenAI-compatible route (`{"error": {"message", "type", "param", "code"}}`), the CLI's exit codes,
the OpenAPI document and the README are derived from it or tested against it.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

# What an error or a log line repeats of a client's (or an engine's) values is bounded: a 4 MiB model
# name is not answered, logged or printed back whole.
MAX_MESSAGE_CHARS = 2000  # an error's message
MAX_DETAIL_CHARS = 500  # a string in an error's details, a value in a request's log line
MAX_DETAIL_ITEMS = 20  # a list in an error's details
MAX_SHOWN_CHARS = 120  # a value quoted in a message (`shown`)


@dataclass(frozen=True)
class ErrorKind:
    code: str
    meaning: str
    rest_status: int
    ollama_status: int
    openai_type: str  # OpenAI's `error.type`
    exit_code: int  # of the `role-injector` command

    @property
    def openai_status(self) -> int:
        """The OpenAI-compatible route's status: Ollama's. OpenAI answers 400 where REST says 422 (its
        own `context_length_exceeded` is a 400), and OpenAI clients retry a 422 (LangChain does)."""
        return self.ollama_status


def _kinds(*kinds: ErrorKind) -> dict[str, ErrorKind]:
    return {kind.code: kind for kind in kinds}


KINDS: dict[str, ErrorKind] = _kinds(
    ErrorKind("invalid_request", "the request is malformed or names something that cannot be used",
              400, 400, "invalid_request_error", 2),
    ErrorKind("unauthorized", "missing or wrong API key", 401, 401, "authentication_error", 2),
    ErrorKind("host_not_allowed", "without an API key, the request names a Host the worker does not answer to"
              " (DNS rebinding; ROLE_INJECTOR_ALLOWED_HOSTS)", 403, 403, "invalid_request_error", 2),
    ErrorKind("not_found", "no such endpoint", 404, 404, "invalid_request_error", 2),
    ErrorKind("role_not_found", "no role of that name (close names in details.suggestions)",
              404, 404, "invalid_request_error", 3),
    ErrorKind("method_not_allowed", "the endpoint does not take that HTTP method", 405, 405,
              "invalid_request_error", 2),
    ErrorKind("payload_too_large", "the body is over the size limit", 413, 413, "invalid_request_error", 2),
    ErrorKind("request_timeout", "the client stopped sending its request body (ROLE_INJECTOR_READ_TIMEOUT)",
              408, 408, "invalid_request_error", 2),
    ErrorKind("unsupported_media_type", "the body is not sent as application/json", 415, 400,
              "invalid_request_error", 2),
    ErrorKind("missing_variable", "the role needs a variable the request did not give", 422, 400,
              "invalid_request_error", 4),
    ErrorKind("budget_too_small", "the role's required sections alone exceed the budget", 422, 400,
              "invalid_request_error", 5),
    ErrorKind("context_overflow", "the conversation and the answer's reserve do not fit the context window",
              422, 400, "invalid_request_error", 6),
    ErrorKind("invalid_role", "a role file cannot be loaded or used as it is", 422, 400,
              "invalid_request_error", 7),
    ErrorKind("invalid_profiles", "the model profile file is wrong", 503, 503, "server_error", 8),
    ErrorKind("invalid_config", "a setting (environment variable or option) is wrong", 503, 503, "server_error", 9),
    ErrorKind("tokenizer_unavailable", "the model's vocabulary cannot be used: a vocabulary file is missing or"
              " does not match its pinned sha256, or the engine has no tokenize endpoint", 503, 503, "server_error",
              10),
    ErrorKind("bad_upstream", "the engine (Ollama, llama.cpp, ...) answered with something that is not its API",
              502, 502, "server_error", 11),
    ErrorKind("upstream_unreachable", "the engine cannot be reached", 502, 502, "server_error", 11),
    ErrorKind("upstream_timeout", "the engine did not answer in time", 504, 504, "server_error", 12),
    ErrorKind("model_not_found", "the engine has no model of that name (pull it first)", 422, 404,
              "invalid_request_error", 13),
    ErrorKind("upstream_refused", "the engine answered with an error (its message is passed on)", 502, 502,
              "server_error", 14),
    ErrorKind("model_exists", "Ollama has a model of that name that Role Injector did not make (replace it"
              " explicitly: \"replace\": true, --replace)", 409, 409, "invalid_request_error", 15),
    ErrorKind("tool_failed", "a llama.cpp tool (trainer, quantizer, server) failed; the message ends with its output",
              502, 502, "server_error", 16),
    ErrorKind("overloaded", "the worker has as much CPU work in flight as it takes (ROLE_INJECTOR_CPU_QUEUE_BYTES); "
              "retry after the seconds in Retry-After", 503, 503, "server_error", 17),
    ErrorKind("client_closed", "the client went away before the answer (only logged: nobody receives it)",
              499, 499, "invalid_request_error", 2),
    ErrorKind("internal_error", "a defect of Role Injector; the worker's log has the trace", 500, 500,
              "server_error", 70),
)


# The HTTP framework's own errors (routing, body size) by status: which code of KINDS each is.
HTTP_STATUS_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                     415: "unsupported_media_type"}


def code_of_status(status: int) -> str:
    """The code of KINDS for an error the HTTP framework raised with `status`."""
    return HTTP_STATUS_CODES.get(status, "invalid_request" if status < 500 else "internal_error")


def bounded(text: str, limit: int) -> str:
    """`text`, or, when longer than `limit`, its start and end with how much was left out between."""
    if len(text) <= limit:
        return text
    tail = limit // 4
    return f"{text[:limit - tail]} … [{len(text) - limit} characters left out] … {text[len(text) - tail:]}"


def bounded_value(value: Any) -> Any:
    """A JSON-like value with its strings (keys too) and lists bounded (`MAX_DETAIL_*`)."""
    if isinstance(value, str):
        return bounded(value, MAX_DETAIL_CHARS)
    if isinstance(value, dict):
        return {bounded(str(key), MAX_DETAIL_CHARS): bounded_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        kept = [bounded_value(item) for item in value[:MAX_DETAIL_ITEMS]]
        return kept + ([f"… {len(value) - MAX_DETAIL_ITEMS} more"] if len(value) > MAX_DETAIL_ITEMS else [])
    return value


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = _SHOWN.maxlong = MAX_SHOWN_CHARS


def shown(value: Any) -> str:
    """A client's value quoted in a message, as `repr` but bounded (long strings cut in the middle)."""
    return _SHOWN.repr(value)


class RoleInjectorError(Exception):
    """Base error: a stable `code` (a key of `KINDS`), a message for people, details for programs.
    Both are bounded here, once for every surface (REST, the proxies, the CLI, logs)."""

    code = "invalid_request"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        message = bounded(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = bounded_value(details) if details else {}

    @property
    def kind(self) -> ErrorKind:
        return KINDS[self.code]


class InvalidRequest(RoleInjectorError):
    code = "invalid_request"


class RequestTimeout(RoleInjectorError):
    code = "request_timeout"


class ClientClosed(RoleInjectorError):
    """The HTTP client closed its connection while the worker waited on the engine for it."""

    code = "client_closed"


class Unauthorized(RoleInjectorError):
    code = "unauthorized"


class HostNotAllowed(RoleInjectorError):
    code = "host_not_allowed"


class RoleNotFound(RoleInjectorError):
    code = "role_not_found"


class UnsupportedMediaType(RoleInjectorError):
    code = "unsupported_media_type"


class VariableError(RoleInjectorError):
    code = "missing_variable"


class BudgetTooSmall(RoleInjectorError):
    code = "budget_too_small"


class ContextOverflow(RoleInjectorError):
    code = "context_overflow"


class RoleError(RoleInjectorError):
    """A role file that cannot be loaded; the message names the problem."""

    code = "invalid_role"


class ProfileError(RoleInjectorError):
    code = "invalid_profiles"


class ConfigError(RoleInjectorError):
    code = "invalid_config"


class VocabularyError(RoleInjectorError):
    code = "tokenizer_unavailable"


class UpstreamError(RoleInjectorError):
    """The engine's answer makes no sense for its API."""

    code = "bad_upstream"


class UpstreamUnreachable(RoleInjectorError):
    code = "upstream_unreachable"


class UpstreamTimeout(RoleInjectorError):
    code = "upstream_timeout"


class ModelNotFound(RoleInjectorError):
    code = "model_not_found"


class ModelExists(RoleInjectorError):
    """Creating a model would overwrite one that Role Injector did not make."""

    code = "model_exists"


class Overloaded(RoleInjectorError):
    """The worker's CPU work in flight is at its bound (`cpu_pool.CpuPool`): come back in a moment."""

    code = "overloaded"


class UpstreamRefused(RoleInjectorError):
    """The engine said no: an error status or an error line in its stream (`details.status`)."""

    code = "upstream_refused"


class ToolFailed(RoleInjectorError):
    """A llama.cpp tool run by `bake` exited with an error; the message ends with its last lines."""

    code = "tool_failed"
