"""What the web layer shares across requests: settings, the role store, profiles, the fit cache and
the engines.

They live on the Flask app (`app.extensions`), made once by `install` (one of each per worker process:
gunicorn forks after loading the app); the blueprints read them through these accessors, so there is
one way to reach each.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from role_injector.engines.configured import Engines, configured_engines
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
    engines: Engines


def install(app: Flask, settings: Settings) -> AppState:
    profiles = load_profiles(settings.models_file, settings.role_limits)
    state = AppState(
        settings=settings,
        store=RoleStore(settings.roles_dir, limits=settings.role_limits, check_interval=settings.reload_interval),
        profiles=profiles,
        cache=FitCache(settings.fit_cache_bytes),
        engines=configured_engines(settings, profiles),
    )
    app.extensions[EXTENSION] = state
    return state


def _state() -> AppState:
    state: AppState = current_app.extensions[EXTENSION]
    return state


def settings() -> Settings:
    return _state().settings


def roles() -> RoleSet:
    """The current role set, reloaded first when files changed."""
    return _state().store.current()


def profiles() -> Profiles:
    return _state().profiles


def cache() -> FitCache:
    """The process's one fit cache, bounded by ROLE_INJECTOR_FIT_CACHE_BYTES."""
    return _state().cache


def engines() -> Engines:
    return _state().engines
