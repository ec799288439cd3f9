"""`make run-scale` (scripts/run-scale.sh): docs/scaling.md's layout on one machine, two llama-servers
behind vllm-router and the worker in front, started and stopped as a user does (in a session of its own,
Ctrl-C to its process group), on free ports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import requests

from tests.servers import CLEAN_ENV, REPO, free_port, stop_group

SCRIPT = REPO / "scripts" / "run-scale.sh"
BANNER_END = "Press Ctrl-C to stop."
PORTS = ("ENGINE_A_PORT", "ENGINE_B_PORT", "ROUTER_PORT", "ROUTER_METRICS_PORT", "WORKER_PORT")
RELEASED = re.compile(r"release: id +\d+ \| task \d+ \| stop processing")


def script_env(home: Path, **ports: int) -> dict[str, str]:
    return {**os.environ, **CLEAN_ENV, **{name: str(port) for name, port in ports.items()},
            "SCALE_HOME": str(home), "SLOTS": "2", "THREADS": "1"}


def test_it_serves_a_conversation_on_one_engine_and_ctrl_c_stops_everything_quietly(tmp_path: Path) -> None:
    ports = {name: free_port() for name in PORTS}
    log_path = tmp_path / "run-scale.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(["bash", str(SCRIPT)], env=script_env(tmp_path, **ports), stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600  # the toolchain is there (make engine); the engines load in seconds
        while BANNER_END not in log_path.read_text(errors="replace"):
            assert process.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.5)
        shown = len(log_path.read_text(errors="replace"))

        worker = f"http://127.0.0.1:{ports['WORKER_PORT']}"
        messages = [{"role": "user", "content": "What can you help me with?"}]
        usage = []
        for _ in range(2):
            answer = requests.post(worker + "/v1/chat/completions", headers={"X-Session-ID": "try-1"}, timeout=300,
                                   json={"model": "smollm2@general-assistant", "messages": messages,
                                         "max_tokens": 4, "temperature": 0})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            usage.append(body["usage"])
            messages += [{"role": "assistant", "content": body["choices"][0]["message"]["content"]},
                         {"role": "user", "content": "And in one word?"}]
        # Both turns on one engine, which kept the first turn's prompt.
        released = [len(RELEASED.findall((tmp_path / "logs" / f"engine-{ports[name]}.log").read_text()))
                    for name in ("ENGINE_A_PORT", "ENGINE_B_PORT")]
        assert sorted(released) == [0, 2], released
        assert usage[1]["prompt_tokens_details"]["cached_tokens"] >= usage[0]["prompt_tokens"] - 1, usage
    finally:
        status = stop_group(process)  # Ctrl-C: SIGINT to the whole process group, as a terminal sends it
    after = log_path.read_text(errors="replace")[shown:]
    assert status == 0, after
    assert "run-scale: stopping" in after
    for noise in ("failed", "Traceback", "Error", "Killed", "Terminated"):
        assert noise not in after, after
    for name, port in ports.items():  # the script waited for all of them before it ended
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, name


def test_a_port_in_use_stops_it_before_it_starts_anything(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        ports = {name: free_port() for name in PORTS} | {"ROUTER_PORT": taken}
        result = subprocess.run(["bash", str(SCRIPT)], env=script_env(tmp_path, **ports), capture_output=True,
                                text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"run-scale: port {taken} is already in use"
    assert not (tmp_path / "logs").exists()
