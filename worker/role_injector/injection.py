"""One injection: resolve a role, share the context between role and conversation, fit and render."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from role_injector.context import first_kept, role_budget, step_down
from role_injector.errors import ContextOverflow, RoleNotFound, shown
from role_injector.fitting import Fit, FitCache, SectionFit, fit_budget, section_fits
from role_injector.formats import RENDERERS, Message, neutralise, render_chatml, system_part
from role_injector.options import RoleOptions
from role_injector.profiles import Profiles, VirtualModel, usable_window
from role_injector.relevance import Query
from role_injector.roles import Role, resolve_variables
from role_injector.store import RoleSet
from role_injector.tokens import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class Counting:
    """How a model is counted where its profile's vocabulary does not say: an engine's own
    (`engine_tokens.EngineTokenizer`, exact), or the profile's with its margin as an estimate."""

    tokenizer: Tokenizer
    exact: bool
    margin: float  # the window is divided by it (1.0 for exact counts)


@dataclass(frozen=True)
class InjectRequest:
    role: str
    turns: Sequence[Message] = ()
    # The request's layer of the role's settings (over a virtual model's, when it names one); the
    # role's own lie below (`RoleOptions.over`). A `selection` left unset is "relevance" with a `query`.
    options: RoleOptions = field(default_factory=RoleOptions)
    model: str | None = None
    context_window: int | None = None
    reserve_output: int | None = None
    format: str | None = None
    # Tokens the request carries besides its messages (tool definitions, /api/generate's context):
    # they take room in the context like the messages do.
    attached_tokens: int = 0
    # Indexes of the turns where an exchange starts, the only places where older turns may be cut
    # off; None: every user turn. (The Ollama proxy counts tool results as user turns, but they
    # belong to the exchange before them.)
    exchange_starts: frozenset[int] | None = None
    query: str | None = None  # what relevance selection ranks by; None: the conversation (`turns`)
    counting: Counting | None = None  # None: the profile's tokenizer, exactness and margin


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
    # Ollama's options.num_ctx: the context window itself, so it is the same on every turn of a
    # conversation (a changed num_ctx makes Ollama load the model again).
    num_ctx: int
    # Ollama's options.num_keep: the tokens of the prompt up to the end of the system text, so that a
    # context shift in Ollama keeps the role; None where the format puts the role elsewhere (mistral).
    num_keep: int | None
    context_policy: str
    history_share: float


@dataclass(frozen=True)
class Injection:
    role: Role
    model: str | None
    format: str
    turns: tuple[Message, ...]
    prompt: str
    fit: Fit
    usage: Usage
    dropped_messages: int  # the request's first N turns are not in the prompt (keep_role)
    params: Mapping[str, Any]  # the model options of every layer (role, virtual model, request)

    @property
    def system(self) -> str:
        return self.fit.system


# An unknown role's message names at most this many of the roles there are (when none is close).
LISTED_ROLES = 20


def find_role(roles: RoleSet, name: str) -> Role:
    """The role called `name`, or `RoleNotFound` with up to three close names as suggestions; when none
    is close, its message names the roles there are (the first `LISTED_ROLES` by name, and how many
    more), so a user who guessed a name sees what to pick."""
    role = roles.roles.get(name)
    if role is None:
        suggestions = roles.close_names(name)
        if suggestions:
            hint = f"; did you mean {', '.join(suggestions)}?"
        elif roles.roles:
            names = roles.sorted_names
            more = len(names) - LISTED_ROLES
            hint = f"; the roles are {', '.join(names[:LISTED_ROLES])}"
            hint += f" and {more} more (GET /v1/roles lists them all)" if more > 0 else ""
        else:
            hint = "; there are no roles in the roles folder"
        raise RoleNotFound(f"role {shown(name)} not found{hint}", details={"role": name, "suggestions": suggestions})
    return role


