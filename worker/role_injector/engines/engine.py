"""The interface every kind of engine implements, and what passes through it.

The web layer only relays: it resolves a model name to (engine, virtual model or none), asks the engine
for its own request (`chat_call`), sends it through the engine's `transport`, and reads the answer back
as neutral deltas (`deltas`). Translation (OpenAI's request to the engine's), where the role goes in the
engine's body, how the engine counts and how big its window is, and what its answers mean are the
engine's module's job, nowhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from role_injector.engines.answer import Delta
from role_injector.engines.kinds import EngineKind
from role_injector.engines.routing import DEFAULT_ROUTING_HEADERS, body_session, opening, routing_key
from role_injector.engines.transport import Answer, Transport
from role_injector.fitting import FitCache
from role_injector.injection import Injection, VirtualRequest
from role_injector.openai_compat import ChatRequest, ModelEntry
from role_injector.profiles import Profiles, VirtualModel
from role_injector.store import RoleSet


@dataclass(frozen=True)
class ChatCall:
    """The engine's own request for one chat completion, ready to send (POST, JSON): made by
    `Engine.call`, so that every one carries its conversation's routing key."""

    path: str
    body: bytes
    injection: Injection | None  # the role put in, for a virtual model
    routing_key: str  # the conversation's (engines/routing.py)
    headers: Mapping[str, str] = field(default_factory=dict)  # the engine's own, over the client's


def chat_key(request: ChatRequest) -> str:
    """The routing key of a Chat Completions request: the client's session id (a routing header, else
    `prompt_cache_key` or `user`), else its first user message, on the model it names."""
    return routing_key(request.model, request.session or body_session(request.body),
                       opening(request.body.get("messages")))


class Engine(ABC):
    """One model server the worker puts roles in front of: a kind, and where it is."""

    kind: EngineKind  # how settings and profile files name the kind
    label: str  # how messages name it: "Ollama", "llama.cpp"
    models_path: str  # GET: the models it serves
    # Whether `chat_call` asks the engine anything (its window, template, /tokenize counts): then it runs on
    # the event loop, whose sockets it uses, and not in the CPU pool's OS threads (web/state.compute).
    asks_while_building = False

    def __init__(self, name: str, transport: Transport,
                 routing_headers: tuple[str, ...] = DEFAULT_ROUTING_HEADERS) -> None:
        self.name = name  # "default", or its name in the profile file (a metric label: bounded)
        self.transport = transport
        self.routing_headers = routing_headers  # where a router in front of engines reads the routing key

    def call(self, path: str, body: bytes, injection: Injection | None, key: str) -> ChatCall:
        """The engine's request for a chat, its routing key under each of the engine's routing headers:
        the one place every chat request to an engine is made, on every route."""
        return ChatCall(path, body, injection, key, dict.fromkeys(self.routing_headers, key))

    @property
    def where(self) -> str:
        """The engine in messages: `llama.cpp at http://host:8080` (never the URL's userinfo)."""
        return self.transport.where

    @abstractmethod
    def chat_call(self, request: ChatRequest, virtual: VirtualRequest | None, profiles: Profiles,
                  cache: FitCache) -> ChatCall:
        """The engine's request for a chat completion asked in OpenAI's shape: translated, with the role
        in it for a virtual model, a plain model's conversation checked against its window where the
        engine would not refuse it itself. Raises `InvalidRequest` for what the engine cannot do, what
        `inject` raises, and the transport's errors where the engine is asked for its facts first."""

    @abstractmethod
    def deltas(self, answer: Answer) -> Iterator[Delta]:
        """The engine's answer to a `ChatCall` (status 200) as deltas, the last one `done`; an error the
        engine reports inside it raises `UpstreamError`. Ending without a `done` delta means the answer
        was cut. Closing the iterator closes the connection."""

    @abstractmethod
    def model_list(self, listed: Any, roles: RoleSet, declared: Mapping[str, VirtualModel]) -> list[ModelEntry]:
        """The engine's answer to `models_path` as entries, with `declared`, the virtual models it serves."""

    @abstractmethod
    def refusal(self, answer: Any, status: int) -> str:
        """The message of the engine's own error answer (its JSON body, or None when it is not JSON)."""
