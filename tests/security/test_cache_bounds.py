"""The fit cache is bounded in bytes, not only in entries: distinct ~900 KB variable values used to
grow each worker by ~200 MB per 300 requests, never released. Entries are sized from above
(`footprint`) and the least recently used go first; every route fills the process's one cache.
"""

from __future__ import annotations

import random
import string
import sys
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.errors import RoleError
from role_injector.fitting import ENTRY_BYTES, FitCache, fit_budget, footprint, measure_section
from role_injector.formats import Message
from role_injector.injection import InjectRequest, inject
from role_injector.options import RoleOptions
from role_injector.profiles import load_profiles
from role_injector.relevance import INDEX_BYTES_PER_BYTE, Query, RelevanceIndex
from role_injector.roles import Section, resolve_variables
from role_injector.settings import Settings
from role_injector.store import RoleStore
from role_injector.tokens import load_tokenizer
from tests.ollama_standin import OllamaStandin
from tests.security.hostile_roles import serve_roles
from tests.servers import REPO, proc_status_kib

ROLE = "---\nvariables: {notes: {required: true}}\n---\n## Mission {required}\nHelp.\n\n## Notes\n{{notes}}\n"
values = st.one_of(st.text(max_size=300), st.integers(), st.tuples(st.text(max_size=50), st.text(max_size=50)))
operations = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 15), values), max_size=60)


@settings(max_examples=300)
@given(st.integers(200, 4_000), operations)
def test_the_cache_never_holds_more_bytes_than_its_budget_and_drops_the_least_recent(
    budget: int, steps: list[tuple[str, int, object]]
) -> None:
    cache = FitCache(max_bytes=budget)
    model: OrderedDict[int, tuple[object, int]] = OrderedDict()  # what an LRU bounded in bytes holds
    for operation, key, value in steps:
        if operation == "get":
            assert cache.get(key) == (model[key][0] if key in model else None)
            if key in model:
                model.move_to_end(key)
            continue
        cache.put(key, value)
        model.pop(key, None)
        size = ENTRY_BYTES + footprint(key) + footprint(value)
        if size <= budget:
            model[key] = (value, size)
        while sum(size for _, size in model.values()) > budget:
            model.popitem(last=False)
        assert cache.bytes == sum(size for _, size in model.values()) <= budget
        assert len(cache) == len(model)


text_with_many_cuts = st.lists(st.sampled_from(["A.", " ", "b!", "\n\n", "c", "«d.»", "\n", "Ж?"]), max_size=400)


@settings(max_examples=100, deadline=None)
@given(text_with_many_cuts.map("".join), st.booleans())
def test_a_measured_section_is_counted_with_at_least_the_bytes_it_holds_once_cut(text: str, heading: bool) -> None:
    text = ("## Title\n" if heading else "") + text
    section = Section("Title" if heading else None, text, 50, False, frozenset())
    measured = measure_section(0, section, text, load_tokenizer("qwen"))
    held_before_cut = sys.getsizeof(measured.text)
    cuts, estimates = measured.cuts, measured.cut_tokens  # made lazily, after the entry was sized
    held = held_before_cut + sys.getsizeof(cuts) + sys.getsizeof(estimates) + sys.getsizeof(measured)
    assert footprint(measured) >= held


@pytest.mark.parametrize("query", [None, "how do we review code and deploy on friday"])
@pytest.mark.parametrize("budget", [300, 3_000, 30_000])
def test_a_fit_is_counted_with_at_least_the_bytes_it_holds_once_reported(query: str | None, budget: int) -> None:
    role = RoleStore(REPO / "roles").current().roles["manifest"]
    values = resolve_variables(role, {name: "Keel" for name in role.variables})
    fit = fit_budget(role, values, budget, load_tokenizer("qwen"), FitCache(),
                     None if query is None else Query.from_text(query))
    fit.report()  # makes the per-section reports, after the fit was cached
    objects = [fit, *fit.sections]
    tuples = (fit.kept, fit.truncated, fit.dropped, fit.walk_order, fit.layout, fit.scores or ())
    held = (sum(sys.getsizeof(o) + sys.getsizeof(vars(o)) for o in objects) + sys.getsizeof(fit.system)
            + sys.getsizeof(fit.kept_chars) + sum(map(sys.getsizeof, tuples)) + 32 * len(fit.scores or ()))
    assert footprint(fit) >= held


def unique_words(count: int, letters: str, length: int, seed: int) -> str:
    chosen = random.Random(seed)
    return " ".join("".join(chosen.choice(letters) for _ in range(length)) for _ in range(count))


