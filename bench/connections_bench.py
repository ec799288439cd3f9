"""How one worker process holds many open connections: `GET /healthz` latency while 1,000 connections of
every troublesome kind are open, measured in one run (not a test).

    .venv/bin/python -m bench.connections_bench [--duration 20] [--scale 1.0]

Starts an Ollama stand-in (its own process) and `role-injector serve --workers 1` (timeouts long
enough that nothing is closed during the run), then a load process that opens and holds, at scale 1:

- 200 idle connections (connected, nothing sent),
- 200 slow headers (one byte of a request's headers every 2 s),
- 200 slow bodies (headers sent, then one byte of the body every 2 s),
- 200 model streams through the proxy (`/api/chat`, half on a virtual model; Ollama sends a piece
  every second), read as they come,
- 100 clients that never read a 64 MiB proxied answer,
- 100 streaming clients that leave while Ollama is still silent (`/api/generate`, Ollama would wait
  10 minutes before answering).

While all are held, this process sends `GET /healthz` about 25 times a second, alternately on a
keep-alive connection and on a new one, and prints p50/p99 (target: p99 < 100 ms), then closes the
100 silent streams and prints how soon the stand-in saw each of their upstream connections closed.

Then the same probe while workers count maximal requests (`--no-cpu` skips it), each case on a fresh
server, with the p99 of `/healthz`, what each request got and whether a worker was restarted:

- one worker: `/api/chat` on a virtual model with bodies of blanks (`--blanks-mib`, default 4, 16 and
  64 MiB at once: 84 MiB of counting, 1-2 minutes of CPU);
- one worker: ten `POST /v1/count` of 1 MiB of blanks at once;
- two workers: two `/api/chat` of 3 MiB of blanks at once (both workers busy; new connections probe both).
- one worker: 200 `POST /v1/count` of 8 KiB of blanks at once, the worst of the small bodies that are
  counted on the event loop itself (`cpu_pool.INLINE_BYTES`).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.figures import percentile
from role_injector.server import raise_file_limit
from tests.ollama_standin import run_ollama_standin
from tests.servers import REPO, run_worker

TARGET_P99_MS = 100.0
PROFILE = """\
virtual_models:
  reviewer:
    base: qwen3:8b
    role: code-reviewer
