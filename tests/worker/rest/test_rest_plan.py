"""POST /v1/plan (what /v1/inject does, section by section) and GET /v1/profiles, through the REST API
(Flask test client and real gunicorn), checked against /v1/inject and the library."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.fitting import FitCache
from role_injector.formats import neutralise
from role_injector.injection import InjectRequest, inject, plan_injection
from role_injector.options import RoleOptions
from role_injector.profiles import Profiles, load_profiles
from role_injector.relevance import CORE_PRIORITY
from role_injector.roles import fill_variables, resolve_variables
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import load_tokenizer
from tests.worker.rest.support import REPO, Api, assert_error

ADA = {"user_name": "Ada"}
# Bodies that cover kept, cut and dropped sections, variables, other tokenizers and formats.
BODIES = [
    {"role": "helper", "variables": ADA, "budget": 60},
    {"role": "helper", "variables": {"user_name": "Ада <|im_end|>", "tone": "тихий"}, "budget": 45, "prompt": "Привет"},
    {"role": "helper", "variables": ADA},
    {"role": "child", "variables": ADA},
    {"role": "plain"},
    {"role": "manifest", "budget": 1500},
    {"role": "manifest", "budget": 3000, "model": "llama3.1:8b"},
    {"role": "manifest", "model": "gemma3:4b", "format": "mistral", "context_window": 4096},
    {"role": "agi-engineer", "variables": {"user_name": "Мария"}, "budget": 900},
    {"role": "handbook", "budget": 500, "prompt": "Where do I leave my bike, and what is the cage code?"},
    {"role": "manifest", "budget": 2000, "selection": "relevance", "query": "invoices and daylight saving time"},
    {"role": "handbook", "budget": 500, "query": "what is the and of it"},  # stop words only: nothing to rank by
    {"role": "handbook", "budget": 500, "selection": "priority", "query": "dog"},  # priority: the query unused
    {"role": "helper", "variables": ADA, "budget": 60, "selection": "relevance", "prompt": "How do I sort files?"},
]


@pytest.fixture(scope="module")
def library(rest_roles: Path) -> RoleSet:
    return RoleStore(rest_roles).current()


def post(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = api.request("POST", path, json=body)
    assert reply.status == 200, reply
    return reply.json()


def check_sections_explain(plan: dict[str, Any]) -> None:
    """The sections say what trim says, and their kept text is the system prompt."""
    sections = plan["sections"]
    states = ("kept", "truncated", "dropped")
    assert {state: [s["label"] for s in sections if s["state"] == state] for state in states} == \
        {state: plan["trim"][state] for state in states}
    in_place = sorted((s for s in sections if s["kept_chars"]), key=lambda s: s["position"])
    assert [s["position"] for s in in_place] == list(range(len(in_place)))
    assert "\n\n".join(s["text"][: s["kept_chars"]] for s in in_place) == plan["system"]
    assert all(s["position"] is None for s in sections if not s["kept_chars"])
    assert [s["index"] for s in sections] == list(range(len(sections)))
    assert sorted(s["order"] for s in sections) == list(range(1, len(sections) + 1))
    why = [(t["reason"], t["score"]) for t in plan["trim"]["sections"]]
    assert [(s["reason"], s["score"]) for s in sections] == why
    if plan["trim"]["selection"] == "priority":
        assert [s["position"] for s in in_place] == sorted(s["position"] for s in in_place)
        assert [s["index"] for s in in_place] == sorted(s["index"] for s in in_place)  # document order
        assert not any(s["core"] for s in sections)
    else:
        # The core is what no question moves; its kept text and the required sections' come first.
        assert all(s["core"] == (not s["required"] and s["priority"] >= CORE_PRIORITY) for s in sections)
        assert all(s["reason"] == "priority" for s in sections if s["core"])
        stable = [s["required"] or s["core"] for s in in_place]
        assert stable == sorted(stable, reverse=True)
    for s in sections:
        assert s["chars"] == len(s["text"])
        expected = {"kept": s["chars"], "dropped": 0}.get(s["state"])
        if expected is None:
            assert 0 < s["kept_chars"] < s["chars"] and 0 < s["kept_tokens"] < s["tokens"], s
        else:
            assert s["kept_chars"] == expected
            assert s["kept_tokens"] == (s["tokens"] if s["state"] == "kept" else 0)


@pytest.mark.parametrize("body", BODIES, ids=lambda b: f"{b['role']}-{b.get('budget', 'default')}")
def test_plan_answers_what_inject_answers_plus_the_sections(api: Api, body: dict[str, Any]) -> None:
    plan = post(api, "/v1/plan", body)
    injected = post(api, "/v1/inject", body)
    assert {k: v for k, v in plan.items() if k != "sections"} == injected
    check_sections_explain(plan)


def test_sections_are_the_role_as_fitted(api: Api, library: RoleSet) -> None:
    """Each section's text is the role's with variables filled and control tokens neutralised, and its
    tokens are that text's exact count in the chosen model's tokenizer; required, priority and the
    walk order come from the role."""
    body = {"role": "helper", "variables": {"user_name": "Ада <|im_end|>"}, "budget": 45, "model": "llama3:8b"}
    plan = post(api, "/v1/plan", body)
    role = library.roles["helper"]
    values = resolve_variables(role, body["variables"])
    tokenizer = load_tokenizer("cl100k_base")
    assert plan["usage"]["tokenizer"] == "cl100k_base"
    for s, section in zip(plan["sections"], role.sections, strict=True):
        text = neutralise(fill_variables(section.text, values))
        assert s["text"] == text
        assert "<|im_end|>" not in s["text"]
        assert s["tokens"] == tokenizer.count(text)
        assert (s["title"], s["required"], s["priority"]) == (section.title, section.required, section.priority)
        if s["state"] == "truncated":
            assert s["kept_tokens"] == tokenizer.count(text[: s["kept_chars"]])
    assert [s["index"] for s in sorted(plan["sections"], key=lambda s: s["order"])] == list(role.walk_order)
    assert [s["label"] for s in plan["sections"]] == ["(preamble)", "Mission", "Style", "Examples"]
    assert [s["required"] for s in plan["sections"]] == [False, True, False, False]


def test_in_relevance_selection_the_walk_follows_the_question(api: Api) -> None:
    """The order is the walk the fitter took: required, the core, then the sections by score; the
    pieces of system come stable part first, then the picked sections in document order."""
    body = {"role": "handbook", "budget": 700, "prompt": "Can I bring my dog, and where may I smoke?"}
    plan = post(api, "/v1/plan", body)
    walk = sorted(plan["sections"], key=lambda s: s["order"])
    assert [s["label"] for s in walk[:2]] == ["How to answer", "(preamble)"]
    ranked = [s for s in walk[2:] if s["reason"] == "relevance"]
    assert [s["score"] for s in ranked] == sorted((s["score"] for s in ranked), reverse=True)
    assert {"Pets in the office", "Smoking area"} <= {s["label"] for s in ranked[:2]}
    assert all(s["state"] == "kept" for s in ranked[:2])
    in_place = sorted((s for s in plan["sections"] if s["position"] is not None), key=lambda s: s["position"])
    assert [s["label"] for s in in_place[:2]] == ["(preamble)", "How to answer"]
    picked = [s["index"] for s in in_place[2:]]
    assert picked == sorted(picked) and len(picked) >= 2


def test_a_budget_sweep_keeps_more_and_more(api: Api) -> None:
    """From the required sections' size up to the whole role: every answer agrees with /v1/inject,
    and no section ever keeps fewer characters at a larger budget."""
    previous: dict[int, int] = {}
    full = post(api, "/v1/plan", {"role": "helper", "variables": ADA})["usage"]["system_tokens_full"]
    for budget in range(20, full + 2, 3 if api.name == "flask" else 17):
        body = {"role": "helper", "variables": ADA, "budget": budget}
        reply = api.request("POST", "/v1/plan", json=body)
        if reply.status == 422:
            assert_error(reply, 422, "budget_too_small")
            assert_error(api.request("POST", "/v1/inject", json=body), 422, "budget_too_small")
            assert not previous  # only below the first budget that fits
            continue
        plan = reply.json()
        assert plan["usage"]["system_tokens"] <= budget
        assert {k: v for k, v in plan.items() if k != "sections"} == post(api, "/v1/inject", body)
        kept = {s["index"]: s["kept_chars"] for s in plan["sections"]}
        assert all(kept[i] >= previous.get(i, 0) for i in kept), (budget, kept, previous)
        previous = kept
    assert all(s["state"] == "kept" for s in post(api, "/v1/plan", {"role": "helper", "variables": ADA,
                                                                     "budget": full})["sections"])


@pytest.mark.parametrize("body", [
    {"role": "helper"},  # missing required variable
    {"role": "helper", "variables": ADA, "budget": 5},  # budget too small
    {"role": "helpr"},  # not found, with suggestions
    {"role": "broken"},  # a file that does not load is no role
    {"role": "helper", "variables": {"nobody": "x", **ADA}},  # undeclared variable
    {"role": "helper", "variables": ADA, "context_window": 50},  # the context is too small
    {"role": "helper", "temperature": 0.3},  # unknown field
    {"role": "helper", "variables": ADA, "selection": "bm25"},
    {"role": "helper", "budget": 0},
    {"role": "Helper"},
])
def test_plan_fails_exactly_as_inject_fails(api: Api, body: dict[str, Any]) -> None:
    plan, injected = api.request("POST", "/v1/plan", json=body), api.request("POST", "/v1/inject", json=body)
    assert plan.status == injected.status and plan.status in (400, 404, 422), plan
    assert plan.json() == injected.json()


def test_profiles_are_the_workers_profiles(api: Api) -> None:
    reply = api.request("GET", "/v1/profiles")
    assert reply.status == 200
    body = reply.json()
    profiles = load_profiles()
    assert [m["match"] for m in body["models"]] == [m.match for m in profiles.models]
    assert body["models"][-1] == {"match": "*", "tokenizer": "cl100k_base", "format": "chatml",
                                  "context_window": 4096, "reserve_output": 1024, "exact": False}
    assert body["formats"] == ["chatml", "llama3", "mistral", "gemma"]
    assert body["virtual_models"] == [
        {"name": v.name, "base": v.base, "role": v.role, "budget": v.budget}
        for _, v in sorted(profiles.virtual_models.items())
    ]


# --- the library: plan_injection is inject plus a faithful section report -------------------------

@functools.cache
def bundled() -> tuple[RoleSet, Profiles]:
    return RoleStore(REPO / "roles").current(), load_profiles()


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(min_value=1, max_value=9000), model=st.sampled_from(["qwen3:8b", "llama3:8b", "qwen3.5:9b"]))
def test_plan_injection_explains_inject_for_any_budget(budget: int, model: str) -> None:
    roles, profiles = bundled()
    cache = FitCache()
    request = InjectRequest(options=RoleOptions(budget=budget), role="manifest", model=model)
    try:
        expected = inject(roles, profiles, request, FitCache())
    except Exception as exc:  # the plan fails the same way
        with pytest.raises(type(exc)):
            plan_injection(roles, profiles, request, cache)
        return
    plan = plan_injection(roles, profiles, request, cache)
    assert plan.injection == expected
    fit = expected.fit
    assert tuple(s.label for s in plan.sections if s.state == "kept") == fit.kept
    assert tuple(s.label for s in plan.sections if s.state == "truncated") == fit.truncated
    assert tuple(s.label for s in plan.sections if s.state == "dropped") == fit.dropped
    assert {s.index: s.kept_chars for s in plan.sections if s.kept_chars} == dict(fit.kept_chars)
    assert "\n\n".join(s.text[: s.kept_chars] for s in plan.sections if s.kept_chars) == fit.system
