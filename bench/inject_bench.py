"""Throughput of POST /v1/inject against a trivial JSON endpoint of the same app (GET /healthz),
measured in one run (not a test).

One gunicorn worker process (`role-injector serve`, the production settings: gthread, 8 threads),
the bundled roles. The inject request fits the cached ~20k-token `manifest` role into a 2,000-token
budget with one user message. A load generator in a separate process keeps N keep-alive connections
busy on loopback for a fixed time per endpoint and records every request's latency.

Prints requests/s and p50/p99 latency of both, and the ratio inject/healthz (target >= 0.7).

Run: .venv/bin/python -m bench.inject_bench [--duration 5] [--connections 8] [--url http://host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
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


def load(url: str, request: bytes, connections: int, warmup: float, duration: float,
         results: multiprocessing.Queue) -> None:
    """The load generator (its own process): N connections in one event loop."""
    address = urlsplit(url)
    latencies: list[float] = []
    failures: list[int] = []

    async def run() -> None:
        start = time.perf_counter() + warmup
        stop = start + duration
        await asyncio.gather(*(one_connection(address.hostname or "127.0.0.1", address.port or 80, request, start,
                                              stop, latencies, failures) for _ in range(connections)))

    asyncio.run(run())
    results.put((latencies, failures))


def measure(url: str, request: bytes, connections: int, warmup: float, duration: float) -> dict[str, float]:
    results: multiprocessing.Queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=load, args=(url, request, connections, warmup, duration, results))
    process.start()
    latencies, failures = results.get(timeout=warmup + duration + 60)
    process.join()
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, statuses {sorted(set(failures))}")
    latencies.sort()

    return {"requests": len(latencies), "rps": len(latencies) / duration, "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000}


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
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=8, help="concurrent keep-alive connections")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    parser.add_argument("--url", help="measure a server that is already running instead of starting one")
    args = parser.parse_args()

    with ExitStack() as stack:
        url = args.url
        if url is None:
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inject-bench-")))
            env = {"PROMETHEUS_MULTIPROC_DIR": str(scratch)}  # run_worker blanks the shell's ROLE_INJECTOR_*
            server = stack.enter_context(run_worker(REPO / "roles", scratch, env=env, workers=args.workers))
            url = server.url
        host = urlsplit(url).netloc
        result = check_inject(url)
        usage = result["usage"]
        print(f"server {url}: {args.workers if args.url is None else '?'} worker process(es), "
              f"{args.connections} keep-alive connections, {args.duration:g} s per endpoint "
              f"after {args.warmup:g} s of warm-up; {os.cpu_count()} CPUs")
        print(f"inject: role manifest ({usage['system_tokens_full']} tokens) fitted to {usage['budget']} "
              f"({usage['system_tokens']} tokens), one user message, response {len(json.dumps(result))} bytes")

        figures = {}
        for name, request in (
            ("GET /healthz", http_request("GET", "/healthz", host)),
            ("POST /v1/inject", http_request("POST", "/v1/inject", host, INJECT_BODY)),
        ):
            figures[name] = measure(url, request, args.connections, args.warmup, args.duration)
            f = figures[name]
            print(f"{name:16} {f['rps']:8.0f} requests/s   p50 {f['p50']:7.2f} ms   p99 {f['p99']:7.2f} ms   "
                  f"({f['requests']} requests)")

    ratio = figures["POST /v1/inject"]["rps"] / figures["GET /healthz"]["rps"]
    print(f"ratio inject/healthz: {ratio:.2f} (target >= {TARGET})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
