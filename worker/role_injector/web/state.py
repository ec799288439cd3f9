"""What the web layer shares across requests: settings, the role store, profiles, the fit cache, the
engines and the CPU pool (`compute`, the one way a route runs CPU work).

They live on the Flask app (`app.extensions`), made once by `install` (one of each per worker process:
gunicorn forks after loading the app); the blueprints read them through these accessors, so there is
one way to reach each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from flask import Flask, current_app, g, request

from role_injector.cpu_pool import CpuPool
from role_injector.engines.configured import Engines, configured_engines
from role_injector.errors import Overloaded
from role_injector.fitting import FitCache
from role_injector.profiles import Profiles, load_profiles
from role_injector.settings import Settings
from role_injector.store import RoleSet, RoleStore

EXTENSION = "role_injector"
RETRY_AFTER_SECONDS = 1  # an overloaded worker's work in flight is seconds long
T = TypeVar("T")


@dataclass(frozen=True)
class AppState:
    settings: Settings
    store: RoleStore
    profiles: Profiles
    cache: FitCache
    engines: Engines
    cpu: CpuPool


def install(app: Flask, settings: Settings) -> AppState:
    profiles = load_profiles(settings.models_file, settings.role_limits)
    state = AppState(
        settings=settings,
        store=RoleStore(settings.roles_dir, limits=settings.role_limits, check_interval=settings.reload_interval),
        profiles=profiles,
        cache=FitCache(settings.fit_cache_bytes),
        engines=configured_engines(settings, profiles),
        cpu=CpuPool(settings.cpu_threads, settings.cpu_queue_bytes),
    )
    app.extensions[EXTENSION] = state
    return state


def start_worker(app: Flask) -> None:
    """What each server worker process starts after the fork: the role store's watcher, so that no
    request waits for a reload."""
    state: AppState = app.extensions[EXTENSION]
    state.store.watch()


def _state() -> AppState:
    state: AppState = current_app.extensions[EXTENSION]
    return state


def settings() -> Settings:
    return _state().settings


def roles() -> RoleSet:
    """The current role set (kept current by the store's watcher in a server worker)."""
    return _state().store.current()


def profiles() -> Profiles:
    return _state().profiles


def cache() -> FitCache:
    """The process's one fit cache, bounded by ROLE_INJECTOR_FIT_CACHE_BYTES."""
    return _state().cache


def engines() -> Engines:
    return _state().engines


def compute(work: Callable[[], T], size: int | None = None) -> T:
    """The one way a route runs CPU work (counting, fitting, ranking, listing roles): in the worker's CPU
    pool, off the event loop. `size` is what the work gets through, by default the request's body; past
    the pool's admission it raises `Overloaded` (503), and the answer says when to come back."""
    if size is None:
        size = g.get("body_bytes") or request.content_length or 0
    try:
        return _state().cpu.run(size, work)
    except Overloaded:
        g.retry_after = RETRY_AFTER_SECONDS
        raise
