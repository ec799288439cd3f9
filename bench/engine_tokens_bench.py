"""Counting with an engine's own vocabulary, measured in one run on a real llama-server with SmolLM2-135M
(not a test): prints figures, no targets.

- /tokenize of 1 MiB texts (words, one letter, blanks) and of 4 MiB of blanks: why a text sent is
  bounded to 1 MiB (`engine_tokens.DEFAULT_MAX_TEXT_BYTES`);
- the bundled `manifest` role fitted with the engine's counts: requests and seconds for the first fit
  (every section measured once), then for a new budget (only what is new is sent), beside the same
  with the worker's own Qwen vocabulary;
- relevance selection on the same role: requests per new question, whose fit is verified by encoding
  (the heading identity does not hold for SmolLM2; docs/engines.md).

Run: .venv/bin/python -m bench.engine_tokens_bench   (builds or unpacks the engine on first use)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from role_injector.engine_tokens import EngineTokenizer, PostJson, TokenizeApi
from role_injector.fitting import FitCache, fit_budget
from role_injector.relevance import Query
from role_injector.roles import resolve_variables
from role_injector.store import RoleStore
from role_injector.tokens import Tokenizer, load_tokenizer
from tests.engine import post_json, run_llama_server
from tests.servers import REPO

MIB = 1 << 20
QUESTIONS = ["How do we roll back a failed deploy?", "Who owns an incident at night?",
             "What goes into a database migration checklist?", "How are secrets rotated?",
             "When do we page the on-call engineer?"]


class CountingPost:
    def __init__(self, post: PostJson) -> None:
        self.post = post
        self.sent = 0

    def __call__(self, path: str, body: Mapping[str, Any]) -> Any:
        self.sent += 1
        return self.post(path, body)


def timed(action: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = action()
    return result, time.perf_counter() - started


def main() -> None:
    role = RoleStore(str(REPO / "roles")).current().roles["manifest"]
    values = resolve_variables(role, {})  # the defaults
    with tempfile.TemporaryDirectory() as logs, run_llama_server(Path(logs)) as server:
        post = CountingPost(post_json(server.url, timeout=120))

        def engine(cache: FitCache, limit: int = MIB) -> EngineTokenizer:
            return EngineTokenizer(post, TokenizeApi.LLAMA_CPP, "smollm2", "llama.cpp/smollm2", cache, limit)

        print("POST /tokenize, one request each (2 shared cores):")
        for label, text in [("1 MiB of words", "word " * (MIB // 5)), ("1 MiB of one letter", "x" * MIB),
                            ("1 MiB of blanks", " " * MIB), ("4 MiB of blanks", " " * (4 * MIB))]:
            tokens, seconds = timed(lambda text=text: engine(FitCache(), 4 * MIB).count(text))
            print(f"  {label:<20} {tokens:>9,} tokens  {seconds:6.2f} s")

        print(f"\nthe manifest role ({len(role.sections)} sections, {len(role.content):,} characters), priority:")
        tokenizers: list[tuple[str, Tokenizer]] = [("engine", engine(FitCache())), ("qwen", load_tokenizer("qwen"))]
        for name, tokenizer in tokenizers:
            cache = FitCache() if name == "qwen" else tokenizer.cache  # type: ignore[attr-defined]
            for budget in (6000, 4000):
                post.sent = 0
                fit, seconds = timed(lambda b=budget, t=tokenizer, c=cache: fit_budget(role, values, b, t, c))
                requests = f"{post.sent:>5} requests" if name == "engine" else " " * 14
                print(f"  {name:<6} budget {budget}: {fit.tokens:>5} tokens, {requests} {seconds * 1000:9.1f} ms")

        print("\nrelevance selection, budget 4000, each question new:")
        tokenizer = engine(FitCache())
        fit_budget(role, values, 4000, tokenizer, tokenizer.cache, Query.from_text("warm up"))
        for question in QUESTIONS:
            post.sent = 0
            fit, seconds = timed(lambda q=question: fit_budget(role, values, 4000, tokenizer, tokenizer.cache,
                                                                Query.from_text(q)))
            print(f"  {fit.tokens:>5} tokens, {post.sent:>3} requests, {seconds * 1000:7.1f} ms  {question}")


if __name__ == "__main__":
    main()
