"""The YAML loader: libyaml's parser (fast, for folders of many roles) and PyYAML's own (where libyaml is
missing) give the same values, refuse the hostile texts alike, and say the same words for what this
project refuses itself (aliases, nesting)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.yaml_input import LOADERS, YamlRefused, load_yaml
from tests.security.hostile_roles import FAILING

VARIABLE = "ROLE_INJECTOR_MAX_YAML_DEPTH"
OVER = f"over the limit of 16 levels (set by {VARIABLE})"


def outcome(text: str, loader: type) -> tuple[str, object]:
    try:
        return "value", load_yaml(text, 16, VARIABLE, loader)
    except YamlRefused as exc:
        message = str(exc)
        own = message.startswith(("YAML aliases", "YAML nested too deep", "a value cannot be read"))
        return "refused", message if own else message.split(":")[0]


def front_matter(text: str) -> str:
    return text.split("---\n")[1] if text.startswith("---\n") else ""


@pytest.mark.skipif(len(LOADERS) < 2, reason="PyYAML without libyaml: one loader only")
@pytest.mark.parametrize("name", [name for name, (text, _) in FAILING.items() if front_matter(text)])
def test_both_loaders_treat_each_hostile_front_matter_alike(name: str) -> None:
    text = front_matter(FAILING[name][0])
    first, second = (outcome(text, loader) for loader in LOADERS)
    assert first == second


# (A value that is only the tag "!" is '' to libyaml and None to PyYAML's parser: left out.)
scalars = st.one_of(st.integers(-10**20, 10**20), st.booleans(), st.none(),
                    st.text(max_size=12).filter(lambda text: text.strip() != "!"),
                    st.floats(allow_nan=False), st.sampled_from(["yes", "no", "~", "0x1f", "1e3", "2024-01-01",
                                                                 "'quoted'", "&a x", "*a", "!!str 5"]))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(st.characters(categories=["L"]), min_size=1, max_size=6),
                                                 inner, max_size=4)), max_leaves=12)


def render(value: object, indent: int = 0) -> str:
    """YAML of every style this project sees: block mappings, flow lists, plain and odd scalars."""
    pad = " " * indent
    if isinstance(value, dict):
        return "".join(f"{pad}{key}:\n{render(item, indent + 2)}" if isinstance(item, dict) and item
                       else f"{pad}{key}: {render(item).strip()}\n" for key, item in value.items()) or f"{pad}{{}}\n"
    if isinstance(value, list):
        return pad + "[" + ", ".join(render(item).strip() for item in value) + "]\n"
    return f"{pad}{value}\n"


@pytest.mark.skipif(len(LOADERS) < 2, reason="PyYAML without libyaml: one loader only")
@settings(max_examples=400, deadline=None)
@given(documents)
def test_where_both_loaders_read_a_text_they_read_the_same_value(value: object) -> None:
    """(Where one refuses what the other reads, the text is odd flow syntax such as `[a:]`: refused
    outright is as good as read.)"""
    text = render(value)
    first, second = (outcome(text, loader) for loader in LOADERS)
    if first[0] == second[0] == "value":
        assert first == second


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("text", "refusal"), [
    ("a: &x 1\nb: *x\n", "YAML aliases (*name) are not allowed (line 2); write the value out"),
    ("a: " + "[" * 20_000 + "]" * 20_000, f"YAML nested too deep at line 1: {OVER}"),
    ("".join(" " * i + f"k{i}:\n" for i in range(40)), f"YAML nested too deep at line 17: {OVER}"),
])
def test_each_loader_refuses_aliases_and_depth_in_the_same_words(loader: type, text: str, refusal: str) -> None:
    with pytest.raises(YamlRefused) as refused:
        load_yaml(text, 16, VARIABLE, loader)
    assert str(refused.value) == refusal