INDEX_SHAPES = {
    "unique Latin words": lambda: [Section(f"S{i}", f"## S{i}\n" + unique_words(2_000, string.ascii_lowercase, 5, i),
                                           50, False, frozenset()) for i in range(100)],
    "unique Russian words": lambda: [Section(f"S{i}", f"## S{i}\n" + unique_words(2_000, RUSSIAN, 5, i),
                                             50, False, frozenset()) for i in range(100)],
    "many small titled sections": lambda: [
        Section(f"W{i} " + unique_words(3, string.ascii_lowercase, 5, i),
                f"## W{i}\n" + unique_words(5, string.ascii_lowercase, 5, -i), 50, False, frozenset())
        for i in range(2_000)],
    "the manifest": lambda: list(RoleStore(REPO / "roles").current().roles["manifest"].sections),
}
RUSSIAN = "абвгдежзийклмнопрстуфхцчшщыэюя"


@pytest.mark.parametrize("shape", INDEX_SHAPES)
def test_a_relevance_index_is_counted_with_at_least_the_bytes_it_holds(shape: str) -> None:
    sections = INDEX_SHAPES[shape]()
    RelevanceIndex(sections)  # imports, and the stemmers' caches (bounded, not the index's), before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = RelevanceIndex(sections)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert footprint(index) >= held
    assert index.nbytes <= RelevanceIndex.bound(sections)


unicode_words = st.lists(st.text(st.characters(categories=["L", "N"]) | st.sampled_from("ΐŉİﬃß"), min_size=1,
                                 max_size=6), max_size=80).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), unicode_words), min_size=1, max_size=20))
def test_an_index_never_holds_more_than_its_bound(shapes: list[tuple[bool, str]]) -> None:
    """The bound is known before the index is built (the fit cache refuses an index that might not fit):
    words of one letter, letters that casefold into several, titles counted three times."""
    sections = [Section(f"T{words[:8]}" if titled else None, (f"## T{words[:8]}\n" if titled else "") + words,
                        50, False, frozenset()) for titled, words in shapes]
    assert RelevanceIndex(sections).nbytes <= RelevanceIndex.bound(sections)


def test_the_index_of_the_largest_role_the_default_limits_admit_fits_the_default_cache() -> None:
    limits, cache = Settings().role_limits, FitCache()
    sections = [Section("x", "x", 50, False, frozenset())] * limits.max_sections
    largest = RelevanceIndex.bound(sections) + INDEX_BYTES_PER_BYTE * (limits.max_resolved_bytes - len(sections))
    assert largest < cache.max_bytes // 2  # and leaves room for the rest


def test_an_index_that_might_not_fit_is_refused_before_it_is_built(tmp_path: Path) -> None:
    (tmp_path / "book.md").write_text("---\nselection: relevance\n---\n" + "".join(
        f"## Chapter {i}\n" + unique_words(200, string.ascii_lowercase, 6, i) + "\n\n" for i in range(40)))
    role = RoleStore(tmp_path).current().roles["book"]
    small = FitCache(max_bytes=RelevanceIndex.bound(role.sections))  # the index itself would fit, maybe
    with pytest.raises(RoleError) as refused:
        small.relevance_index(role)
    assert "ROLE_INJECTOR_FIT_CACHE_BYTES" in refused.value.message
    assert refused.value.details["limit"] == "ROLE_INJECTOR_FIT_CACHE_BYTES" and len(small) == 0
    roomy = FitCache(max_bytes=2 * RelevanceIndex.bound(role.sections))
    assert roomy.relevance_index(role) is roomy.relevance_index(role)


