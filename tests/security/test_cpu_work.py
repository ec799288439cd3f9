"""One request cannot freeze a worker (issue 22, item 3): counting ran on the gevent event loop, so one
4 MiB body of blanks on a virtual model held every connection of its worker for seconds, 60 MiB past
gunicorn's worker timeout (the worker was killed), and a body over the limit was skipped in 1 KiB reads
that never let the loop go. The CPU work now runs in a pool of OS threads, a worker keeps answering
while it counts, and admission bounds the work in flight: beyond it, a clear 503 with Retry-After in
the shape of each surface.

What is asserted is what the loop does meanwhile (answers arrive while the heavy request is still in
flight), not how fast: no timing threshold.
"""

from __future__ import annotations

import http.client
import json
import random
import string
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ollama_standin import OllamaStandin
from tests.security.conftest import address
from tests.servers import WorkerProcess, run_worker_at

MIB = 1024 * 1024
# A window for all of it: the conversation is counted whole, and the request goes through.
PROFILE = "virtual_models:\n  reviewer:\n    base: qwen3:8b\n    role: plain\n    params: {num_ctx: 10000000}\n"


def book() -> str:
    """A relevance role whose index takes seconds to build: 3 MB of six-letter words, all different."""
    chosen = random.Random(5)
    words = [" ".join("".join(chosen.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(4_000))
             for _ in range(100)]
    return "---\nselection: relevance\n---\nAnswer from the book.\n\n" + "".join(
        f"## Chapter {i}\n{text}\n\n" for i, text in enumerate(words[:60]))


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cpu-work")
    (root / "roles").mkdir()
    (root / "roles" / "book.md").write_text(book(), encoding="utf-8")
    (root / "roles" / "plain.md").write_text("You review code.\n\n## Rules\nBe brief.\n", encoding="utf-8")
    (root / "models.yaml").write_text(PROFILE, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def worker(place: Path, standin: OllamaStandin) -> Iterator[WorkerProcess]:
    with run_worker_at(place, standin.url, ROLE_INJECTOR_MAX_BODY_BYTES=str(4 * MIB),
                       ROLE_INJECTOR_READ_TIMEOUT="600", ROLE_INJECTOR_UPSTREAM_TIMEOUT="600") as server:
        yield server


def send(server: WorkerProcess, method: str, path: str, body: bytes | None = None,
         sent: threading.Event | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; `sent` is set once the whole body is out (what follows is the server's work)."""
    connection = http.client.HTTPConnection(*address(server), timeout=600)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        if sent is not None:
            sent.set()
        response = connection.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else None
    finally:
        connection.close()


def blanks(mib: float) -> str:
    return " " * int(mib * MIB)


HEAVY: dict[str, Callable[[], tuple[str, bytes]]] = {
    "4 MiB of blanks on a virtual model (Ollama proxy)": lambda: ("/api/chat", json.dumps({
        "model": "reviewer", "stream": False, "options": {"num_ctx": 10_000_000},
        "messages": [{"role": "user", "content": blanks(4)}]}).encode()),
    "4 MiB of blanks on a virtual model (OpenAI route)": lambda: ("/v1/chat/completions", json.dumps({
        "model": "reviewer", "messages": [{"role": "user", "content": blanks(4)}]}).encode()),
    "3 MiB of blanks to count (REST)": lambda: ("/v1/count", json.dumps({
        "text": blanks(3), "model": "qwen3:8b"}).encode()),
    "a book's relevance index, built on its first question (REST)": lambda: ("/v1/inject", json.dumps({
        "role": "book", "prompt": "Which chapter says more?", "budget": 1_000}).encode()),
}


@pytest.mark.parametrize("heavy", HEAVY)
def test_a_worker_answers_others_while_it_counts(worker: WorkerProcess, heavy: str) -> None:
    path, body = HEAVY[heavy]()
    outcome: list[int] = []
    sent = threading.Event()
    sender = threading.Thread(target=lambda: outcome.append(send(worker, "POST", path, body, sent)[0]))
    pids = worker.worker_pids()
    sender.start()
    sent.wait()  # the body is out: the worker reads it (briefly), then counts (the most of the time)
    start = time.monotonic()
    answers = []
    while sender.is_alive():
        status, _, health = send(worker, "GET", "/healthz")
        assert status == 200 and health["status"] == "ok"
        answers.append(time.monotonic())
    done = time.monotonic()
    assert outcome == [200]
    # Answers while it counted: in the middle of its time, not only before and after the counting.
    middle = (start + (done - start) * 0.3, start + (done - start) * 0.9)
    assert sum(middle[0] <= when <= middle[1] for when in answers) >= 3, "the worker did not answer while it counted"
    assert worker.worker_pids() == pids and "WORKER TIMEOUT" not in worker.log()


def test_a_body_over_the_limit_is_skipped_while_the_worker_serves_others(worker: WorkerProcess) -> None:
    """A 413 is answered before the body is read; what the client still sends is skipped in pieces."""
    size = 160 * MIB
    outcome: list[int] = []

    def upload() -> None:
        connection = http.client.HTTPConnection(*address(worker), timeout=600)
        try:
            connection.putrequest("POST", "/api/chat")
            connection.putheader("Content-Type", "application/json")
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            piece = b" " * MIB
            for _ in range(size // MIB):
                connection.send(piece)
            outcome.append(connection.getresponse().status)
        finally:
            connection.close()

    sender = threading.Thread(target=upload)
    sender.start()
    answered_meanwhile = 0
    while sender.is_alive():
        assert send(worker, "GET", "/healthz")[0] == 200
        answered_meanwhile += sender.is_alive()
    assert outcome == [413]
    assert answered_meanwhile >= 3


# --- admission ------------------------------------------------------------------------------------

SHAPES: dict[str, tuple[str, Callable[[bytes], bytes], Callable[[Any], str]]] = {
    "REST": ("/v1/count", lambda text: json.dumps({"text": text.decode(), "model": "qwen3:8b"}).encode(),
             lambda body: body["error"]["code"]),
    "Ollama": ("/api/chat", lambda text: json.dumps({"model": "reviewer", "stream": False, "options": {
        "num_ctx": 10_000_000}, "messages": [{"role": "user", "content": text.decode()}]}).encode(),
               lambda body: "overloaded" if "ROLE_INJECTOR_CPU_QUEUE_BYTES" in body["error"] else body["error"]),
    "OpenAI": ("/v1/chat/completions", lambda text: json.dumps({"model": "reviewer", "messages": [
        {"role": "user", "content": text.decode()}]}).encode(), lambda body: body["error"]["code"]),
}


def test_work_beyond_the_queue_is_refused_at_once_in_each_shape_and_taken_again_after(
    place: Path, standin: OllamaStandin
) -> None:
    with run_worker_at(place, standin.url, ROLE_INJECTOR_CPU_QUEUE_BYTES=str(4 * MIB),
                       ROLE_INJECTOR_MAX_BODY_BYTES=str(4 * MIB), ROLE_INJECTOR_READ_TIMEOUT="600",
                       ROLE_INJECTOR_UPSTREAM_TIMEOUT="600") as server:
        heavy_path, heavy_body = "/api/chat", SHAPES["Ollama"][1](blanks(3).encode())  # 3 of the 4 MiB
        outcome: list[int] = []
        sender = threading.Thread(target=lambda: outcome.append(send(server, "POST", heavy_path, heavy_body)[0]))
        sender.start()
        time.sleep(1.0)  # its 3 MiB are sent and read in milliseconds; counting them takes seconds
        refused: dict[str, tuple[int, str | None, str]] = {}
        while sender.is_alive() and len(refused) < len(SHAPES):
            for shape, (path, make, code) in SHAPES.items():
                status, headers, body = send(server, "POST", path, make(blanks(1).encode()))
                if status == 503 and sender.is_alive():
                    refused[shape] = (status, headers.get("retry-after"), code(body))
            small = send(server, "POST", "/v1/count", json.dumps({"text": "hello", "model": "qwen3:8b"}).encode())
            assert small[0] == 200  # small work is still taken
        sender.join()
        assert outcome == [200]
        assert refused == {shape: (503, "1", "overloaded") for shape in SHAPES}
        for shape, (path, make, _) in SHAPES.items():  # nothing in flight: taken again
            assert send(server, "POST", path, make(blanks(1).encode()))[0] == 200, shape
        assert "Traceback" not in server.log()
