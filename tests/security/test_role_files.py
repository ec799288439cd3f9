"""One role file, its params included, can never freeze, crash or exhaust the service: YAML
aliases, deep YAML, partial bombs, long `extends` chains, tens of thousands of headings,
backtracking patterns, params JSON cannot carry. Each is a `RoleError` for its file, naming the
limit's environment variable, while every other role keeps serving.

Adversarial inputs are of the size the limits admit; that the work finishes is checked in a
subprocess with a generous timeout (the old code took minutes to hours, or never ended), never by
timing it. The linear rewrites of the patterns and of the merge are checked against the old
backtracking and quadratic versions on random inputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.errors import ProfileError, RoleError
from role_injector.profiles import load_profiles
from role_injector.roles import (
    DEFAULT_LIMITS,
    HEADING,
    LIMIT_VARIABLES,
    NAME_PATTERN,
    PLACEHOLDER,
    PartialExpander,
    RoleLimits,
    Section,
    _parse_heading,
    merge_sections,
    placeholder,
)
from role_injector.settings import Settings
from tests.security.hostile_roles import MIB, loading_roles, serve_roles, write_hostile_roles
from tests.servers import REPO, ROLE_INJECTOR

README = (REPO / "README.md").read_text()

# --- the old patterns and merge, as references for the linear ones ----------------------------

OLD_PLACEHOLDER = re.compile(r"\{\{\s*(>?)\s*([^{}]*?)\s*\}\}")
OLD_HEADING = re.compile(r"^(#{1,2})[ \t]+(.*?)[ \t]*$")
OLD_ATTRIBUTES = re.compile(r"^(.*?)[ \t]*\{([^{}]*)\}$")

braces_and_blanks = st.lists(st.sampled_from([*"{}>#a-= \t\n", "\u3000", "é", "priority=6", "required"]),
                             max_size=30).map("".join)


@given(braces_and_blanks)
def test_placeholders_are_found_where_the_backtracking_pattern_found_them(text: str) -> None:
    old = [(m.span(), bool(m.group(1)), m.group(2)) for m in OLD_PLACEHOLDER.finditer(text)]
    assert [(m.span(), *placeholder(m)) for m in PLACEHOLDER.finditer(text)] == old


@given(braces_and_blanks.map(lambda text: text.replace("\n", "")))
def test_headings_and_attributes_parse_as_the_backtracking_patterns_did(line: str) -> None:
    old, new = OLD_HEADING.match(line), HEADING.match(line)
    assert bool(new) == bool(old)
    if old and new:
        assert (new.group(1), new.group(2).rstrip(" \t")) == old.groups()
    match = OLD_ATTRIBUTES.match(line)
    try:
        parsed = _parse_heading(line)
    except RoleError:
        assert match is not None  # only attributes can be wrong
        return
    assert parsed[0] == (match.group(1) if match else line)


titles = st.lists(st.sampled_from(["A", "B", "C", "D", "E"]), max_size=8)


def old_merge(parent: list[Section], child: list[Section]) -> list[Section]:
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


def sections(titles: list[str], preamble: bool, tag: str) -> list[Section]:
    made = [Section(None, f"{tag} preamble", 100, False, frozenset())] if preamble else []
    return made + [Section(t, f"{tag} {i}", 50, False, frozenset()) for i, t in enumerate(titles)]


@given(titles, titles, st.booleans(), st.booleans())
def test_merging_by_title_gives_what_the_quadratic_merge_gave(
    parent: list[str], child: list[str], parent_preamble: bool, child_preamble: bool
) -> None:
    p, c = sections(parent, parent_preamble, "parent"), sections(child, child_preamble, "child")
    assert merge_sections(p, c) == old_merge(p, c)


def old_expand(text: str, read: dict[str, str], chain: tuple[str, ...] = ()) -> str:
    def replace(match: re.Match[str]) -> str:
        if not match.group(1):
            return match.group(0)
        name = match.group(2)
        if not NAME_PATTERN.fullmatch(name) or name in chain or len(chain) >= 5 or name not in read:
            raise RoleError(name)
        return old_expand(read[name].strip("\n"), read, (*chain, name))

    return OLD_PLACEHOLDER.sub(replace, text)


names = st.sampled_from(["a", "b", "c", "d", "e", "f", "g"])
pieces = st.lists(st.one_of(st.sampled_from(["x", " ", "\n", "{{v}}"]), names.map(lambda n: f"{{{{> {n}}}}}")),
                  max_size=4).map("".join)


@settings(max_examples=300)
@given(pieces, st.dictionaries(names, pieces, max_size=7))
def test_reused_partials_expand_as_the_recursive_expansion_did(text: str, partials: dict[str, str]) -> None:
    """Each partial is expanded once and reused: same text, same cycles and depth errors."""
    def read(name: str) -> str:
        if name not in partials:
            raise RoleError(f"partial {name!r} not found")
        return partials[name]

    expander = PartialExpander(read, RoleLimits(max_partial_expansions=10**9, max_resolved_bytes=10**9))
    try:
        expected = old_expand(text, partials)
    except RoleError:
        with pytest.raises(RoleError):
            expander.expand(text)
        return
    assert expander.expand(text) == expected


# --- every limit: named, settable, documented --------------------------------------------------


@pytest.mark.parametrize(("limit", "variable"), LIMIT_VARIABLES.items())
def test_each_limit_has_its_variable_its_default_and_its_line_in_the_readme(limit: str, variable: str) -> None:
    assert getattr(Settings.from_env({variable: "7"}).role_limits, limit) == 7
    assert getattr(Settings.from_env({}).role_limits, limit) == getattr(DEFAULT_LIMITS, limit)
    assert f"`{variable}`" in README


# --- the hostile folder: library, CLI, and a real server --------------------------------------


def test_lint_reports_each_hostile_file_and_never_a_traceback(tmp_path: Path) -> None:
    expected = write_hostile_roles(tmp_path / "roles")
    # Generous: the old parser needed minutes to hours for several of these files, or crashed.
    done = subprocess.run([str(ROLE_INJECTOR), "lint", str(tmp_path / "roles")], capture_output=True, text=True,
                          timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    for file, part in expected.items():
        assert part in rows[file], (file, rows.get(file))
    assert set(loading_roles(tmp_path / "roles")) <= set(rows)


def test_a_missing_roles_folder_is_a_lint_error_not_an_empty_success(tmp_path: Path) -> None:
    done = subprocess.run([str(ROLE_INJECTOR), "lint", str(tmp_path / "nowhere")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert f"the roles folder {tmp_path / 'nowhere'} does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_hostile_roles_folder_cannot_stop_the_server(tmp_path: Path) -> None:
    """The server starts, lists every broken file with its error, and serves the other roles; no
    request about a broken role is a 500."""
    expected = write_hostile_roles(tmp_path / "roles")
    with serve_roles(tmp_path / "roles", tmp_path) as server:
        listing = requests.get(server.url + "/v1/roles", timeout=300)
        assert listing.status_code == 200
        assert {role["name"] for role in listing.json()["roles"]} == loading_roles(tmp_path / "roles")
        errors = {error["file"]: error["message"] for error in listing.json()["errors"]}
        for file, part in expected.items():
            assert part in errors[file], file
        inject = requests.post(server.url + "/v1/inject", json={"role": "fine", "prompt": "hi"}, timeout=60)
        assert inject.status_code == 200 and "You are fine." in inject.json()["system"]
        for name in ("alias-bomb", "params-date", "chain-0", "empty"):
            reply = requests.get(f"{server.url}/v1/roles/{name}", timeout=60)
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "role_not_found"
        chat = requests.post(server.url + "/api/chat", json={"model": "qwen3:8b@params-date", "stream": False,
                                                             "messages": [{"role": "user", "content": "hi"}]},
                             timeout=60)
        assert chat.status_code == 404 and "params-date" in chat.json()["error"]
        assert requests.get(server.url + "/v1/roles/braces-then-newlines", timeout=120).status_code == 200
        assert requests.get(server.url + "/healthz", timeout=60).json()["status"] == "ok"
        assert "Traceback" not in server.log()


def test_heavy_but_valid_roles_load_with_raised_limits(tmp_path: Path) -> None:
    """Tens of thousands of headings, a child replacing half of them, and an `extends` chain of
    1,200 roles: with the limits raised, this loads (the old merge was quadratic in the headings,
    the old chain recursive: RecursionError past ~300 parents)."""
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "parent.md").write_text("".join(f"## Part {i}\nParent text {i}.\n\n" for i in range(40_000)))
    (roles / "child.md").write_text("---\nextends: parent\n---\n"
                                    + "".join(f"## Part {i}\nChild text {i}.\n\n" for i in range(0, 40_000, 2)))
    for i in range(1_200):
        (roles / f"link-{i}.md").write_text(f"---\nextends: link-{i + 1}\n---\n## Link {i}\nText.\n" if i < 1_199
                                            else "## Root\nText.\n")
    script = (
        "import json, sys\n"
        "from role_injector.roles import RoleLimits\n"
        "from role_injector.store import RoleStore\n"
        "limits = RoleLimits(max_sections=100_000, max_extends_depth=10_000, max_resolved_bytes=64 << 20)\n"
        "snapshot = RoleStore(sys.argv[1], limits=limits).current()\n"
        "roles = snapshot.roles\n"
        "print(json.dumps({'sections': len(roles['child'].sections), 'roles': len(roles),\n"
        "                  'chain': len(roles['link-0'].sections), 'errors': [e.message for e in snapshot.errors]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(roles)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sections": 40_000, "roles": 1_202, "chain": 1_200, "errors": []}


# --- the profile file (ROLE_INJECTOR_MODELS) has the same YAML limits ---------------------------

VIRTUAL = "virtual_models:\n  v:\n    base: qwen3:8b\n    role: fine\n"


@pytest.mark.parametrize(("text", "message"), [
    (VIRTUAL + "    params: {stop_date: 2024-01-01}\n", "params.stop_date is a date"),
    (VIRTUAL + "    params: {seed: .inf}\n", "params.seed is inf"),
    ("models: &m [{match: a}]\nmore: *m\n", "YAML aliases (*name) are not allowed"),
    ("models: " + "[" * 5_000 + "]" * 5_000, "nested too deep at line 1: over the limit of 16 levels"),
    ("# " + "x" * (70 * 1024) + "\nmodels: []\n", "over the limit of 65536 bytes (set by ROLE_INJECTOR_MAX_YAML_BYTES"),
    ("models: [{match: a, context_window: " + "9" * 5_000 + "}]", "a value cannot be read"),
])
def test_the_profile_file_is_read_with_the_same_yaml_limits(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "models.yaml").write_text(text)
    with pytest.raises(ProfileError, match=re.escape(message)):
        load_profiles(tmp_path / "models.yaml")


def test_a_fifo_as_the_profile_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "models.yaml"
    os.mkfifo(fifo)
    script = ("import sys\nfrom role_injector.profiles import load_profiles\n"
              "try:\n    load_profiles(sys.argv[1])\nexcept Exception as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script, str(fifo)], capture_output=True, text=True, timeout=120)
    assert "the file is a FIFO; only regular files are read" in done.stdout


def test_roles_of_the_maximal_file_size_parse_without_backtracking(tmp_path: Path) -> None:
    """2 MiB of the texts the old patterns backtracked on, each in one role, in one process."""
    roles = tmp_path / "roles"
    roles.mkdir()
    size = 2 * MIB - 64
    texts = {
        "open-braces": "{{" + "\n" * size,
        "open-partial": "{{> " + " " * size,
        "heading-blanks": "# a" + " \t" * (size // 2) + "b",
        "heading-attributes": "## a" + " " * size + "{}",
        "many-placeholders": "{{ x " * (size // 5),
    }
    for name, text in texts.items():
        (roles / f"{name}.md").write_text(text)
    script = ("import sys\nfrom role_injector.store import RoleStore\n"
              "s = RoleStore(sys.argv[1]).current()\nprint(sorted(s.roles), [e.message for e in s.errors])\n")
    done = subprocess.run([sys.executable, "-c", script, str(roles)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{sorted(texts)} []"
