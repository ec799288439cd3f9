"""Role files: front matter, sections, partials, `extends`, variables, version.

A role file is `<name>.md`: YAML front matter between `---` lines, then Markdown. Sections start at
level-1/2 headings; a heading may end in `{required}` or `{priority=N}`. Loading resolves partials
and the parent role, so a `Role` is self-contained and immutable.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import yaml

from role_injector.context import PolicyFieldError, policy_fields
from role_injector.errors import InvalidRequest, RoleError, VariableError

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PLACEHOLDER = re.compile(r"\{\{\s*(>?)\s*([^{}]*?)\s*\}\}")
HEADING = re.compile(r"^(#{1,2})[ \t]+(.*?)[ \t]*$")
ATTRIBUTES = re.compile(r"^(.*?)[ \t]*\{([^{}]*)\}$")
FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")

DEFAULT_PRIORITY = 50
PREAMBLE_PRIORITY = 100
MAX_PARTIAL_DEPTH = 5
FRONT_MATTER_KEYS = {"description", "extends", "budget", "model", "params", "tags", "variables", "preamble",
                     "context_policy", "history_share", "selection"}
# How sections beyond the required ones are chosen: by priority, or by relevance to the conversation.
SELECTIONS = ("priority", "relevance")


@dataclass(frozen=True)
class Variable:
    name: str
    required: bool
    default: str | None
    description: str


@dataclass(frozen=True)
class Section:
    """One section: its text (heading line included, attributes removed) and how it is kept."""

    title: str | None  # None for the preamble
    text: str
    priority: int
    required: bool
    variables: frozenset[str]

    @property
    def label(self) -> str:
        return self.title if self.title is not None else "(preamble)"


@dataclass(frozen=True)
class Role:
    name: str
    version: str
    description: str
    sections: tuple[Section, ...]
    variables: Mapping[str, Variable]
    budget: int | None
    model: str | None
    params: Mapping[str, Any]
    tags: tuple[str, ...]
    extends: str | None
    context_policy: str | None = None  # role_injector.context; None: the default
    history_share: float | None = None
    selection: str = "priority"

    @cached_property
    def walk_order(self) -> tuple[int, ...]:
        """Section indexes in the order the fitter considers them."""
        return tuple(
            sorted(
                range(len(self.sections)),
                key=lambda i: (not self.sections[i].required, -self.sections[i].priority, i),
            )
        )

    @property
    def content(self) -> str:
        """The whole role, variables unfilled, as the fitter would emit it with no budget."""
        return "\n\n".join(section.text for section in self.sections)


@dataclass(frozen=True)
class RoleSource:
    """A role file split into front matter and body, before partials and `extends`."""

    name: str
    file: str
    meta: Mapping[str, Any]
    body: str


def parse_role_source(name: str, file: str, text: str) -> RoleSource:
    """Split front matter from body and check the front matter's shape."""
    if not NAME_PATTERN.fullmatch(name):
        raise RoleError(f"role name {name!r} is not allowed: use [a-z0-9][a-z0-9._-]{{0,63}}")
    text = unicodedata.normalize("NFC", text.lstrip("\ufeff")).replace("\r\n", "\n")
    meta: Any = {}
    body = text
    if text.startswith("---\n") or text == "---":
        end = re.search(r"^---[ \t]*$", text[4:], re.MULTILINE)
        if end is None:
            raise RoleError("front matter starts with '---' but has no closing '---' line")
        try:
            meta = yaml.safe_load(text[4 : 4 + end.start()]) or {}
        except yaml.YAMLError as exc:
            raise RoleError(f"front matter is not valid YAML: {exc}") from None
        body = text[4 + end.end() :].lstrip("\n")
    if not isinstance(meta, dict):
        raise RoleError("front matter must be a YAML mapping of keys to values")
    unknown = sorted(str(key) for key in meta if key not in FRONT_MATTER_KEYS)
    if unknown:
        raise RoleError(
            f"unknown front matter key(s): {', '.join(unknown)}; allowed: {', '.join(sorted(FRONT_MATTER_KEYS))}"
        )
    _check_meta(meta)
    return RoleSource(name=name, file=file, meta=meta, body=body)


