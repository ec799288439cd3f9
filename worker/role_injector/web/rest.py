"""REST API v1: /healthz, /v1/roles, /v1/inject, /v1/plan, /v1/count, /v1/profiles, /openapi.json, /metrics."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response, g, request

from role_injector.errors import KINDS
from role_injector.formats import FORMATS
from role_injector.injection import Injection, InjectionPlan, find_role, inject, plan_injection
from role_injector.roles import Role
from role_injector.tokens import load_tokenizer
from role_injector.web import metrics
from role_injector.web.bodies import check_role_name, parse_count, parse_inject, parse_json_object, read_body
from role_injector.web.error_shapes import REST, answer_errors
from role_injector.web.state import cache, compute, profiles, roles, settings

rest = Blueprint("rest", __name__)
answer_errors(rest, REST)


def load_openapi() -> dict[str, Any]:
    """The OpenAPI document, with the error codes taken from the one table of errors."""
    document = yaml.safe_load(resources.files("role_injector.web").joinpath("openapi.yaml").read_text("utf-8"))
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    error["properties"]["code"]["enum"] = list(KINDS)
    return document


OPENAPI = load_openapi()


def json_body() -> dict[str, Any]:
    return parse_json_object(read_body(), request.content_type)


def role_tokens(role: Role) -> int:
    tokenizer = load_tokenizer(profiles().for_model(role.model).tokenizer)
    return cache().count((role.version, "content"), role.content, tokenizer)


def role_summary(role: Role) -> dict[str, Any]:
    return {
        "name": role.name,
        "description": role.description,
        "version": role.version,
        "tags": list(role.tags),
        "variables": [
            {"name": v.name, "required": v.required, "default": v.default, "description": v.description}
            for v in role.variables.values()
        ],
        "tokens": role_tokens(role),
        "model": role.model,
        "budget": role.budget,
        "extends": role.extends,
        "selection": role.selection,
    }


def answered(result: Injection) -> tuple[Injection, dict[str, Any]]:
    return result, injection_json(result)


def injection_json(result: Injection) -> dict[str, Any]:
    return {
        "role": {"name": result.role.name, "version": result.role.version},
        "system": result.system,
        "messages": [{"role": "system", "content": result.system}]
        + [{"role": m.role, "content": m.content} for m in result.turns],
        "prompt": result.prompt,
        "format": result.format,
        "model": result.model,
        "params": result.params,
        "usage": dict(vars(result.usage)),
        "trim": {**result.fit.report(), "dropped_messages": result.dropped_messages},
    }


@rest.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    """503 while the roles folder cannot be read (the roles loaded before keep serving)."""
    snapshot = roles()
    if snapshot.directory_error is not None:
        return {"status": "error", "roles": len(snapshot.roles), "error": snapshot.directory_error}, 503
    return {"status": "ok", "roles": len(snapshot.roles)}, 200


@rest.get("/v1/roles")
def list_roles() -> dict[str, Any]:
    snapshot = roles()
    return compute(lambda: {
        "roles": [role_summary(role) for _, role in sorted(snapshot.roles.items())],
        "errors": [{"file": e.file, "message": e.message} for e in snapshot.errors],
    })


@rest.get("/v1/roles/<path:name>")
def get_role(name: str) -> dict[str, Any]:
    role = find_role(roles(), check_role_name(name, "name"))
    return compute(lambda: role_json(role))


def role_json(role: Role) -> dict[str, Any]:
    tokenizer = load_tokenizer(profiles().for_model(role.model).tokenizer)
    sections = [
        {
            "title": section.title,
            "priority": section.priority,
            "required": section.required,
            "tokens": cache().count((role.version, "section", i), section.text, tokenizer),
        }
        for i, section in enumerate(role.sections)
    ]
    return {**role_summary(role), "params": dict(role.params), "sections": sections, "content": role.content}


@rest.post("/v1/inject")
def inject_role() -> dict[str, Any]:
    request_ = parse_inject(json_body())
    g.log["role"] = request_.role
    with metrics.injection(request_.role) as record:
        result, answer = compute(lambda: answered(inject(roles(), profiles(), request_, cache())))
        record(result)
    g.log.update(tokens=result.usage.prompt_tokens, system_tokens=result.usage.system_tokens,
                 trimmed=result.fit.trimmed, context_policy=result.usage.context_policy,
                 dropped_messages=result.dropped_messages)
    if settings().log_prompts:
        g.log["prompt"] = result.prompt
    return answer


@rest.post("/v1/plan")
def plan() -> dict[str, Any]:
    """What /v1/inject answers for the same body, plus what the fit did to each section."""
    request_ = parse_inject(json_body())
    g.log["role"] = request_.role
    return compute(lambda: plan_json(plan_injection(roles(), profiles(), request_, cache())))


def plan_json(result: InjectionPlan) -> dict[str, Any]:
    sections = [
        {"index": s.index, "label": s.label, "title": s.title, "required": s.required, "priority": s.priority,
         "order": s.order, "tokens": s.tokens, "state": s.state, "chars": len(s.text), "kept_chars": s.kept_chars,
         "kept_tokens": s.kept_tokens, "reason": s.reason, "core": s.core, "score": s.score, "position": s.position,
         "text": s.text}
        for s in result.sections
    ]
    return {**injection_json(result.injection), "sections": sections}


@rest.get("/v1/profiles")
def list_profiles() -> dict[str, Any]:
    """The model profiles in the order they are matched, the virtual models and the chat formats."""
    found = profiles()
    return {
        "models": [
            {"match": m.match, "tokenizer": m.tokenizer, "format": m.format, "context_window": m.context_window,
             "reserve_output": m.reserve_output, "exact": m.exact}
            for m in found.models
        ],
        "virtual_models": [
            {"name": v.name, "base": v.base, "role": v.role, "budget": v.options.budget}
            for _, v in sorted(found.virtual_models.items())
        ],
        "formats": list(FORMATS),
    }


@rest.post("/v1/count")
def count() -> dict[str, Any]:
    text, model = parse_count(json_body())
    profile = profiles().for_model(model)
    return {"tokens": compute(lambda: load_tokenizer(profile.tokenizer).count(text)), "tokenizer": profile.tokenizer,
            "exact": profile.exact}


@rest.get("/openapi.json")
def openapi() -> dict[str, Any]:
    return OPENAPI


@rest.get("/metrics")
def prometheus() -> Response:
    return Response(metrics.render_metrics(), mimetype="text/plain; version=0.0.4")
