"""`make run` (scripts/run-local.sh) is the session's stack: what a user sees of it."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.stack import BANNER_END, Stack
from tests.servers import stop_group

pytestmark = pytest.mark.e2e


def test_the_banner_comes_once_the_editor_serves_and_n8n_output_goes_to_its_log(e2e_stack: Stack) -> None:
    assert e2e_stack.local.banner_status == 200
    terminal = e2e_stack.local.log()
    logs = e2e_stack.n8n.user_folder / "logs"
    # n8n's own lines go to its logs, not the terminal: the database migrations of a first run (in
    # the import's log, the first n8n command) and the server's start-up.
    migrations = (logs / "import.log").read_text(errors="replace")
    assert migrations.count("Finished migration") > 100
    assert "n8n ready on" in (logs / "n8n.log").read_text(errors="replace")
    assert "migration" not in terminal.lower()
    assert "n8n ready on" not in terminal
    assert terminal.index("starting n8n (log: ") < terminal.index(BANNER_END)


def test_n8n_outlives_the_worker_and_the_node_says_it_cannot_reach_it(e2e_stack: Stack, tmp_path: Path) -> None:
    pid = e2e_stack.local.worker_pid()
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    try:
        e2e_stack.local.wait_for("the worker stopped; n8n keeps running", timeout=60)
        time.sleep(1)  # run-local.sh would stop n8n right away if it were going to

        assert e2e_stack.local.process.poll() is None
        assert requests.get(e2e_stack.n8n.url + "/healthz", timeout=10).status_code == 200
        run = e2e_stack.n8n.execute("rawChatmlGenerate")
        assert run.status == "error"
        assert run.last_node() == "Role Injector"
        assert f"Cannot reach the Role Injector worker at {e2e_stack.worker.url}/v1/inject" in run.error_text
    finally:
        e2e_stack.restart_worker(tmp_path)  # for the tests that come after
    assert e2e_stack.n8n.execute("rawChatmlGenerate").status == "success"


def test_ctrl_c_stops_n8n_and_the_worker_quietly_with_exit_0(e2e_stack: Stack, tmp_path: Path) -> None:
    e2e_stack.stop_replacement_workers()  # a worker an earlier test started outside make run, if any
    local = e2e_stack.local
    shown = len(local.log())
    try:
        status = stop_group(local.process)  # Ctrl-C: SIGINT to the whole process group, as a terminal sends it
        after = local.log()[shown:]

        assert status == 0, after
        assert "run-local: stopping" in after
        for noise in ("failed", "Traceback", "Error", "n8n.log"):
            assert noise not in after, after
        # The script waited for both before it ended: nothing listens any more.
        for port in (e2e_stack.n8n.port, local.worker_port):
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", port)) != 0, port
    finally:
        e2e_stack.start_again(tmp_path / "run-local-again.log")  # for the tests that come after
    assert e2e_stack.n8n.execute("rawChatmlGenerate").status == "success"
