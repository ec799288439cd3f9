"""The OpenAI-compatible routes, /v1/models and /v1/chat/completions: roles and a safe context window
for every OpenAI client (n8n's OpenAI Chat Model, LangChain, Open WebUI, the `openai` SDKs).

HTTP only: `role_injector.openai_compat` reads the head of the client's request, the engine the model
name means (`virtual_models.target`: Ollama, or an OpenAI-compatible server) makes its own request from
it (`Engine.chat_call`: translated or kept, with the role in it for a virtual model), which is sent
through the engine's transport, and the engine's answer (`Engine.deltas`) comes back as one
`chat.completion` or as OpenAI's SSE chunks; its counts (prompt tokens, those reused from its cache)
go to the metrics and a log line. Errors are in OpenAI's shape (`error_shapes.OPENAI`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace

from flask import Blueprint, Response, current_app, g

from role_injector import openai_compat as compat
from role_injector.engines.answer import ChatAnswer, Delta
from role_injector.engines.engine import ChatCall, Engine
from role_injector.engines.transport import REFUSAL_CHARS, Answer
from role_injector.errors import UpstreamError, UpstreamTimeout, UpstreamUnreachable
from role_injector.injection import Injection
from role_injector.json_text import parse_engine_json
from role_injector.web import metrics
from role_injector.web.bodies import parse_ollama_body, read_proxy_body
from role_injector.web.error_shapes import OPENAI, answer_errors
from role_injector.web.state import cache, compute, engines, profiles, roles
from role_injector.web.upstream import forward_headers, relay, send
from role_injector.web.virtual_models import mark_placed, placing, routed, target

openai = Blueprint("openai", __name__)
answer_errors(openai, OPENAI)
log = logging.getLogger("role_injector.engine")

SSE_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache"),
               ("X-Accel-Buffering", "no")]


def _relayed_error(serving: Engine, answer: Answer) -> Response:
    """The engine's own refusal in OpenAI's shape: a refusal of the request (4xx, e.g. 404 for a model it
    does not have) with its status, a failure of its own (5xx, e.g. a router with no engine left) as a
    502, never as a 500 of the worker's. An answer that is not JSON (a router's plain text) is quoted."""
    try:
        data = answer.body(f"{answer.path} error")
    except UpstreamError:  # larger than the worker reads
        data = b""
    try:
        refusal = parse_engine_json(data)
    except (ValueError, RecursionError):
        refusal = None
    message = serving.refusal(refusal, answer.status)
    text = data.decode("utf-8", "replace").strip()
    if refusal is None and text:
        message = f"{serving.where} answered {answer.status}: {text[:REFUSAL_CHARS]}"
    kind = "invalid_request_error" if answer.status < 500 else "server_error"
    log.warning("%s refused %s with %s: %s", serving.where, answer.path, answer.status, message)
    response = current_app.json.response(compat.error_body(message, kind,
                                                           "model_not_found" if answer.status == 404 else None))
    response.status_code = answer.status if answer.status < 500 else 502
    return response


def _incomplete(serving: Engine) -> UpstreamError:
    return UpstreamError(f"{serving.label}'s answer ended before it was complete")


def _answered(serving: Engine, answer: ChatAnswer, injection: Injection | None) -> None:
    """The engine's counts of a complete answer: metrics, and a log line (a streamed answer ends after
    the request's own line), so the prefix cache is seen at work."""
    metrics.engine_answer(serving.name, answer.prompt_tokens, answer.cached_tokens)
    log.info(json.dumps({"engine": serving.name, "model": answer.model, "prompt_tokens": answer.prompt_tokens,
                         "cached_tokens": answer.cached_tokens, "completion_tokens": answer.completion_tokens,
                         "predicted_prompt_tokens": injection.usage.prompt_tokens if injection else None}))


def _events(serving: Engine, deltas: Iterator[Delta], stream: compat.ChatStream,
            injection: Injection | None) -> Iterator[bytes]:
    """SSE events as the engine's lines arrive. Closing this (the client went away) closes the
    connection to the engine."""
    last = b""
    with closing(deltas):
        for delta in deltas:  # read to the end even after the last line: the connection is then reused
            if stream.answer.done:
                continue
            events = stream.events(delta)
            if stream.answer.done:
                # Held until the engine's answer is read to its end: its connection is back in the pool
                # before the client, which stops reading at [DONE], can send its next request.
                last = events
            elif events:
                yield events
        if not stream.answer.done:
            raise _incomplete(serving)
    _answered(serving, stream.answer, injection)
    yield last


def _completion(serving: Engine, deltas: Iterator[Delta], answer: ChatAnswer,
                injection: Injection | None) -> dict[str, object]:
    """The whole answer as one chat.completion."""
    with closing(deltas):
        for delta in deltas:  # to the end, so the connection goes back to the pool
            if not answer.done:
                answer.add(delta)
    if not answer.done:
        raise _incomplete(serving)
    _answered(serving, answer, injection)
    return compat.completion(answer)


def build_call(serving: Engine, build: Callable[[], ChatCall]) -> ChatCall:
    """The engine's request, built in the CPU pool, or on the event loop where building it asks the engine
    (its sockets belong to the loop's thread)."""
    return build() if serving.asks_while_building else compute(build)


@openai.get("/v1/models")
def models() -> Response:
    """Every engine's models, and the declared virtual models each serves."""
    listed: dict[str, compat.ModelEntry] = {}
    for serving in engines().all():
        declared = engines().declared(serving, profiles())
        try:
            answer = send(serving, "GET", serving.models_path, headers=forward_headers())
        except (UpstreamUnreachable, UpstreamTimeout) as exc:
            # Say why the virtual models the worker knows are not listed either: each runs on an engine's model.
            if declared:
                names = sorted(declared)
                shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
                exc.message += (f"; the declared virtual models ({shown}) run on {serving.label}'s models, so none"
                                " is listed")
            raise
        if answer.status != 200:
            return _relayed_error(serving, answer)
        for entry in serving.model_list(answer.json(serving.models_path), roles(), declared):
            listed.setdefault(entry.id, entry)
    return current_app.json.response(compat.model_list(listed.values()))


@openai.post("/v1/chat/completions")
def chat_completions() -> Response:
    asked = compat.parse_chat_request(parse_ollama_body(read_proxy_body()))
    chosen = target(asked.model)
    serving = chosen.engine
    asked = replace(asked, session=chosen.session)
    if chosen.virtual is None:
        g.log.update(model=asked.model)
        call = routed(build_call(serving, lambda: serving.chat_call(asked, None, profiles(), cache())))
    else:  # the role, the context policy and what is logged, as on the Ollama proxy
        with placing(chosen.virtual.virtual) as placed:
            call = routed(build_call(serving, lambda: serving.chat_call(asked, chosen.virtual, profiles(), cache())))
            if call.injection is not None:
                placed(call.injection)
    answer = send(serving, "POST", call.path, call.body, forward_headers("application/json", call.headers))
    if answer.status != 200:
        response = _relayed_error(serving, answer)
    elif asked.stream:
        stream = compat.ChatStream(ChatAnswer(asked.model), asked.include_usage)
        response = relay(answer, _events(serving, serving.deltas(answer), stream, call.injection), status=200,
                         shape=OPENAI, headers=SSE_HEADERS)
    else:
        whole = _completion(serving, serving.deltas(answer), ChatAnswer(asked.model), call.injection)
        response = current_app.json.response(whole)
    return mark_placed(response, call.injection)
