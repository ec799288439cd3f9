"""Rewriting Ollama API requests for virtual models (a base model + a role), with no HTTP in it.

The web layer (`role_injector.web.ollama`) parses a client's body, asks here whether its model is
virtual, and forwards either the client's own bytes (plain model) or the body rewritten here:

- `/api/chat`: the client's system messages give way to the fitted role; the other messages keep
  every field (images, tool_calls, ...) with their content neutralised;
- `/api/generate`: the role becomes `system`, or, with `raw: true`, the whole prompt is rendered in
  the model's chat format with the role in front and the client's prompt as the user turn;
- both: the role and the conversation share the context by the context policy (`inject`; the oldest
  messages may be left out), `options` = role params, then the virtual model's params, then the
  client's own options (the client wins); `options.num_ctx` is the context window (never lower than
  the client asked, the same on every turn) and `options.num_keep` covers the system part, so
  Ollama never cuts the prompt and a context shift keeps the role;
- `/api/tags` and `/api/show` answers are completed with the virtual models.

Errors are `role_injector.errors` classes; the web layer shows them in Ollama's shape. The
OpenAI-compatible route (`role_injector.openai_compat`) builds /api/chat bodies and gives them to
`rewrite_chat` too, so a virtual model gets the same role on both routes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from role_injector.errors import ContextOverflow, InvalidRequest, UpstreamError, VariableError
from role_injector.fitting import FitCache
from role_injector.formats import Message, neutralise
from role_injector.injection import Injection, InjectRequest, find_role, inject
from role_injector.options import MAX_TOKENS, RoleOptions, tokens
from role_injector.profiles import Profiles, VirtualModel
from role_injector.roles import Role
from role_injector.store import RoleSet
from role_injector.tokens import load_tokenizer

ZERO_TIME = "0001-01-01T00:00:00Z"  # what Ollama sends for "never"; Go clients parse it


def invalid(message: str, **details: Any) -> InvalidRequest:
    return InvalidRequest(message, details=details)


def resolve_virtual(profiles: Profiles, name: Any) -> VirtualModel | None:
    """The virtual model a request names (declared, or `base@role`), or None for a plain model."""
    if not isinstance(name, str) or not name:
        return None
    found = profiles.virtual_model(name)
    if found is None and name.endswith(":latest"):  # Ollama clients may add the default tag
        found = profiles.virtual_model(name[: -len(":latest")])
    return found


def model_field(body: Mapping[str, Any]) -> str:
    """Where the body names its model: `model`, or `name` in older clients' /api/show."""
    return "model" if body.get("model") or not body.get("name") else "name"


# --- options and fitting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VirtualRequest:
    """A request on a virtual model: which one, the request's own layer of the role's settings (the
    proxies' context policy header), and where roles, profiles and counts come from."""

    virtual: VirtualModel
    roles: RoleSet
    profiles: Profiles
    cache: FitCache
    options: RoleOptions = field(default_factory=RoleOptions)  # over the virtual model's


@dataclass(frozen=True)
class Conversation:
    """What the role shares the context window with, and the client's own model options."""

    turns: tuple[Message, ...] = ()
    exchange_starts: frozenset[int] | None = None  # None: at every user turn
    attached_tokens: int = 0  # tool definitions, /api/generate's context
    attached_what: str = ""  # what they are, for an overflow's message
    client_options: Mapping[str, Any] = field(default_factory=dict)


def _options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise invalid("'options' must be an object of model options", field="options")
    return options


def num_ctx_option(value: Any, where: str) -> int | None:
    """A `num_ctx` option as a whole number of tokens (whole floats too), or None when it is not set."""
    if value is None:
        return None
    try:
        return tokens(value, "options.num_ctx", whole_floats=True)
    except InvalidRequest:
        raise invalid(f"{where} must be a whole number of tokens from 1 to {MAX_TOKENS}, not {value!r}",
                      field="options.num_ctx") from None


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
        raise invalid("'messages' must be a list of {role, content} objects", field="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(f"{where} must be an object with 'role' and 'content'", field=where)
        if not isinstance(message.get("role"), str):
            raise invalid(f"{where}.role must be a string", field=where)
        if message.get("content") is not None and not isinstance(message["content"], str):
            raise invalid(f"{where}.content must be a string", field=where)
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
    client_options = _options(body)
    turns = [m for m in messages if m["role"] != "system"]
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("'tools' must be a list", field="tools")
    base = request.virtual.base
    # An exchange starts at a user message; tool results belong to the exchange before them.
    injection, options = _inject_virtual(request, Conversation(
        turns=tuple(counted_turn(m) for m in turns),
        exchange_starts=frozenset(i for i, m in enumerate(turns) if m["role"] == "user"),
        attached_tokens=count_json(request.profiles, base, tools) if tools else 0,
        attached_what="the tool definitions",
        client_options=client_options,
    ))
    out = dict(body)
    out["model"] = base
    out["options"] = options
    if messages:  # an empty list asks Ollama to load the model: keep it empty
        out["messages"] = [{"role": "system", "content": injection.system}] + [
            {**m, "content": neutralise(m["content"])} if isinstance(m.get("content"), str) else m
            for m in turns[injection.dropped_messages:]
        ]
    return out, injection


# --- /api/generate ---------------------------------------------------------------------------------


def rewrite_generate(body: Mapping[str, Any], request: VirtualRequest) -> tuple[dict[str, Any], Injection]:
    """The body to send upstream for an /api/generate request on a virtual model, and the injection."""
    prompt = body.get("prompt")
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise invalid("'prompt' must be a string", field="prompt")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise invalid("'suffix' must be a string", field="suffix")
    context = body.get("context")
    if context is not None and not isinstance(context, list):
        raise invalid("'context' must be a list of token ids", field="context")
    raw = body.get("raw") is True
    client_options = _options(body)
    # In raw mode Ollama applies no template, so a suffix plays no part.
    turns = (Message("user", prompt if raw else prompt + (suffix or "")),) if prompt else ()
    injection, options = _inject_virtual(request, Conversation(
        turns=turns, attached_tokens=len(context or ()), attached_what="the context of earlier turns",
        client_options=client_options,
    ))
    out = dict(body)
    out["model"] = request.virtual.base
    out["options"] = options
    out.pop("system", None)  # the role is the system prompt
    if not prompt:  # an empty prompt asks Ollama to load the model: keep it empty
        return out, injection
    if raw:
        out["prompt"] = injection.prompt  # rendered in the model's format, content neutralised
    else:
        out["prompt"] = neutralise(prompt)
        out["system"] = injection.system
    return out, injection


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


def tags_response(upstream: Any, roles: RoleSet, profiles: Profiles) -> dict[str, Any]:
    """Ollama's model list plus the declared virtual models (after the real ones, by name)."""
    if not isinstance(upstream, dict) or not isinstance(upstream.get("models"), list):
        raise UpstreamError("Ollama's /api/tags answer is not an object with a 'models' list")
    declared = profiles.virtual_models
    real = [m for m in upstream["models"]
            if not (isinstance(m, dict) and (m.get("name") in declared or m.get("model") in declared))]
    virtual = []
    for name in sorted(declared):
        model = declared[name]
        base = next((m for m in real if isinstance(m, dict) and _same_model(m, model.base)), None)
        role = roles.roles.get(model.role)
        virtual.append(virtual_entry(model, base, role.version if role else None))
    return {**upstream, "models": real + virtual}
