"""One injection: resolve a role, choose its budget from the context, fit it and render the prompt."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from role_injector.errors import ContextOverflow, RoleNotFound
from role_injector.fitting import DEFAULT_CACHE, Fit, FitCache, SectionFit, fit_budget, section_fits
from role_injector.formats import RENDERERS, Message, neutralise, render_chatml
from role_injector.profiles import Profiles
from role_injector.roles import Role, resolve_variables
from role_injector.store import RoleSet
from role_injector.tokens import Tokenizer, load_tokenizer

# When the context, not the caller, sets the budget, it shrinks in steps of this many tokens, so
# the system prompt stays byte-identical across the turns of a growing conversation and the model
# server's prompt cache keeps reusing it.
BUDGET_STEP = 512


@dataclass(frozen=True)
class InjectRequest:
    role: str
    turns: Sequence[Message] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    model: str | None = None
    budget: int | None = None
    context_window: int | None = None
    reserve_output: int | None = None
    format: str | None = None
    # Tokens the request carries besides its messages (tool definitions, /api/generate's context):
    # they take room in the context like the messages do.
    attached_tokens: int = 0


@dataclass(frozen=True)
class Usage:
    tokenizer: str
    exact: bool
    system_tokens: int
    system_tokens_full: int
    budget: int
    messages_tokens: int  # the prompt without the system text: turns plus the format's frame
    attached_tokens: int  # tool definitions and the like, sent beside the prompt
    prompt_tokens: int
    context_window: int
    reserve_output: int
    num_ctx: int


@dataclass(frozen=True)
class Injection:
    role: Role
    model: str | None
    format: str
    turns: tuple[Message, ...]
    prompt: str
    fit: Fit
    usage: Usage

    @property
    def system(self) -> str:
        return self.fit.system

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.role.params)


def find_role(roles: RoleSet, name: str) -> Role:
    """The role called `name`, or `RoleNotFound` with up to three close names as suggestions."""
    role = roles.roles.get(name)
    if role is None:
        suggestions = difflib.get_close_matches(name, list(roles.roles), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        raise RoleNotFound(f"role {name!r} not found{hint}", details={"role": name, "suggestions": suggestions})
    return role


def step_down(tokens: int) -> int:
    return tokens - tokens % BUDGET_STEP if tokens >= BUDGET_STEP else tokens


def adds_up(format_name: str, tokenizer: Tokenizer) -> bool:
    """In ChatML with a vocabulary whose <|im_start|> and <|im_end|> are special tokens, each content
    sits between a newline and a special token, so nothing merges across its edges unless it starts
    with white space: a prompt's count is its frame's plus its contents'. Counting that way lets a
    request skip encoding the prompt, and re-sent turns of a conversation are counted once."""
    return format_name == "chatml" and tokenizer.is_special("<|im_end|>")


def count_messages(format_name: str, turns: Sequence[Message], tokenizer: Tokenizer, cache: FitCache) -> int:
    """Tokens of the prompt without the system text: the turns and the format's frame."""
    if not adds_up(format_name, tokenizer) or any(m.content[:1].isspace() for m in turns):
        return tokenizer.count_prompt(RENDERERS[format_name]("", turns))

    def frame(role: str | None) -> int:
        empty = render_chatml("", [Message(role, "")] if role else [])
        return cache.count(("chatml-frame", role), empty, tokenizer, prompt=True)

    def content(text: str) -> int:
        return cache.count(("content", hashlib.sha256(text.encode()).digest()), text, tokenizer)

    return frame(None) + sum(frame(m.role) - frame(None) + content(m.content) for m in turns)


def count_prompt(format_name: str, tokenizer: Tokenizer, fit: Fit, messages_tokens: int, prompt: str) -> int:
    if adds_up(format_name, tokenizer) and not fit.system[:1].isspace():
        return messages_tokens + fit.tokens
    return tokenizer.count_prompt(prompt)


def inject(
    roles: RoleSet,
    profiles: Profiles,
    request: InjectRequest,
    cache: FitCache = DEFAULT_CACHE,
) -> Injection:
    """Resolve `request.role` in `roles`, fit it into its budget and render the whole prompt.

    The model (request, else the role's) picks the profile: tokenizer, format, context window. The
    budget is the request's, else the role's, else what the context leaves after the messages and
    the answer's reserve (see docs/architecture.md, "The budget rule"). Raises `RoleNotFound`,
    `VariableError`, `InvalidRequest` (undeclared variables), `ContextOverflow` or `BudgetTooSmall`.
    """
    role = find_role(roles, request.role)
    model = request.model or role.model
    profile = profiles.for_model(model)
    format_name = request.format or profile.format
    tokenizer = load_tokenizer(profile.tokenizer)
    values = resolve_variables(role, request.variables)
    turns = tuple(Message(m.role, neutralise(m.content)) for m in request.turns)
    # Content is neutralised once here (the fitted system text already is), so render directly.
    renderer = RENDERERS[format_name]

    context_window = request.context_window or profile.context_window
    reserve_output = profile.reserve_output if request.reserve_output is None else request.reserve_output
    messages_tokens = count_messages(format_name, turns, tokenizer, cache)
    attached = request.attached_tokens
    available = profile.usable_window(context_window) - reserve_output - messages_tokens - attached
    if available < 0:
        raise ContextOverflow(
            f"the messages need {messages_tokens} tokens"
            + (f", what is attached to them {attached}" if attached else "")
            + f" and the answer {reserve_output}, more than the context window of {context_window} tokens"
            + ("" if profile.exact else f" (estimated counts, with a margin of {profile.margin})"),
            details={
                "messages_tokens": messages_tokens,
                "attached_tokens": attached,
                "reserve_output": reserve_output,
                "context_window": context_window,
            },
        )
    explicit = request.budget if request.budget is not None else role.budget
    budget = explicit if explicit is not None and explicit <= available else step_down(available)

    fit = fit_budget(role, values, budget, tokenizer, cache)
    prompt = renderer(fit.system, turns)
    usage = Usage(
        tokenizer=tokenizer.name,
        exact=profile.exact,
        system_tokens=fit.tokens,
        system_tokens_full=fit.full_tokens,
        budget=budget,
        messages_tokens=messages_tokens,
        attached_tokens=attached,
        prompt_tokens=count_prompt(format_name, tokenizer, fit, messages_tokens, prompt),
        context_window=context_window,
        reserve_output=reserve_output,
        num_ctx=context_window,
    )
    return Injection(role, model, format_name, turns, prompt, fit, usage)


@dataclass(frozen=True)
class InjectionPlan:
    """An injection and, per section, what its fit kept, cut or dropped (POST /v1/plan)."""

    injection: Injection
    sections: tuple[SectionFit, ...]


def plan_injection(
    roles: RoleSet,
    profiles: Profiles,
    request: InjectRequest,
    cache: FitCache = DEFAULT_CACHE,
) -> InjectionPlan:
    """`inject` itself, then the section detail of the fit it made (same values, same tokenizer)."""
    injection = inject(roles, profiles, request, cache)
    values = resolve_variables(injection.role, request.variables)
    tokenizer = load_tokenizer(profiles.for_model(injection.model).tokenizer)
    return InjectionPlan(injection, section_fits(injection.role, values, injection.fit, tokenizer, cache))
