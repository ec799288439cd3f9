"""Render a saved chat template the way transformers' ``apply_chat_template(tokenize=False)`` does.

With ``role_injector.chat_template.ChatTemplate`` (which mirrors
``transformers.utils.chat_template_utils._compile_jinja_template``), ``strftime_now`` fixed here so
Llama 3.x dates are stable, and the tokenizer's special tokens; Qwen tokenizers have no
``bos_token``, so none is passed for them.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

from role_injector.chat_template import ChatTemplate

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


@cache
def _compiled(template_name: str) -> ChatTemplate:
    source = (TEMPLATES_DIR / f"{template_name}.jinja").read_text(encoding="utf-8")
    return ChatTemplate(source, SPECIAL_TOKENS[template_name], now=lambda: FIXED_NOW)


def render_reference(
    template_name: str, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """Render ``<template_name>.jinja`` (e.g. ``"qwen3"``) as transformers would, without tokenizing."""
    return _compiled(template_name).render(messages, add_generation_prompt=add_generation_prompt)
