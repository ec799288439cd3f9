"""Conversations over several engines behind a router, with the worker's routing key and without it, in one
run: two llama-servers (SmolLM2-135M, tests/engine.py) behind vllm-router, the worker in front.

N conversations at once, each on a role of its own, T turns each (the model's answers sent back as the
history, as a client does), twice on fresh engines and a fresh router:

  with the key     `--policy consistent_hash`: the router reads the worker's routing key (X-Session-ID)
  without it       `--policy round_robin`: each request to the next engine, whatever the conversation

Per run, from the engines' own figures in each answer: the share of prompt tokens they took from their
cache (`cached_tokens / prompt_tokens`), over the turns after the first (a conversation's first turn on a
role of its own has nothing to reuse, however it is routed) and over all turns; the time to the first
token of an answer (streamed, at the client), p50 and p95 over the turns after the first. Target: a
cached share of at least 0.9 with the key.

    .venv/bin/python -m bench.routing_bench [--conversations 6] [--turns 5]

Each engine has one slot per conversation (so none evicts another: what the key decides is where a turn
goes, not how much an engine holds), 1 thread, 2,048 tokens per slot. Answers are 8 tokens at most.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.figures import percentile
from tests.engine import run_llama_server, run_vllm_router
from tests.servers import run_worker, write_place

TARGET_SHARE = 0.9
SLOT_CONTEXT = 2048
ANSWER_TOKENS = 8
VOCABULARY = ("the a of to and in on for with before after because while when which that it is was river bridge "
              "boat mill road market bread cheese wool cloth farm field barn horse cart lamp oil candle winter "
              "summer harvest rain frost north south town village square bell tower clock gate wall")
WORDS = VOCABULARY.split()
QUESTIONS = ["What should I bring to the market?", "When does the bridge open?", "Where is the mill?",
             "How long does the road take in winter?", "Who keeps the clock tower?", "What does the bell mean?",
             "Which gate is closest to the farm?", "Is the square busy at harvest?"]


def role(index: int, sentences: int = 45) -> str:
    """A role of its own (~700 tokens in SmolLM2's vocabulary): a town's guide, with its own text."""
    rng = random.Random(index)
    text = " ".join(" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(sentences))
    return (f"---\ndescription: Guide of town {index}\n---\nYou are the guide of town {index}.\n\n"
            f"## Rules {{required}}\nAnswer in one short sentence.\n\n## Town notes\n{text}\n")


@dataclass
class Turn:
    number: int  # 1-based
    prompt_tokens: int
    cached_tokens: int
    first_token_ms: float


@dataclass
class Run:
    name: str
    policy: str
    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0

    def share(self, first_turns: bool) -> float:
        kept = [t for t in self.turns if first_turns or t.number > 1]
        return sum(t.cached_tokens for t in kept) / max(1, sum(t.prompt_tokens for t in kept))

    def first_token(self, p: int) -> float:
        return percentile([t.first_token_ms for t in self.turns if t.number > 1], p)


def streamed(session: requests.Session, url: str, body: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """ms to the first text, the text, the usage of a streamed chat answer."""
    started = time.perf_counter()
    first = 0.0
    text = []
    usage: dict[str, Any] = {}
    with session.post(url, json={**body, "stream": True, "stream_options": {"include_usage": True}}, stream=True,
                      timeout=900) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                if choice["delta"].get("content"):
                    first = first or (time.perf_counter() - started) * 1000
                    text.append(choice["delta"]["content"])
            usage = event.get("usage") or usage
    # An answer with no text at all (an end of turn first): its end is its first token.
    return first or (time.perf_counter() - started) * 1000, "".join(text), usage


def converse(worker_url: str, conversation: int, turns: int) -> list[Turn]:
    session = requests.Session()
    messages: list[dict[str, str]] = []
    done = []
    for number in range(1, turns + 1):
        question = f"{QUESTIONS[(conversation + number) % len(QUESTIONS)]} (visitor {conversation}, question {number})"
        messages.append({"role": "user", "content": question})
        first, text, usage = streamed(session, worker_url + "/v1/chat/completions", {
            "model": f"guide-{conversation}", "messages": messages, "max_tokens": ANSWER_TOKENS, "temperature": 0})
        done.append(Turn(number, usage["prompt_tokens"], usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
                         first))
        messages.append({"role": "assistant", "content": text})
    return done


def run(name: str, policy: str, conversations: int, turns: int, place: Path, logs: Path) -> Run:
    """The conversations on fresh engines behind a fresh router with `policy`."""
    result = Run(name, policy)
    with ExitStack() as running:
        engines = [running.enter_context(run_llama_server(logs, slots=conversations,
                                                          context=conversations * SLOT_CONTEXT, threads=1))
                   for _ in range(2)]
        router = running.enter_context(run_vllm_router(logs, [engine.url for engine in engines], policy))
        worker = running.enter_context(run_worker(place / "roles", logs, workers=1, env={
            "ROLE_INJECTOR_ENGINE": "llama.cpp", "ROLE_INJECTOR_ENGINE_URL": router.url,
            "ROLE_INJECTOR_MODELS": str(place / "models.yaml"), "ROLE_INJECTOR_UPSTREAM_TIMEOUT": "900"}))
        started = time.perf_counter()
        with ThreadPoolExecutor(conversations) as pool:
            for done in pool.map(lambda c: converse(worker.url, c, turns), range(conversations)):
                result.turns.extend(done)
        result.seconds = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=5)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="routing-bench-") as tmp:
        place = write_place(Path(tmp), {f"town-{c}": role(c) for c in range(args.conversations)},
                            "virtual_models:\n" + "".join(f"  guide-{c}: {{base: smollm2, role: town-{c}}}\n"
                                                          for c in range(args.conversations)))
        runs = [run("with the key", "consistent_hash", args.conversations, args.turns, place, Path(tmp)),
                run("without it", "round_robin", args.conversations, args.turns, place, Path(tmp))]

    print(f"{args.conversations} concurrent conversations x {args.turns} turns, each on a role of its own "
          f"(~700 tokens), answers of {ANSWER_TOKENS} tokens; two llama-servers (SmolLM2-135M, {args.conversations}"
          " slots, 1 thread each) behind vllm-router, the worker in front\n")
    print(f"{'run':<14} {'vllm-router policy':<19} {'cached share, turns 2+':>23} {'all turns':>10}"
          f" {'first token p50 ms':>19} {'p95 ms':>8} {'run s':>6}")
    for done in runs:
        print(f"{done.name:<14} {done.policy:<19} {done.share(False):>23.2f} {done.share(True):>10.2f}"
              f" {done.first_token(50):>19.0f} {done.first_token(95):>8.0f} {done.seconds:>6.0f}")
    keyed, unkeyed = runs
    print(f"\nwith the key: cached share {keyed.share(False):.2f} of the prompt tokens after the first turn — "
          f"{'at or above' if keyed.share(False) >= TARGET_SHARE else 'BELOW'} the {TARGET_SHARE:g} target; "
          f"without it {unkeyed.share(False):.2f}; first token p50 {keyed.first_token(50):.0f} ms against "
          f"{unkeyed.first_token(50):.0f} ms")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
