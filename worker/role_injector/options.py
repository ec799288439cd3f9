"""The settings of a role that layer: the role file's front matter, then a virtual model (the profile
file), then a request (a REST body; on the proxies, the context policy header and the client's model
options). Each field comes from the last layer that sets it; params and variables are merged name by
name, the later layer winning.

    RoleOptions(budget=…, context_policy=…, history_share=…, selection=…, params=…, variables=…)
    request.over(virtual.over(role))      # the one merge
    parse_options(body, REQUEST_FIELDS)  # the one validator, for every layer

A wrong value is an `OptionError` (an `InvalidRequest` naming the field); the front matter and the
profile file report it as their own error (`RoleError`, `ProfileError`). The limits of every count of
tokens and of messages a role, a profile or a request may name are defined here, once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

from role_injector.context import ContextPolicy, PolicyName, history_share, policy_name
from role_injector.errors import InvalidRequest, shown
from role_injector.yaml_input import json_problem

# Any count of tokens a role, profile or request may name (a budget, a context window, an answer's
# reserve, num_ctx): beyond every model's window (the largest advertised is 10M), low enough that no
# arithmetic on it is ever a concern.
MAX_TOKENS = 100_000_000
MAX_MESSAGES = 10_000  # messages of one request, on every route

Selection = Literal["priority", "relevance"]
# How sections beyond the required ones are chosen: by priority, or by relevance to the conversation.
SELECTIONS: tuple[Selection, ...] = ("priority", "relevance")

# The fields each layer may set (the front matter's `variables` declares them: values come later).
ROLE_FIELDS = frozenset({"budget", "context_policy", "history_share", "selection", "params"})
VIRTUAL_FIELDS = ROLE_FIELDS | {"variables"}
REQUEST_FIELDS = frozenset({"budget", "context_policy", "history_share", "selection", "variables"})


class OptionError(InvalidRequest):
    """A wrong value of one option; the message names the field (in quotes, unless `problem` names
    the place inside it itself, as `params.seed is …`)."""

    def __init__(self, name: str, problem: str) -> None:
        named = problem.startswith(name + ".")
        super().__init__(problem if named else f"'{name}' {problem}", details={"field": name})
        self.field = name
        self.problem = problem


def tokens(value: object, name: str, minimum: int = 1, whole_floats: bool = False) -> int:
    """`value` as a count of tokens from `minimum` to MAX_TOKENS (a whole float too, where a client's
    JSON numbers may be floats), else `OptionError`."""
    if whole_floats and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_TOKENS:
        span = (f"a positive whole number of tokens (at most {MAX_TOKENS})" if minimum == 1
                else f"a whole number of tokens from {minimum} to {MAX_TOKENS}")
        raise OptionError(name, f"must be {span}, not {shown(value)}")
    return value


def selection(value: object) -> Selection:
    for name in SELECTIONS:
        if value == name:
            return name
    raise ValueError(f"must be one of {', '.join(SELECTIONS)}, not {shown(value)}")


def _checked(name: str, check: Any, value: object) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise OptionError(name, str(exc)) from None


def _variables(value: object) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("must be a mapping of variable names to strings")
    return value


def _params(value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of model options, e.g. {temperature: 0.3}")
    # Params go out as JSON (REST answers, Ollama options): refused here, not with a 500 there.
    if problem := json_problem(value, "params"):
        raise ValueError(problem)
    return value


@dataclass(frozen=True)
class RoleOptions:
    """One layer of a role's settings; None (or empty) where the layer leaves a field to the one below.
    Every value is checked when the layer is made."""

    budget: int | None = None  # tokens for the system prompt (keep_role: capped by the window's share)
    context_policy: PolicyName | None = None  # role_injector.context
    history_share: float | None = None
    selection: Selection | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # model options (Ollama's `options`)
    variables: Mapping[str, str] = field(default_factory=dict)  # values of the role's variables

    def __post_init__(self) -> None:
        if self.budget is not None:
            tokens(self.budget, "budget")
        if self.context_policy is not None:
            _checked("context_policy", policy_name, self.context_policy)
        if self.history_share is not None:
            object.__setattr__(self, "history_share", _checked("history_share", history_share, self.history_share))
        if self.selection is not None:
            _checked("selection", selection, self.selection)
        _checked("params", _params, self.params)
        _checked("variables", _variables, self.variables)

    def over(self, lower: RoleOptions) -> RoleOptions:
        """This layer over `lower`: what is set here wins; params and variables name by name. Both
        layers were checked when made, and so is all they hold together: not checked again (a request
        pays this on every call)."""
        merged = object.__new__(RoleOptions)
        for name, value in (
            ("budget", _first(self.budget, lower.budget)),
            ("context_policy", _first(self.context_policy, lower.context_policy)),
            ("history_share", _first(self.history_share, lower.history_share)),
            ("selection", _first(self.selection, lower.selection)),
            ("params", {**lower.params, **self.params}),
            ("variables", {**lower.variables, **self.variables}),
        ):
            object.__setattr__(merged, name, value)
        return merged

    @cached_property
    def policy(self) -> ContextPolicy:
        """The context policy these options choose, the defaults where no layer chose."""
        return ContextPolicy.of(self.context_policy, self.history_share)


def _first(value: Any, lower: Any) -> Any:
    return lower if value is None else value


def parse_options(source: Mapping[str, Any], allowed: Collection[str]) -> RoleOptions:
    """The options among `allowed` in `source` (front matter, a virtual model, a request body); a
    missing or null one is left to the layer below. Raises `OptionError`."""
    picked = {f.name: source[f.name] for f in fields(RoleOptions)
              if f.name in allowed and source.get(f.name) is not None}
    return RoleOptions(**picked)
