"""The worker in front of a real engine: llama.cpp's llama-server with SmolLM2-135M (tests/engine.py), in
one run.

(a) A long conversation, three ways: through the worker's OpenAI route under `keep_role` and under
    `shrink_role`, and a client that sends the whole role and history straight to the engine. Per turn,
    from the engine's own figures: time to the first token (streamed), tokens evaluated (prompt minus the
    `cached_tokens` it reused) against the tokens the turn added, and where each way stops.
(b) The latency the worker adds: the same request straight to the engine and through the worker, a plain
    model and a virtual model (the body the worker sends, made by the engine module itself), the answer
    read whole and its first chunk. Target: added p50 ≤ 2 ms.

    .venv/bin/python -m bench.engine_bench [--context 4096] [--turns 60] [--requests 60]

The engine has `--context` tokens (one slot); the worker's profile keeps 512 of them for the answer.
Answers are capped at a few tokens: the figures are about prompts, which is where a role costs.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.figures import percentile
from role_injector.engines.kinds import EngineKind
from role_injector.engines.openai_server import OpenAIServerEngine
from role_injector.engines.transport import Transport
from role_injector.engines.url import EngineUrl
from role_injector.fitting import FitCache
from role_injector.injection import VirtualRequest
from role_injector.openai_compat import parse_chat_request
from role_injector.profiles import load_profiles
from role_injector.store import RoleStore
from tests.engine import run_llama_server
from tests.servers import REPO, run_worker

TARGET_MS = 2.0
TARGET_RATIO = 2.0
ROLE = "general-assistant"  # ~1,100 tokens in SmolLM2's vocabulary, kept whole
PROFILE = """\
models:
  - {match: "smollm2*", reserve_output: 512}
virtual_models:
  helper: {base: smollm2, role: general-assistant, params: {temperature: 0}}
