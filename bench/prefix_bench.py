"""How much of each prompt a model server must evaluate again, over long conversations through the
Ollama-compatible proxy, under each context policy (measured in one run, not a test).

A model server (llama.cpp under Ollama) keeps the longest common token prefix of consecutive prompts
and evaluates the rest again. This bench runs simulated conversations through a real gunicorn worker
(the proxy) into the Ollama stand-in, which records every request; each received request is rendered
with Qwen3's own chat template (tests/worker/chat_templates/qwen3.jinja) and tokenized with the Qwen
tokenizer. Per turn: re-evaluated = prompt tokens after the longest common prefix with the previous
prompt; new = what the turn added (the last answer and the new question, as rendered). The figure is
re-evaluated / new over all turns after the first: 1.0 is the floor (only new tokens). Target: at
most 2.0 on every shape with the default policy (keep_role); shrink_role is the earlier behaviour,
where the role gave way to the conversation in 512-token steps.

    .venv/bin/python -m bench.prefix_bench [--shape NAME]
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from role_injector.tokens import load_tokenizer
from tests.ollama_standin import run_ollama_standin
from tests.servers import REPO, run_worker
from tests.worker.chat_templates.render_reference import render_reference

TARGET = 2.0
POLICIES = ("keep_role", "shrink_role")
QWEN = load_tokenizer("qwen")
GENERATION_PROMPT = QWEN.count_prompt("<|im_start|>assistant\n")
PROFILE = """\
models:
  - {match: "qwen3:8b", tokenizer: qwen, format: chatml, context_window: 32768, reserve_output: 1024}
  - {match: "qwen3:4b", tokenizer: qwen, format: chatml, context_window: 4096, reserve_output: 1024}
virtual_models:
  keel-32k: {base: "qwen3:8b", role: keel-large}
  engineer-4k: {base: "qwen3:4b", role: agi-engineer, variables: {user_name: Анна}}
