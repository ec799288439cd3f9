"""Role Injector: keep a model's role in files, fit it exactly into a token budget, wrap it for the model.

The public API of the library, in one place (the web layer, `role_injector.web`, and the CLI are
built on it). A request's path: `RoleStore` → `Role` → `fit_budget` → `render` → `Injection`, with
`inject` doing it all (with the caller's `FitCache`: there is no default one), the role's settings
layered by `RoleOptions` (role → virtual model → request), role and conversation sharing the context
window by a `ContextPolicy` (`role_injector.context`); docs/architecture.md has the whole map. A
role as an Ollama model: `plan_role_model` → `create_role_model` (with an `OllamaClient`),
`list_role_models`; as a Modelfile: `render_modelfile` / `read_modelfile`; the bake dataset:
`Teacher` → `bake_dataset`; baking on the CPU: `role_injector.bake_train.train` and
`role_injector.bake_eval.evaluate`, with llama.cpp's tools (`role_injector.llama_tools`,
`role_injector.llama_server`).

The names of the modules that talk to Ollama over HTTP (`bake`, `ollama_client`, `ollama_models`) are
imported on first use: they bring urllib3 and ssl, and `role-injector serve` has gevent patch ssl
before anything imports it (`server.patch_for_gevent`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from role_injector.context import CONTEXT_POLICIES, ContextPolicy
from role_injector.errors import (
    KINDS,
    BudgetTooSmall,
    ContextOverflow,
    ErrorKind,
    InvalidRequest,
    ModelNotFound,
    RoleError,
    RoleInjectorError,
    RoleNotFound,
    UpstreamRefused,
    VariableError,
)
from role_injector.fitting import Fit, FitCache, SectionReport, fit_budget
from role_injector.formats import FORMATS, Message, neutralise, render
from role_injector.injection import Injection, InjectRequest, Usage, find_role, inject
from role_injector.modelfile import carried_text, read_modelfile, render_modelfile
from role_injector.options import RoleOptions
from role_injector.profiles import ModelProfile, Profiles, VirtualModel, load_profiles
from role_injector.relevance import Query
from role_injector.roles import Role, Section, Variable
from role_injector.settings import Settings
from role_injector.store import LoadError, RoleSet, RoleStore
from role_injector.tokens import Tokenizer, load_tokenizer

if TYPE_CHECKING:  # what `__getattr__` imports on first use, for type checkers
    from role_injector.bake import DatasetFiles, Teacher, bake_dataset, generate_questions
    from role_injector.ollama_client import OllamaClient
    from role_injector.ollama_models import (
        RoleModel,
        create_role_model,
        list_role_models,
        plan_baked_model,
        plan_role_model,
    )

_IMPORTED_ON_FIRST_USE = {
    "role_injector.bake": ("DatasetFiles", "Teacher", "bake_dataset", "generate_questions"),
    "role_injector.ollama_client": ("OllamaClient",),
    "role_injector.ollama_models": ("RoleModel", "create_role_model", "list_role_models", "plan_baked_model",
                                    "plan_role_model"),
}


def __getattr__(name: str) -> Any:
    for module, names in _IMPORTED_ON_FIRST_USE.items():
        if name in names:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'role_injector' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "CONTEXT_POLICIES",
    "FORMATS",
    "KINDS",
    "BudgetTooSmall",
    "ContextOverflow",
    "ContextPolicy",
    "DatasetFiles",
    "ErrorKind",
    "Fit",
    "FitCache",
    "InjectRequest",
    "Injection",
    "InvalidRequest",
    "LoadError",
    "Message",
    "ModelNotFound",
    "ModelProfile",
    "OllamaClient",
    "Profiles",
    "Query",
    "Role",
    "RoleError",
    "RoleInjectorError",
    "RoleModel",
    "RoleNotFound",
    "RoleOptions",
    "RoleSet",
    "RoleStore",
    "Section",
    "SectionReport",
    "Settings",
    "Teacher",
    "Tokenizer",
    "UpstreamRefused",
    "Usage",
    "Variable",
    "VariableError",
    "VirtualModel",
    "__version__",
    "bake_dataset",
    "carried_text",
    "create_role_model",
    "find_role",
    "fit_budget",
    "generate_questions",
    "inject",
    "list_role_models",
    "load_profiles",
    "load_tokenizer",
    "neutralise",
    "plan_baked_model",
    "plan_role_model",
    "read_modelfile",
    "render",
    "render_modelfile",
]
