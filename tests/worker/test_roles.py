"""Role files: sections, attributes, partials, extends, variables, versions, and every broken file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from role_injector.errors import RoleInjectorError
from role_injector.roles import RoleLimits, fill_variables, resolve_variables
from role_injector.store import RoleStore
from tests.worker.conftest import BUNDLED_ROLES, RoleWriter

GOOD = """---
description: A test role
budget: 300
model: qwen3:8b
params: {temperature: 0.3}
tags: [test]
variables:
  user_name: {required: true, description: Who}
  language: {default: English}
---
Preamble text. {{> greeting}}

# Mission {required}
Help {{user_name}} in {{language}}.

### Deeper heading stays inside

## Style {priority=60}
Be brief.

```
## not a heading inside a fence
```

## Examples {priority=10}
Example one.
"""


def load(roles_dir: Path) -> RoleStore:
    return RoleStore(roles_dir)


def error_for(store: RoleStore, file: str) -> str:
    messages = [e.message for e in store.current().errors if e.file == file]
    assert messages, f"no error for {file}: {store.current().errors}"
    return messages[0]


def test_sections_attributes_and_preamble(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("greeting", "Hello!", partial=True)
    write_role("good", GOOD)
    role = load(roles_dir).current().roles["good"]
    assert [(s.title, s.priority, s.required) for s in role.sections] == [
        (None, 100, False),
        ("Mission", 50, True),
        ("Style", 60, False),
        ("Examples", 10, False),
    ]
    assert role.sections[0].text == "Preamble text. Hello!"
    assert role.sections[1].text.startswith("# Mission\nHelp {{user_name}}")
    assert "### Deeper heading stays inside" in role.sections[1].text
    assert "## not a heading inside a fence" in role.sections[2].text
    assert "{required}" not in role.content and "{priority" not in role.content
    assert role.budget == 300 and role.model == "qwen3:8b" and role.params == {"temperature": 0.3}
    assert role.variables["user_name"].required and role.variables["language"].default == "English"
    assert role.version.startswith("sha256:") and len(role.version) == 71


def test_preamble_can_be_required(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("r", "---\npreamble: required\n---\nIntro.\n\n## A\nText.\n")
    assert load(roles_dir).current().roles["r"].sections[0].required


def test_variables_are_inserted_literally(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("greeting", "Hello!", partial=True)
    write_role("good", GOOD)
    role = load(roles_dir).current().roles["good"]
    values = resolve_variables(role, {"user_name": "{{language}} {{> greeting}}"})
    assert values == {"user_name": "{{language}} {{> greeting}}", "language": "English"}
    assert "Help {{language}} {{> greeting}} in English." in fill_variables(role.sections[1].text, values)


def test_missing_and_undeclared_variables(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("greeting", "Hello!", partial=True)
    write_role("good", GOOD)
    role = load(roles_dir).current().roles["good"]
    with pytest.raises(RoleInjectorError) as missing:
        resolve_variables(role, {})
    assert missing.value.code == "missing_variable" and missing.value.details["missing"] == ["user_name"]
    with pytest.raises(RoleInjectorError) as undeclared:
        resolve_variables(role, {"user_name": "A", "mood": "x"})
    assert undeclared.value.code == "invalid_request" and undeclared.value.details["undeclared"] == ["mood"]


def test_extends_replaces_same_titled_sections(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("parent", "---\nvariables: {who: {default: you}}\nparams: {a: 1, b: 1}\n---\nP.\n\n"
               "## One\nParent one {{who}}.\n\n## Two\nParent two.\n")
    write_role("child", "---\nextends: parent\nparams: {b: 2}\n---\n## Two {priority=70}\nChild two.\n\n"
               "## Three\nChild three.\n")
    role = load(roles_dir).current().roles["child"]
    assert [s.title for s in role.sections] == [None, "One", "Two", "Three"]
    assert role.sections[2].text == "## Two\nChild two." and role.sections[2].priority == 70
    assert role.params == {"a": 1, "b": 2} and "who" in role.variables


def test_version_changes_with_parent_and_partial(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("bit", "Bit one.", partial=True)
    write_role("parent", "## A\nParent {{> bit}}\n")
    write_role("child", "---\nextends: parent\n---\n## B\nChild.\n")
    before = load(roles_dir).current().roles["child"].version
    write_role("bit", "Bit two.", partial=True)
    after_partial = load(roles_dir).current().roles["child"].version
    write_role("parent", "## A\nParent changed {{> bit}}\n")
    after_parent = load(roles_dir).current().roles["child"].version
    assert len({before, after_partial, after_parent}) == 3
    assert load(roles_dir).current().roles["child"].version == after_parent  # deterministic


BROKEN = {
    "bad-yaml": ("---\ndescription: [unclosed\n---\nText.\n", "not valid YAML"),
    "not-mapping": ("---\n- a\n- b\n---\nText.\n", "must be a YAML mapping"),
    "unclosed": ("---\ndescription: x\nText.\n", "no closing '---'"),
    "unknown-key": ("---\nbudjet: 10\n---\nText.\n", "unknown front matter key(s): budjet"),
    "bad-budget": ("---\nbudget: -5\n---\nText.\n", "'budget' must be a positive whole number"),
    "bad-tags": ("---\ntags: [1, 2]\n---\nText.\n", "'tags' must be a list of strings"),
    "undeclared": ("Hello {{who}}.\n", "undeclared variable(s) who"),
    "bad-variable": ("---\nvariables: {x: {required: yes please}}\n---\n{{x}}\n", "'required' must be true or false"),
    "required-default": ("---\nvariables: {x: {required: true, default: a}}\n---\n{{x}}\n", "both required"),
    "missing-partial": ("{{> nowhere}}\n", "partial 'nowhere' not found"),
    "partial-cycle": ("{{> loop-a}}\n", "cycle: loop-a -> loop-b -> loop-a"),
    "too-deep": ("{{> d1}}\n", "nest 6 deep: d1 -> d2 -> d3 -> d4 -> d5 -> d6: over the limit of 5"),
    "bad-attribute": ("## Title {priority=high}\nText.\n", "unknown attribute 'priority=high'"),
    "missing-parent": ("---\nextends: nobody\n---\nText.\n", "parent role 'nobody' not found"),
    "extends-cycle-a": ("---\nextends: extends-cycle-b\n---\nA.\n", "cycle"),
    "extends-cycle-b": ("---\nextends: extends-cycle-a\n---\nB.\n", "cycle"),
    "child-of-broken": ("---\nextends: bad-yaml\n---\nText.\n", "parent role 'bad-yaml' failed to load"),
    "Bad_Name": ("Text.\n", "role name 'Bad_Name' is not allowed"),
}


def test_every_kind_of_broken_file_is_reported_and_others_still_load(
    write_role: RoleWriter, roles_dir: Path
) -> None:
    write_role("fine", "---\ndescription: fine\n---\nFine.\n")
    write_role("loop-a", "{{> loop-b}}", partial=True)
    write_role("loop-b", "{{> loop-a}}", partial=True)
    for i in range(1, 7):
        write_role(f"d{i}", f"{{{{> d{i + 1}}}}}" if i < 6 else "bottom", partial=True)
    for name, (text, _) in BROKEN.items():
        write_role(name, text)
    (roles_dir / "binary.md").write_bytes(b"\xff\xfe not utf-8")
    store = load(roles_dir)
    assert set(store.current().roles) == {"fine"}
    for name, (_, expected) in BROKEN.items():
        assert expected in error_for(store, f"{name}.md")
    assert "not valid UTF-8" in error_for(store, "binary.md")


def test_files_over_the_size_limit_are_rejected(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("big", "x" * 2000)
    write_role("small", "small")
    store = RoleStore(roles_dir, limits=RoleLimits(max_file_bytes=1000))
    assert set(store.current().roles) == {"small"}
    assert "is 2000 bytes: over the limit of 1000 (set by ROLE_INJECTOR_MAX_ROLE_BYTES)" in error_for(store, "big.md")


def test_files_and_folders_starting_with_underscore_are_not_roles(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("_draft", "Draft.")
    write_role("real", "Real.")
    (roles_dir / "notes.txt").write_text("not a role")
    assert set(load(roles_dir).current().roles) == {"real"}


def test_a_broken_edit_keeps_the_last_good_version(write_role: RoleWriter, roles_dir: Path) -> None:
    path = write_role("r", "## A\nGood.\n")
    store = RoleStore(roles_dir, check_interval=0, settle_time=0)
    good = store.current().roles["r"].version
    path.write_text("---\nbad: [\n---\n")
    snapshot = store.current()
    assert snapshot.roles["r"].version == good
    assert "serving the last good version" in error_for(store, "r.md")
    path.write_text("## A\nFixed.\n")
    fixed = store.current()
    assert fixed.roles["r"].version != good and not fixed.errors
    path.unlink()
    assert "r" not in store.current().roles


def test_a_file_still_being_written_is_not_loaded_yet(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("r", "## A\nOne.\n")
    store = RoleStore(roles_dir, check_interval=0, settle_time=60)
    first = store.current().roles["r"].version
    write_role("r", "## A\nTwo.\n")  # mtime is now: inside the settle time
    assert store.current().roles["r"].version == first


def test_bundled_roles_all_load() -> None:
    store = RoleStore(BUNDLED_ROLES)
    snapshot = store.current()
    assert not snapshot.errors
    assert {"agi-engineer", "general-assistant", "manifest"} <= set(snapshot.roles)
    agi = snapshot.roles["agi-engineer"]
    assert agi.sections[0].text.startswith(
        "Ты — инженер AGI. Твоя задача — координировать экспертов, предлагать гипотезы, работать с кодом, "
        "графами, вниманием и ролями."
    )
    assert agi.variables["user_name"].required


# Where a Russian sentence takes a name as it is (the nominative), whatever the name: after a dash or a
# colon ("Твой собеседник — Анна."), or as the subject at the start of a clause ("Если Анна ошибается").
# Anywhere else Russian declines it ("вместе с Анной", "советуй Анне"), and a value inserted as it is
# reads wrong ("вместе с Анна").
NOMINATIVE_BEFORE = re.compile(r"(?:^|[.!?:—,]\s*|\b(?:[Ее]сли|[Кк]огда|[Пп]ока|что)\s+)$")


def test_the_bundled_russian_role_puts_a_name_only_where_it_reads_right_in_any_form() -> None:
    roles = RoleStore(BUNDLED_ROLES).current().roles
    russian = [role for role in roles.values() if re.search("[а-яё]", role.content) and "user_name" in role.variables]
    assert [role.name for role in russian] == ["agi-engineer"]
    for role in russian:
        places = [role.content[: m.start()].rsplit("\n", 1)[-1]
                  for m in re.finditer(r"\{\{user_name\}\}", role.content)]
        assert places
        for before in places:
            assert NOMINATIVE_BEFORE.search(before), f"{role.name}: a name would be declined after {before[-40:]!r}"
    # and so, filled in, no preposition stands before the name
    role = roles["agi-engineer"]
    text = fill_variables(role.content, resolve_variables(role, {"user_name": "Анна"}))
    assert re.search(r"\b(?:с|со|к|ко|для|о|об|у|от|до|без|при|про|над|под|за|из|по|на|в)\s+Анна\b", text) is None
