"""The role store reloads by what changed: after any sequence of edits, additions and deletions of role
files and partials (with `extends`, partials in partials, cycles, broken files), the roles it serves are
those a store loading the folder from scratch serves, apart from the last good versions it keeps for
roles that broke. And it reads and builds only what a change touches."""

from __future__ import annotations

import difflib
import logging
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.roles import RoleLimits
from role_injector.store import RoleSet, RoleStore

ROLES = ["a", "b", "c", "d"]
PARTIALS = ["p", "q"]
LAST_GOOD = " (serving the last good version)"

role_texts = st.sampled_from(ROLES).flatmap(lambda other: st.sampled_from([
    "A plain role.\n",
    "## Rules\nBe kind.\n",
    f"---\nextends: {other}\n---\n## Rules\nBe brief.\n",
    f"---\nextends: {other}\n---\nChild of {other}. {{{{> p}}}}\n",
    "Uses {{> p}} and {{> q}}.\n",
    "---\ndescription: [broken\n---\nBroken.\n",
    "",
    "---\nextends: nobody\n---\nOrphan.\n",
]))
partial_texts = st.sampled_from(["Shared.\n", "Nested {{> q}}.\n", "Back to {{> p}}.\n", "", "\n"])
steps = st.lists(st.one_of(
    st.tuples(st.just("role"), st.sampled_from(ROLES), role_texts),
    st.tuples(st.just("partial"), st.sampled_from(PARTIALS), partial_texts),
    st.tuples(st.just("delete role"), st.sampled_from(ROLES), st.just("")),
    st.tuples(st.just("delete partial"), st.sampled_from(PARTIALS), st.just("")),
), min_size=1, max_size=12)


def apply_step(folder: Path, kind: str, name: str, text: str) -> str:
    """Do one step on the folder; the file it touched, as the store names it."""
    path = folder / "_partials" / f"{name}.md" if "partial" in kind else folder / f"{name}.md"
    if kind.startswith("delete"):
        path.unlink(missing_ok=True)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path.relative_to(folder))


def served(snapshot: RoleSet) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """Versions of the roles served fresh, error messages by file, and the roles served as last good."""
    errors = {e.file: e.message.removesuffix(LAST_GOOD) for e in snapshot.errors}
    last_good = {e.file[:-3] for e in snapshot.errors if e.message.endswith(LAST_GOOD)}
    fresh = {name: role.version for name, role in snapshot.roles.items() if name not in last_good}
    return fresh, errors, last_good


@settings(max_examples=150, deadline=None)
@given(steps, st.lists(st.booleans(), min_size=12, max_size=12))
def test_a_store_reloading_what_changed_serves_what_a_fresh_load_serves(
    moves: list[tuple[str, str, str]], by_name: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "_partials").mkdir()
        (folder / "a.md").write_text("The first role.\n")
        store = RoleStore(folder, check_interval=0, settle_time=0)
        for (kind, name, text), named in zip(moves, by_name, strict=False):
            touched = apply_step(folder, kind, name, text)
            if named:  # as inotify names a file
                assert store.refresh_files({touched}) == set()
            else:  # as a full scan finds it
                assert store.refresh(force=True) == set()
            fresh, errors, last_good = served(store.current())
            expected_fresh, expected_errors, _ = served(RoleStore(folder).current())
            assert fresh == expected_fresh
            assert errors == expected_errors
            assert last_good <= {file[:-3] for file in errors}


