"""What the web layer shares across requests: settings, the role store, profiles and the fit cache.

They live on the Flask app (`app.extensions`), set once by `install`; the blueprints read them through
these accessors, so there is one way to reach each.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from role_injector.fitting import FitCache
from role_injector.profiles import Profiles, load_profiles
from role_injector.settings import Settings
from role_injector.store import RoleSet, RoleStore

EXTENSION = "role_injector"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    store: RoleStore
    profiles: Profiles
    cache: FitCache


def install(app: Flask, settings: Settings) -> AppState:
    state = AppState(
        settings=settings,
        store=RoleStore(settings.roles_dir, limits=settings.role_limits, check_interval=settings.reload_interval),
        profiles=load_profiles(settings.models_file, settings.role_limits),
        cache=FitCache(settings.fit_cache_bytes),
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
    return _state().cache
