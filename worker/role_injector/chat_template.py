"""A model's own chat template (Jinja, as in a GGUF's `tokenizer.chat_template`), rendered as Hugging
Face's `apply_chat_template(tokenize=False)` renders it (`transformers.utils.chat_template_utils`): an
immutable sandbox with `trim_blocks`, `lstrip_blocks` and `loopcontrols`, a `tojson` filter that
keeps non-ASCII, `raise_exception`, `strftime_now`, `tools=None`, `documents=None` and the special
tokens' texts. llama-server renders the same templates with its own engine;
`tests/worker/test_bake_train.py` compares the two byte for byte, and the tests' reference for the
chat formats (`tests/worker/chat_templates/`) renders with this class."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from role_injector.errors import InvalidRequest

MAX_TEMPLATE_CHARS = 256 * 1024
MAX_RENDERED_CHARS = 16 * 1024 * 1024


def _raise(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None,
                 now: Callable[[], datetime] = datetime.now) -> None:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise InvalidRequest(f"the chat template is longer than {MAX_TEMPLATE_CHARS} characters")
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                    extensions=["jinja2.ext.loopcontrols"])
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise
        environment.globals["strftime_now"] = lambda pattern: now().strftime(pattern)
        try:
            self.template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template cannot be read: {exc}") from None
        self.special_tokens = dict(special_tokens or {})

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool,
               tools: Sequence[Any] | None = None) -> str:
        try:
            text = self.template.render(messages=list(messages), tools=tools, documents=None,
                                        add_generation_prompt=add_generation_prompt, **self.special_tokens)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the model's chat template failed: {exc}") from None
        if len(text) > MAX_RENDERED_CHARS:
            raise InvalidRequest(f"the chat template made more than {MAX_RENDERED_CHARS} characters")
        return text
