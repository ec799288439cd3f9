"""POST /v1/roles/<name>/ollama-model: create an Ollama model whose SYSTEM is the fitted role.

The answer streams (NDJSON) Ollama's progress lines as they come and, last, what was made (or
`{"error": {code, message, details}}` if Ollama fails after it started). What fails before Ollama
has said anything — a bad body, a role that cannot be fitted, a base model Ollama does not have, a
model of that name that Role Injector did not make (409 `model_exists`, unless `"replace": true`) —
is an ordinary error response.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, g, request

from role_injector.engines.transport import encode_json
from role_injector.errors import InvalidRequest, RoleInjectorError
from role_injector.ollama_client import OllamaClient
from role_injector.ollama_models import create_role_model, plan_role_model
from role_injector.web.bodies import check_role_name, parse_json_object, parse_role_model, read_body
from role_injector.web.error_shapes import REST, InternalError, answer_errors
from role_injector.web.state import cache, compute, engines, profiles, roles

role_models = Blueprint("role_models", __name__)
answer_errors(role_models, REST)
log = logging.getLogger("role_injector.role_models")


def stream(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    try:
        yield encode_json(first) + b"\n"
        for item in rest:
            yield encode_json(item) + b"\n"
    except RoleInjectorError as exc:
        yield REST.stream_line(exc)
    except Exception:
        log.exception("creating an Ollama model failed")
        yield REST.stream_line(InternalError(REST.internal))


@role_models.post("/v1/roles/<path:name>/ollama-model")
def create_ollama_model(name: str) -> Response:
    options, replace = parse_role_model(parse_json_object(read_body(), request.content_type))
    ollama = engines().ollama
    if ollama is None:
        raise InvalidRequest(f"creating an Ollama model needs Ollama, and this worker serves none (its engine is "
                             f"{engines().default.where}); add one to the profile file's engines: (kind: ollama)")
    role = check_role_name(name, "name")
    model = compute(lambda: plan_role_model(roles(), profiles(), cache(), role, **options))
    g.log.update(role=model.role.name, model=model.name, base=model.base)
    # The engine's transport: its pooled connections, its timeouts, its bounds. One retry of what may pass.
    lines = create_role_model(OllamaClient(ollama.transport, retries=1), model, replace=replace)
    first = next(lines)  # errors before Ollama's first line are answered as errors
    return Response(stream(first, lines), mimetype="application/x-ndjson")