def test_distinct_large_variable_values_stay_within_the_budget(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text(ROLE)
    snapshot = RoleStore(tmp_path).current()
    cache = FitCache(max_bytes=8 * 1024 * 1024)
    profiles = load_profiles()
    for i in range(12):
        notes = f"Note {i}. " + "lorem ipsum dolor sit amet " * 33_000  # ~900 KB, a new value each time
        request = InjectRequest(role="notes", turns=(Message("user", "hi"),),
                                options=RoleOptions(variables={"notes": notes}), model="qwen3:8b",
                                context_window=2_000_000)
        inject(snapshot, profiles, request, cache)
        assert cache.bytes <= cache.max_bytes
    assert len(cache) > 0


def test_the_budget_is_a_setting() -> None:
    assert Settings.from_env({"ROLE_INJECTOR_FIT_CACHE_BYTES": "1048576"}).fit_cache_bytes == 1024 * 1024
    assert Settings.from_env({}).fit_cache_bytes == FitCache().max_bytes


def test_a_worker_does_not_grow_with_distinct_large_variable_values(tmp_path: Path) -> None:
    """The attack against a real gunicorn worker: 90 requests, each with a new ~900 KB value, with
    a 16 MiB cache. Before, the worker kept every one (~2 MB each)."""
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "notes.md").write_text(ROLE)
    budget = 16 * 1024 * 1024
    with serve_roles(roles, tmp_path, ROLE_INJECTOR_FIT_CACHE_BYTES=str(budget)) as server:
        (worker,) = server.worker_pids()
        session = requests.Session()

        def send(i: int) -> None:
            notes = f"Note {i}. " + "lorem ipsum dolor sit amet " * 33_000
            reply = session.post(server.url + "/v1/inject", timeout=120, json={
                "role": "notes", "variables": {"notes": notes}, "prompt": "hi", "context_window": 2_000_000})
            assert reply.status_code == 200, reply.text

        for i in range(10):  # warm up: allocator arenas, the tokenizer's own buffers
            send(i)
        before = proc_status_kib(worker, "VmRSS") * 1024
        for i in range(10, 100):
            send(i)
        grown = proc_status_kib(worker, "VmRSS") * 1024 - before
        assert grown < 4 * budget, f"the worker grew by {grown / 2**20:.0f} MiB"


BIG_SECTIONS = 240
BIG_ROLE = "---\ndescription: A role large enough that each fit of it holds hundreds of kilobytes\n---\n" + "\n\n".join(
    f"## Part {i}\n" + " ".join(f"Rule {i}.{j}: check the {w} before the release." for j, w in
                                enumerate(["cache", "build", "index", "queue", "schema", "token"] * 8))
    for i in range(BIG_SECTIONS))
ROUTE_BUDGETS = 18  # distinct fits per route after the warm-up


def test_every_route_fills_the_one_bounded_cache(standin: OllamaStandin, tmp_path: Path) -> None:
    """/v1/inject, the Ollama proxy, the OpenAI route and model creation all fit through the app's one
    cache: with ROLE_INJECTOR_FIT_CACHE_BYTES at 6 MiB, ~70 distinct fits of ~400 KB each (28 MB in all)
    leave the worker within the bound. Before, the last three filled a second cache of 128 MiB."""
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "big.md").write_text(BIG_ROLE)
    budgets = [40_000 + 512 * i for i in range(4 * (ROUTE_BUDGETS + 3))]
    profile = tmp_path / "models.yaml"
    profile.write_text("models:\n  - {match: 'big*', tokenizer: qwen, format: chatml, context_window: 2000000,"
                       " reserve_output: 0}\nvirtual_models:\n"
                       + "".join(f"  big-{b}: {{base: 'big:1b', role: big, budget: {b}}}\n" for b in budgets))
    budget = 6 * 1024 * 1024
    hi = [{"role": "user", "content": "hi"}]
    with serve_roles(roles, tmp_path, ROLE_INJECTOR_FIT_CACHE_BYTES=str(budget), ROLE_INJECTOR_MODELS=str(profile),
                     ROLE_INJECTOR_OLLAMA_URL=standin.url) as server:
        (worker,) = server.worker_pids()
        session = requests.Session()
        routes = {
            "/v1/inject": lambda b: session.post(server.url + "/v1/inject", timeout=120, json={
                "role": "big", "model": "big:1b", "budget": b, "prompt": "hi"}),
            "/api/chat": lambda b: session.post(server.url + "/api/chat", timeout=120, json={
                "model": f"big-{b}", "messages": hi, "stream": False}),
            "/v1/chat/completions": lambda b: session.post(server.url + "/v1/chat/completions", timeout=120, json={
                "model": f"big-{b}", "messages": hi}),
            "/v1/roles/big/ollama-model": lambda b: session.post(server.url + "/v1/roles/big/ollama-model",
                                                                 timeout=120, json={"base": "big:1b", "budget": b}),
        }
        asked = iter(budgets)

        def send_each(times: int) -> None:
            for _ in range(times):
                for route, send in routes.items():
                    reply = send(next(asked))
                    assert reply.status_code == 200, (route, reply.text[:500])
                    assert b'"error"' not in reply.content[-300:], (route, reply.text[-300:])

        send_each(3)  # every route once past the bound: the cache is full, allocator arenas are made
        before = proc_status_kib(worker, "VmRSS") * 1024
        send_each(ROUTE_BUDGETS)
        grown = proc_status_kib(worker, "VmRSS") * 1024 - before
        assert grown < budget, f"the worker grew by {grown / 2**20:.1f} MiB with a cache of {budget / 2**20:.0f} MiB"
