"""YAML read from files (role front matter, the model profile file): bounded and JSON-shaped.

PyYAML's safe loader still expands aliases (400 bytes of `*a` references make 300 MB), recurses once
per nesting level (RecursionError) and spends time quadratic in flow nesting. This loader refuses
aliases, stops at `max_depth` nested collections while scanning (before any deep work), and turns
every failure of the loader, including the ValueErrors PyYAML lets out (an int of 5,000 digits, the
date 2024-02-31), into `YamlRefused`. `json_problem` finds values JSON cannot carry (dates, sets,
binary, floats that are not finite, ints beyond 64 bits), which responses and Ollama requests need.

The text is scanned and parsed by libyaml (PyYAML's C parser) when PyYAML has it: eight times faster
than PyYAML's Python parser, which matters when a folder holds tens of thousands of roles; nodes are
composed in Python either way, where aliases and depth are checked. (libyaml scans nesting without
recursion; PyYAML's own scanner is checked for it while it scans, before its quadratic flow handling.)
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, MappingStartEvent, SequenceStartEvent
from yaml.resolver import Resolver

INT64 = range(-(2**63), 2**63)


class YamlRefused(Exception):
    """The text is not YAML this loader accepts; the message says why, with the line."""


class _Bounds:
    """What both loaders check while composing nodes: no aliases, at most `max_depth` nested collections."""

    max_depth: int
    depth_variable: str
    depth: int

    def _bound(self, max_depth: int, depth_variable: str) -> None:
        self.max_depth, self.depth_variable, self.depth = max_depth, depth_variable, 0

    def _too_deep(self, line: int) -> YamlRefused:
        return YamlRefused(f"YAML nested too deep at line {line + 1}: over the limit of {self.max_depth} levels "
                           f"(set by {self.depth_variable})")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):  # type: ignore[attr-defined]
            mark = self.peek_event().start_mark  # type: ignore[attr-defined]
            raise YamlRefused(f"YAML aliases (*name) are not allowed (line {mark.line + 1}); write the value out")
        collection = self.check_event(MappingStartEvent, SequenceStartEvent)  # type: ignore[attr-defined]
        if collection:
            self.depth += 1
            if self.depth > self.max_depth:
                raise self._too_deep(self.peek_event().start_mark.line)  # type: ignore[attr-defined]
        try:
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self.depth -= collection


class _PythonLoader(_Bounds, yaml.SafeLoader):
    def __init__(self, text: str, max_depth: int, depth_variable: str) -> None:
        super().__init__(text)
        self._bound(max_depth, depth_variable)

    # Scanner: flow ([ {) and block (indentation) nesting, checked as the tokens are made.
    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= self.max_depth:
            raise self._too_deep(self.get_mark().line)
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if self.indent < column and len(self.indents) >= self.max_depth:
            raise self._too_deep(self.get_mark().line)
        return bool(super().add_indent(column))


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _CLoader(_Bounds, Composer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        def __init__(self, text: str, max_depth: int, depth_variable: str) -> None:
            CParser.__init__(self, text)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._bound(max_depth, depth_variable)

    LOADERS: tuple[type, ...] = (_CLoader, _PythonLoader)
else:
    LOADERS = (_PythonLoader,)


def load_yaml(text: str, max_depth: int, depth_variable: str, loader_class: type | None = None) -> Any:
    """The one document in `text`; `depth_variable` is the setting that raises `max_depth`. (`loader_class`:
    one of `LOADERS`, the first by default; tests hold the others to the same results.)"""
    loader = None
    try:
        loader = (loader_class or LOADERS[0])(text, max_depth, depth_variable)  # PyYAML's reads the text here
        return loader.get_single_data()
    except YamlRefused:
        raise
    except yaml.YAMLError as exc:
        problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
        if loader is not None and "maximum nesting depth" in str(problem) and mark is not None:
            raise loader._too_deep(mark.line) from None  # libyaml's own limit (1,000) came before ours
        raise YamlRefused(f"not valid YAML: {' '.join(str(exc).split())}") from None  # one line, for lint
    except (ValueError, TypeError, OverflowError) as exc:  # PyYAML's constructors let these out
        raise YamlRefused(f"a value cannot be read: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()


def json_problem(value: Any, where: str) -> str | None:
    """Why `value` (from `load_yaml`, so of bounded depth) cannot go out as JSON, or None."""
    if value is None or isinstance(value, bool | str):
        return None
    if isinstance(value, int):
        return None if value in INT64 else f"{where} is a whole number beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value}, which JSON cannot carry"
    if isinstance(value, list):
        return next((p for i, item in enumerate(value) if (p := json_problem(item, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the key {key!r}, which is not a string"
            if problem := json_problem(item, f"{where}.{key}"):
                return problem
        return None
    kind = "a date" if isinstance(value, datetime.date) else f"of YAML type {type(value).__name__}"
    hint = "; quote it to make it a string" if isinstance(value, datetime.date) else ""
    return f"{where} is {kind}, which JSON cannot carry{hint}"