def relevance_query(role: Role, request: InjectRequest) -> Query | None:
    """What to rank sections by in relevance selection, or None for priority selection."""
    selection = request.options.selection or ("relevance" if request.query is not None else role.selection)
    if selection != "relevance":
        return None
    return Query.from_text(request.query) if request.query is not None else Query.from_turns(request.turns)


def adds_up(format_name: str, tokenizer: Tokenizer) -> bool:
    """In ChatML with a vocabulary whose <|im_start|> and <|im_end|> are special tokens, each content
    sits between a newline and a special token, so nothing merges across its edges unless it starts
    with white space: a prompt's count is its frame's plus its contents'. Counting that way lets a
    request skip encoding the prompt, and re-sent turns of a conversation are counted once."""
    return format_name == "chatml" and tokenizer.is_special("<|im_end|>")


@dataclass(frozen=True)
class TurnCosts:
    """What each turn adds to the prompt without the system text."""

    frame: int  # the prompt with neither system text nor turns
    each: tuple[int, ...]
    exact: bool  # frame + sum(each[i:]) is the exact count of turns[i:]; else each turn counted alone


def turn_costs(format_name: str, turns: Sequence[Message], tokenizer: Tokenizer, cache: FitCache) -> TurnCosts:
    """Every turn's cost, each distinct message counted once (cached by its sha256)."""
    renderer = RENDERERS[format_name]
    exact = adds_up(format_name, tokenizer) and not any(m.content[:1].isspace() for m in turns)
    frame = cache.count((format_name, "frame"), renderer("", []), tokenizer, prompt=True)

    def cost(message: Message) -> int:
        if exact:
            framed = render_chatml("", [Message(message.role, "")])
            digest = hashlib.sha256(message.content.encode()).digest()
            return (cache.count(("chatml-frame", message.role), framed, tokenizer, prompt=True) - frame
                    + cache.count(("content", digest), message.content, tokenizer))
        return prompt_tokens(renderer("", [message]), tokenizer, cache) - frame

    return TurnCosts(frame, tuple(map(cost, turns)), exact)


def count_messages(format_name: str, turns: Sequence[Message], tokenizer: Tokenizer, cache: FitCache) -> int:
    """Tokens of the prompt without the system text: the turns and the format's frame."""
    if adds_up(format_name, tokenizer) and not any(m.content[:1].isspace() for m in turns):
        costs = turn_costs(format_name, turns, tokenizer, cache)
        return costs.frame + sum(costs.each)
    return prompt_tokens(RENDERERS[format_name]("", turns), tokenizer, cache)


def prompt_tokens(prompt: str, tokenizer: Tokenizer, cache: FitCache) -> int:
    """`tokenizer.count_prompt(prompt)`, once per text: where counts cannot be added up, one request
    counts the same rendered text up to three times (the policy's checks, then the usage)."""
    return cache.count(("prompt", hashlib.sha256(prompt.encode()).digest()), prompt, tokenizer, prompt=True)


def count_prompt(format_name: str, tokenizer: Tokenizer, fit: Fit, messages_tokens: int, prompt: str,
                 cache: FitCache) -> int:
    if adds_up(format_name, tokenizer) and not fit.system[:1].isspace():
        return messages_tokens + fit.tokens
    return prompt_tokens(prompt, tokenizer, cache)


def count_system_part(format_name: str, fit: Fit, tokenizer: Tokenizer, cache: FitCache) -> int | None:
    """Tokens of the prompt up to the end of the system text (Ollama's num_keep), or None."""
    head = system_part(format_name, "")
    if head is None:
        return None
    if adds_up(format_name, tokenizer) and not fit.system[:1].isspace():
        return cache.count((format_name, "system-part"), head, tokenizer, prompt=True) + fit.tokens
    text = system_part(format_name, fit.system) or ""
    return cache.count((format_name, "system-part", hashlib.sha256(text.encode()).digest()), text, tokenizer,
                       prompt=True)