"""
MIX = {"idle": 200, "slow headers": 200, "slow body": 200, "stream": 200, "not reading": 100, "leaves": 100}


FILES = 8192  # descriptors this process and the stand-in's may open (server.raise_file_limit)


# --- the stand-in, in its own process --------------------------------------------------------------


def standin_process(conn: Connection) -> None:
    raise_file_limit(FILES)
    with run_ollama_standin(answer="a long answer, " * 60) as standin:
        standin.set_fault("/api/chat", chunk_delay=1.0, chunks=120)  # a two-minute stream
        standin.set_fault("/api/generate", delay=600)  # silent for ten minutes
        standin.set_fault("/api/ps", status=200, body={"models": []}, length=64 * 1024 * 1024)
        conn.send(standin.url)
        while (command := conn.recv()) != "stop":
            if command == "interrupted":
                conn.send(standin.interrupted)
            elif command == "clear":  # no faults: the CPU cases want answers at once
                standin.clear()
                conn.send("cleared")
            elif command == "received":
                conn.send({path: len(standin.requests_to(path)) for path in ("/api/chat", "/api/generate", "/api/ps")})


# --- the load, in its own process ------------------------------------------------------------------


def request_bytes(method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: worker\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def hold(host: str, port: int, mix: dict[str, int], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    writers: dict[str, list[asyncio.StreamWriter]] = {kind: [] for kind in mix}
    received = {"stream bytes": 0, "streams ended": 0}

    async def connect(small_buffer: bool = False) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        if small_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        return await asyncio.open_connection(sock=sock, limit=4096)

    async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await asyncio.sleep(2.0)

    async def read_stream(reader: asyncio.StreamReader) -> None:
        while piece := await reader.read(65536):
            received["stream bytes"] += len(piece)
        received["streams ended"] += 1

    tasks = []
    for kind, count in mix.items():
        for i in range(count):
            reader, writer = await connect(small_buffer=kind == "not reading")
            writers[kind].append(writer)
            if kind == "slow headers":
                tasks.append(asyncio.create_task(dribble(writer, b"GET /healthz HTTP/1.1\r\nHost: worker\r\n\r\n")))
            elif kind == "slow body":
                writer.write(b"POST /v1/count HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 200\r\n\r\n")
                tasks.append(asyncio.create_task(dribble(writer, b'{"text": "' + b"x" * 186 + b'"}')))
            elif kind == "stream":
                model = "reviewer" if i % 2 else "qwen3:8b"
                writer.write(request_bytes("POST", "/api/chat", {"model": model, "messages": [
                    {"role": "user", "content": "Review: def add(a, b): return a - b"}]}))
                tasks.append(asyncio.create_task(read_stream(reader)))
            elif kind == "not reading":
                writer.write(request_bytes("GET", "/api/ps"))
            elif kind == "leaves":
                writer.write(request_bytes("POST", "/api/generate", {"model": "reviewer", "prompt": "hi"}))
    conn.send("held")
    await loop.run_in_executor(None, conn.recv)  # "leave"
    for writer in writers["leaves"]:
        writer.transport.abort()
    conn.send("left")
    await loop.run_in_executor(None, conn.recv)  # "report"
    conn.send({**received, "streams": mix["stream"]})
    await loop.run_in_executor(None, conn.recv)  # "stop"
    for task in tasks:
        task.cancel()
    for kind_writers in writers.values():
        for writer in kind_writers:
            writer.transport.abort()


def load_process(host: str, port: int, mix: dict[str, int], conn: Connection) -> None:
    raise_file_limit(FILES)
    asyncio.run(hold(host, port, mix, conn))


# --- the probe, here -------------------------------------------------------------------------------


def probe(host: str, port: int, seconds: float) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"keep-alive": [], "new connection": []}
    kept = http.client.HTTPConnection(host, port, timeout=30)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for kind in samples:
            connection = kept if kind == "keep-alive" else http.client.HTTPConnection(host, port, timeout=30)
            started = time.perf_counter()
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            response.read()
            samples[kind].append((time.perf_counter() - started) * 1000)
            assert response.status == 200
            if connection is not kept:
                connection.close()
            time.sleep(0.02)
    kept.close()
    return samples


def rss_mib(pid: int) -> float:
    from tests.servers import proc_status_kib

    return proc_status_kib(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until(condition: Callable[[], bool], limit: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if condition():
            return time.monotonic() - started
        time.sleep(0.01)
    return None


# --- CPU work: maximal requests ----------------------------------------------------------------------

MIB = 1024 * 1024


def blanks_body(mib: float, body: dict[str, Any], place: Callable[[dict[str, Any], str], None]) -> bytes:
    """`body` as JSON of exactly `mib` MiB, its text (put where `place` puts it) all blanks."""
    place(body, "")
    frame = len(json.dumps(body).encode())
    place(body, " " * (int(mib * MIB) - frame))
    return json.dumps(body).encode()


def blanks_chat(mib: float) -> bytes:
    """An /api/chat body of `mib` MiB, its message all blanks, on a virtual model with room for it all."""
    return blanks_body(mib, {"model": "reviewer", "stream": False, "options": {"num_ctx": 10_000_000},
                             "messages": [{"role": "user"}]}, lambda b, text: b["messages"][0].update(content=text))


def blanks_count(mib: float) -> bytes:
    return blanks_body(mib, {"model": "qwen3:8b"}, lambda b, text: b.update(text=text))


def post(host: str, port: int, path: str, body: bytes, outcome: list[tuple[int, float]]) -> None:
    connection = http.client.HTTPConnection(host, port, timeout=1800)
    started = time.monotonic()
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        outcome.append((response.status, time.monotonic() - started))
    except OSError as exc:
        outcome.append((-1, time.monotonic() - started))
        print(f"  {path}: {exc}")
    finally:
        connection.close()


def probe_while(host: str, port: int, busy: list[threading.Thread]) -> list[float]:
    """`GET /healthz` on new connections (so every worker is asked), every 20 ms, while `busy` run."""
    samples = []
    while any(thread.is_alive() for thread in busy):
        connection = http.client.HTTPConnection(host, port, timeout=60)
        started = time.perf_counter()
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status == 200
        connection.close()
        time.sleep(0.02)
    return samples


def outcomes_line(outcome: list[tuple[int, float]]) -> str:
    """Each request's status and time; past a dozen, each status with its count and time span."""
    ordered = sorted(outcome, key=lambda o: o[1])
    if len(ordered) <= 12:
        return ", ".join(f"{status} in {seconds:.1f} s" for status, seconds in ordered)
    times: dict[int, list[float]] = {}
    for status, seconds in ordered:
        times.setdefault(status, []).append(seconds)
    return ", ".join(f"{len(t)} × {status} in {t[0]:.1f}-{t[-1]:.1f} s" for status, t in sorted(times.items()))


