"""Routing keys: what tells a router in front of several engines (vllm-router, SGLang's Model Gateway,
NVIDIA Dynamo, vLLM's production-stack) that requests belong to one conversation, so every turn of it
lands on the engine whose prefix cache holds its role and history (docs/scaling.md).

- The key (`routing_key`) is made from the model name the client asked for and, in this order, the
  client's own session id (a routing header it sent, `CLIENT_SESSION_HEADERS` or the engine's own;
  OpenAI's `prompt_cache_key`; OpenAI's `user`), else the conversation's opening: its first user
  message, which stays the same on every turn of a conversation and differs between most
  conversations. Never the role's version: a reload would otherwise move every conversation to
  another engine (and split one between two, while replicas disagree on the version for a moment),
  where keeping it lets the engine reuse what the old and the new role text share.
- What is sent is never what was given: 32 hex digits of a SHA-256 over those values (128 bits), so no
  message text and no client value (a session id may be a secret) reaches a router, its logs or an
  engine's headers. The router already sees the body it forwards; the key adds nothing to it.
- It goes under each of the engine's routing headers (`DEFAULT_ROUTING_HEADERS`, or the engine's
  `routing_headers` in the profile file, ROLE_INJECTOR_ENGINE_ROUTING_HEADERS for the default engine),
  replacing any header of that name the client sent, on every chat request of every engine and
  route (`Engine.call`).

The same client request gives the same key in every process (no randomness, no time, no hash seed),
so worker replicas are interchangeable behind a load balancer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The headers routers read a session from: vllm-router's consistent_hash policy (and vLLM's
# production-stack with `--session-key X-Session-ID`), SGLang Model Gateway's consistent_hashing and
# manual policies, NVIDIA Dynamo's session affinity.
DEFAULT_ROUTING_HEADERS = ("X-Session-ID", "X-SMG-Routing-Key", "X-Dynamo-Session-ID")
# A client's own session id, when it sends one under any of these (or under the engine's own names).
CLIENT_SESSION_HEADERS = DEFAULT_ROUTING_HEADERS
KEY_HEX_DIGITS = 32
MAX_ROUTING_HEADERS = 8
HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
# Headers a routing key must never replace: the request's framing, its credentials, its body's type.
RESERVED_HEADERS = frozenset({
    "accept-encoding", "authorization", "connection", "content-encoding", "content-length", "content-type",
    "cookie", "expect", "host", "keep-alive", "proxy-authorization", "te", "trailer", "transfer-encoding",
    "upgrade", "x-api-key",
})
DOMAIN = "role-injector routing key 1"  # changes every key if the recipe ever changes


def routing_headers(value: object, where: str) -> tuple[str, ...]:
    """The header names a setting gives (a list, or a string of names separated by commas or blanks;
    empty, or "none", for no routing headers), each a plain header name that frames nothing; else
    ValueError naming `where`."""
    if isinstance(value, str):
        names: list[object] = [] if value.strip().lower() == "none" else [n for n in re.split(r"[,\s]+", value) if n]
    elif isinstance(value, list):
        names = list(value)
    else:
        raise ValueError(f"{where} must be a list of header names")
    if len(names) > MAX_ROUTING_HEADERS:
        raise ValueError(f"{where} names more than {MAX_ROUTING_HEADERS} headers")
    found: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ValueError(f"{where}: {str(name)[:80]!r} is not a header name (letters, digits and '-', "
                             "at most 64)")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"{where}: {name!r} is not a header a routing key may take")
        found.setdefault(name.lower(), name)
    return tuple(found.values())


def client_session(headers: Mapping[str, str], names: Iterable[str]) -> str | None:
    """The client's own session id: the first of `names` it sent a value under (names compared
    without case), or None."""
    sent = {name.lower(): value for name, value in headers.items()}
    for name in names:
        value = sent.get(name.lower(), "").strip()
        if value:
            return value
    return None


def _text(content: Any) -> str:
    """A message's text: its content string, or the text of its content parts (images left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def opening(messages: Any) -> str:
    """The text of a conversation's first user message (OpenAI's or Ollama's shape), "" without one."""
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict) and message.get("role") == "user":
            return _text(message.get("content"))
    return ""


def routing_key(model: str, session: str | None, first: str) -> str:
    """The key of a conversation on `model`: from the client's `session` id when it has one, else from
    its opening (`first`, the first user message). A one-way hash of them: nothing of either can be read
    back from it."""
    source = ["session", session] if session else ["opening", first]
    # JSON keeps the parts apart (no two inputs join into one text); ASCII escapes a lone surrogate.
    text = json.dumps([DOMAIN, model, *source], ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:KEY_HEX_DIGITS]


def body_session(body: Mapping[str, Any], fields: Sequence[str] = ("prompt_cache_key", "user")) -> str | None:
    """A session id in an OpenAI request body: `prompt_cache_key` (what OpenAI's own cache routes by),
    else `user`; strings only."""
    for field in fields:
        value = body.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None