@dataclass(frozen=True)
class Room:
    """The context window as the prompt may use it, in the tokenizer's counts."""

    context_window: int
    usable: int  # the window divided by the profile's margin
    reserve_output: int
    attached: int
    exact: bool
    margin: float

    @property
    def for_prompt(self) -> int:
        return self.usable - self.reserve_output - self.attached

    def overflow(self, what: str, details: dict[str, Any]) -> ContextOverflow:
        return ContextOverflow(
            what
            + (f", what is attached to them {self.attached}" if self.attached else "")
            + f" and the answer {self.reserve_output}: more than the context window of {self.context_window} tokens"
            + ("" if self.exact else f" (estimated counts, with a margin of {self.margin})"),
            details={**details, "attached_tokens": self.attached, "reserve_output": self.reserve_output,
                     "context_window": self.context_window},
        )


@dataclass(frozen=True)
class PromptParts:
    """What one injection puts together: the role with its variables' values and the conversation's
    turns, in one chat format and vocabulary, counted through one cache."""

    role: Role
    values: Mapping[str, str]
    turns: tuple[Message, ...]
    format: str
    tokenizer: Tokenizer
    cache: FitCache
    query: Query | None  # relevance selection ranks by it; None: priority selection

    def fit(self, budget: int) -> Fit:
        return fit_budget(self.role, self.values, budget, self.tokenizer, self.cache, self.query)

    def count_turns(self, first: int) -> int:
        """Tokens of the prompt without the system text, from turn `first` on, counted by encoding."""
        return prompt_tokens(RENDERERS[self.format]("", self.turns[first:]), self.tokenizer, self.cache)


def shrink_role(parts: PromptParts, explicit: int | None, room: Room) -> tuple[Fit, int]:
    """shrink_role: every turn is kept; the role gets what they leave, in steps. (fit, messages_tokens)"""
    messages_tokens = count_messages(parts.format, parts.turns, parts.tokenizer, parts.cache)
    available = room.for_prompt - messages_tokens
    if available < 0:
        raise room.overflow(f"the messages need {messages_tokens} tokens",
                            {"messages_tokens": messages_tokens, "context_policy": "shrink_role"})
    budget = explicit if explicit is not None and explicit <= available else step_down(available)
    return parts.fit(budget), messages_tokens


def keep_role(parts: PromptParts, budget: int, starts: Sequence[int], room: Room) -> tuple[Fit, int, int]:
    """keep_role: the role at its fixed budget; the oldest exchanges dropped in chunks when the turns
    outgrow what it leaves. (fit, messages_tokens, dropped turns)"""
    turns = parts.turns
    costs = turn_costs(parts.format, turns, parts.tokenizer, parts.cache)

    def overflow(first: int, messages_tokens: int, fit: Fit | None) -> ContextOverflow:
        kept = len(turns) - first
        what = {0: "the prompt's frame needs", 1: "the last message needs"}.get(kept, f"the last {kept} messages need")
        role = f", the role {fit.tokens} (context_policy keep_role never cuts it)" if fit else ""
        details = {"messages_tokens": messages_tokens, "context_policy": "keep_role"}
        return room.overflow(f"{what} {messages_tokens} tokens{role}",
                             details if fit is None else {**details, "system_tokens": fit.tokens})

    # What can never be dropped must fit beside the answer's reserve, whatever the role.
    last = starts[-1] if starts else 0
    least = costs.frame + sum(costs.each[last:]) if costs.exact else parts.count_turns(last)
    if least > room.for_prompt:
        raise overflow(last, least, None)
    fit = parts.fit(budget)
    left = room.for_prompt - fit.tokens
    chosen = first_kept(costs.each, starts, left - costs.frame)
    # Estimated costs chose the cut; the exact count decides, moving it on by whole exchanges.
    exact = costs.exact and not fit.system[:1].isspace()
    renderer = RENDERERS[parts.format]
    for first in (chosen, *(s for s in starts if s > chosen)):
        if exact:
            if (messages_tokens := costs.frame + sum(costs.each[first:])) <= left:
                return fit, messages_tokens, first
        elif prompt_tokens(renderer(fit.system, turns[first:]), parts.tokenizer, parts.cache) <= room.for_prompt:
            return fit, parts.count_turns(first), first
    raise overflow(first, parts.count_turns(first), fit)


