"""The engines the settings and the profile file configure, made once per app (`web/state.py`): the
default one (`ROLE_INJECTOR_ENGINE`: Ollama at ROLE_INJECTOR_OLLAMA_URL, or an OpenAI-compatible server
at ROLE_INJECTOR_ENGINE_URL) and the profile file's `engines:`, each model served by the one its virtual
model or profile names (`Profiles.engine_of`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from role_injector.engines.engine import Engine
from role_injector.engines.kinds import EngineKind
from role_injector.engines.ollama import OllamaEngine
from role_injector.engines.openai_server import SERVERS, OpenAIServerEngine
from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.errors import ConfigError
from role_injector.profiles import DEFAULT_ENGINE, Profiles, VirtualModel
from role_injector.settings import Settings

# `make run` sets ROLE_INJECTOR_OLLAMA_URL from OLLAMA_URL.
UNREACHABLE_HINT = ". Start Ollama there, or point the worker at it: ROLE_INJECTOR_OLLAMA_URL (OLLAMA_URL for make run)"
ENGINE_HINT = ". Start the engine there, or point the worker at it: {setting}"


def make_engine(name: str, kind: EngineKind, url: EngineUrl, settings: Settings, api_key: str | None,
                routing_headers: tuple[str, ...]) -> Engine:
    if name != DEFAULT_ENGINE:
        hint = ENGINE_HINT.format(setting=f"the url of engine {name!r} in the profile file (ROLE_INJECTOR_MODELS)")
    elif kind is EngineKind.OLLAMA:
        hint = UNREACHABLE_HINT
    else:
        hint = ENGINE_HINT.format(setting="ROLE_INJECTOR_ENGINE_URL")
    label = OllamaEngine.label if kind is EngineKind.OLLAMA else SERVERS[kind].label
    transport = Transport(url, label, timeout=settings.upstream_timeout,
                          max_json_bytes=settings.max_upstream_json_bytes, api_key=api_key, unreachable_hint=hint)
    if kind is EngineKind.OLLAMA:
        return OllamaEngine(name, transport, routing_headers)
    return OpenAIServerEngine(name, kind, transport, routing_headers=routing_headers)


@dataclass(frozen=True)
class Engines:
    default: Engine
    named: Mapping[str, Engine]

    def get(self, name: str) -> Engine:
        return self.default if name == DEFAULT_ENGINE else self.named[name]

    def serving(self, profiles: Profiles, model: str | None, virtual: VirtualModel | None = None) -> Engine:
        """The engine of a model (a virtual model's base), as the profile file says."""
        return self.get(profiles.engine_of(model, virtual))

    def all(self) -> list[Engine]:
        return [self.default, *self.named.values()]

    @property
    def ollama(self) -> Engine | None:
        """The Ollama the Ollama-compatible proxy and model creation talk to: the default engine when it
        is one, else the profile file's first."""
        return next((engine for engine in self.all() if engine.kind is EngineKind.OLLAMA), None)

    def declared(self, engine: Engine, profiles: Profiles) -> dict[str, VirtualModel]:
        """The declared virtual models `engine` serves."""
        return {name: virtual for name, virtual in profiles.virtual_models.items()
                if self.serving(profiles, virtual.base, virtual) is engine}


def configured_engines(settings: Settings, profiles: Profiles, env: Mapping[str, str] | None = None) -> Engines:
    """Every engine, checked at start (a wrong URL or a missing key is a `ConfigError` here, not at the
    first request)."""
    env = os.environ if env is None else env
    kind = settings.engine
    url = EngineUrl.parse(settings.ollama_url) if kind is EngineKind.OLLAMA \
        else EngineUrl.parse(settings.engine_url or "", "ROLE_INJECTOR_ENGINE_URL")
    default = make_engine(DEFAULT_ENGINE, kind, url, settings, settings.engine_api_key, settings.engine_routing_headers)
    named = {}
    for name, entry in profiles.engines.items():
        key = None
        if entry.api_key_env is not None:
            key = env.get(entry.api_key_env) or None
            if key is None:
                raise ConfigError(f"engine {name!r} in the profile file takes its API key from {entry.api_key_env}, "
                                  "which is not set")
        named[name] = make_engine(name, entry.kind, entry.url, settings, key, entry.routing_headers)
    return Engines(default, named)
