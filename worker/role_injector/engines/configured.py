"""The engine the settings configure (one for the whole worker, made at start)."""

from __future__ import annotations

from role_injector.engines.engine import Engine
from role_injector.engines.ollama import OllamaEngine
from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.settings import Settings

# `make run` sets ROLE_INJECTOR_OLLAMA_URL from OLLAMA_URL.
UNREACHABLE_HINT = ". Start Ollama there, or point the worker at it: ROLE_INJECTOR_OLLAMA_URL (OLLAMA_URL for make run)"


def configured_engine(settings: Settings) -> Engine:
    """The engine every model is served by: Ollama at ROLE_INJECTOR_OLLAMA_URL (a wrong URL is a
    `ConfigError` here, at start, not at the first request)."""
    transport = Transport(EngineUrl.parse(settings.ollama_url), OllamaEngine.label,
                          timeout=settings.upstream_timeout, max_json_bytes=settings.max_upstream_json_bytes,
                          unreachable_hint=UNREACHABLE_HINT)
    return OllamaEngine(transport)
