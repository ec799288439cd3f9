"""Role files: front matter, sections, partials, `extends`, variables, version.

A role file is `<name>.md`: YAML front matter between `---` lines, then Markdown. Sections start at
level-1/2 headings; a heading may end in `{required}` or `{priority=N}`. Loading resolves partials
and the parent role, so a `Role` is self-contained and immutable.

One file can cost only so much to load (`RoleLimits`): every limit is a `RoleError` naming its
environment variable, and every pattern here runs in linear time (no nested or adjacent
quantifiers over the same characters: the parts a backtracking regex would try are split in Python).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from role_injector.context import PolicyName
from role_injector.errors import InvalidRequest, RoleError, VariableError
from role_injector.normalization import nfc
from role_injector.options import ROLE_FIELDS, OptionError, RoleOptions, Selection, parse_options
from role_injector.yaml_input import YamlRefused, load_yaml

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PLACEHOLDER = re.compile(r"\{\{([^{}]*+)\}\}")  # `{{ name }}` or `{{> partial }}`: see `placeholder`
HEADING = re.compile(r"(#{1,2})[ \t]+(.*)")  # the title's trailing blanks are stripped in Python
FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})")
FRONT_MATTER_END = re.compile(r"^---[ \t]*$", re.MULTILINE)

SEPARATOR = "\n\n"  # between sections, in `Role.content` and in fitted text
DEFAULT_PRIORITY = 50
PREAMBLE_PRIORITY = 100
FRONT_MATTER_KEYS = {"description", "extends", "budget", "model", "params", "tags", "variables", "preamble",
                     "context_policy", "history_share", "selection"}


@dataclass(frozen=True)
class RoleLimits:
    """What loading one role may cost, whatever its files hold (README: Configuration)."""

    max_file_bytes: int = 2 * 1024 * 1024  # one role or partial file
    max_yaml_bytes: int = 64 * 1024  # front matter (and the model profile file)
    max_yaml_depth: int = 16  # nested mappings and lists in YAML
    max_resolved_bytes: int = 4 * 1024 * 1024  # the role after its partials and parents
    max_sections: int = 10_000  # a book-sized role for relevance selection has thousands
    max_extends_depth: int = 8  # parents above a role
    max_partial_depth: int = 5  # partials inside partials
    max_partial_expansions: int = 1_000  # `{{> name}}` replaced while resolving one role
    max_files: int = 100_000  # role files and partials in the roles folder


DEFAULT_LIMITS = RoleLimits()

# The environment variable of each limit; `Settings` reads them, errors name them.
LIMIT_VARIABLES = {
    "max_file_bytes": "ROLE_INJECTOR_MAX_ROLE_BYTES",
    "max_yaml_bytes": "ROLE_INJECTOR_MAX_YAML_BYTES",
    "max_yaml_depth": "ROLE_INJECTOR_MAX_YAML_DEPTH",
    "max_resolved_bytes": "ROLE_INJECTOR_MAX_RESOLVED_ROLE_BYTES",
    "max_sections": "ROLE_INJECTOR_MAX_SECTIONS",
    "max_extends_depth": "ROLE_INJECTOR_MAX_EXTENDS_DEPTH",
    "max_partial_depth": "ROLE_INJECTOR_MAX_PARTIAL_DEPTH",
    "max_partial_expansions": "ROLE_INJECTOR_MAX_PARTIAL_EXPANSIONS",
    "max_files": "ROLE_INJECTOR_MAX_ROLE_FILES",
}


def over_limit(limits: RoleLimits, limit: str, what: str) -> RoleError:
    value = getattr(limits, limit)
    variable = LIMIT_VARIABLES[limit]
    return RoleError(f"{what}: over the limit of {value} (set by {variable})",
                     details={"limit": variable, "value": value})


def placeholder(match: re.Match[str]) -> tuple[bool, str]:
    """(whether it includes a partial, the name) of a PLACEHOLDER match: `{{ > name }}` → (True, "name")."""
    inner = match.group(1).strip()
    if inner.startswith(">"):
        return True, inner[1:].strip()
    return False, inner


def normalise_text(text: str) -> str:
    return nfc(text).replace("\r\n", "\n")


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
    context_policy: PolicyName | None = None  # role_injector.context; None: the default
    history_share: float | None = None
    selection: Selection = "priority"

    @cached_property
    def walk_order(self) -> tuple[int, ...]:
        """Section indexes in the order the fitter considers them."""
        return tuple(
            sorted(
                range(len(self.sections)),
                key=lambda i: (not self.sections[i].required, -self.sections[i].priority, i),
            )
        )

    @cached_property
    def options(self) -> RoleOptions:
        """The role's layer of the settings a virtual model and a request may change."""
        return RoleOptions(budget=self.budget, context_policy=self.context_policy, history_share=self.history_share,
                           selection=self.selection, params=self.params)

    @property
    def content(self) -> str:
        """The whole role, variables unfilled, as the fitter would emit it with no budget."""
        return SEPARATOR.join(section.text for section in self.sections)


