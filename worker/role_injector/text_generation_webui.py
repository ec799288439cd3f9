"""A role as text-generation-webui's own files, for a role that applies to every chat of a model there
(`role-injector export ROLE --to text-generation-webui`; README: text-generation-webui).

Two files under its `user_data` folder, as its loaders read them (oobabooga/text-generation-webui at
1dcde41d03d13fc768316f4d2256a8a6dd044268):

- `characters/<role>.yaml` with `name` and `context` (the fitted role), the keys `load_character` reads
  with `yaml.safe_load` from `user_data/characters/<name>.{yml,yaml,json}` (modules/chat.py, lines
  2017-2061); `context` is stripped there and becomes the system message in the chat and chat-instruct
  modes, after `{{user}}`, `{{char}}`, `<USER>` and `<BOT>` are replaced by the names (lines 389-391, 1991-1993).
- `instruction-templates/<role>.yaml` with `instruction_template`: a Jinja template, the key
  `load_template_by_name` reads (modules/models_settings.py, lines 400-425), rendered with `messages`
  and `add_generation_prompt` in a sandbox with `trim_blocks` and `lstrip_blocks` (modules/chat.py,
  lines 115-119, 338-366). Instruct mode (its API's default) uses no character, so the role is in the
  template: the system message of every prompt, in the model's chat format as `formats.render` writes
  it, without the BOS text (text-generation-webui adds the BOS token itself); a system message the user
  sets is appended to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from role_injector.fitting import FitCache
from role_injector.injection import Injection, InjectRequest, inject
from role_injector.options import RoleOptions
from role_injector.profiles import Profiles
from role_injector.store import RoleSet

# The Jinja of each chat format: `{SYSTEM}` is where the fitted role goes, as a string literal. Each
# mirrors `formats.render_<format>` for system, user and assistant messages (tests compare them).
_SYSTEM_MESSAGES = (
    "{%- set ns = namespace(system={SYSTEM}, last=-1) -%}\n"
    "{%- for message in messages -%}\n"
    "    {%- if message['role'] == 'system' -%}\n"
    "        {%- set ns.system = ns.system + '\\n\\n' + message['content'] -%}\n"
    "    {%- elif message['role'] == 'user' -%}\n"
    "        {%- set ns.last = loop.index0 -%}\n"
    "    {%- elif message['role'] != 'assistant' -%}\n"
    "        {{- raise_exception('this role\\'s template takes system, user and assistant messages') -}}\n"
    "    {%- endif -%}\n"
    "{%- endfor -%}\n"
)
TEMPLATES = {
    "chatml": _SYSTEM_MESSAGES + (
        "{{- '<|im_start|>system\\n' + ns.system + '<|im_end|>\\n' -}}\n"
        "{%- for message in messages if message['role'] != 'system' -%}\n"
        "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{- '<|im_start|>assistant\\n' -}}\n"
        "{%- endif -%}"
    ),
    "llama3": _SYSTEM_MESSAGES + (
        "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system.strip() + '<|eot_id|>' -}}\n"
        "{%- for message in messages if message['role'] != 'system' -%}\n"
        "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'].strip()"
        " + '<|eot_id|>' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
        "{%- endif -%}"
    ),
    "mistral": _SYSTEM_MESSAGES + (
        "{%- for message in messages -%}\n"
        "    {%- if message['role'] == 'user' -%}\n"
        "        {{- '[INST] ' + (ns.system + '\\n\\n' + message['content'] if loop.index0 == ns.last"
        " else message['content']) + '[/INST]' -}}\n"
        "    {%- elif message['role'] == 'assistant' -%}\n"
        "        {{- ' ' + message['content'].strip() + '</s>' -}}\n"
        "    {%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if ns.last < 0 -%}\n"
        "    {{- '[INST] ' + ns.system + '\\n\\n[/INST]' -}}\n"
        "{%- endif -%}"
    ),
    "gemma": _SYSTEM_MESSAGES + (
        "{%- set turns = messages | rejectattr('role', 'equalto', 'system') | list -%}\n"
        "{%- for message in turns or [{'role': 'user', 'content': ''}] -%}\n"
        "    {{- '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n'"
        " + (ns.system + '\\n\\n' if loop.first else '') + message['content'].strip() + '<end_of_turn>\\n' -}}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}\n"
        "    {{- '<start_of_turn>model\\n' -}}\n"
        "{%- endif -%}"
    ),
}
# The BOS text `formats.render` begins a prompt with; text-generation-webui adds the BOS token instead.
BOS_TEXT = {"chatml": "", "llama3": "<|begin_of_text|>", "mistral": "<s>", "gemma": "<bos>"}

_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def jinja_string(text: str) -> str:
    """`text` as a Jinja string literal. Jinja unescapes a literal with Python's `unicode-escape` after
    turning line breaks into `\\n` (jinja2/lexer.py), so backslashes, quotes and \\r are escaped, and
    characters YAML would have to quote (controls, zero-width spaces, line separators) are written as
    \\u escapes: the template stays a plain block of YAML."""
    return "'" + "".join(_ESCAPES.get(ch) or (ch if ch.isprintable() else _unicode_escape(ch)) for ch in text) + "'"


def _unicode_escape(ch: str) -> str:
    return f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"


def instruction_template(format_name: str, system: str) -> str:
    return TEMPLATES[format_name].replace("{SYSTEM}", jinja_string(system))


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, as text-generation-webui writes its own files; PyYAML falls
    back to a quoted scalar where a block cannot hold the text exactly."""


# YAML 1.1 reads these as line breaks and folds them in any unquoted scalar (PyYAML offers a block or a
# plain scalar for them all the same): only a double-quoted scalar (escapes \N, \L, \P) keeps them.
YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = '"' if any(c in data for c in YAML_LINE_BREAKS) else "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_BlockDumper.add_representer(str, _represent_str)


def to_yaml(data: Mapping[str, str]) -> str:
    return yaml.dump(dict(data), Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=float("inf"))


@dataclass(frozen=True)
class WebuiExport:
    injection: Injection  # the fit (keep_role, as a prompt template cannot change while a chat grows)
    files: dict[str, str]  # path under user_data -> text

    def write(self, user_data: Path) -> list[Path]:
        written = []
        for relative, text in self.files.items():
            path = user_data / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
        return written

    def summary(self) -> dict[str, Any]:
        usage = self.injection.usage
        return {"role": {"name": self.injection.role.name, "version": self.injection.role.version},
                "format": self.injection.format, "files": list(self.files),
                "system_tokens": usage.system_tokens, "budget": usage.budget, "exact": usage.exact,
                "tokenizer": usage.tokenizer, "trim": self.injection.fit.report()}


def export_role(roles: RoleSet, profiles: Profiles, cache: FitCache, role_name: str, *, model: str | None = None,
                budget: int | None = None, variables: Mapping[str, str] | None = None) -> WebuiExport:
    """The role fitted for `model` (else the role's) under keep_role, as a character and an
    instruction template named after the role."""
    options = RoleOptions(budget=budget, context_policy="keep_role", variables=variables or {})
    request = InjectRequest(role=role_name, options=options, model=model)
    injection = inject(roles, profiles, request, cache)
    name = injection.role.name
    files = {
        f"characters/{name}.yaml": to_yaml({"name": name, "context": injection.system}),
        f"instruction-templates/{name}.yaml": to_yaml(
            {"instruction_template": instruction_template(injection.format, injection.system)}),
    }
    return WebuiExport(injection, files)
