"""Ollama models made from roles: the role fitted into the model's SYSTEM (or a LoRA adapter baked
from it), their names and labels, and which of them are stale after a role edit.

A created model gets the name the user chose (default: the role's name) and, with `/api/copy`, a
second name that records where it came from: the label `role-injector/<role>:<version>-<fp>`, where
`<version>` is the first 12 hex digits of the role's version and `<fp>` 8 of the sha256 of the
create request. Both names share one manifest, so `/api/tags` shows them with the same digest:
`list_role_models` finds every label, the names that share its digest, and compares the version
with the role's current one. Ollama keeps no comments or labels of its own in a model, and a name
is the one thing every Ollama client lists.

The label is also how a model made here is told from one made otherwise: creating a model never
overwrites an existing one that no label shares a digest with (a model pulled or made by the user,
`qwen3:8b` say) unless asked to (`replace`): that is a `ModelExists`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from role_injector.engines.ollama import num_ctx_option
from role_injector.errors import InvalidRequest, ModelExists, ModelNotFound, RoleError
from role_injector.fitting import Fit, FitCache
from role_injector.injection import InjectRequest, Usage, find_role, inject
from role_injector.modelfile import carried_text, check_parameters, render_modelfile
from role_injector.ollama_client import OllamaClient
from role_injector.options import RoleOptions
from role_injector.profiles import Profiles
from role_injector.roles import NAME_PATTERN, Role
from role_injector.store import RoleSet

LABEL_NAMESPACE = "role-injector"
LABEL = re.compile(rf"{LABEL_NAMESPACE}/(?P<role>{NAME_PATTERN.pattern}):(?P<version>[0-9a-f]{{12}})-[0-9a-f]{{8}}")
# Ollama's model names (types/model/name.go): [host/][namespace/]model[:tag].
HOST = re.compile(r"(?:https?://)?[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
DEFAULT_PREFIXES = ("registry.ollama.ai/library/", "library/")

Status = Literal["current", "stale", "role missing"]


def check_model_name(name: Any, what: str) -> str:
    """An Ollama model name, or `InvalidRequest` saying why Ollama would refuse it."""
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"{what} must be a non-empty model name", details={"field": what})
    rest, tag = name, None
    if name.rfind(":") > name.rfind("/"):
        rest, tag = name.rsplit(":", 1)
    *prefix, model = rest.split("/")
    host, namespace = ("/".join(prefix[:-1]) or None, prefix[-1]) if prefix else (None, None)
    if (
        not MODEL_OR_TAG.fullmatch(model)
        or (tag is not None and not MODEL_OR_TAG.fullmatch(tag))
        or (namespace is not None and not NAMESPACE.fullmatch(namespace))
        or (host is not None and not HOST.fullmatch(host))
    ):
        raise InvalidRequest(
            f"{what} {name!r} is not an Ollama model name: [host/][namespace/]model[:tag], each part of letters, "
            "digits, '_', '-' (and '.' in model and tag), starting with a letter, digit or '_'",
            details={"field": what, "name": name},
        )
    return name


def display_name(name: str) -> str:
    """The name as /api/tags shows it: default registry and namespace left out, `:latest` added."""
    for prefix in DEFAULT_PREFIXES:
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    return name if name.rfind(":") > name.rfind("/") else name + ":latest"


@dataclass(frozen=True)
class RoleModel:
    """An Ollama model to create for a role: its names and the body of `POST /api/create`."""

    name: str
    role: Role
    base: str
    system: str | None
    parameters: Mapping[str, Any]
    adapters: Mapping[str, str] = field(default_factory=dict)  # file name -> sha256:<hex> of a blob
    files: Mapping[str, str] = field(default_factory=dict)  # a whole model from blobs, instead of `from`
    fit: Fit | None = None
    usage: Usage | None = None

    def create_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "parameters": dict(self.parameters)}
        if self.files:
            body["files"] = dict(self.files)
        else:
            body["from"] = self.base
        if self.system is not None:
            body["system"] = self.system
        if self.adapters:
            body["adapters"] = dict(self.adapters)
        return body

    @property
    def label(self) -> str:
        """`role-injector/<role>:<version>-<fingerprint of the create request>`."""
        request = {key: value for key, value in self.create_body().items() if key != "model"}
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        return f"{LABEL_NAMESPACE}/{self.role.name}:{self.role.version[7:19]}-{fingerprint[:8]}"

    def summary(self) -> dict[str, Any]:
        """What was created, as the last line of the progress stream says it."""
        out: dict[str, Any] = {
            "status": "success",
            "model": display_name(self.name),
            "label": self.label,
            "role": {"name": self.role.name, "version": self.role.version},
            "base": self.base,
            "parameters": dict(self.parameters),
        }
        if self.adapters:
            out["adapters"] = dict(self.adapters)
        if self.files:
            out["files"] = dict(self.files)
        if self.usage is not None and self.fit is not None:
            out |= {"system_tokens": self.usage.system_tokens, "system_tokens_full": self.usage.system_tokens_full,
                    "budget": self.usage.budget, "trimmed": self.fit.trimmed}
        return out


def _role_parameters(role: Role, window: int, usage: Usage | None) -> dict[str, Any]:
    """The role's params, `num_ctx` the window and, with a SYSTEM, `num_keep` its tokens (unless the
    role sets it), so that a context shift in Ollama keeps the role instead of its first 4 tokens."""
    parameters = {**role.params, "num_ctx": window}
    if usage is not None and usage.num_keep is not None:
        parameters.setdefault("num_keep", usage.num_keep)
    try:
        return check_parameters(parameters)
    except InvalidRequest as exc:
        raise RoleError(f"role {role.name!r}: params: {exc.message}", details=exc.details) from None


def _base_and_window(role: Role, profiles: Profiles, base: str | None) -> tuple[str, int]:
    base = base or role.model
    if base is None:
        raise InvalidRequest(f"name the base model: role {role.name!r} has no 'model'", details={"field": "base"})
    check_model_name(base, "the base model")
    # The window as the proxy takes it for `base@role`: the profile's, or the role's num_ctx if larger.
    return base, _window(role, profiles.for_model(base).context_window)


def _window(role: Role, window: int) -> int:
    """`window`, or the role's num_ctx if larger."""
    try:
        asked = num_ctx_option(role.params.get("num_ctx"), f"num_ctx in the params of role {role.name!r}")
    except InvalidRequest as exc:
        raise RoleError(exc.message, details=exc.details) from None
    return max(window, asked or 0)