def inject(
    roles: RoleSet,
    profiles: Profiles,
    request: InjectRequest,
    cache: FitCache,
) -> Injection:
    """Resolve `request.role` in `roles`, share the context window between role and conversation by
    the context policy, fit the role and render the whole prompt.

    The model (request, else the role's) picks the profile: tokenizer, format, context window. The
    options (request over role, `RoleOptions.over`) give the budget, the variables' values and the
    policy (else `keep_role`; see `role_injector.context`), which decides the budget and which of the
    oldest turns are dropped. Raises `RoleNotFound`, `VariableError`, `InvalidRequest`,
    `ContextOverflow` or `BudgetTooSmall`.
    """
    role = find_role(roles, request.role)
    model = request.model or role.model
    profile = profiles.for_model(model)
    format_name = request.format or profile.format
    counting = request.counting or Counting(load_tokenizer(profile.tokenizer), profile.exact, profile.margin)
    tokenizer = counting.tokenizer
    options = request.options.over(role.options)
    policy = options.policy
    parts = PromptParts(
        role=role,
        values=resolve_variables(role, options.variables),
        turns=tuple(Message(m.role, neutralise(m.content)) for m in request.turns),
        format=format_name,
        tokenizer=tokenizer,
        cache=cache,
        query=relevance_query(role, request),
    )
    context_window = request.context_window or profile.context_window
    room = Room(
        context_window=context_window,
        usable=usable_window(context_window, counting.margin),
        reserve_output=profile.reserve_output if request.reserve_output is None else request.reserve_output,
        attached=request.attached_tokens,
        exact=counting.exact,
        margin=counting.margin,
    )
    turns = parts.turns
    if policy.name == "shrink_role":
        fit, messages_tokens = shrink_role(parts, options.budget, room)
        dropped = 0
    else:
        budget = role_budget(options.budget, room.usable, room.reserve_output, policy.history_share)
        if request.exchange_starts is None:
            starts = [i for i, m in enumerate(turns) if m.role == "user"]
        else:
            starts = sorted(i for i in request.exchange_starts if 0 <= i < len(turns))
        fit, messages_tokens, dropped = keep_role(parts, budget, starts, room)
        turns = turns[dropped:]

    # Content is neutralised once above (the fitted system text already is), so render directly.
    prompt = RENDERERS[format_name](fit.system, turns)
    usage = Usage(
        tokenizer=tokenizer.name,
        exact=counting.exact,
        system_tokens=fit.tokens,
        system_tokens_full=fit.full_tokens,
        budget=fit.budget,
        messages_tokens=messages_tokens,
        attached_tokens=room.attached,
        prompt_tokens=count_prompt(format_name, tokenizer, fit, messages_tokens, prompt, cache),
        context_window=context_window,
        reserve_output=room.reserve_output,
        num_ctx=context_window,
        num_keep=count_system_part(format_name, fit, tokenizer, cache),
        context_policy=policy.name,
        history_share=policy.history_share,
    )
    return Injection(role, model, format_name, turns, prompt, fit, usage, dropped, options.params)


@dataclass(frozen=True)
class InjectionPlan:
    """An injection and, per section, what its fit kept, cut or dropped (POST /v1/plan)."""

    injection: Injection
    sections: tuple[SectionFit, ...]


def plan_injection(
    roles: RoleSet,
    profiles: Profiles,
    request: InjectRequest,
    cache: FitCache,
) -> InjectionPlan:
    """`inject` itself, then the section detail of the fit it made (same values, same tokenizer)."""
    injection = inject(roles, profiles, request, cache)
    values = resolve_variables(injection.role, request.options.over(injection.role.options).variables)
    tokenizer = load_tokenizer(profiles.for_model(injection.model).tokenizer)
    return InjectionPlan(injection, section_fits(injection.role, values, injection.fit, tokenizer, cache))
