"""Latency the Ollama-compatible proxy and the OpenAI-compatible route add: the same requests straight
to an Ollama stand-in and through a real worker (gunicorn) in front of it, on loopback.

    .venv/bin/python -m bench.proxy_bench [--requests N] [--stream-requests N]

Starts the stand-in (in its own process, so it does not share the client's interpreter) and one
gunicorn worker with the bundled roles, runs a bounded number of requests, prints a table and stops.
Both sides use the same client code with a keep-alive session; the scenarios are interleaved so
that load from elsewhere on the machine hits them alike. Target: the added p50 ≤ 2 ms.

/v1/chat/completions always streams from Ollama (see role_injector.openai_compat), so its
non-streaming rows are measured against the same /api/chat request streamed and read whole; its
streaming rows, like the proxy's, against the direct stream's first chunk.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests

from bench.figures import percentile
from tests.ollama_standin import run_ollama_standin
from tests.servers import REPO, run_worker

TARGET_MS = 2.0
DIRECT_STREAMED = "direct, streamed and read whole"
PROFILE = """\
virtual_models:
  reviewer:            # a small role (~900 tokens), kept whole
    base: qwen3:8b
    role: code-reviewer
  keel:                # a 22k-token manifest, fitted to its budget capped by the context policy
    base: qwen3:8b
    role: manifest
"""
QUESTION = [{"role": "user", "content": "Review this: def add(a, b): return a - b"}]


def standin_process(conn: Connection) -> None:
    with run_ollama_standin(answer="a short answer, in a few stream chunks") as standin:
        conn.send(standin.url)
        conn.recv()  # anything: stop


def timed_post(session: requests.Session, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    response = session.post(url, json=body, timeout=30)
    response.content  # noqa: B018 - read the whole answer
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def timed_first_chunk(session: requests.Session, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    with session.post(url, json=body, timeout=30, stream=True) as response:
        response.raise_for_status()
        chunks = response.iter_content(chunk_size=None)
        next(chunks)
        elapsed = time.perf_counter() - started
        for _ in chunks:  # read the rest so the connection is kept alive
            pass
    return elapsed


def timed_get(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    session.get(url, timeout=30).raise_for_status()
    return time.perf_counter() - started


def run(scenarios: dict[str, Callable[[], float]], count: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for measure in scenarios.values():
            measure()
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    names = list(scenarios)
    for i in range(count):
        for name in names[i % len(names):] + names[: i % len(names)]:  # rotate the order
            samples[name].append(scenarios[name]() * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="non-streaming requests per scenario")
    parser.add_argument("--stream-requests", type=int, default=200, help="streaming requests per scenario")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    standin = context.Process(target=standin_process, args=(child,), daemon=True)
    standin.start()
    ollama_url = parent.recv()
    with tempfile.TemporaryDirectory(prefix="proxy-bench-") as tmp:
        profile = Path(tmp) / "models.yaml"
        profile.write_text(PROFILE)
        env = {"ROLE_INJECTOR_OLLAMA_URL": ollama_url, "ROLE_INJECTOR_MODELS": str(profile)}
        with run_worker(REPO / "roles", Path(tmp), env=env, workers=1) as worker:
            direct, proxied = requests.Session(), requests.Session()

            def chat(session: requests.Session, base: str, model: str, stream: bool,
                     path: str = "/api/chat", read_whole: bool = False) -> Callable[[], float]:
                body = {"model": model, "messages": QUESTION, "stream": stream}
                measure = timed_first_chunk if stream and not read_whole else timed_post
                return lambda: measure(session, base + path, body)

            def openai(model: str, stream: bool) -> Callable[[], float]:
                return chat(proxied, worker.url, model, stream, "/v1/chat/completions")

            plain = run({
                "direct": chat(direct, ollama_url, "qwen3:8b", False),
                "proxy, plain model": chat(proxied, worker.url, "qwen3:8b", False),
                "proxy, virtual (900-token role)": chat(proxied, worker.url, "reviewer", False),
                "proxy, virtual (22k-token role, fitted)": chat(proxied, worker.url, "keel", False),
                DIRECT_STREAMED: chat(direct, ollama_url, "qwen3:8b", True, read_whole=True),
                "openai, plain model": openai("qwen3:8b", False),
                "openai, virtual (900-token role)": openai("reviewer", False),
                "openai, virtual (22k-token role, fitted)": openai("keel", False),
            }, args.requests, warmup=30)
            # The floor: one request through gunicorn and Flask that goes nowhere further.
            floor = run({"worker /healthz": lambda: timed_get(proxied, worker.url + "/healthz")},
                        args.requests, warmup=30)["worker /healthz"]
            streamed = run({
                "direct": chat(direct, ollama_url, "qwen3:8b", True),
                "proxy, plain model": chat(proxied, worker.url, "qwen3:8b", True),
                "proxy, virtual (900-token role)": chat(proxied, worker.url, "reviewer", True),
                "openai, plain model": openai("qwen3:8b", True),
                "openai, virtual (900-token role)": openai("reviewer", True),
            }, args.stream_requests, warmup=30)
    parent.send("stop")
    standin.join(timeout=10)

    print(f"Latency added on loopback ({args.requests} non-streaming / {args.stream_requests} streaming"
          " requests per scenario; proxy = /api/chat, openai = /v1/chat/completions; one gunicorn worker)\n")
    header = f"{'scenario':<44} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'added p99':>10}"
    verdicts = []
    for title, samples in (("non-streaming, whole answer", plain), ("streaming, time to first chunk", streamed)):
        print(title)
        print(header)
        for name, values in samples.items():
            baseline = samples[DIRECT_STREAMED if name.startswith("openai") and DIRECT_STREAMED in samples
                               else "direct"]
            p50, p99 = percentile(values, 50), percentile(values, 99)
            base50, base99 = percentile(baseline, 50), percentile(baseline, 99)
            added = "" if name.startswith("direct") else f"{p50 - base50:>+10.2f} {p99 - base99:>+10.2f}"
            print(f"{name:<44} {p50:>8.2f} {p99:>8.2f} {added}")
            if not name.startswith("direct"):
                verdicts.append((f"{title}: {name}", p50 - base50))
        print()
    print(f"for scale: a request to the worker that goes no further (/healthz) takes p50 {percentile(floor, 50):.2f} ms"
          f" (p99 {percentile(floor, 99):.2f} ms) on this machine\n")
    worst = max(added for _, added in verdicts)
    for name, added in verdicts:
        verdict = "ok  " if added <= TARGET_MS else "OVER"
        print(f"added p50 {added:5.2f} ms  {verdict} (target ≤ {TARGET_MS:g} ms)  {name}")
    within = "within" if worst <= TARGET_MS else "above"
    print(f"\nworst added p50: {worst:.2f} ms — {within} the {TARGET_MS:g} ms target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