def test_an_edit_builds_only_the_roles_made_from_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "_partials").mkdir()
    (tmp_path / "_partials" / "sig.md").write_text("Signed.\n")
    for i in range(200):
        (tmp_path / f"r{i:03}.md").write_text(f"Role {i}.{' {{> sig}}' if i % 10 == 0 else ''}\n")
    (tmp_path / "child.md").write_text("---\nextends: r001\n---\n## Extra\nMore.\n")
    store = RoleStore(tmp_path, settle_time=0)
    caplog.set_level(logging.INFO, logger="role_injector.store")
    before = store.current()

    (tmp_path / "r050.md").write_text("Role fifty, edited.\n")
    store.refresh_files({"r050.md"})
    (tmp_path / "_partials" / "sig.md").write_text("Signed, edited.\n")
    store.refresh_files({"_partials/sig.md"})
    (tmp_path / "r001.md").write_text("Role one, edited.\n")
    store.refresh_files({"r001.md"})
    built = [record.getMessage() for record in caplog.records if "roles reloaded" in record.getMessage()]
    # r050 (its own file), the roles with the partial (r050 has it no more), r001 and the role extending it
    assert [line.split(" roles built")[0].rsplit(", ", 1)[1] for line in built] == ["1", "19", "2"]

    after = store.current()
    changed = {name for name in after.roles if after.roles[name] is not before.roles[name]}
    assert changed == {"r050", "r001", "child"} | {f"r{i:03}" for i in range(0, 200, 10)}
    assert "Signed, edited." in after.roles["r000"].content and after.roles["child"].content.startswith("Role one")


def test_a_folder_over_the_file_limit_keeps_serving_what_it_had_and_says_why(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"r{i}.md").write_text(f"Role {i}.\n")
    store = RoleStore(tmp_path, limits=RoleLimits(max_files=5), check_interval=0, settle_time=0)
    assert len(store.current().roles) == 5 and store.current().directory_error is None
    (tmp_path / "r5.md").write_text("One too many.\n")
    snapshot = store.current()
    assert len(snapshot.roles) == 5
    assert snapshot.directory_error == (f"the roles folder {tmp_path} holds more than 5 role files and partials: "
                                        "over the limit of 5 (set by ROLE_INJECTOR_MAX_ROLE_FILES)")
    (tmp_path / "r0.md").unlink()
    snapshot = store.current()
    assert snapshot.directory_error is None and set(snapshot.roles) == {"r1", "r2", "r3", "r4", "r5"}
    too_many = RoleStore(tmp_path, limits=RoleLimits(max_files=2))
    assert too_many.current().roles == {} and "ROLE_INJECTOR_MAX_ROLE_FILES" in str(too_many.current().directory_error)


def test_the_watcher_sees_edits_on_its_own_and_ends_with_its_store(tmp_path: Path) -> None:
    (tmp_path / "r.md").write_text("First.\n")
    store = RoleStore(tmp_path, check_interval=0.05, settle_time=0)
    store.watch()
    (tmp_path / "r.md").write_text("Second, in place.\n")
    deadline = time.monotonic() + 10
    while store.current().roles["r"].content != "Second, in place.":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    temp = tmp_path / ".r.md.tmp"
    temp.write_text("Third, atomically.\n")
    os.replace(temp, tmp_path / "r.md")
    while store.current().roles["r"].content != "Third, atomically.":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_close_names_are_found_among_many_roles_from_the_names_beside_it() -> None:
    names = [f"team-{i:05}" for i in range(20_000)] + ["reviewer", "reviewers-guide", "writer"]
    snapshot = RoleSet(roles=dict.fromkeys(names))
    assert snapshot.close_names("reveiwer") == ["reviewer", "reviewers-guide"]
    assert snapshot.close_names("team-12345x")[0] == "team-12345"
    few = RoleSet(roles=dict.fromkeys(["reviewer", "writer", "reader"]))
    assert few.close_names("raeder") == difflib.get_close_matches("raeder", ["reviewer", "writer", "reader"], 3, 0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 1500), st.booleans()), max_size=300), max_size=12))
def test_a_role_table_is_the_mapping_its_changes_make(batches: list[list[tuple[int, bool]]]) -> None:
    """RoleSet.roles: a table and the changes over it, merged once they are many, never a copy per edit."""
    from role_injector.store import RoleTable

    role = object()  # any value: the table holds what it is given
    model = {f"r{i}": role for i in range(100)}
    table = RoleTable(dict(model))
    for batch in batches:
        updates = {f"r{i}": (role if present else None) for i, present in batch}
        table = table.changed(updates)  # type: ignore[arg-type]
        for name, value in updates.items():
            if value is None:
                model.pop(name, None)
            else:
                model[name] = value
        assert len(table) == len(model) and sorted(table) == sorted(model) and dict(table.items()) == model
        assert all((f"r{i}" in table) == (f"r{i}" in model) for i in range(0, 1500, 7))