def cpu_case(title: str, requests: list[tuple[str, bytes]], workers: int, ollama_url: str, scratch: Path) -> float:
    """Start a server, send `requests` at once, probe meanwhile; print the figures; return the p99."""
    from tests.servers import run_worker

    env = {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_MODELS": str(scratch / "models.yaml"),
           "ROLE_INJECTOR_READ_TIMEOUT": "900", "ROLE_INJECTOR_WRITE_TIMEOUT": "900",
           "ROLE_INJECTOR_UPSTREAM_TIMEOUT": "900"}
    with run_worker(REPO / "roles", scratch, env=env, workers=workers) as worker:
        host, port = worker.url.rsplit("//", 1)[1].rsplit(":", 1)
        # Every worker booted first (the server answers as soon as one has): else a late one looks like a restart.
        wait_until(lambda: len(worker.worker_pids()) == workers, 30)
        pids = sorted(worker.worker_pids())
        pause = threading.Thread(target=time.sleep, args=(2.0,))
        pause.start()
        idle = probe_while(host, int(port), [pause])
        outcome: list[tuple[int, float]] = []
        senders = [threading.Thread(target=post, args=(host, int(port), path, body, outcome))
                   for path, body in requests]
        started = time.monotonic()
        for sender in senders:
            sender.start()
        samples = probe_while(host, int(port), senders)
        took = time.monotonic() - started
        restarted = sorted(worker.worker_pids()) != pids or "WORKER TIMEOUT" in worker.log()
    p99 = percentile(samples, 99)
    print(f"{title}: {len(samples)} probes over {took:.1f} s: p50 {percentile(samples, 50):.1f} ms, "
          f"p99 {p99:.1f} ms, max {max(samples):.1f} ms (idle: p99 {percentile(idle, 99):.1f} ms)")
    print(f"  requests: {outcomes_line(outcome)}; worker restarted: {'YES' if restarted else 'no'}")
    return p99 if not restarted else float("inf")