"""
WORDS = ("the a of to and in on for with before after because while when which that it is was kitchen "
         "recipe oven pan salt butter flour sugar eggs milk onion garlic pepper bake roast boil fry stir "
         "minutes heat cold plate bowl knife spoon cup dinner lunch guests tonight quick simple")
VOCABULARY = WORDS.split()
QUESTION = [{"role": "user", "content": "What can I cook with eggs, onions and cheese?"}]


@dataclass
class Way:
    name: str
    first_token_ms: list[float] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)  # per turn: prompt tokens the engine evaluated
    new: list[int] = field(default_factory=list)  # per turn: what the turn added
    dropped: int = 0
    stopped: str = ""

    @property
    def ratio(self) -> float:
        """Evaluated per new token over the turns after the first."""
        return sum(self.evaluated[1:]) / max(1, sum(self.new[1:]))


def post(session: requests.Session, url: str, body: dict[str, Any], headers: dict[str, str] | None = None,
         stream: bool = True) -> requests.Response:
    """A POST, sent once more if it meets a connection llama-server dropped after its last streamed answer
    (it closes them without saying so): what any client straight to the engine has to do."""
    try:
        return session.post(url, json=body, headers=headers, stream=stream, timeout=600)
    except requests.ConnectionError:
        return session.post(url, json=body, headers=headers, stream=stream, timeout=600)


def stream(session: requests.Session, url: str, body: dict[str, Any],
           headers: dict[str, str] | None = None) -> tuple[float, str, dict[str, Any], requests.Response]:
    """A streamed chat request: ms to the first content, the text (or the error's message), the usage
    (include_usage), the response."""
    started = time.perf_counter()
    first = 0.0
    text = []
    usage: dict[str, Any] = {}
    with post(session, url, {**body, "stream": True, "stream_options": {"include_usage": True}},
              headers) as response:
        if response.status_code != 200:
            error = response.json().get("error")
            return 0.0, str(error.get("message") if isinstance(error, dict) else error), {}, response
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("choices") and event["choices"][0]["delta"].get("content") is not None and not first:
                first = (time.perf_counter() - started) * 1000
            text += [c["delta"].get("content") or "" for c in event.get("choices", [])]
            usage = event.get("usage") or usage
    return first, "".join(text), usage, response


def converse(way: Way, url: str, tokenize: Callable[[str], int], turns: int, system: str | None,
             policy: str | None, model: str) -> Way:
    rng = random.Random(11)
    session = requests.Session()
    messages: list[dict[str, str]] = []
    for turn in range(turns):
        question = " ".join(rng.choice(VOCABULARY) for _ in range(40)) + "?"
        messages.append({"role": "user", "content": question})
        sent = ([{"role": "system", "content": system}] if system else []) + messages
        headers = {"X-Role-Injector-Context-Policy": policy} if policy else None
        first, text, usage, response = stream(session, url + "/v1/chat/completions",
                                              {"model": model, "messages": sent, "max_tokens": 8,
                                               "temperature": 0}, headers)
        if response.status_code != 200:
            way.stopped = f"turn {turn + 1}: {response.status_code} {text[:100]}"
            break
        way.dropped = int(response.headers.get("X-Role-Injector-Dropped-Messages", 0))
        way.first_token_ms.append(first)
        way.evaluated.append(usage["prompt_tokens"] - usage.get("prompt_tokens_details", {}).get("cached_tokens", 0))
        previous = messages[-2]["content"] if turn else ""
        added = f"{previous}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
        way.new.append(tokenize(added) if turn else usage["prompt_tokens"])
        messages.append({"role": "assistant", "content": text})
    return way


def timed(session: requests.Session, url: str, body: dict[str, Any], first_token: bool) -> float:
    """ms to the whole answer, or to the first event with text (llama.cpp sends an event with the role
    alone before it; the worker sends the role with the first text)."""
    started = time.perf_counter()
    elapsed = 0.0
    with post(session, url, body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if first_token and not elapsed and line.startswith(b"data: {") and \
                    any(choice["delta"].get("content") for choice in json.loads(line[6:]).get("choices", [])):
                elapsed = time.perf_counter() - started
    return (elapsed if first_token else time.perf_counter() - started) * 1000


def worker_body(engine_url: str, roles: Path, profile: Path) -> dict[str, Any]:
    """The body the worker sends the engine for QUESTION on `helper`, made by the engine module itself."""
    engine = OpenAIServerEngine("default", EngineKind.LLAMA_CPP,
                                Transport(EngineUrl.parse(engine_url), "llama.cpp", timeout=600,
                                          max_json_bytes=16 << 20))
    profiles = load_profiles(profile)
    cache = FitCache()
    asked = parse_chat_request({"model": "helper", "messages": QUESTION, "max_tokens": 1})
    virtual = VirtualRequest(profiles.virtual_models["helper"], RoleStore(str(roles)).current(), profiles, cache)
    body: dict[str, Any] = json.loads(engine.chat_call(asked, virtual, profiles, cache).body)
    return body


def added_latency(engine_url: str, worker_url: str, with_role: dict[str, Any],
                  count: int) -> dict[str, dict[str, list[float]]]:
    """Interleaved samples, rotating the order so that load from elsewhere hits each alike."""
    plain = {"model": "smollm2", "messages": QUESTION, "max_tokens": 1, "temperature": 0}
    direct, through = requests.Session(), requests.Session()
    upstream = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    scenarios: dict[str, dict[str, Callable[[], float]]] = {}
    for first_token in (False, True):
        def client(body: dict[str, Any], first: bool = first_token) -> dict[str, Any]:
            return {**body, "stream": first}

        scenarios["streamed, first text" if first_token else "whole answer"] = {
            "direct, plain": lambda f=first_token: timed(direct, engine_url + "/v1/chat/completions", upstream, f),
            "worker, plain": lambda f=first_token: timed(through, worker_url + "/v1/chat/completions",
                                                         client(plain, f), f),
            "direct, the worker's body for helper": lambda f=first_token: timed(
                direct, engine_url + "/v1/chat/completions", with_role, f),
            "worker, virtual model helper": lambda f=first_token: timed(
                through, worker_url + "/v1/chat/completions",
                client({"model": "helper", "messages": QUESTION, "max_tokens": 1}, f), f),
        }
    results: dict[str, dict[str, list[float]]] = {}
    for kind, measures in scenarios.items():
        for measure in measures.values():  # warm: the engine's cache holds each prompt, the worker's counts
            for _ in range(3):
                measure()
        samples: dict[str, list[float]] = {name: [] for name in measures}
        names = list(measures)
        for i in range(count):
            for name in names[i % len(names):] + names[: i % len(names)]:
                samples[name].append(measures[name]())
        results[kind] = samples
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096, help="the engine's context (-c)")
    parser.add_argument("--turns", type=int, default=60, help="0: only (b)")
    parser.add_argument("--requests", type=int, default=100, help="samples per latency scenario")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp, \
            run_llama_server(Path(tmp), context=args.context) as engine:
        profile = Path(tmp) / "models.yaml"
        profile.write_text(PROFILE, encoding="utf-8")
        env = {"ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": engine.url,
               "ROLE_INJECTOR_MODELS": str(profile)}
        session = requests.Session()

        def tokenize(text: str) -> int:
            return len(session.post(engine.url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"])

        with run_worker(REPO / "roles", Path(tmp), env=env, workers=1) as worker:
            with_role = worker_body(engine.url, REPO / "roles", profile)
            ways = [
                converse(Way("keep_role (worker)"), worker.url, tokenize, args.turns, None, "keep_role", "helper"),
                converse(Way("shrink_role (worker)"), worker.url, tokenize, args.turns, None, "shrink_role",
                         "helper"),
                converse(Way("whole history, straight to the engine"), engine.url, tokenize, args.turns,
                         with_role["messages"][0]["content"], None, "smollm2"),
            ] if args.turns else []
            latency = added_latency(engine.url, worker.url, with_role, args.requests)

    if ways:
        print_conversations(args, ways)
    print_latency(args, latency)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


def print_conversations(args: argparse.Namespace, ways: list[Way]) -> None:
    print(f"(a) {args.turns} turns of ~50-token questions and 8-token answers, llama-server -c {args.context}"
          f" -np 1, SmolLM2-135M; role {ROLE} (~1,100 tokens)\n")
    print(f"{'way':<40} {'turns':>5} {'first token p50/max ms':>23} {'evaluated/turn p50/max':>23}"
          f" {'re-eval per new':>16}  stopped")
    for way in ways:
        if not way.first_token_ms:
            print(f"{way.name:<40} {0:>5}  {way.stopped}")
            continue
        later = way.first_token_ms[1:] or way.first_token_ms
        evaluated = way.evaluated[1:] or way.evaluated
        print(f"{way.name:<40} {len(way.first_token_ms):>5} {percentile(later, 50):>11.0f}/{max(later):<11.0f}"
              f" {percentile([float(e) for e in evaluated], 50):>11.0f}/{max(evaluated):<11}"
              f" {way.ratio:>16.2f}  {way.stopped or f'no ({way.dropped} oldest messages left out)'}")
    print("\nper turn, evaluated tokens:")
    for way in ways:
        print(f"  {way.name:<40} {way.evaluated}")
    keep = ways[0]
    print(f"\nkeep_role re-evaluates {keep.ratio:.2f} tokens per new token — "
          f"{'within' if keep.ratio <= TARGET_RATIO and not keep.stopped else 'above'} the {TARGET_RATIO:g} target\n")


def print_latency(args: argparse.Namespace, latency: dict[str, dict[str, list[float]]]) -> None:
    print(f"(b) latency the worker adds in front of llama-server ({args.requests} interleaved requests per"
          " scenario, max_tokens 1, the prompt already in the engine's cache; paired: the median of each"
          " round's difference)\n")
    verdicts = []
    for kind, samples in latency.items():
        print(kind)
        print(f"{'scenario':<40} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} {'paired':>8}")
        pairs = {"worker, plain": "direct, plain",
                 "worker, virtual model helper": "direct, the worker's body for helper"}
        for name, values in samples.items():
            base = pairs.get(name)
            added = percentile(values, 50) - percentile(samples[base], 50) if base else None
            # The median of each round's difference: a change of the machine's load hits both alike.
            paired = statistics.median(w - d for w, d in zip(values, samples[base], strict=True)) if base else None
            print(f"{name:<40} {percentile(values, 50):>8.2f} {percentile(values, 99):>8.2f}"
                  + (f" {added:>+10.2f} {paired:>+8.2f}" if added is not None and paired is not None else ""))
            if added is not None:
                verdicts.append((f"{kind}: {name}", added))
        print()
    for name, added in verdicts:
        print(f"added p50 {added:5.2f} ms  {'ok  ' if added <= TARGET_MS else 'OVER'} (target ≤ {TARGET_MS:g} ms)"
              f"  {name}")


if __name__ == "__main__":
    sys.exit(main())
