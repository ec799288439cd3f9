"""`role-injector export ROLE --to text-generation-webui`: the files read back as text-generation-webui's
loaders read them (oobabooga/text-generation-webui at 1dcde41d03d13fc768316f4d2256a8a6dd044268), and its
instruction template rendered as it renders one, equal to the worker's own chat formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from role_injector.formats import FORMATS, RENDERERS, Message
from role_injector.text_generation_webui import BOS_TEXT, instruction_template, jinja_string, to_yaml
from tests.worker.conftest import ENGINEER, RoleWriter, run_cli


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(message)


# modules/chat.py, lines 115-134: the environment every instruction template is compiled in.
WEBUI_JINJA = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
WEBUI_JINJA.globals["raise_exception"] = _raise_exception


def load_character(user_data: Path, character: str) -> tuple[str, str]:
    """(name, context) as `load_character` (modules/chat.py, lines 2017-2061) finds and reads them."""
    for extension in ["yml", "yaml", "json"]:
        path = user_data / "characters" / f"{character}.{extension}"
        if path.exists():
            break
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if extension == "json" else yaml.safe_load(text)
    name = next(data[k] for k in ["name", "bot", "<|bot|>", "char_name"] if k in data and data[k] != "")
    return name, data["context"].strip()


def load_template(user_data: Path, template: str) -> str:
    """The Jinja text `load_template_by_name` (modules/models_settings.py, lines 400-425) returns."""
    for extension in (".jinja", ".jinja2", ".yaml", ".yml"):
        path = user_data / "instruction-templates" / f"{template}{extension}"
        if path.is_file():
            break
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    assert isinstance(data["instruction_template"], str)
    return data["instruction_template"]


def render(template: str, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    return WEBUI_JINJA.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                    bos_token="<s>", eos_token="</s>")


texts = st.text(max_size=40)
turn_lists = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), texts), max_size=4)


@settings(max_examples=200, deadline=None)
@given(format_name=st.sampled_from(FORMATS), system=texts, turns=turn_lists)
def test_the_template_renders_the_role_as_the_chat_format_does(format_name: str, system: str,
                                                               turns: list[tuple[str, str]]) -> None:
    """Any role text (quotes, backslashes, line breaks, control characters) survives YAML and Jinja."""
    template = yaml.safe_load(to_yaml({"instruction_template": instruction_template(format_name, system)}))
    messages = [Message(role, content) for role, content in turns]  # type: ignore[arg-type]
    expected = RENDERERS[format_name](system, messages)
    assert expected.startswith(BOS_TEXT[format_name])
    rendered = render(template["instruction_template"], [{"role": m.role, "content": m.content} for m in messages])
    assert rendered == expected[len(BOS_TEXT[format_name]):]


def test_a_users_system_message_follows_the_role_and_other_roles_are_refused() -> None:
    template = instruction_template("chatml", "Be kind.")
    rendered = render(template, [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}])
    assert rendered == "<|im_start|>system\nBe kind.\n\nMine.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" \
        "<|im_start|>assistant\n"
    with pytest.raises(TemplateError, match="system, user and assistant"):
        render(template, [{"role": "tool", "content": "{}"}])


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_a_jinja_string_reads_back_as_the_text(text: str) -> None:
    assert WEBUI_JINJA.from_string("{{ " + jinja_string(text) + " }}").render() == text
    assert jinja_string(text).isprintable()  # one line, nothing YAML must quote


@settings(max_examples=200, deadline=None)
@given(text=st.text() | st.lists(st.sampled_from(["a", " ", "\n", "\r", "\x85", "\u2028", "\u2029", "\t", "#",
                                                   ":", "'", '"', "\ufeff", "\u200b"])).map("".join))
def test_a_character_reads_back_as_the_fitted_text(text: str) -> None:
    assert yaml.safe_load(to_yaml({"name": "r", "context": text})) == {"name": "r", "context": text}


def test_yaml_line_breaks_are_kept_in_quotes() -> None:
    assert yaml.safe_load(to_yaml({"context": "a\x85b\nc"})) == {"context": "a\x85b\nc"}
    assert to_yaml({"context": "a\nb"}) == "context: |-\n  a\n  b\n"  # readable where it can be


def test_export_writes_the_files_text_generation_webui_reads(tmp_path: Path, write_role: RoleWriter,
                                                             roles_dir: Path) -> None:
    write_role("engineer", ENGINEER)
    user_data = tmp_path / "user_data"
    result = run_cli("export", "engineer", "--roles", str(roles_dir), "--to", "text-generation-webui", "--var",
                     "team=Core", "--model", "qwen2.5:7b", "--budget", "60", "--out", str(user_data))
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["files"] == ["characters/engineer.yaml", "instruction-templates/engineer.yaml"]
    assert summary["format"] == "chatml" and summary["exact"] and summary["system_tokens"] <= 60
    fitted = run_cli("render", "engineer", "--roles", str(roles_dir), "--var", "team=Core", "--model",
                     "qwen2.5:7b", "--budget", "60", stderr=None).stdout.rstrip("\n")
    assert fitted.startswith("You are the careful test engineer of Core.")
    assert load_character(user_data, "engineer") == ("engineer", fitted)
    prompt = render(load_template(user_data, "engineer"), [{"role": "user", "content": "Hi"}])
    assert prompt == f"<|im_start|>system\n{fitted}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_export_errors_are_the_commands_errors(tmp_path: Path, write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("engineer", ENGINEER)
    missing = run_cli("export", "engineer", "--roles", str(roles_dir), "--to", "text-generation-webui",
                      "--out", str(tmp_path))
    assert missing.returncode == 4 and "missing_variable" in missing.stderr
    (tmp_path / "file").write_text("")
    unwritable = run_cli("export", "engineer", "--roles", str(roles_dir), "--to", "text-generation-webui",
                         "--var", "team=Core", "--out", str(tmp_path / "file"))
    assert unwritable.returncode == 2 and "cannot write into" in unwritable.stderr
    assert not (tmp_path / "characters").exists()