def _check_meta(meta: Mapping[str, Any]) -> None:
    def expect(key: str, kind: type | tuple[type, ...], what: str) -> None:
        if key in meta and not isinstance(meta[key], kind):
            raise RoleError(f"front matter '{key}' must be {what}")

    expect("description", str, "a string")
    expect("extends", str, "a role name")
    expect("model", str, "a model name such as qwen3:8b")
    expect("params", dict, "a mapping of model options, e.g. {temperature: 0.3}")
    expect("tags", list, "a list of strings")
    expect("variables", dict, "a mapping of variable names to settings")
    if "budget" in meta and (
        isinstance(meta["budget"], bool) or not isinstance(meta["budget"], int) or meta["budget"] <= 0
    ):
        raise RoleError("front matter 'budget' must be a positive whole number of tokens")
    try:
        policy_fields(meta)
    except PolicyFieldError as exc:
        raise RoleError(f"front matter {exc}") from None
    if "preamble" in meta and meta["preamble"] != "required":
        raise RoleError("front matter 'preamble' can only be 'required'")
    if "selection" in meta and meta["selection"] not in SELECTIONS:
        raise RoleError(f"front matter 'selection' must be one of {', '.join(SELECTIONS)}")
    if not all(isinstance(tag, str) for tag in meta.get("tags", [])):
        raise RoleError("front matter 'tags' must be a list of strings")


def _parse_variables(raw: Mapping[str, Any]) -> dict[str, Variable]:
    variables: dict[str, Variable] = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
            raise RoleError(f"variable name {name!r} is not allowed: use letters, digits and _")
        spec = {} if spec is None else spec
        if not isinstance(spec, dict):
            raise RoleError(f"variable {name!r} must be a mapping such as {{required: true}} or {{default: x}}")
        extra = set(spec) - {"required", "default", "description"}
        if extra:
            raise RoleError(f"variable {name!r} has unknown setting(s): {', '.join(sorted(map(str, extra)))}")
        required = spec.get("required", False)
        if not isinstance(required, bool):
            raise RoleError(f"variable {name!r}: 'required' must be true or false")
        default = spec.get("default")
        if isinstance(default, bool) or not (default is None or isinstance(default, str | int | float)):
            raise RoleError(f"variable {name!r}: 'default' must be a string")
        if required and default is not None:
            raise RoleError(f"variable {name!r} cannot be both required and have a default")
        description = spec.get("description", "")
        if not isinstance(description, str):
            raise RoleError(f"variable {name!r}: 'description' must be a string")
        variables[name] = Variable(name, required, None if default is None else str(default), description)
    return variables


def expand_partials(text: str, read_partial: Callable[[str], str], chain: tuple[str, ...] = ()) -> str:
    """Replace `{{> name}}` with the partial's text, recursively; depth and cycles are bounded."""

    def replace(match: re.Match[str]) -> str:
        if not match.group(1):
            return match.group(0)
        name = match.group(2)
        if not NAME_PATTERN.fullmatch(name):
            raise RoleError(f"partial name {name!r} is not allowed")
        if name in chain:
            raise RoleError(f"partials include each other in a cycle: {' -> '.join([*chain, name])}")
        if len(chain) >= MAX_PARTIAL_DEPTH:
            raise RoleError(f"partials are nested deeper than {MAX_PARTIAL_DEPTH}: {' -> '.join([*chain, name])}")
        partial = unicodedata.normalize("NFC", read_partial(name)).replace("\r\n", "\n").strip("\n")
        return expand_partials(partial, read_partial, (*chain, name))

    return PLACEHOLDER.sub(replace, text)


def split_sections(body: str, preamble_required: bool) -> list[Section]:
    """Cut the body at level-1/2 headings outside code fences."""
    chunks: list[tuple[str | None, int, bool, list[str]]] = [
        (None, PREAMBLE_PRIORITY, preamble_required, [])
    ]
    fence: str | None = None
    for line in body.split("\n"):
        fence_match = FENCE.match(line)
        if fence_match:
            marker = fence_match.group(1)
            if fence is None:
                fence = marker[0] * 3
            elif marker.startswith(fence):
                fence = None
        heading = HEADING.match(line) if fence is None else None
        if heading:
            title, priority, required = _parse_heading(heading.group(2))
            chunks.append((title, priority, required, [f"{heading.group(1)} {title}"]))
        else:
            chunks[-1][3].append(line)
    sections = []
    for title, priority, required, lines in chunks:
        text = "\n".join(lines).strip("\n").rstrip()
        if title is None and not text:
            continue
        sections.append(Section(title, text, priority, required, _used_variables(text)))
    return sections


