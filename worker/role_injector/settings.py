"""Settings of the worker and the CLI, from `ROLE_INJECTOR_*` environment variables (README: Configuration)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from role_injector.cpu_pool import DEFAULT_MAX_PENDING_BYTES, DEFAULT_THREADS, QUEUE_VARIABLE
from role_injector.engines.kinds import EngineKind, engine_kind
from role_injector.engines.routing import DEFAULT_ROUTING_HEADERS, routing_headers
from role_injector.errors import ConfigError
from role_injector.fitting import DEFAULT_FIT_CACHE_BYTES, FIT_CACHE_VARIABLE
from role_injector.roles import DEFAULT_LIMITS, LIMIT_VARIABLES, RoleLimits

# A name in ROLE_INJECTOR_ALLOWED_HOSTS: a host name (`worker`, `roles.example.com`), `.example.com`
# for every name under it, or `*` for any.
ALLOWED_HOST = re.compile(r"\*|\.?[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)*")


def allowed_hosts(raw: str | None) -> frozenset[str]:
    """ROLE_INJECTOR_ALLOWED_HOSTS: names separated by commas or blanks, compared without case."""
    names = frozenset(name.lower().rstrip(".") or "." for name in re.split(r"[,\s]+", raw or "") if name)
    wrong = sorted(name for name in names if not ALLOWED_HOST.fullmatch(name))
    if wrong:
        raise ConfigError(f"ROLE_INJECTOR_ALLOWED_HOSTS: {', '.join(map(repr, wrong[:5]))} is not a host name "
                          "(a name such as worker or roles.example.com, .example.com for the names under it, "
                          "or *; no ports, no schemes)")
    return names


@dataclass(frozen=True)
class Settings:
    roles_dir: str = "./roles"
    api_key: str | None = field(default=None, repr=False)  # secrets: never in a repr (logs, tracebacks)
    metrics_key: str | None = field(default=None, repr=False)  # opens /metrics (as the API key does)
    # Without an API key: the Host names answered besides localhost and IP addresses (web/hosts.py).
    allowed_hosts: frozenset[str] = frozenset()
    ollama_url: str = field(default="http://localhost:11434", repr=False)  # may carry user:password@
    # The engine every model goes to unless the profile file names another (engines/configured.py):
    # Ollama at `ollama_url`, or an OpenAI-compatible server at `engine_url` with `engine_api_key`.
    engine: EngineKind = EngineKind.OLLAMA
    engine_url: str | None = field(default=None, repr=False)
    engine_api_key: str | None = field(default=None, repr=False)
    # Where the default engine (or a router in front of several) is given each conversation's routing key.
    engine_routing_headers: tuple[str, ...] = DEFAULT_ROUTING_HEADERS
    models_file: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_proxy_body_bytes: int = 64 * 1024 * 1024  # /api/* bodies carry base64 images
    role_limits: RoleLimits = DEFAULT_LIMITS  # README: Configuration, one variable per limit
    fit_cache_bytes: int = DEFAULT_FIT_CACHE_BYTES
    reload_interval: float = 0.5
    upstream_timeout: float = 300.0
    log_prompts: bool = False
    # The server (README: Serving many connections): what a slow or idle client may hold.
    read_timeout: float = 20.0  # complete request headers within this; each read of a body likewise
    write_timeout: float = 30.0  # each piece of an answer must be taken by the client within this
    max_connections: int = 4096  # open connections per worker process
    max_upstream_json_bytes: int = 16 * 1024 * 1024  # Ollama answers the proxy reads whole (/api/tags, /api/show)
    # The CPU work of requests (README: Serving many connections): OS threads per worker process, and the
    # bytes of request bodies whose work may be running or waiting in them.
    cpu_threads: int = DEFAULT_THREADS
    cpu_queue_bytes: int = DEFAULT_MAX_PENDING_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, default: float, kind: type = int) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, not {raw!r}") from None
            if value <= 0:
                raise ConfigError(f"{name} must be positive")
            return value

        try:
            engine = engine_kind(env.get("ROLE_INJECTOR_ENGINE") or EngineKind.OLLAMA.value, "ROLE_INJECTOR_ENGINE")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        engine_url = (env.get("ROLE_INJECTOR_ENGINE_URL") or "").rstrip("/") or None
        if engine is EngineKind.OLLAMA and engine_url is not None:
            raise ConfigError("ROLE_INJECTOR_ENGINE_URL is the URL of an OpenAI-compatible engine "
                              "(ROLE_INJECTOR_ENGINE=llama.cpp, vllm, ...); Ollama's is ROLE_INJECTOR_OLLAMA_URL")
        if engine is not EngineKind.OLLAMA and engine_url is None:
            raise ConfigError(f"ROLE_INJECTOR_ENGINE={engine.value} needs ROLE_INJECTOR_ENGINE_URL, the engine's "
                              "base URL (without /v1), e.g. http://127.0.0.1:8080")
        try:
            routed = routing_headers(env.get("ROLE_INJECTOR_ENGINE_ROUTING_HEADERS") or list(DEFAULT_ROUTING_HEADERS),
                                     "ROLE_INJECTOR_ENGINE_ROUTING_HEADERS")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        values: dict[str, object] = {
            "engine": engine,
            "engine_routing_headers": routed,
            "engine_url": engine_url,
            "engine_api_key": env.get("ROLE_INJECTOR_ENGINE_API_KEY") or None,
            "roles_dir": env.get("ROLE_INJECTOR_ROLES_DIR") or cls.roles_dir,
            "api_key": env.get("ROLE_INJECTOR_API_KEY") or None,
            "metrics_key": env.get("ROLE_INJECTOR_METRICS_KEY") or None,
            "allowed_hosts": allowed_hosts(env.get("ROLE_INJECTOR_ALLOWED_HOSTS")),
            "ollama_url": (env.get("ROLE_INJECTOR_OLLAMA_URL") or cls.ollama_url).rstrip("/"),
            "models_file": env.get("ROLE_INJECTOR_MODELS") or None,
            "max_body_bytes": number("ROLE_INJECTOR_MAX_BODY_BYTES", cls.max_body_bytes),
            "max_proxy_body_bytes": number("ROLE_INJECTOR_MAX_PROXY_BODY_BYTES", cls.max_proxy_body_bytes),
            "role_limits": RoleLimits(**{
                limit: number(variable, getattr(cls.role_limits, limit)) for limit, variable in LIMIT_VARIABLES.items()
            }),
            "fit_cache_bytes": number(FIT_CACHE_VARIABLE, cls.fit_cache_bytes),
            "reload_interval": number("ROLE_INJECTOR_RELOAD_INTERVAL", cls.reload_interval, float),
            "upstream_timeout": number("ROLE_INJECTOR_UPSTREAM_TIMEOUT", cls.upstream_timeout, float),
            "log_prompts": env.get("ROLE_INJECTOR_LOG_PROMPTS", "") in {"1", "true", "yes"},
            "read_timeout": number("ROLE_INJECTOR_READ_TIMEOUT", cls.read_timeout, float),
            "write_timeout": number("ROLE_INJECTOR_WRITE_TIMEOUT", cls.write_timeout, float),
            "max_connections": number("ROLE_INJECTOR_MAX_CONNECTIONS", cls.max_connections),
            "max_upstream_json_bytes": number("ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES", cls.max_upstream_json_bytes),
            "cpu_threads": number("ROLE_INJECTOR_CPU_THREADS", cls.cpu_threads),
            "cpu_queue_bytes": number(QUEUE_VARIABLE, cls.cpu_queue_bytes),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
