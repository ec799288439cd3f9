"""Only regular files whose real path is inside the roles folder are read, and reloading can never
wedge: symbolic links out of the folder (to /etc/passwd, to /proc), FIFOs,
sockets and folders are errors of their file; an empty file never replaces a good version; a
folder that disappears is said (`RoleSet.directory_error`, `/healthz` 503), not served as 0 roles.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from role_injector.regular_files import NotARegularFile, read_regular_file
from role_injector.store import RoleStore
from tests.security.hostile_roles import GOOD, serve_roles

OUTSIDE = "SECRET=do-not-serve\n"


def folder(tmp_path: Path) -> Path:
    roles = tmp_path / "roles"
    (roles / "_partials").mkdir(parents=True)
    (roles / "fine.md").write_text(GOOD)
    (tmp_path / "outside.md").write_text(OUTSIDE)
    return roles


def errors(store: RoleStore) -> dict[str, str]:
    return {error.file: error.message for error in store.current().errors}


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.05)


ESCAPES = {
    "leak": "/etc/passwd",
    "outside": "../outside.md",
    "proc": "/proc/self/status",
    "fd": "/proc/self/fd/0",
    "up-and-in": "../roles/../outside.md",
}


def test_symbolic_links_out_of_the_folder_are_refused_and_links_inside_work(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    for name, target in ESCAPES.items():
        (roles / f"{name}.md").symlink_to(target)
    (roles / "alias.md").symlink_to("fine.md")
    (roles / "dangling.md").symlink_to("nothing-here.md")
    (roles / "_partials" / "escape.md").symlink_to(tmp_path / "outside.md")
    (roles / "uses-escape.md").write_text("Before {{> escape}} after.\n")
    store = RoleStore(roles)
    assert set(store.current().roles) == {"fine", "alias"}
    assert store.current().roles["alias"].content == store.current().roles["fine"].content
    found = errors(store)
    for name in ESCAPES:
        assert found[f"{name}.md"] == "the file is a symbolic link to outside the roles folder"
    assert found["dangling.md"] == "the file is a symbolic link to nothing"
    assert found["uses-escape.md"] == "partial 'escape': the file is a symbolic link to outside the roles folder"
    assert all(OUTSIDE not in role.content for role in store.current().roles.values())


def test_a_roles_folder_reached_through_a_link_and_a_linked_partials_folder_inside_it_work(tmp_path: Path) -> None:
    real = folder(tmp_path)
    shutil.rmtree(real / "_partials")
    (real / "shared").mkdir()
    (real / "shared" / "sig.md").write_text("Signed.\n")
    (real / "_partials").symlink_to("shared")
    (real / "signed.md").write_text("Hello. {{> sig}}\n")
    (tmp_path / "current").symlink_to(real)
    store = RoleStore(tmp_path / "current")
    assert store.current().roles["signed"].content == "Hello. Signed."
    assert not store.current().errors


def test_a_partials_folder_linked_to_outside_is_not_read(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    (roles / "_partials").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "sig.md").write_text(OUTSIDE)
    (roles / "_partials").symlink_to(tmp_path / "elsewhere")
    (roles / "signed.md").write_text("Hello. {{> sig}}\n")
    store = RoleStore(roles, check_interval=0, settle_time=0)
    assert errors(store) == {"signed.md": "partial 'sig': the folder _partials cannot be read: _partials is a "
                                          "symbolic link to outside the roles folder"}
    (tmp_path / "elsewhere" / "sig.md").write_text(OUTSIDE + "more\n")
    assert store.refresh_files({"_partials/sig.md"}) == set()
    assert "signed" not in store.current().roles and set(store.current().roles) == {"fine"}


def make_special_files(roles: Path) -> None:
    os.mkfifo(roles / "fifo.md")
    os.mkfifo(roles / "_partials" / "pipe.md")
    (roles / "uses-pipe.md").write_text("Before {{> pipe}} after.\n")
    (roles / "folder.md").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(roles / "socket.md"))


def test_fifos_sockets_and_folders_are_errors_and_never_block(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    make_special_files(roles)
    # In a subprocess: a FIFO opened for reading would block it, not this test.
    script = ("import json, sys\nfrom role_injector.store import RoleStore\n"
              "s = RoleStore(sys.argv[1]).current()\n"
              "print(json.dumps({'roles': sorted(s.roles), 'errors': {e.file: e.message for e in s.errors}}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(roles)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["roles"] == ["fine"]
    assert found["errors"] == {
        "fifo.md": "the file is a FIFO; only regular files are read",
        "folder.md": "the file is a folder; only regular files are read",
        "socket.md": "the file is a socket; only regular files are read",
        "uses-pipe.md": "partial 'pipe': the file is a FIFO; only regular files are read",
    }


def test_a_fifo_put_where_a_file_was_scanned_is_refused_without_reading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "swapped.md")
    with pytest.raises(NotARegularFile, match="a FIFO"):
        read_regular_file(str(tmp_path / "swapped.md"), 1024, follow_symlinks=False)
    (tmp_path / "link.md").symlink_to(tmp_path / "swapped.md")
    with pytest.raises(OSError):  # a link swapped in for the resolved path is not followed
        read_regular_file(str(tmp_path / "link.md"), 1024, follow_symlinks=False)


def test_reloads_go_on_around_special_files(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    make_special_files(roles)
    store = RoleStore(roles, check_interval=0, settle_time=0)
    (roles / "new.md").write_text("A new role.\n")
    wait_for(lambda: "new" in store.current().roles)
    (roles / "fine.md").unlink()
    wait_for(lambda: "fine" not in store.current().roles)
    assert "fifo.md" in errors(store)


def test_a_partials_folder_that_is_not_a_folder_is_named_in_the_error(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    shutil.rmtree(roles / "_partials")
    (roles / "_partials").write_text("not a folder")
    (roles / "uses.md").write_text("{{> sig}}\n")
    store = RoleStore(roles)
    assert errors(store) == {"uses.md": "partial 'sig': the folder _partials cannot be read: Not a directory"}
    assert set(store.current().roles) == {"fine"}


def test_an_emptied_file_keeps_the_last_good_version_until_it_is_written(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    store = RoleStore(roles, check_interval=0, settle_time=0)
    good = store.current().roles["fine"]
    (roles / "fine.md").write_text("")  # a rewrite in place truncates first
    wait_for(lambda: "fine.md" in errors(store))
    assert store.current().roles["fine"] is good
    assert errors(store)["fine.md"].startswith("the file is empty")
    (roles / "fine.md").write_text("## Rewritten\nNew text.\n")
    wait_for(lambda: store.current().roles["fine"].version != good.version)
    assert not store.current().errors


def test_an_empty_partial_is_an_error_and_a_newline_is_an_empty_partial(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    (roles / "_partials" / "empty.md").write_text("")
    (roles / "_partials" / "blank.md").write_text("\n")
    (roles / "a.md").write_text("A{{> empty}}.\n")
    (roles / "b.md").write_text("B{{> blank}}.\n")
    store = RoleStore(roles)
    assert errors(store) == {"a.md": "partial 'empty': the file is empty (an empty partial needs at least a newline)"}
    assert store.current().roles["b"].content == "B."


def test_a_vanished_roles_folder_is_reported_and_the_loaded_roles_keep_serving(tmp_path: Path) -> None:
    roles = folder(tmp_path)
    store = RoleStore(roles, check_interval=0, settle_time=0)
    assert store.current().directory_error is None
    roles.rename(tmp_path / "elsewhere")
    wait_for(lambda: store.current().directory_error is not None)
    assert store.current().directory_error == f"the roles folder {roles} does not exist"
    assert set(store.current().roles) == {"fine"}
    (tmp_path / "elsewhere").rename(roles)
    (roles / "back.md").write_text("Back.\n")
    wait_for(lambda: "back" in store.current().roles)
    assert store.current().directory_error is None
    missing = RoleStore(tmp_path / "never")
    assert missing.current().directory_error == f"the roles folder {tmp_path / 'never'} does not exist"
    (tmp_path / "a-file").write_text("x")
    assert RoleStore(tmp_path / "a-file").current().directory_error == (
        f"the roles folder {tmp_path / 'a-file'} is not a folder")


def test_a_server_serves_nothing_from_outside_keeps_reloading_and_says_when_the_folder_is_gone(
    tmp_path: Path,
) -> None:
    roles = folder(tmp_path)
    (roles / "leak.md").symlink_to("/etc/passwd")
    (roles / "_partials" / "escape.md").symlink_to(tmp_path / "outside.md")
    (roles / "uses-escape.md").write_text("{{> escape}}\n")
    make_special_files(roles)
    with serve_roles(roles, tmp_path, ROLE_INJECTOR_RELOAD_INTERVAL="0.1") as server:
        for name in ("leak", "uses-escape", "fifo", "uses-pipe"):
            assert requests.get(f"{server.url}/v1/roles/{name}", timeout=30).status_code == 404
            reply = requests.post(server.url + "/v1/inject", json={"role": name}, timeout=30)
            assert reply.status_code == 404 and "root:" not in reply.text
        listed = requests.get(server.url + "/v1/roles", timeout=30).json()
        assert {e["file"] for e in listed["errors"]} >= {"leak.md", "uses-escape.md", "fifo.md", "uses-pipe.md"}
        assert "root:" not in str(listed) and OUTSIDE.strip() not in str(listed)
        (roles / "added.md").write_text("Added after the start.\n")
        wait_for(lambda: requests.get(server.url + "/v1/roles/added", timeout=30).status_code == 200)
        roles.rename(tmp_path / "gone")
        wait_for(lambda: requests.get(server.url + "/healthz", timeout=30).status_code == 503)
        health = requests.get(server.url + "/healthz", timeout=30).json()
        assert health == {"status": "error", "roles": 2, "error": f"the roles folder {roles} does not exist"}
        assert requests.post(server.url + "/v1/inject", json={"role": "fine"}, timeout=30).status_code == 200
        (tmp_path / "gone").rename(roles)
        wait_for(lambda: requests.get(server.url + "/healthz", timeout=30).status_code == 200)
