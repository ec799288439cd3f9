"""A roles folder of many roles (issue 22, item 5): 50,000 small roles made every request pay a folder
scan (0.6-2 s) and one edit reload everything (7-26 s of stalled requests). Now each worker's watcher
reloads off the request path and builds only what an edit touches; the folder's size has a limit.
(`bench/roles_bench.py` measures 50,000; these tests use 20,000 to stay quick.)
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.conftest import address
from tests.security.hostile_roles import serve_roles
from tests.servers import WorkerProcess

ROLES = 20_000
WITHIN = 2.0  # seconds from a write to every worker serving it


def role_text(i: int) -> str:
    include = " {{> signature}}" if i % 5 == 0 else ""
    extends = "extends: base\n" if i % 7 == 0 else ""
    return f"---\ndescription: assistant {i}\n{extends}---\nYou are assistant {i}.{include}\n\n## Rules\nRule {i}.\n"


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, Path]]:
    scratch = tmp_path_factory.mktemp("many-roles")
    folder = scratch / "roles"
    (folder / "_partials").mkdir(parents=True)
    (folder / "_partials" / "signature.md").write_text("Signed.\n")
    (folder / "base.md").write_text("## Base\nThe base role.\n")
    for i in range(ROLES):
        (folder / f"r{i:05}.md").write_text(role_text(i))
    with serve_roles(folder, scratch, workers=2) as server:
        yield server, folder


def get(server: WorkerProcess, path: str) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection(*address(server), timeout=60)  # a new connection: any worker
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def version(server: WorkerProcess, name: str) -> object:
    status, body = get(server, f"/v1/roles/{name}")
    return body["version"] if status == 200 else status


def served_everywhere(server: WorkerProcess, name: str, old: object) -> float:
    """Seconds until 20 answers in a row (new connections, so both workers) are no longer `old`."""
    started, fresh = time.monotonic(), 0
    while fresh < 20:
        assert time.monotonic() - started < WITHIN, f"{name} still served as {old!r}"
        fresh = fresh + 1 if version(server, name) != old else 0
    return time.monotonic() - started


def reloads(server: WorkerProcess) -> list[tuple[int, int]]:
    return [(int(files), int(built)) for files, built in
            re.findall(r"roles reloaded: (\d+) files changed, (\d+) roles built", server.log())]


def test_an_edit_reaches_every_worker_and_builds_only_its_role(many: tuple[WorkerProcess, Path]) -> None:
    server, folder = many
    before, old = len(reloads(server)), version(server, "r01234")
    (folder / "r01234.md").write_text(role_text(1234) + "\n## Edited\nIn place.\n")  # in place, as editors do
    served_everywhere(server, "r01234", old)
    temp = folder / ".r01235.md.tmp"
    temp.write_text(role_text(1235) + "\n## Edited\nAtomically.\n")
    old = version(server, "r01235")
    os.replace(temp, folder / "r01235.md")
    served_everywhere(server, "r01235", old)
    (folder / "r99999.md").write_text("A role added later.\n")
    served_everywhere(server, "r99999", 404)
    old = version(server, "r99999")
    (folder / "r99999.md").unlink()
    served_everywhere(server, "r99999", old)
    # Each worker's reloads: the files written (one at a time, or two that came together), one role each
    # (none for the removal), never the folder.
    done = reloads(server)[before:]
    assert 2 * 4 <= sum(files for files, _ in done) <= 2 * 4 * 2, done  # four writes, two workers
    assert all(built <= files <= 2 for files, built in done), done


def test_requests_go_on_while_an_edit_builds_thousands_of_roles(many: tuple[WorkerProcess, Path]) -> None:
    """The partial 4,000 roles include: each worker builds them again in its watcher, not in a request."""
    server, folder = many
    before = len(reloads(server))
    old = version(server, "r00005")
    answers: list[tuple[int, object]] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            answers.append((200, version(server, "r00010")))

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        (folder / "_partials" / "signature.md").write_text("Signed, edited.\n")
        served_everywhere(server, "r00005", old)
    finally:
        stop.set()
        asker.join()
    assert answers and all(isinstance(v, str) and v.startswith("sha256:") for _, v in answers)
    built = [b for _, b in reloads(server)[before:]]
    assert built and all(b == ROLES // 5 for b in built)  # the roles with the partial, nothing else


def test_a_parent_edit_reaches_the_roles_that_extend_it(many: tuple[WorkerProcess, Path]) -> None:
    server, folder = many
    old_child, old_other = version(server, "r00007"), version(server, "r00008")
    (folder / "base.md").write_text("## Base\nThe base role, edited.\n")
    served_everywhere(server, "r00007", old_child)
    assert version(server, "r00008") == old_other


def test_a_folder_over_the_file_limit_says_so_and_keeps_serving(tmp_path: Path) -> None:
    folder = tmp_path / "roles"
    folder.mkdir()
    for i in range(40):
        (folder / f"r{i:02}.md").write_text(f"Role {i}.\n")
    with serve_roles(folder, tmp_path, ROLE_INJECTOR_MAX_ROLE_FILES="40") as server:
        assert get(server, "/healthz") == (200, {"status": "ok", "roles": 40})
        (folder / "r40.md").write_text("One too many.\n")
        deadline = time.monotonic() + 10
        while (health := get(server, "/healthz"))[0] != 503:
            assert time.monotonic() < deadline
        assert "over the limit of 40 (set by ROLE_INJECTOR_MAX_ROLE_FILES)" in str(health[1]["error"])
        assert health[1]["roles"] == 40 and get(server, "/v1/roles/r07")[0] == 200
        (folder / "r00.md").unlink()
        while get(server, "/healthz")[0] != 200:
            assert time.monotonic() < deadline
        assert get(server, "/v1/roles/r40")[0] == 200 and get(server, "/v1/roles/r00")[0] == 404