def _fitted(roles: RoleSet, profiles: Profiles, cache: FitCache, role: Role, base: str, window: int,
            budget: int | None, variables: Mapping[str, str]) -> tuple[Fit, Usage]:
    # A SYSTEM cannot give way as a conversation grows, so the policy is keep_role whatever the role
    # says: the text is the one the proxy sends for `base@role` on every turn.
    options = RoleOptions(budget=budget, context_policy="keep_role", variables=variables)
    request = InjectRequest(role=role.name, options=options, model=base, context_window=window)
    result = inject(roles, profiles, request, cache)
    return result.fit, result.usage


def plan_role_model(
    roles: RoleSet,
    profiles: Profiles,
    cache: FitCache,
    role_name: str,
    *,
    base: str | None = None,
    name: str | None = None,
    budget: int | None = None,
    variables: Mapping[str, str] | None = None,
) -> RoleModel:
    """The model whose SYSTEM is the role fitted for `base` (the role's model by default) as the
    keep_role policy fits it: `budget`, else the role's, else all of it, capped so that the role's
    `history_share` (0.25) of the window stays for the conversation; `num_ctx` the profile's
    context window (or the role's `num_ctx`, if larger), `num_keep` the role's tokens, with the
    role's params."""
    role = find_role(roles, role_name)
    base, window = _base_and_window(role, profiles, base)
    fit, usage = _fitted(roles, profiles, cache, role, base, window, budget, variables or {})
    return RoleModel(name=check_model_name(name or role.name, "the model name"), role=role, base=base,
                     system=fit.system, parameters=_role_parameters(role, window, usage), fit=fit, usage=usage)


def plan_baked_model(
    roles: RoleSet,
    profiles: Profiles,
    cache: FitCache,
    role_name: str,
    *,
    adapter: tuple[str, str],
    base: str | None = None,
    name: str | None = None,
    reminder_budget: int | None = None,
    variables: Mapping[str, str] | None = None,
) -> RoleModel:
    """The model `base` + a LoRA adapter trained on the role (`adapter`: file name, blob digest),
    with the role's params and, when `reminder_budget` is given, the role fitted to that many
    tokens as a short system reminder."""
    role = find_role(roles, role_name)
    base, window = _base_and_window(role, profiles, base)
    file_name, digest = adapter
    fit = usage = None
    if reminder_budget is not None:
        fit, usage = _fitted(roles, profiles, cache, role, base, window, reminder_budget, variables or {})
    return RoleModel(name=check_model_name(name or role.name, "the model name"), role=role, base=base,
                     system=fit.system if fit else None, parameters=_role_parameters(role, window, usage),
                     adapters={file_name: digest}, fit=fit, usage=usage)


def plan_model_from_file(roles: RoleSet, role_name: str, *, file: tuple[str, str], window: int,
                         name: str | None = None) -> RoleModel:
    """A model made whole from a GGUF file (`file`: its name, blob digest), such as the one `bake
    train` writes, with the role's params and `num_ctx` the file's context length (or the role's
    `num_ctx`, if larger); no SYSTEM, as the role is in its weights."""
    role = find_role(roles, role_name)
    file_name, digest = file
    return RoleModel(name=check_model_name(name or role.name, "the model name"), role=role, base=file_name,
                     system=None, parameters=_role_parameters(role, _window(role, window), None),
                     files={file_name: digest})


