"""The interface every kind of engine implements, and what passes through it.

The web layer only relays: it resolves a model name to (engine, virtual model or none), asks the engine
for its own request (`chat_call`), sends it through the engine's `transport`, and reads the streamed
answer back through `delta`, line by line in the engine's `line_format`. Translation (OpenAI's request
to the engine's), where the role goes in the engine's body, and what the engine's lines mean are the
engine's module's job, nowhere else.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from role_injector.engines.answer import Delta
from role_injector.engines.lines import LineFormat
from role_injector.engines.transport import Transport
from role_injector.fitting import FitCache
from role_injector.injection import Injection, VirtualRequest
from role_injector.openai_compat import ChatRequest, ModelEntry
from role_injector.profiles import Profiles
from role_injector.store import RoleSet


@dataclass(frozen=True)
class ChatCall:
    """The engine's own request for one chat completion, ready to send (POST, JSON, streamed)."""

    path: str
    body: bytes
    injection: Injection | None  # the role put in, for a virtual model


class Engine(ABC):
    """One kind of model server the worker puts roles in front of."""

    kind: ClassVar[str]  # how settings and profile files name the kind: "ollama"
    label: ClassVar[str]  # how messages name it: "Ollama"
    line_format: ClassVar[LineFormat]  # how its chat answers stream
    models_path: ClassVar[str]  # GET: the models it serves

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    @abstractmethod
    def chat_call(self, request: ChatRequest, virtual: VirtualRequest | None, profiles: Profiles,
                  cache: FitCache) -> ChatCall:
        """The engine's request for a chat completion asked in OpenAI's shape: translated, with the role
        in it for a virtual model, a plain model's conversation checked against its window. Raises
        `InvalidRequest` for what the engine cannot do, and what `inject` raises."""

    @abstractmethod
    def delta(self, line: Mapping[str, Any]) -> Delta:
        """One line of the engine's streamed chat answer; an error reported in the stream raises
        `UpstreamError`."""

    @abstractmethod
    def model_list(self, listed: Any, roles: RoleSet, profiles: Profiles) -> list[ModelEntry]:
        """The engine's answer to `models_path` as entries, the declared virtual models among them."""

    @abstractmethod
    def refusal(self, answer: Any, status: int) -> str:
        """The message of the engine's own error answer (its JSON body, or None when it is not JSON)."""
