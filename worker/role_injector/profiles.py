"""Model profiles (tokenizer, chat format, context window, engine), virtual models (base model + role)
and the engines the profile file names (a kind, a URL, where its API key is)."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from role_injector.engines.kinds import EngineKind, engine_kind
from role_injector.engines.routing import DEFAULT_ROUTING_HEADERS, routing_headers
from role_injector.engines.url import EngineUrl
from role_injector.errors import ConfigError, InvalidRequest, ProfileError
from role_injector.formats import FORMATS
from role_injector.options import VIRTUAL_FIELDS, OptionError, RoleOptions, parse_options, tokens
from role_injector.regular_files import read_regular_file
from role_injector.roles import DEFAULT_LIMITS, LIMIT_VARIABLES, NAME_PATTERN, RoleLimits
from role_injector.tokens import VOCABULARIES
from role_injector.yaml_input import YamlRefused, load_yaml

# Ollama's longest model name (host 350 characters, namespace, model and tag 80 each) with '@' and a
# role name fits well within this; a longer name is no model's, and is refused before it is logged,
# sent on or repeated in an answer.
MAX_MODEL_NAME_CHARS = 1024


def check_model_length(name: Any, field: str = "model") -> None:
    """`InvalidRequest` naming `field` when `name` is a string longer than any model's name."""
    if isinstance(name, str) and len(name) > MAX_MODEL_NAME_CHARS:
        raise InvalidRequest(f"'{field}' has {len(name)} characters; a model name has at most "
                             f"{MAX_MODEL_NAME_CHARS}", details={"field": field})


@dataclass(frozen=True)
class ModelProfile:
    match: str
    tokenizer: str
    format: str
    context_window: int
    reserve_output: int
    exact: bool
    margin: float
    engine: str | None = None  # the engine that serves the models it matches (None: the default one)
    # Whether the profile file states the window: else an engine that tells its window is asked.
    window_stated: bool = False

    def usable_window(self, context_window: int) -> int:
        return usable_window(context_window, self.margin)


def usable_window(context_window: int, margin: float) -> int:
    """The window in a tokenizer's counts, with room for what an estimate (margin > 1) may miss."""
    return math.floor(context_window / margin)


@dataclass(frozen=True)
class VirtualModel:
    """A base model with a role: declared in the profile file, or `base@role` named by a request."""

    name: str
    base: str
    role: str
    options: RoleOptions = field(default_factory=RoleOptions)  # over the role's own
    engine: str | None = None  # the engine that serves it, over its base's profile's


DEFAULT_ENGINE = "default"  # the engine of ROLE_INJECTOR_ENGINE, as the profile file may name it


@dataclass(frozen=True)
class EngineEntry:
    """An engine the profile file names: its kind, where it is, and which environment variable holds
    its API key (a secret stays out of the file)."""

    name: str
    kind: EngineKind
    url: EngineUrl
    api_key_env: str | None = None
    routing_headers: tuple[str, ...] = DEFAULT_ROUTING_HEADERS  # where it is given routing keys


@dataclass(frozen=True)
class Profiles:
    models: tuple[ModelProfile, ...]
    virtual_models: Mapping[str, VirtualModel]
    engines: Mapping[str, EngineEntry] = field(default_factory=dict)

    def engine_of(self, model: str | None, virtual: VirtualModel | None = None) -> str:
        """The name of the engine that serves `model` (a virtual model's base): the virtual model's
        `engine`, else its profile's, else the default one."""
        if virtual is not None and virtual.engine is not None:
            return virtual.engine
        return self.for_model(model).engine or DEFAULT_ENGINE

    def for_model(self, model: str | None) -> ModelProfile:
        names = [(model or "").lower()]
        if "/" in names[0]:
            names.append(names[0].rsplit("/", 1)[1])
        for profile in self.models:
            if any(fnmatch.fnmatchcase(name, profile.match) for name in names):
                return profile
        return self.models[-1]

    def virtual_model(self, name: str) -> VirtualModel | None:
        """A declared virtual model, or the ad-hoc form `base@role`."""
        if name in self.virtual_models:
            return self.virtual_models[name]
        base, at, role = name.rpartition("@")
        if at and base and NAME_PATTERN.fullmatch(role):
            return VirtualModel(name=name, base=base, role=role)
        return None


