"""Prometheus metrics: HTTP requests by route, method and status (every route), per role the
injections of `/v1/inject`, the Ollama proxy and the OpenAI route (their time, trims, dropped
messages and budget errors), and per engine the prompt tokens its answers on the OpenAI route
reported and how many of them it reused from its prefix cache. Under gunicorn every worker writes to a shared directory
(prometheus_client's multiprocess mode, set up by `role_injector.server`), so a scrape of any
worker sees the whole server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from role_injector.errors import RoleInjectorError
from role_injector.injection import Injection

REQUESTS = Counter("role_injector_requests", "HTTP requests by route and status", ["route", "method", "status"])
INJECT_SECONDS = Histogram(
    "role_injector_inject_seconds",
    "Time to resolve, fit and render one injection",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TRIMS = Counter("role_injector_trims", "Injections whose role was trimmed to fit", ["role"])
DROPPED = Counter("role_injector_dropped_messages",
                  "Oldest messages of conversations left out by the context policy", ["role"])
BUDGET_ERRORS = Counter("role_injector_budget_errors", "Budget and context errors by role", ["role", "code"])
# By the engine's name in the settings ("default") or the profile file: a bounded set of labels.
ENGINE_PROMPT_TOKENS = Counter("role_injector_engine_prompt_tokens",
                               "Prompt tokens of the answers engines gave on the OpenAI route", ["engine"])
ENGINE_CACHED_TOKENS = Counter("role_injector_engine_cached_tokens",
                               "Of those, the tokens the engine reused from its prefix cache (where it says)",
                               ["engine"])


def engine_answer(engine: str, prompt_tokens: int, cached_tokens: int | None) -> None:
    ENGINE_PROMPT_TOKENS.labels(engine).inc(prompt_tokens)
    if cached_tokens is not None:
        ENGINE_CACHED_TOKENS.labels(engine).inc(cached_tokens)


@contextmanager
def injection(role: str) -> Iterator[Callable[[Injection], None]]:
    """Times an injection and counts its trim (call the yielded function with the result) or its
    budget error, the same for the REST API, the Ollama proxy and the OpenAI route."""
    started = time.perf_counter()

    def record(result: Injection) -> None:
        INJECT_SECONDS.observe(time.perf_counter() - started)
        if result.fit.trimmed:
            TRIMS.labels(result.role.name).inc()
        if result.dropped_messages:
            DROPPED.labels(result.role.name).inc(result.dropped_messages)

    try:
        yield record
    except RoleInjectorError as exc:
        if exc.code in {"budget_too_small", "context_overflow"}:
            BUDGET_ERRORS.labels(role, exc.code).inc()
        raise


def render_metrics() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
