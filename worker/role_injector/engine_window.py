"""The context window an engine gives one request, read from the engine's own answers, and a small
cache of what an engine says per model (docs/engines.md has each engine's API and the source of each fact).

No HTTP here: the functions read answers the engine layer fetched and parsed. A window the engine does
not state is None (the profile's `context_window` applies); an answer that is not the engine's API is
`UpstreamError`. A window smaller than what a role requires is the caller's error to raise:
`EngineWindow.source` says where the figure came from, for its message.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from role_injector.errors import UpstreamError

T = TypeVar("T")


@dataclass(frozen=True)
class EngineWindow:
    tokens: int
    source: str  # e.g. "llama.cpp /props default_generation_settings.n_ctx"


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def llama_cpp_window(props: Any) -> EngineWindow:
    """llama-server's `GET /props`: `default_generation_settings.n_ctx` is one slot's context (the
    server's `n_ctx_slot()`): with `-np N` and no unified KV cache, `-c` divided by N, and never more
    than the model's training context. That is what one request may fill: with `-c 8192 -np 2` it
    says 4096 and a 4,211-token prompt is refused (tests/worker/test_engine_window.py)."""
    settings = props.get("default_generation_settings") if isinstance(props, dict) else None
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    if not _positive(n_ctx):
        raise UpstreamError("the engine answered /props without a positive default_generation_settings.n_ctx")
    return EngineWindow(n_ctx, "llama.cpp /props default_generation_settings.n_ctx")


def _listed(answer: Any, key: str, where: str) -> list[dict[str, Any]]:
    entries = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        raise UpstreamError(f"the engine answered {where} without a list '{key}'")
    return [e for e in entries if isinstance(e, dict)]


def max_model_len_window(models: Any, model: str) -> EngineWindow | None:
    """vLLM's and SGLang's `GET /v1/models`: `data[].max_model_len` of the entry whose `id` is the
    model (vLLM: the served model name or a LoRA's; SGLang likewise). None if it is not listed or
    states no length."""
    for entry in _listed(models, "data", "/v1/models"):
        if entry.get("id") == model:
            length = entry.get("max_model_len")
            if length is None:
                return None
            if not _positive(length):
                raise UpstreamError(f"the engine lists {model!r} with max_model_len {length!r}")
            return EngineWindow(length, "/v1/models max_model_len")
    return None


def lm_studio_window(models: Any, model: str) -> EngineWindow | None:
    """LM Studio: the context a loaded instance of the model has, which is what a request gets.

    `GET /api/v1/models` (0.4+): `models[].loaded_instances[].config.context_length` of the entry whose
    `key` is the model; `GET /api/v0/models`: `data[].loaded_context_length` of the entry whose `id` is
    the model and whose `state` is "loaded". Several loaded instances: the smallest. A model that is not
    loaded is loaded on demand with LM Studio's default length, not `max_context_length` (the most the
    model supports): None."""
    lengths: list[Any] = []
    if isinstance(models, dict) and "models" in models:
        source = "LM Studio /api/v1/models loaded_instances[].config.context_length"
        for entry in _listed(models, "models", "/api/v1/models"):
            instances = entry.get("loaded_instances") if entry.get("key") == model else None
            for instance in instances if isinstance(instances, list) else []:
                config = instance.get("config") if isinstance(instance, dict) else None
                lengths.append(config.get("context_length") if isinstance(config, dict) else None)
    else:
        source = "LM Studio /api/v0/models loaded_context_length"
        lengths = [entry.get("loaded_context_length") for entry in _listed(models, "data", "/api/v0/models")
                   if entry.get("id") == model and entry.get("state") == "loaded"]
    if not lengths:
        return None
    if not all(map(_positive, lengths)):
        raise UpstreamError(f"LM Studio lists {model!r} with context lengths {lengths!r}")
    return EngineWindow(min(lengths), source)


_UNSTATED = object()  # cached: the engine does not state it


class FactsCache(Generic[T]):
    """What an engine says about one model (its window, its chat template), per (engine, model), each
    kept `ttl` seconds and dropped by `forget` (call it when the engine refuses a request for its
    length, or cannot be reached: it may have restarted with another window). Bounded: the least
    recently used entry goes beyond `max_entries`."""

    def __init__(self, ttl: float = 60.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, object]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, engine: str, model: str, read: Callable[[], T | None]) -> T | None:
        """The cached facts, else `read()` (its errors pass through and nothing is cached)."""
        key = (engine, model)
        with self._lock:
            found = self._entries.get(key)
            if found is not None and self.clock() - found[0] < self.ttl:
                self._entries.move_to_end(key)
                return None if found[1] is _UNSTATED else found[1]  # type: ignore[return-value]
        facts = read()
        with self._lock:
            self._entries[key] = (self.clock(), _UNSTATED if facts is None else facts)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return facts

    def forget(self, engine: str, model: str | None = None) -> None:
        """Drop the engine's facts about `model`, or about every model of the engine."""
        with self._lock:
            for key in [k for k in self._entries if k[0] == engine and model in (None, k[1])]:
                del self._entries[key]
