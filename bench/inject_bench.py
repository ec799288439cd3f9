"""Throughput of POST /v1/inject against a trivial JSON endpoint of the same app (GET /healthz),
measured in one run (not a test).

One gunicorn worker process (`role-injector serve`, the production settings: one gevent worker),
the bundled roles. The inject request fits the cached ~20k-token `manifest` role into a 2,000-token
budget with one user message. A load generator in a separate process keeps N keep-alive connections
busy on loopback for a fixed time per endpoint and records every request's latency; the two endpoints
alternate for several rounds (so a change in the machine's load hits both alike) and the worker's CPU
time per request is read from /proc (which load on other cores does not change).

Prints requests/s, p50/p99 latency and worker CPU per request of both, and the ratio inject/healthz
(target >= 0.7) by throughput and by CPU.

Run: .venv/bin/python -m bench.inject_bench [--rounds 5] [--duration 2] [--connections 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from bench.figures import percentile
from tests.servers import REPO, run_worker

TARGET = 0.7
INJECT_BODY = {"role": "manifest", "prompt": "Give me the pre-deploy checklist for a database migration.",
               "budget": 2000}


def http_request(method: str, path: str, host: str, body: dict | None = None) -> bytes:
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


async def one_connection(host: str, port: int, request: bytes, start: float, stop: float,
                         latencies: list[float], failures: list[int]) -> None:
    """Sends `request` back to back on one keep-alive connection; records the requests that start
    at or after `start` and finish before `stop` (the ones before `start` are the warm-up)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            began = time.perf_counter()
            if began >= stop:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.index(b"content-length:") + 15
            await reader.readexactly(int(lower[at : lower.index(b"\r\n", at)]))
            ended = time.perf_counter()
            if began >= start and ended <= stop:
                latencies.append(ended - began)
                if status != 200:
                    failures.append(status)
            if b"connection: close" in lower:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def load(url: str, request: bytes, connections: int, start: float, stop: float,
         results: multiprocessing.Queue) -> None:
    """The load generator (its own process): N connections in one event loop, measuring from `start`
    to `stop` (wall-clock times; what runs before `start` is the warm-up)."""
    address = urlsplit(url)
    latencies: list[float] = []
    failures: list[int] = []

    async def run() -> None:
        offset = time.perf_counter() - time.time()
        await asyncio.gather(*(one_connection(address.hostname or "127.0.0.1", address.port or 80, request,
                                              start + offset, stop + offset, latencies, failures)
                               for _ in range(connections)))

    asyncio.run(run())
    results.put((latencies, failures))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, request: bytes, connections: int, warmup: float, duration: float,
            pids: list[int]) -> dict[str, float]:
    """Requests/s and latency of one window, and the server's CPU per request in it."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    start = time.time() + 0.3 + warmup  # the load process starts first
    stop = start + duration
    process = multiprocessing.Process(target=load, args=(url, request, connections, start, stop, results))
    process.start()
    time.sleep(max(0.0, start - time.time()))
    cpu_before = sum(map(cpu_seconds, pids))
    time.sleep(max(0.0, stop - time.time()))
    cpu = sum(map(cpu_seconds, pids)) - cpu_before
    latencies, failures = results.get(timeout=warmup + duration + 60)
    process.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, statuses {sorted(set(failures))}")
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / duration, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000, "cpu_ms": cpu * 1000 / max(1, len(latencies))}


def check_inject(url: str) -> dict:
    """One inject before measuring: the request really does what the benchmark claims."""
    import requests

    reply = requests.post(f"{url}/v1/inject", json=INJECT_BODY, timeout=30)
    reply.raise_for_status()
    result = reply.json()
    usage = result["usage"]
    assert usage["budget"] == 2000 and usage["system_tokens"] <= 2000 and result["trim"]["trimmed"], usage
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=2.0, help="measured seconds per endpoint and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of one window per endpoint, alternating")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each window")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    args = parser.parse_args()

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inject-bench-")))
        env = {"PROMETHEUS_MULTIPROC_DIR": str(scratch)}  # run_worker blanks the shell's ROLE_INJECTOR_*
        server = stack.enter_context(run_worker(REPO / "roles", scratch, env=env, workers=args.workers))
        url = server.url
        host = urlsplit(url).netloc
        result = check_inject(url)
        usage = result["usage"]
        print(f"server {url}: {args.workers} gevent worker process(es), {args.connections} keep-alive "
              f"connections, {args.rounds} rounds of {args.duration:g} s per endpoint, alternating, each after "
              f"{args.warmup:g} s of warm-up; {os.cpu_count()} CPUs")
        print(f"inject: role manifest ({usage['system_tokens_full']} tokens) fitted to {usage['budget']} "
              f"({usage['system_tokens']} tokens), one user message, response {len(json.dumps(result))} bytes")

        requests = {"GET /healthz": http_request("GET", "/healthz", host),
                    "POST /v1/inject": http_request("POST", "/v1/inject", host, INJECT_BODY)}
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in requests}
        for _ in range(args.rounds):
            for name, request in requests.items():
                rounds[name].append(measure(url, request, args.connections, args.warmup, args.duration,
                                            server.worker_pids()))

    for name, figures in rounds.items():
        print(f"{name:16} {statistics.median(f['rps'] for f in figures):8.0f} requests/s   "
              f"p50 {statistics.median(f['p50'] for f in figures):6.2f} ms   "
              f"p99 {statistics.median(f['p99'] for f in figures):6.2f} ms   "
              f"worker CPU {statistics.median(f['cpu_ms'] for f in figures):.3f} ms per request   (medians of "
              f"{args.rounds} rounds, {sum(f['requests'] for f in figures)} requests)")
    # Load on the machine changes between windows: each round's two windows are next to each other.
    ratios = [i["rps"] / h["rps"] for h, i in zip(rounds["GET /healthz"], rounds["POST /v1/inject"], strict=True)]
    cpu_ratio = (statistics.median(f["cpu_ms"] for f in rounds["GET /healthz"])
                 / statistics.median(f["cpu_ms"] for f in rounds["POST /v1/inject"]))
    ratio = statistics.median(ratios)
    print(f"ratio inject/healthz: {ratio:.2f} requests/s (median of rounds {min(ratios):.2f}-{max(ratios):.2f}); "
          f"{cpu_ratio:.2f} by worker CPU per request (target >= {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
