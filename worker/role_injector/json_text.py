"""JSON from the network as text: what a lone UTF-16 surrogate becomes.

JSON may escape a UTF-16 surrogate (`"\\ud800"`), and Python's `json` may decode such bytes into a
`str` that holds a lone surrogate: not text, so it cannot be encoded as UTF-8 to answer, log or
re-send. Two rules, one per direction:

- a client's body with one is refused (`has_lone_surrogate`: the web layer answers 400);
- an engine's answer is read as Go's `encoding/json` reads it (Ollama's own decoder): a lone
  surrogate, escaped or encoded, and any byte that is not UTF-8 become U+FFFD (`parse_engine_json`),
  so one odd character in a model's output or a model's name never fails a whole answer.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON escape of a surrogate (\ud800-\udfff): paired ones decode to one character, lone ones do not.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string in a decoded JSON value (keys too) holds a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _replace_in_place(value: Any) -> Any:
    """`value` (freshly decoded, so ours to change) with every lone surrogate in its strings (keys
    too) replaced by U+FFFD; a loop, not recursion, as JSON may nest as deep as its decoder allows."""
    if isinstance(value, str):
        return SURROGATE.sub(REPLACEMENT, value)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in list(item):
                inner = item[key]
                if isinstance(inner, str):
                    inner = SURROGATE.sub(REPLACEMENT, inner)
                else:
                    stack.append(inner)
                if SURROGATE.search(key):
                    del item[key]
                    key = SURROGATE.sub(REPLACEMENT, key)
                item[key] = inner
        elif isinstance(item, list):
            for i, inner in enumerate(item):
                if isinstance(inner, str):
                    item[i] = SURROGATE.sub(REPLACEMENT, inner)
                else:
                    stack.append(inner)
    return value


def parse_engine_json(data: bytes) -> Any:
    """An engine's JSON text as a value whose strings are all text (see the module's docstring).
    Raises ValueError (not JSON) or RecursionError (nested too deeply), as `json.loads` does."""
    text = data.decode("utf-8", "replace")
    value = json.loads(text)
    # Paired escapes were joined by json.loads; only lone ones are left, and only where the text
    # has an escape of a surrogate at all (most answers have none: no walk).
    return _replace_in_place(value) if SURROGATE_ESCAPE.search(text) else value
