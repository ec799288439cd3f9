"""Virtual models on the proxy routes (the Ollama-compatible proxy and the OpenAI-compatible route):
which engine and which virtual model a request's model name means, the request's own layer of the
role's settings (the context policy header), and the role's placement recorded alike on both routes
(metrics, the log line's figures, the dropped-messages header)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Response, g, request

from role_injector.engines.engine import ChatCall, Engine
from role_injector.engines.routing import CLIENT_SESSION_HEADERS, client_session
from role_injector.errors import InvalidRequest
from role_injector.injection import Injection, VirtualRequest
from role_injector.options import OptionError, RoleOptions
from role_injector.profiles import VirtualModel, check_model_length, resolve_virtual
from role_injector.web import metrics
from role_injector.web.state import cache, engines, profiles, roles

# Ollama clients cannot send fields of their own, but most can send headers: this one chooses the
# context policy of a request (role_injector.context) over the virtual model's and the role's.
POLICY_HEADER = "X-Role-Injector-Context-Policy"
# On every answer for a virtual model: how many of the oldest messages the policy left out, and the
# prompt's tokens as the worker counted them (exactly, or estimated with the profile's margin).
DROPPED_HEADER = "X-Role-Injector-Dropped-Messages"
PROMPT_TOKENS_HEADER = "X-Role-Injector-Prompt-Tokens"
COUNTS_HEADER = "X-Role-Injector-Counts"


@dataclass(frozen=True)
class Target:
    """What a request's model name means: the engine that serves it and, for a virtual model, the
    request on it (the role, the profiles, the cache and the request's own options); and the client's
    own session id, if it sent one under a routing header (for the routing key: engines/routing.py)."""

    engine: Engine
    virtual: VirtualRequest | None
    session: str | None = None


def target(name: Any, field: str = "model") -> Target:
    """The engine and virtual model (logged) a request's model name (its `field`) means; a plain
    model's name is sent to the engine as it is. A name longer than any model's is a 400."""
    check_model_length(name, field)
    virtual = resolve_virtual(profiles(), name)
    if virtual is None:
        serving = engines().serving(profiles(), name if isinstance(name, str) else None)
        g.log.update(engine=serving.name)
        return Target(serving, None, _session(serving))
    serving = engines().serving(profiles(), virtual.base, virtual)
    g.log.update(model=virtual.name, base=virtual.base, role=virtual.role, engine=serving.name)
    return Target(serving, VirtualRequest(virtual, roles(), profiles(), cache(), header_options()), _session(serving))


def _session(serving: Engine) -> str | None:
    """The session id the client sent under a routing header: the common ones, or the engine's own."""
    return client_session(request.headers, (*CLIENT_SESSION_HEADERS, *serving.routing_headers))


def routed(call: ChatCall) -> ChatCall:
    """The call, its routing key logged (to find the request in a router's log)."""
    g.log.update(routing_key=call.routing_key)
    return call


def header_options() -> RoleOptions:
    """The request's layer of the role's settings: what the context policy header chooses."""
    value = request.headers.get(POLICY_HEADER)
    try:
        return RoleOptions(context_policy=None if value is None else value.strip())  # type: ignore[arg-type]
    except OptionError as exc:
        raise InvalidRequest(f"header {POLICY_HEADER} {exc.problem}", details={"header": POLICY_HEADER}) from None


@contextmanager
def placing(virtual: VirtualModel) -> Iterator[Callable[[Injection], None]]:
    """Times the placement of the role in a request (call the yielded function with the injection)
    and records it as every route that serves virtual models does: metrics and the log line's figures."""
    with metrics.injection(virtual.role) as record:

        def placed(injection: Injection) -> None:
            record(injection)
            g.log.update(system_tokens=injection.usage.system_tokens, trimmed=injection.fit.trimmed,
                         context_policy=injection.usage.context_policy,
                         dropped_messages=injection.dropped_messages,
                         tokens=injection.usage.prompt_tokens, exact=injection.usage.exact)

        yield placed


def mark_placed(response: Response, injection: Injection | None) -> Response:
    """The dropped-messages and prompt-count headers on an answer for a virtual model."""
    if injection is not None:
        response.headers[DROPPED_HEADER] = str(injection.dropped_messages)
        response.headers[PROMPT_TOKENS_HEADER] = str(injection.usage.prompt_tokens)
        response.headers[COUNTS_HEADER] = "exact" if injection.usage.exact else "estimate"
    return response