@dataclass(frozen=True)
class RoleSource:
    """A role file split into front matter and body, before partials and `extends`."""

    name: str
    file: str
    meta: Mapping[str, Any]
    body: str


def parse_role_source(name: str, file: str, text: str, limits: RoleLimits = DEFAULT_LIMITS) -> RoleSource:
    """Split front matter from body and check the front matter's shape."""
    if not NAME_PATTERN.fullmatch(name):
        raise RoleError(f"role name {name!r} is not allowed: use [a-z0-9][a-z0-9._-]{{0,63}}")
    text = normalise_text(text.lstrip("\ufeff"))
    meta: Any = {}
    body = text
    if text.startswith("---\n") or text == "---":
        end = FRONT_MATTER_END.search(text, 4)
        if end is None:
            raise RoleError("front matter starts with '---' but has no closing '---' line")
        yaml_text = text[4 : end.start()]
        if len(yaml_text.encode()) > limits.max_yaml_bytes:
            raise over_limit(limits, "max_yaml_bytes", f"front matter is {len(yaml_text.encode())} bytes")
        try:
            meta = load_yaml(yaml_text, limits.max_yaml_depth, LIMIT_VARIABLES["max_yaml_depth"]) or {}
        except YamlRefused as exc:
            raise RoleError(f"front matter: {exc}") from None
        body = text[end.end() :].lstrip("\n")
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
    expect("tags", list, "a list of strings")
    expect("variables", dict, "a mapping of variable names to settings")
    try:
        parse_options(meta, ROLE_FIELDS)
    except OptionError as exc:
        raise RoleError(f"front matter {exc.message}") from None
    if "preamble" in meta and meta["preamble"] != "required":
        raise RoleError("front matter 'preamble' can only be 'required'")
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


def _no_partials(name: str) -> str:
    raise RoleError(f"partial {name!r} not found")


