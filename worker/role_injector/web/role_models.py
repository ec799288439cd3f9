"""POST /v1/roles/<name>/ollama-model: create an Ollama model whose SYSTEM is the fitted role.

The answer streams (NDJSON) Ollama's progress lines as they come and, last, what was made (or
`{"error": {code, message, details}}` if Ollama fails after it started). What fails before Ollama
has said anything — a bad body, a role that cannot be fitted, a base model Ollama does not have —
is an ordinary error response.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, request

from role_injector.errors import RoleInjectorError
from role_injector.ollama_client import OllamaClient
from role_injector.ollama_models import create_role_model, plan_role_model
from role_injector.web.app import error_body
from role_injector.web.bodies import check_role_name, parse_json_object, parse_role_model, read_body
from role_injector.web.state import compute, profiles, roles, settings

role_models = Blueprint("role_models", __name__)
log = logging.getLogger("role_injector.role_models")


def line(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() + b"\n"


def stream(first: dict[str, Any], rest: Iterator[dict[str, Any]], client: OllamaClient) -> Iterator[bytes]:
    try:
        yield line(first)
        for item in rest:
            yield line(item)
    except RoleInjectorError as exc:
        yield line(error_body(exc.code, exc.message, exc.details))
    except Exception:
        log.exception("creating an Ollama model failed")
        yield line(error_body("internal_error", "internal error; see the worker's log"))
    finally:
        client.close()


@role_models.post("/v1/roles/<path:name>/ollama-model")
def create_ollama_model(name: str) -> Response:
    options = parse_role_model(parse_json_object(read_body(), request.content_type))
    role = check_role_name(name, "name")
    model = compute(lambda: plan_role_model(roles(), profiles(), role, **options))
    g.log.update(role=model.role.name, model=model.name, base=model.base)
    config = settings()
    client = OllamaClient(config.ollama_url, timeout=config.upstream_timeout, retries=1)
    lines = create_role_model(client, model)
    try:
        first = next(lines)  # errors before Ollama's first line are answered as errors
    except BaseException:
        client.close()
        raise
    return Response(stream(first, lines, client), mimetype="application/x-ndjson")
