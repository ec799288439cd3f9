"""Role Injector: keep a model's role in files, fit it exactly into a token budget, wrap it for the model.

The public API of the library, in one place (the web layer, `role_injector.web`, and the CLI are
built on it). A request's path: `RoleStore` → `Role` → `fit_budget` → `render` → `Injection`, with
`inject` doing it all, role and conversation sharing the context window by a `ContextPolicy`
(`role_injector.context`); docs/architecture.md has the whole map.
"""

from role_injector.context import CONTEXT_POLICIES, ContextPolicy
from role_injector.errors import (
    KINDS,
    BudgetTooSmall,
    ContextOverflow,
    ErrorKind,
    InvalidRequest,
    RoleError,
    RoleInjectorError,
    RoleNotFound,
    VariableError,
)
from role_injector.fitting import Fit, FitCache, fit_budget
from role_injector.formats import FORMATS, Message, neutralise, render
from role_injector.injection import Injection, InjectRequest, Usage, find_role, inject
from role_injector.profiles import ModelProfile, Profiles, VirtualModel, load_profiles
from role_injector.roles import Role, Section, Variable
from role_injector.settings import Settings
from role_injector.store import LoadError, RoleSet, RoleStore
from role_injector.tokens import Tokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CONTEXT_POLICIES",
    "FORMATS",
    "KINDS",
    "BudgetTooSmall",
    "ContextOverflow",
    "ContextPolicy",
    "ErrorKind",
    "Fit",
    "FitCache",
    "InjectRequest",
    "Injection",
    "InvalidRequest",
    "LoadError",
    "Message",
    "ModelProfile",
    "Profiles",
    "Role",
    "RoleError",
    "RoleInjectorError",
    "RoleNotFound",
    "RoleSet",
    "RoleStore",
    "Section",
    "Settings",
    "Tokenizer",
    "Usage",
    "Variable",
    "VariableError",
    "VirtualModel",
    "__version__",
    "find_role",
    "fit_budget",
    "inject",
    "load_profiles",
    "load_tokenizer",
    "neutralise",
    "render",
]