def role_modelfile(model: RoleModel) -> tuple[str, bool]:
    """An equivalent Modelfile, and whether its SYSTEM had to differ from the exact text (see
    `modelfile.carried_text`)."""
    system = None if model.system is None else carried_text(model.system)
    comments = [
        f"Role Injector: role {model.role.name}, version {model.role.version}, for {model.base}",
    ]
    if model.usage is not None and model.fit is not None:
        comments.append(f"system prompt: {model.usage.system_tokens} of {model.usage.system_tokens_full} tokens "
                        f"(budget {model.usage.budget})" + (", trimmed" if model.fit.trimmed else ""))
    comments += [
        f"ollama create {model.name} -f Modelfile",
        f"ollama cp {model.name} {model.label}   # the label `role-injector ollama list` reads",
    ]
    if system != model.system:
        comments.append("SYSTEM differs from the exact text in invisible characters a Modelfile cannot carry; "
                        "`role-injector ollama create` sends the exact text")
    text = render_modelfile(model.base, system=system, parameters=model.parameters,
                            adapters=list(model.adapters), comments=comments)
    return text, system != model.system


def _entry_name(entry: Mapping[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model"))


def check_replaceable(client: OllamaClient, name: str) -> None:
    """`ModelExists` when Ollama has a model `name` that Role Injector did not make: one that is no
    label and shares its digest with none."""
    wanted = display_name(name).lower()
    models = client.tags()
    found = next((entry for entry in models if display_name(_entry_name(entry)).lower() == wanted), None)
    if found is None or LABEL.fullmatch(_entry_name(found)):
        return
    digest = found.get("digest")
    if digest and any(entry.get("digest") == digest and LABEL.fullmatch(_entry_name(entry)) for entry in models):
        return
    raise ModelExists(f"Ollama at {client.url} has a model {name!r} that Role Injector did not make; "
                      "creating the role's model would overwrite it. Choose another name, or replace it "
                      "explicitly (\"replace\": true; role-injector ollama create --replace)",
                      details={"model": name})


def create_role_model(client: OllamaClient, model: RoleModel, *, replace: bool = False) -> Iterator[dict[str, Any]]:
    """Create `model` in Ollama and label it: Ollama's progress lines, then `model.summary()`. An
    existing model of that name that Role Injector did not make is overwritten only with `replace`.
    Nothing is sent before iteration starts; errors before the first line are raised from it."""
    if not model.files:
        try:
            client.show(model.base)
        except ModelNotFound:
            raise ModelNotFound(f"Ollama at {client.url} has no model {model.base!r}; pull it first: "
                                f"ollama pull {model.base}", details={"model": model.base}) from None
    if not replace:
        check_replaceable(client, model.name)
    for line in client.create(model.create_body()):
        if line.get("status") != "success":  # the last line is ours, once the label is there
            yield line
    client.copy(model.name, model.label)
    yield model.summary()


# --- which created models are stale -----------------------------------------------------------------


@dataclass(frozen=True)
class CreatedModel:
    name: str  # a model in Ollama: a name the user chose, or the label itself when nothing else shares it
    label: str
    role: str
    version: str  # first 12 hex digits of the role's version it was created from
    current: str | None  # the same of the role's version now; None when there is no such role
    base: str

    @property
    def status(self) -> Status:
        if self.current is None:
            return "role missing"
        return "current" if self.version == self.current else "stale"

    def as_json(self) -> dict[str, Any]:
        return {"model": self.name, "label": self.label, "role": self.role, "version": self.version,
                "current": self.current, "status": self.status, "base": self.base}


def list_role_models(client: OllamaClient, roles: RoleSet) -> list[CreatedModel]:
    """Every model made by Role Injector that Ollama has, with the role version it was made from."""
    models = client.tags()
    labels: dict[str, list[tuple[str, re.Match[str]]]] = {}
    names: dict[str, list[str]] = {}
    for entry in models:
        name = str(entry.get("name") or entry.get("model"))
        digest = str(entry.get("digest") or "")
        found = LABEL.fullmatch(name)
        if found:
            labels.setdefault(digest, []).append((name, found))
        else:
            names.setdefault(digest, []).append(name)
    bases = {str(e.get("name") or e.get("model")): str((e.get("details") or {}).get("parent_model") or "")
             for e in models if isinstance(e.get("details"), dict)}
    out = []
    for digest, found in labels.items():
        role_name = found[0][1]["role"]
        role = roles.roles.get(role_name)
        current = role.version[7:19] if role else None
        # Two labels on one manifest: a role edit that did not change the model; the current one wins.
        label, match = next(((n, m) for n, m in found if m["version"] == current), min(found, key=lambda f: f[0]))
        for name in sorted(names.get(digest, [])) or [label]:
            out.append(CreatedModel(name=name, label=label, role=role_name, version=match["version"],
                                    current=current, base=bases.get(name, "")))
    return sorted(out, key=lambda model: (model.role, model.name))


def prune_stale_labels(client: OllamaClient, models: list[CreatedModel]) -> list[str]:
    """Delete the labels that are not current and that no other name shares; the names deleted."""
    deleted = []
    for model in models:
        if model.name == model.label and model.status != "current":
            client.delete(model.label)
            deleted.append(model.label)
    return deleted