def _parse_heading(heading: str) -> tuple[str, int, bool]:
    match = ATTRIBUTES.match(heading)
    if not match:
        return heading, DEFAULT_PRIORITY, False
    title, priority, required = match.group(1), DEFAULT_PRIORITY, False
    for attribute in match.group(2).split():
        if attribute == "required":
            required = True
        elif re.fullmatch(r"priority=-?\d{1,6}", attribute):
            priority = int(attribute.split("=")[1])
        else:
            raise RoleError(
                f"heading {heading!r}: unknown attribute {attribute!r}; use {{required}} or {{priority=N}}"
            )
    if not title:
        raise RoleError(f"heading {heading!r} has attributes but no title")
    return title, priority, required


def _used_variables(text: str) -> frozenset[str]:
    return frozenset(m.group(2) for m in PLACEHOLDER.finditer(text) if not m.group(1))


def merge_sections(parent: list[Section], child: list[Section]) -> list[Section]:
    """Child sections replace the parent's of the same title (the preamble too); new ones follow."""
    merged = list(parent)
    for section in child:
        same = next((i for i, p in enumerate(merged) if p.title == section.title), None)
        if same is None:
            if section.title is None:
                merged.insert(0, section)
            else:
                merged.append(section)
        else:
            merged[same] = section
    return merged


def build_role(
    source: RoleSource,
    resolve_parent: Callable[[str], Role],
    read_partial: Callable[[str], str],
) -> Role:
    """Resolve partials and the parent, check variables, and compute the version."""
    meta = dict(source.meta)
    body = expand_partials(source.body, read_partial)
    sections = split_sections(body, meta.get("preamble") == "required")
    variables = _parse_variables(meta.get("variables") or {})
    params: dict[str, Any] = dict(meta.get("params") or {})
    parent: Role | None = None
    if "extends" in meta:
        parent = resolve_parent(meta["extends"])
        sections = merge_sections(list(parent.sections), sections)
        variables = {**parent.variables, **variables}
        params = {**parent.params, **params}
    for section in sections:
        undeclared = sorted(section.variables - variables.keys())
        if undeclared:
            raise RoleError(
                f"section {section.label!r} uses undeclared variable(s) {', '.join(undeclared)}; "
                "declare them under 'variables' in the front matter"
            )
    resolved = {
        "description": meta.get("description", parent.description if parent else ""),
        "budget": meta.get("budget", parent.budget if parent else None),
        "model": meta.get("model", parent.model if parent else None),
        "params": params,
        "tags": list(meta.get("tags", parent.tags if parent else [])),
        "variables": {n: [v.required, v.default, v.description] for n, v in sorted(variables.items())},
        "sections": [[s.title, s.priority, s.required, s.text] for s in sections],
    }
    # Only when set, so that the versions of roles without them stay what they were.
    for key in ("context_policy", "history_share"):
        value = meta.get(key, getattr(parent, key) if parent else None)
        if value is not None:
            resolved[key] = value
    selection = meta.get("selection", parent.selection if parent else "priority")
    if selection != "priority":  # only then, so roles that do not use it keep their versions
        resolved["selection"] = selection
    canonical = json.dumps(resolved, ensure_ascii=False, sort_keys=True, default=str)
    return Role(
        name=source.name,
        version="sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
        description=resolved["description"],
        sections=tuple(sections),
        variables=variables,
        budget=resolved["budget"],
        model=resolved["model"],
        params=params,
        tags=tuple(resolved["tags"]),
        extends=meta.get("extends"),
        context_policy=resolved.get("context_policy"),
        history_share=None if resolved.get("history_share") is None else float(resolved["history_share"]),
        selection=selection,
    )


def resolve_variables(role: Role, given: Mapping[str, str]) -> dict[str, str]:
    """Values for every declared variable: given, else default; missing required ones are an error."""
    undeclared = sorted(set(given) - role.variables.keys())
    if undeclared:
        raise InvalidRequest(
            f"role {role.name!r} does not declare variable(s) {', '.join(undeclared)}",
            details={"undeclared": undeclared, "declared": sorted(role.variables)},
        )
    values: dict[str, str] = {}
    missing = []
    for name, variable in role.variables.items():
        if name in given:
            values[name] = given[name]
        elif variable.default is not None:
            values[name] = variable.default
        elif variable.required:
            missing.append(name)
        else:
            values[name] = ""
    if missing:
        raise VariableError(
            f"role {role.name!r} needs variable(s) {', '.join(missing)}",
            details={"missing": missing},
        )
    return values


def fill_variables(text: str, values: Mapping[str, str]) -> str:
    """Insert values literally in one pass, so a value is never expanded again."""
    return PLACEHOLDER.sub(lambda m: values[m.group(2)] if not m.group(1) else m.group(0), text)