class PartialExpander:
    """Replaces `{{> name}}` with `_partials/name.md`, recursively, for the roles of one load.

    Each partial is expanded once and reused (a cycle through it would have been found then), so
    partials that include each other many times cost their inclusions counted, not their text
    copied: the count and the size are checked as they grow, before the text is built."""

    def __init__(self, read_partial: Callable[[str], str], limits: RoleLimits) -> None:
        self.read_partial = read_partial
        self.limits = limits
        # name -> (text, inclusions in it, depth, the partials below it)
        self._expanded: dict[str, tuple[str, int, int, frozenset[str]]] = {}

    def expand(self, text: str, used: set[str] | None = None) -> str:
        """`text` with its partials in place; `used` gets the name of every partial it reached (nested
        ones too, and the one that failed), so a store knows what to rebuild when a partial changes."""
        if "{{" not in text:  # most roles: nothing to look for
            return text
        return self._expand(text, (), set() if used is None else used)[0]

    def _expand(self, text: str, chain: tuple[str, ...], used: set[str]) -> tuple[str, int, int]:
        limits = self.limits
        inclusions, size, depth = 0, 0, 0

        def replace(match: re.Match[str]) -> str:
            nonlocal inclusions, size, depth
            is_partial, name = placeholder(match)
            if not is_partial:
                return match.group(0)
            if not NAME_PATTERN.fullmatch(name):
                raise RoleError(f"partial name {name!r} is not allowed")
            used.add(name)
            if name in chain:
                raise RoleError(f"partials include each other in a cycle: {' -> '.join([*chain, name])}")
            text, inner, below = self._partial(name, chain, used)
            if len(chain) + below > limits.max_partial_depth:
                raise over_limit(limits, "max_partial_depth",
                                 f"partials nest {len(chain) + below} deep: {' -> '.join([*chain, name])} -> ...")
            inclusions += 1 + inner
            if inclusions > limits.max_partial_expansions:
                raise over_limit(limits, "max_partial_expansions", f"partials are included {inclusions} times")
            size += len(text)
            if size > limits.max_resolved_bytes:
                raise over_limit(limits, "max_resolved_bytes", f"partials add {size} characters")
            depth = max(depth, below)
            return text

        return PLACEHOLDER.sub(replace, text), inclusions, depth

    def _partial(self, name: str, chain: tuple[str, ...], used: set[str]) -> tuple[str, int, int]:
        """The partial expanded: (text, inclusions inside it, how many partials deep it goes)."""
        if name not in self._expanded:
            if len(chain) >= self.limits.max_partial_depth:
                raise over_limit(self.limits, "max_partial_depth",
                                 f"partials nest {len(chain) + 1} deep: {' -> '.join([*chain, name])}")
            raw = normalise_text(self.read_partial(name)).strip("\n")
            below: set[str] = set()
            try:
                text, inclusions, depth = self._expand(raw, (*chain, name), below)
            finally:
                used |= below
            self._expanded[name] = (text, inclusions, depth + 1, frozenset(below))
        text, inclusions, depth, below_names = self._expanded[name]
        used |= below_names
        return text, inclusions, depth


def split_sections(body: str, preamble_required: bool, limits: RoleLimits = DEFAULT_LIMITS) -> list[Section]:
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
            if len(chunks) > limits.max_sections:
                raise over_limit(limits, "max_sections", f"the role has more than {limits.max_sections} sections")
            title, priority, required = _parse_heading(heading.group(2).rstrip(" \t"))
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
    """Title, priority and required of a heading's text: `Title {required priority=60}`."""
    opening = heading.rfind("{")
    attributes = heading[opening + 1 : -1]
    if not heading.endswith("}") or opening < 0 or "}" in attributes:
        return heading, DEFAULT_PRIORITY, False
    title, priority, required = heading[:opening].rstrip(" \t"), DEFAULT_PRIORITY, False
    for attribute in attributes.split():
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
    if "{{" not in text:
        return frozenset()
    return frozenset(name for is_partial, name in map(placeholder, PLACEHOLDER.finditer(text)) if not is_partial)


def merge_sections(parent: list[Section], child: list[Section]) -> list[Section]:
    """Child sections replace the parent's of the same title (the first of that title; the preamble
    too); new ones follow, and a new preamble goes first. Linear: titles are looked up in a dict."""
    merged = list(parent)
    where: dict[str | None, int] = {}
    for i, section in enumerate(merged):
        where.setdefault(section.title, i)
    preamble: list[Section] = []
    for section in child:
        if section.title in where:
            merged[where[section.title]] = section
        elif section.title is None:
            preamble = [section]  # split_sections makes at most one
        else:
            where[section.title] = len(merged)
            merged.append(section)
    return preamble + merged


def build_role(source: RoleSource, parent: Role | None = None, partials: PartialExpander | None = None,
               used: set[str] | None = None) -> Role:
    """Resolve partials and merge the parent (the role `extends` names, already built), check
    variables and limits, and compute the version. Without `partials`, none can be included;
    `used` gets the names of the partials the role reached (see `PartialExpander.expand`)."""
    partials = partials or PartialExpander(_no_partials, DEFAULT_LIMITS)
    limits = partials.limits
    meta = dict(source.meta)
    body = partials.expand(source.body, used)
    sections = split_sections(body, meta.get("preamble") == "required", limits)
    variables = _parse_variables(meta.get("variables") or {})
    params: dict[str, Any] = dict(meta.get("params") or {})
    if parent is not None:
        sections = merge_sections(list(parent.sections), sections)
        variables = {**parent.variables, **variables}
        params = {**parent.params, **params}
    if len(sections) > limits.max_sections:
        raise over_limit(limits, "max_sections", f"the role has {len(sections)} sections")
    size = sum(len(section.text.encode()) for section in sections) + len(SEPARATOR) * (len(sections) - 1)
    if size > limits.max_resolved_bytes:
        raise over_limit(limits, "max_resolved_bytes", f"the role is {size} bytes after partials and extends")
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
    canonical = json.dumps(resolved, ensure_ascii=False, sort_keys=True)
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


