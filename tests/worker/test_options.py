"""The settings that layer (role file → virtual model → request): one merge with a rule, one validator
that words a wrong value the same in every layer, one bound for every count of tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from role_injector.engines.ollama import num_ctx_option
from role_injector.errors import InvalidRequest, ProfileError
from role_injector.options import MAX_TOKENS, REQUEST_FIELDS, OptionError, RoleOptions, parse_options
from role_injector.profiles import load_profiles
from role_injector.store import RoleStore
from tests.worker.conftest import RoleWriter

names = st.sampled_from(["a", "b", "tone", "user_name"])
layers = st.builds(
    RoleOptions,
    budget=st.none() | st.integers(1, MAX_TOKENS),
    context_policy=st.none() | st.sampled_from(["keep_role", "shrink_role"]),
    history_share=st.none() | st.floats(0.01, 0.99),
    selection=st.none() | st.sampled_from(["priority", "relevance"]),
    params=st.dictionaries(names, st.integers(-5, 5), max_size=3),
    variables=st.dictionaries(names, st.text(max_size=5), max_size=3),
)
SCALARS = ("budget", "context_policy", "history_share", "selection")


@given(st.lists(layers, min_size=1, max_size=4))
def test_each_field_comes_from_the_last_layer_that_sets_it(stack: list[RoleOptions]) -> None:
    """`stack` from the top (request) down (role): merged top over the rest."""
    merged = stack[-1]
    for layer in reversed(stack[:-1]):
        merged = layer.over(merged)
    for name in SCALARS:
        assert getattr(merged, name) == next((getattr(o, name) for o in stack if getattr(o, name) is not None), None)
    for name in ("params", "variables"):
        expected: dict[str, Any] = {}
        for layer in reversed(stack):
            expected.update(getattr(layer, name))
        assert dict(getattr(merged, name)) == expected


@given(layers, layers, layers)
def test_the_merge_does_not_depend_on_grouping(top: RoleOptions, middle: RoleOptions, bottom: RoleOptions) -> None:
    assert top.over(middle.over(bottom)) == top.over(middle).over(bottom)
    assert top.over(RoleOptions()) == top == RoleOptions().over(top)


@given(layers, layers)
def test_the_merge_of_checked_layers_passes_the_check(top: RoleOptions, bottom: RoleOptions) -> None:
    """`over` skips the check (both layers passed it): making the merge through the check is equal."""
    merged = top.over(bottom)
    assert RoleOptions(**{name: getattr(merged, name) for name in (*SCALARS, "params", "variables")}) == merged


@given(layers)
def test_the_policy_is_the_layers_else_the_default(options: RoleOptions) -> None:
    policy = options.policy
    assert policy.name == (options.context_policy or "keep_role")
    assert policy.history_share == (0.25 if options.history_share is None else options.history_share)


WRONG = [
    ("budget", 0, "'budget' must be a positive whole number of tokens (at most 100000000), not 0"),
    ("budget", MAX_TOKENS + 1, f"'budget' must be a positive whole number of tokens (at most {MAX_TOKENS})"),
    ("context_policy", "sometimes", "'context_policy' must be one of keep_role, shrink_role, not 'sometimes'"),
    ("history_share", 1, "'history_share' must be a number greater than 0 and less than 1, not 1"),
    ("selection", "magic", "'selection' must be one of priority, relevance, not 'magic'"),
]


@pytest.mark.parametrize(("field", "value", "problem"), WRONG)
def test_a_wrong_value_is_worded_alike_in_every_layer(field: str, value: object, problem: str, tmp_path: Path,
                                                     write_role: RoleWriter, roles_dir: Path) -> None:
    with pytest.raises(OptionError) as request:
        parse_options({field: value}, REQUEST_FIELDS)
    assert problem in request.value.message and request.value.details == {"field": field}

    write_role("odd", f"---\n{field}: {value}\n---\nText.\n")
    (role_error,) = RoleStore(roles_dir).current().errors
    assert f"front matter {problem}" in role_error.message

    profile = tmp_path / "models.yaml"
    profile.write_text(f"virtual_models:\n  v: {{base: q, role: r, {field}: {value}}}\n")
    with pytest.raises(ProfileError) as profile_error:
        load_profiles(profile)
    assert f"virtual model 'v': {problem}" in profile_error.value.message


def test_every_count_of_tokens_has_the_one_bound(tmp_path: Path) -> None:
    assert RoleOptions(budget=MAX_TOKENS).budget == MAX_TOKENS
    assert num_ctx_option(float(MAX_TOKENS), "options.num_ctx") == MAX_TOKENS
    with pytest.raises(InvalidRequest, match=f"from 1 to {MAX_TOKENS}"):
        num_ctx_option(MAX_TOKENS + 1, "options.num_ctx")
    profile = tmp_path / "models.yaml"
    profile.write_text(f"models: [{{match: x, context_window: {MAX_TOKENS}, reserve_output: {MAX_TOKENS}}}]\n")
    assert load_profiles(profile).for_model("x").context_window == MAX_TOKENS
    profile.write_text(f"models: [{{match: x, reserve_output: {MAX_TOKENS + 1}}}]\n")
    with pytest.raises(ProfileError, match=f"reserve_output' must be a whole number of tokens from 0 to {MAX_TOKENS}"):
        load_profiles(profile)