def resolve_virtual(profiles: Profiles, name: Any) -> VirtualModel | None:
    """The virtual model a request names (declared, or `base@role`), or None for a plain model."""
    if not isinstance(name, str) or not name:
        return None
    found = profiles.virtual_model(name)
    if found is None and name.endswith(":latest"):  # Ollama clients may add the default tag
        found = profiles.virtual_model(name[: -len(":latest")])
    return found


def _engine_name(where: str, raw: Mapping[str, Any], engines: Mapping[str, EngineEntry]) -> str | None:
    name = raw.get("engine")
    if name is None or name == DEFAULT_ENGINE or name in engines:
        return name
    known = ", ".join([DEFAULT_ENGINE, *engines])
    raise ProfileError(f"{where}: engine {name!r} is not one of the file's engines ({known})")


def _parse_model(where: str, raw: Any, engines: Mapping[str, EngineEntry], stated: bool) -> ModelProfile:
    if not isinstance(raw, dict) or not isinstance(raw.get("match"), str):
        raise ProfileError(f"{where} must be a mapping with a 'match' pattern")
    unknown = set(raw) - {"match", "tokenizer", "format", "context_window", "reserve_output", "exact", "margin",
                          "engine"}
    if unknown:
        raise ProfileError(f"{where} has unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    tokenizer = raw.get("tokenizer", "cl100k_base")
    if tokenizer not in VOCABULARIES:
        raise ProfileError(f"{where}: tokenizer must be one of {', '.join(VOCABULARIES)}")
    format_name = raw.get("format", "chatml")
    if format_name not in FORMATS:
        raise ProfileError(f"{where}: format must be one of {', '.join(FORMATS)}")
    exact = raw.get("exact", tokenizer.startswith("qwen"))  # Qwen's own vocabularies count exactly
    if not isinstance(exact, bool):
        raise ProfileError(f"{where}: exact must be true or false")
    margin = raw.get("margin", 1.0 if exact else 1.25)
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 1.0 <= margin <= 4.0:
        raise ProfileError(f"{where}: margin must be a number from 1 to 4")
    try:
        context_window = tokens(raw.get("context_window", 8192), "context_window")
        reserve_output = tokens(raw.get("reserve_output", 1024), "reserve_output", minimum=0)
    except OptionError as exc:
        raise ProfileError(f"{where}: {exc.message}") from None
    return ModelProfile(
        match=raw["match"].lower(),
        tokenizer=tokenizer,
        format=format_name,
        context_window=context_window,
        reserve_output=reserve_output,
        exact=exact,
        margin=float(margin),
        engine=_engine_name(where, raw, engines),
        window_stated=stated and "context_window" in raw,
    )


def _parse_virtual(name: Any, raw: Any, engines: Mapping[str, EngineEntry]) -> VirtualModel:
    where = f"virtual model {name!r}"
    if not isinstance(name, str) or not name or "@" in name:
        raise ProfileError(f"{where}: the name must be a non-empty string without '@'")
    if not isinstance(raw, dict) or not isinstance(raw.get("base"), str) or not isinstance(raw.get("role"), str):
        raise ProfileError(f"{where} needs 'base' (a model) and 'role' (a role name)")
    unknown = set(raw) - {"base", "role", "engine"} - VIRTUAL_FIELDS
    if unknown:
        raise ProfileError(f"{where} has unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    variables = raw.get("variables")
    if isinstance(variables, dict):  # YAML reads `42` as a number: a variable's value is its text
        raw = {**raw, "variables": {str(k): str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                                    for k, v in variables.items()}}
    try:
        options = parse_options(raw, VIRTUAL_FIELDS)
    except OptionError as exc:
        raise ProfileError(f"{where}: {exc.message}") from None
    return VirtualModel(name=name, base=raw["base"], role=raw["role"], options=options,
                        engine=_engine_name(where, raw, engines))


def _parse_engine(name: Any, raw: Any) -> EngineEntry:
    where = f"engine {name!r}"
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == DEFAULT_ENGINE:
        raise ProfileError(f"{where}: a name is lower-case letters, digits, '.', '_' and '-' (and not "
                           f"{DEFAULT_ENGINE!r}, which is ROLE_INJECTOR_ENGINE's)")
    if not isinstance(raw, dict) or not isinstance(raw.get("url"), str):
        raise ProfileError(f"{where} needs 'kind' and 'url' (the engine's base URL, without /v1)")
    unknown = set(raw) - {"kind", "url", "api_key_env", "routing_headers"}
    if unknown:
        raise ProfileError(f"{where} has unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    try:
        kind = engine_kind(raw.get("kind"), f"{where}: kind")
        url = EngineUrl.parse(raw["url"], f"{where}: url")
        routed = routing_headers(raw.get("routing_headers", list(DEFAULT_ROUTING_HEADERS)), f"{where}: routing_headers")
    except (ValueError, ConfigError) as exc:
        raise ProfileError(exc.message if isinstance(exc, ConfigError) else str(exc)) from None
    key_env = raw.get("api_key_env")
    if key_env is not None and not (isinstance(key_env, str) and key_env.isidentifier()):
        raise ProfileError(f"{where}: api_key_env must name an environment variable (the key itself stays out "
                           "of the file)")
    return EngineEntry(name=name, kind=kind, url=url, api_key_env=key_env, routing_headers=routed)


@dataclass(frozen=True)
class ProfileFile:
    """What one profile file says."""

    models: list[ModelProfile]
    virtual_models: dict[str, VirtualModel]
    engines: dict[str, EngineEntry]


def parse_profiles(text: str, source: str, limits: RoleLimits = DEFAULT_LIMITS, stated: bool = True) -> ProfileFile:
    """A profile file's text; `stated`: whether its windows are the user's (the defaults' are not, so
    an engine that tells its window is asked instead)."""
    try:
        raw = load_yaml(text, limits.max_yaml_depth, LIMIT_VARIABLES["max_yaml_depth"]) or {}
    except YamlRefused as exc:
        raise ProfileError(f"{source}: {exc}") from None
    if not isinstance(raw, dict) or set(raw) - {"models", "virtual_models", "engines"}:
        raise ProfileError(f"{source} must be a mapping with 'models', 'virtual_models' and/or 'engines'")
    models_raw = raw.get("models") or []
    virtual_raw = raw.get("virtual_models") or {}
    engines_raw = raw.get("engines") or {}
    if not isinstance(models_raw, list) or not isinstance(virtual_raw, dict) or not isinstance(engines_raw, dict):
        raise ProfileError(f"{source}: 'models' must be a list, 'virtual_models' and 'engines' mappings")
    engines = {str(name): _parse_engine(name, item) for name, item in engines_raw.items()}
    models = [_parse_model(f"{source} models[{i}]", item, engines, stated) for i, item in enumerate(models_raw)]
    virtual = {str(name): _parse_virtual(name, item, engines) for name, item in virtual_raw.items()}
    return ProfileFile(models, virtual, engines)


def load_profiles(path: str | Path | None = None, limits: RoleLimits = DEFAULT_LIMITS) -> Profiles:
    """Defaults, with the entries of `path` (if given) taking precedence. The file is YAML, so it
    has the limits of YAML in role files (size, depth, no aliases)."""
    defaults = resources.files("role_injector").joinpath("default_models.yaml").read_text("utf-8")
    default = parse_profiles(defaults, "default_models.yaml", stated=False)
    models, virtual, engines = default.models, default.virtual_models, default.engines
    if path:
        try:
            data, _, _ = read_regular_file(str(path), limits.max_yaml_bytes)
        except OSError as exc:
            raise ProfileError(f"cannot read model profiles {path}: {exc.strerror or exc}") from None
        if len(data) > limits.max_yaml_bytes:
            raise ProfileError(f"model profiles {path}: over the limit of {limits.max_yaml_bytes} bytes "
                               f"(set by {LIMIT_VARIABLES['max_yaml_bytes']})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProfileError(f"model profiles {path} are not valid UTF-8 (byte {exc.start})") from None
        user = parse_profiles(text, str(path), limits)
        models = user.models + models
        virtual = {**virtual, **user.virtual_models}
        engines = {**engines, **user.engines}
    return Profiles(models=tuple(models), virtual_models=virtual, engines=engines)