"""
WORDS = ("deploy rollback canary latency budget queue consumer retry index shard replica cache eviction "
              "timeout quorum leader follower snapshot migration schema column backfill alert runbook owner "
              "incident pager threshold window metric trace span sample rate limit token secret rotation "
              "the a of to and in on for with before after because while when which that it is was")
VOCABULARY = WORDS.split()


@dataclass(frozen=True)
class Shape:
    name: str
    model: str
    turns: int
    question_words: int
    answer_words: int


SHAPES = (
    Shape("32k window, 28k-token role, 80 turns of ~120/250 tokens", "keel-32k", 80, 95, 200),
    Shape("32k window, 28k-token role, 150 short turns (~40/80)", "keel-32k", 150, 30, 65),
    Shape("32k window, 28k-token role, 50 long turns (~400/1200)", "keel-32k", 50, 320, 950),
    Shape("4k window, 3k-token role, 100 short turns (~40/80)", "engineer-4k", 100, 30, 65),
    Shape("4k window, 3k-token role, 60 turns of ~120/250", "engineer-4k", 60, 95, 200),
    Shape("4k window, 3k-token role, 50 long turns (~150/600)", "engineer-4k", 50, 120, 480),
)


def large_role(roles: Path) -> None:
    """keel-large: the bundled manifest (~22k tokens) without its budget, with appendices to ~28k tokens."""
    manifest = (roles / "manifest.md").read_text(encoding="utf-8").replace("budget: 8000\n", "")
    rng = random.Random(28)
    appendices = []
    for i in range(24):
        sentences = (" ".join(rng.choice(VOCABULARY) for _ in range(14)).capitalize() + "." for _ in range(16))
        appendices.append(f"## Appendix {i + 1} {{priority=5}}\n\n" + " ".join(sentences))
    (roles / "keel-large.md").write_text(manifest.rstrip() + "\n\n" + "\n\n".join(appendices) + "\n", "utf-8")


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(count)).capitalize() + "."


def prompt_tokens(messages: list[dict[str, Any]]) -> list[int]:
    text = render_reference("qwen3", [{"role": m["role"], "content": m["content"]} for m in messages])
    return QWEN.encoding.encode(text, allowed_special="all")


def common_prefix(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


@dataclass
class Result:
    turns: int = 0
    evaluated: int = 0
    new: int = 0
    role_changes: int = 0
    drop_events: int = 0
    dropped: int = 0
    num_ctx: frozenset[int] = frozenset()
    role_tokens: tuple[int, int] = (0, 0)
    stopped: str = ""

    @property
    def ratio(self) -> float:
        return self.evaluated / self.new if self.new else float("nan")


def converse(url: str, standin: Any, shape: Shape, policy: str) -> Result:
    rng = random.Random(shape.name)
    session = requests.Session()
    headers = {"X-Role-Injector-Context-Policy": policy}
    messages: list[dict[str, Any]] = []
    result = Result()
    previous: list[int] | None = None
    previous_system = ""
    contexts: set[int] = set()
    first_role = 0
    for turn in range(shape.turns):
        question = {"role": "user", "content": words(rng, shape.question_words)}
        messages.append(question)
        answer = words(rng, shape.answer_words)
        standin.answer = answer
        response = session.post(url + "/api/chat", headers=headers, timeout=120,
                                json={"model": shape.model, "messages": messages, "stream": False})
        if response.status_code != 200:
            result.stopped = f"turn {turn + 1}: {response.status_code} {response.json().get('error', '')[:60]}"
            break
        body = standin.requests_to("/api/chat")[-1].body
        tokens = prompt_tokens(body["messages"])
        system = body["messages"][0]["content"]
        dropped = int(response.headers["X-Role-Injector-Dropped-Messages"])
        contexts.add(body["options"]["num_ctx"])
        role_tokens = QWEN.count(system)
        first_role = first_role or role_tokens
        if previous is not None:
            result.evaluated += len(tokens) - common_prefix(previous, tokens)
            # what the turn added: the last answer and this question, as the template renders them
            result.new += len(prompt_tokens([messages[-2], question])) - GENERATION_PROMPT
            result.role_changes += system != previous_system
            result.drop_events += dropped != result.dropped
        result.turns, result.dropped, result.role_tokens = turn + 1, dropped, (first_role, role_tokens)
        previous, previous_system = tokens, system
        messages.append({"role": "assistant", "content": answer})
    result.num_ctx = frozenset(contexts)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", help="run only the shapes whose name contains this text")
    args = parser.parse_args()
    shapes = [s for s in SHAPES if not args.shape or args.shape in s.name]
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp, run_ollama_standin() as standin:
        roles = Path(tmp) / "roles"
        shutil.copytree(REPO / "roles", roles)
        large_role(roles)
        (Path(tmp) / "models.yaml").write_text(PROFILE, encoding="utf-8")
        env = {"ROLE_INJECTOR_OLLAMA_URL": standin.url, "ROLE_INJECTOR_MODELS": str(Path(tmp) / "models.yaml")}
        with run_worker(roles, Path(tmp), env=env, workers=1) as worker:
            for shape in shapes:
                for policy in POLICIES:
                    standin.clear()
                    rows.append((shape, policy, converse(worker.url, standin, shape, policy)))

    print("Prompt-prefix reuse over long conversations through the Ollama proxy (prompts rendered with"
          " Qwen3's template, Qwen tokens)\n")
    header = (f"{'shape':<56} {'policy':<12} {'turns':>5} {'role tok':>13} {'role chg':>8} {'dropped':>8}"
              f" {'drops':>5} {'re-eval':>9} {'new':>8} {'ratio':>6}")
    print(header)
    verdicts = []
    for shape, policy, r in rows:
        roles_text = f"{r.role_tokens[0]}→{r.role_tokens[1]}" if r.role_tokens[0] != r.role_tokens[1] \
            else str(r.role_tokens[0])
        print(f"{shape.name:<56} {policy:<12} {r.turns:>5} {roles_text:>13} {r.role_changes:>8} {r.dropped:>8}"
              f" {r.drop_events:>5} {r.evaluated:>9} {r.new:>8} {r.ratio:>6.2f}"
              + (f"  num_ctx {sorted(r.num_ctx)}" if len(r.num_ctx) > 1 else "")
              + (f"  stopped at {r.stopped}" if r.stopped else ""))
        if policy == "keep_role":
            verdicts.append((shape.name, r.ratio, not r.stopped))
    print("\ncolumns: turns sent; role tokens (first→last); turns on which the role's text changed; messages"
          " left out at the end; turns on which the cut moved; re-evaluated and new tokens over turns 2..N\n")
    for name, ratio, complete in verdicts:
        ok = ratio <= TARGET and complete
        print(f"keep_role {ratio:5.2f}  {'ok  ' if ok else 'OVER'} (target ≤ {TARGET:g})  {name}")
    worst = max(ratio for _, ratio, _ in verdicts)
    print(f"\nworst keep_role ratio: {worst:.2f} — {'within' if worst <= TARGET else 'above'} the {TARGET:g} target"
          f" ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
