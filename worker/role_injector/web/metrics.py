"""Prometheus metrics. Under gunicorn every worker writes to a shared directory
(prometheus_client's multiprocess mode, set up by `role_injector.server`), so a scrape of any
worker sees the whole server."""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUESTS = Counter("role_injector_requests", "HTTP requests by route and status", ["route", "method", "status"])
INJECT_SECONDS = Histogram(
    "role_injector_inject_seconds",
    "Time to resolve, fit and render one injection",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
TRIMS = Counter("role_injector_trims", "Injections whose role was trimmed to fit", ["role"])
BUDGET_ERRORS = Counter("role_injector_budget_errors", "Budget and context errors by role", ["role", "code"])


def render_metrics() -> bytes:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