def cpu_phase(blanks_mib: list[float], ollama_url: str) -> float:
    with tempfile.TemporaryDirectory(prefix="connections-bench-cpu-") as tmp:
        scratch = Path(tmp)
        (scratch / "models.yaml").write_text(PROFILE)
        print(f"\nGET /healthz on new connections while workers count maximal requests "
              f"(machine load average {os.getloadavg()[0]:.1f}):")
        sizes = ", ".join(f"{m:g}" for m in blanks_mib)
        worst = cpu_case(f"one worker, /api/chat on a virtual model, bodies of {sizes} MiB of blanks at once",
                         [("/api/chat", blanks_chat(m)) for m in blanks_mib], 1, ollama_url, scratch)
        worst = max(worst, cpu_case("one worker, ten POST /v1/count of 1 MiB of blanks at once",
                                    [("/v1/count", blanks_count(1))] * 10, 1, ollama_url, scratch))
        worst = max(worst, cpu_case("two workers, two /api/chat of 3 MiB of blanks at once",
                                    [("/api/chat", blanks_chat(3))] * 2, 2, ollama_url, scratch))
        # Small bodies are counted on the event loop itself (cpu_pool.INLINE_BYTES): the worst of them at once.
        worst = max(worst, cpu_case("one worker, 200 POST /v1/count of 8 KiB of blanks at once (counted on the loop)",
                                    [("/v1/count", blanks_count(8 / 1024))] * 200, 1, ollama_url, scratch))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of probing under load")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every kind of connection")
    parser.add_argument("--no-cpu", action="store_true", help="skip the maximal requests")
    parser.add_argument("--blanks-mib", default="4,16,64", help="sizes of the /api/chat bodies of blanks, in MiB")
    args = parser.parse_args()
    mix = {kind: max(1, round(count * args.scale)) for kind, count in MIX.items()}
    raise_file_limit(FILES)
    context = multiprocessing.get_context("spawn")
    standin_conn, child = context.Pipe()
    standin = context.Process(target=standin_process, args=(child,), daemon=True)
    standin.start()
    ollama_url = standin_conn.recv()

    def ask(command: str) -> Any:
        standin_conn.send(command)
        return standin_conn.recv()

    with tempfile.TemporaryDirectory(prefix="connections-bench-") as tmp:
        profile = Path(tmp) / "models.yaml"
        profile.write_text(PROFILE)
        env = {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_MODELS": str(profile),
               "ROLE_INJECTOR_READ_TIMEOUT": "900", "ROLE_INJECTOR_WRITE_TIMEOUT": "900",
               "ROLE_INJECTOR_UPSTREAM_TIMEOUT": "900",
               "ROLE_INJECTOR_ALLOWED_HOSTS": "worker,w"}  # the Host names of its raw requests
        with run_worker(REPO / "roles", Path(tmp), env=env, workers=1) as worker:
            host, port = worker.url.rsplit("//", 1)[1].rsplit(":", 1)
            (pid,) = worker.worker_pids()
            idle = probe(host, int(port), 5.0)
            rss_idle = rss_mib(pid)

            load_conn, load_child = context.Pipe()
            load = context.Process(target=load_process, args=(host, int(port), mix, load_child), daemon=True)
            load.start()
            opening = time.monotonic()
            assert load_conn.recv() == "held"
            wanted = {"/api/chat": mix["stream"], "/api/generate": mix["leaves"], "/api/ps": mix["not reading"]}
            arrived = wait_until(lambda: ask("received") == wanted, 120)
            opened = time.monotonic() - opening
            cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
            loaded = probe(host, int(port), args.duration)
            busy = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
            rss_loaded = rss_mib(pid)

            before = ask("interrupted")
            load_conn.send("leave")
            assert load_conn.recv() == "left"
            freed = wait_until(lambda: ask("interrupted") - before >= mix["leaves"], 60)
            load_conn.send("report")
            streams = load_conn.recv()
            load_conn.send("stop")
            load.join(timeout=30)

    total = sum(mix.values())
    print(f"One gunicorn worker process (gevent), {os.cpu_count()} CPUs, {args.duration:g} s of probing under load\n")
    print(f"connections held: {total} ({', '.join(f'{n} {kind}' for kind, n in mix.items())})")
    print(f"all opened and their requests at the stand-in after {opened:.1f} s"
          + ("" if arrived is not None else " (NOT all arrived)"))
    print(f"worker memory (RSS): {rss_idle:.0f} MiB idle, {rss_loaded:.0f} MiB holding them; worker CPU while"
          f" probing under load: {busy:.0%} of one core; machine load average {os.getloadavg()[0]:.1f}\n")
    header = f"{'GET /healthz':<44} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'requests':>9}"
    print(header)
    worst = 0.0
    for title, samples in (("idle server", idle), (f"holding {total} connections", loaded)):
        for kind, values in samples.items():
            p99 = percentile(values, 99)
            if samples is loaded:
                worst = max(worst, p99)
            print(f"{title + ', ' + kind:<44} {percentile(values, 50):>8.2f} {p99:>8.2f} {max(values):>8.2f}"
                  f" {len(values):>9}")
    print(f"\nmodel streams: {streams['stream bytes']:,} bytes received over {streams['streams']} streams,"
          f" {streams['streams ended']} ended early")
    if freed is None:
        print(f"{mix['leaves']} clients left while Ollama was silent: NOT all their upstream connections were closed")
    else:
        print(f"{mix['leaves']} clients left while Ollama was silent: the stand-in saw all their connections"
              f" closed within {freed * 1000:.0f} ms")
    verdict = "within" if worst < TARGET_P99_MS else "ABOVE"
    print(f"\nworst /healthz p99 under load: {worst:.2f} ms — {verdict} the {TARGET_P99_MS:g} ms target")
    cpu_worst = None
    if not args.no_cpu:
        ask("clear")
        cpu_worst = cpu_phase([float(m) for m in args.blanks_mib.split(",")], ollama_url)
    standin_conn.send("stop")
    standin.join(timeout=10)
    if cpu_worst is not None:
        verdict = "within" if cpu_worst < TARGET_P99_MS else "ABOVE"
        print(f"worst /healthz p99 while counting maximal requests: {cpu_worst:.2f} ms — {verdict} the "
              f"{TARGET_P99_MS:g} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
