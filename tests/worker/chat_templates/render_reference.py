"""Render a saved chat template the way transformers' ``apply_chat_template(tokenize=False)`` does.

Mirrors ``transformers.utils.chat_template_utils._compile_jinja_template``: an immutable sandbox with
``trim_blocks``/``lstrip_blocks`` and ``loopcontrols``, a ``tojson`` filter that keeps non-ASCII, a
``raise_exception`` that raises, and a ``strftime_now`` (fixed here, so Llama 3.x dates are stable).
Like ``apply_chat_template`` it passes ``tools=None`` and ``documents=None`` and the tokenizer's special
tokens; Qwen tokenizers have no ``bos_token``, so none is passed for them.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

from jinja2 import Template, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

TEMPLATES_DIR = Path(__file__).parent
FIXED_NOW = datetime(2024, 7, 26)

SPECIAL_TOKENS: dict[str, dict[str, str]] = {
    "qwen2.5": {"eos_token": "<|im_end|>"},
    "qwen3": {"eos_token": "<|im_end|>"},
    "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "llama3.1": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "mistral": {"bos_token": "<s>", "eos_token": "</s>"},
    "gemma3": {"bos_token": "<bos>", "eos_token": "<eos>"},
}


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return FIXED_NOW.strftime(fmt)


@cache
def _compiled(template_name: str) -> Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string((TEMPLATES_DIR / f"{template_name}.jinja").read_text(encoding="utf-8"))


def render_reference(
    template_name: str, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """Render ``<template_name>.jinja`` (e.g. ``"qwen3"``) as transformers would, without tokenizing."""
    return _compiled(template_name).render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **SPECIAL_TOKENS[template_name],
    )