@dataclass(frozen=True)
class Built:
    """What building one role gave: the role, or why not; and the partials it reached (missing and
    failing ones too), so that a store builds it again when one of them changes."""

    role: Role | None
    error: str | None
    partials: frozenset[str] = frozenset()
    parents: int = 0  # how many parents are above it (when built)
    cause: str | None = None  # what its children say when it failed: "parent role 'x' failed to load: ..."


def _failed(name: str, error: str, partials: Iterable[str] = ()) -> Built:
    return Built(None, error, frozenset(partials), cause=f"parent role {name!r} failed to load: {error}")


def build_roles(
    names: Iterable[str],
    sources: Mapping[str, RoleSource],
    unreadable: Mapping[str, str],
    built: Mapping[str, Built],
    partials: PartialExpander,
) -> dict[str, Built]:
    """Build each of `names`, and first the parents it `extends` that are not in `built` (the results of
    an earlier build whose files did not change). `sources` are the parsed role files, `unreadable` the
    role files that could not be read or parsed (name -> message).

    A role's result depends on the files only, never on the order roles are built in: its own error,
    else its parent's ("parent role 'p' failed to load: ...", naming the parent that failed first, so
    the message stays short on long chains), a cycle through it, or more than `max_extends_depth`
    parents above it. Walks go up by an explicit list, never by recursion, each role once."""
    limits = partials.limits
    results: dict[str, Built] = {}

    def resolved(name: str) -> Built | None:
        return results[name] if name in results else built.get(name)

    def build(name: str, parent: str | None) -> Built:
        above = resolved(parent) if parent is not None else None
        if parent is not None and above is None:
            if parent in unreadable:
                return Built(None, f"parent role {parent!r} failed to load: {unreadable[parent]}",
                             cause=f"parent role {parent!r} failed to load: {unreadable[parent]}")
            return _failed(name, f"parent role {parent!r} not found")
        if above is not None and above.role is None:
            return Built(None, above.cause, cause=above.cause)
        parents = 0 if above is None else above.parents + 1
        if parents > limits.max_extends_depth:
            return _failed(name, over_limit(limits, "max_extends_depth", f"{parents} parents above {name!r}").message)
        used: set[str] = set()
        try:
            return Built(build_role(sources[name], above.role if above else None, partials, used), None,
                         frozenset(used), parents)
        except RoleError as exc:
            return _failed(name, exc.message, used)
        except Exception as exc:  # a defect must cost one role, not the service
            return _failed(name, f"cannot load the role ({type(exc).__name__}: {exc}); please report this", used)

    for start in sorted(names):
        if start in results:
            continue
        if start not in sources:
            results[start] = _failed(start, unreadable.get(start, "the file is gone"))
            continue
        path: list[str] = []  # the roles on the way up from `start` still to build, child first
        name: str | None = start
        while name is not None and name in sources and resolved(name) is None and name not in path:
            path.append(name)
            name = sources[name].meta.get("extends")
        if name is not None and name in path:  # a cycle: each of its roles says so, from itself
            ring = path[path.index(name):]
            for i, member in enumerate(ring):
                round_trip = [*ring[i:], *ring[:i], member]
                results[member] = _failed(member, f"roles extend each other in a cycle: {' -> '.join(round_trip)}")
            path = path[: path.index(name)]
        for current in reversed(path):  # the oldest parent first
            results[current] = build(current, sources[current].meta.get("extends"))
    return results


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

    def value(match: re.Match[str]) -> str:
        is_partial, name = placeholder(match)
        return match.group(0) if is_partial else values[name]

    return PLACEHOLDER.sub(value, text)
