"""Cost of relevance selection, measured in one run (not a test): prints figures against the target.

The role has 200k tokens: the handbook's sections in English and Russian (bench/handbook.py) and the
bundled manifest's, copied under numbered titles until the role is that large. Requests are the
handbook's 640 questions in turn, each a new question (so every relevance fit is computed, not taken
from the fit cache), through the library's `inject` with the budget a request gets on an 8k context.

- added p50: p50 of an injection with relevance selection minus p50 of the same injection with
  priority selection (whose fit, the same for every question, comes from the fit cache): target <= 2 ms;
- the parts of it: ranking the sections for the question, and fitting the ranked sections;
- the index build: once per role version, on the first relevance request;
- the index's size per MB of role: this role, a book at the size limit (3.8 MB of the same text in
  8,300 sections), and the worst text (3.8 MB of words that are all different), against the bound
  the fit cache plans with and the default cache.

Run: make bench   (or .venv/bin/python -m bench.relevance_bench)
"""

from __future__ import annotations

import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.handbook import LANGUAGES, role_text, topics
from role_injector.fitting import DEFAULT_FIT_CACHE_BYTES, FitCache, fit_budget
from role_injector.formats import Message
from role_injector.injection import InjectRequest, inject
from role_injector.options import RoleOptions
from role_injector.profiles import load_profiles
from role_injector.relevance import Query, RelevanceIndex
from role_injector.roles import Role, build_role, parse_role_source
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import load_tokenizer

ROLES = Path(__file__).resolve().parent.parent / "roles"
TARGET_TOKENS = 200_000
TARGET_MS = 2.0
MODEL = "qwen3:8b"
ROUNDS = 640
BOOK_TOKENS = 760_000  # a role of 3.8 MB in these sections (English and Russian)
MB = 1024 * 1024


def large_role(target_tokens: int = TARGET_TOKENS) -> Role:
    """Sections of the handbooks and the manifest, copied under numbered titles up to `target_tokens`."""
    tokenizer = load_tokenizer("qwen")
    manifest = RoleStore(ROLES).current().roles["manifest"]
    bodies = [section.text.partition("\n")[2] for section in manifest.sections[1:]]
    titles = [section.title or "" for section in manifest.sections[1:]]
    for language in LANGUAGES:
        for topic in topics(language):
            titles.append(topic.title)
            bodies.append(topic.text)
    preamble = role_text("en").split("\n## ")[0].split("---\n", 2)[2]
    sections, total, copy = [preamble, "## How to answer {required}\nAnswer from the sections below."], 0, 0
    while total < target_tokens:
        for title, body in zip(titles, bodies, strict=True):
            text = f"## {title} ({copy})\n{body}".replace("{{team}}", "Platform").replace("{{assistant_name}}", "Keel")
            sections.append(text)
            total += tokenizer.count(text)
            if total >= target_tokens:
                break
        copy += 1

    return build_role(parse_role_source("large", "large.md", "\n\n".join(sections)))


def unique_words_role(size: int, sections: int) -> Role:
    """The worst text for an index: `size` bytes of six-letter words, nearly every one different."""
    chosen = random.Random(1)
    words = " ".join("".join(chosen.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(size // 7))
    step = len(words) // sections
    text = "\n\n".join(f"## Part {i}\n{words[i * step:(i + 1) * step]}" for i in range(sections))
    return build_role(parse_role_source("unique", "unique.md", text))


def index_size(role: Role) -> str:
    started = time.perf_counter()
    index = RelevanceIndex(role.sections)
    seconds = time.perf_counter() - started
    size = sum(len(section.text.encode()) for section in role.sections) / MB
    return (f"{size:.2f} MB in {len(role.sections)} sections: index {index.nbytes / MB:.2f} MB "
            f"({index.nbytes / MB / size:.2f} MB per MB of role), built in {seconds:.2f} s; bound "
            f"{RelevanceIndex.bound(role.sections) / MB:.1f} MB")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    role = large_role()
    tokenizer = load_tokenizer(load_profiles().for_model(MODEL).tokenizer)
    role_tokens = tokenizer.count(role.content)
    questions = [q for language in LANGUAGES for topic in topics(language) for q in topic.questions]

    import_started = time.perf_counter()
    RelevanceIndex(role.sections[:1])  # imports bm25s (stop words) and numpy, once per process
    import_ms = (time.perf_counter() - import_started) * 1e3
    builds = [timed(lambda: RelevanceIndex(role.sections)) for _ in range(3)]

    roles, profiles, cache = RoleSet(roles={role.name: role}), load_profiles(), FitCache()

    def request(i: int, selection: str) -> InjectRequest:
        return InjectRequest(role.name, (Message("user", questions[i % len(questions)]),),
                             options=RoleOptions(selection=selection), model=MODEL)

    inject(roles, profiles, request(0, "priority"), cache)  # measure every section once, build the index
    first = inject(roles, profiles, request(0, "relevance"), cache)
    budget = first.usage.budget
    index = cache.relevance_index(role)
    samples: dict[str, list[float]] = {"priority": [], "relevance": [], "rank": [], "fit": []}
    for i in range(1, ROUNDS + 1):  # alternating, so a busy neighbour slows both alike
        samples["priority"].append(timed(lambda i=i: inject(roles, profiles, request(i, "priority"), cache)))
        samples["relevance"].append(timed(lambda i=i: inject(roles, profiles, request(i, "relevance"), cache)))
        # Two questions at once: a ranking no request above has, so the fit is computed.
        query = Query.from_text(f"{questions[i % len(questions)]} {questions[-i]}")
        samples["rank"].append(timed(lambda q=query: index.rank(q)))
        samples["fit"].append(timed(lambda q=query: fit_budget(role, {}, budget, tokenizer, cache, q)))

    added = median_ms(samples["relevance"]) - median_ms(samples["priority"])
    print(f"role: {role_tokens} tokens ({tokenizer.name}) in {len(role.sections)} sections; budget {budget} "
          f"(a {MODEL} context of 8192, one question); {ROUNDS} questions")
    print(f"index build: {min(builds) * 1e3:.0f} ms (min of 3; first use also imports bm25s/numpy: "
          f"{import_ms:.0f} ms)")
    print(f"inject p50: priority {median_ms(samples['priority']):.3f} ms, relevance "
          f"{median_ms(samples['relevance']):.3f} ms")
    print(f"  of which: ranking p50 {median_ms(samples['rank']):.3f} ms, fit with a new ranking p50 "
          f"{median_ms(samples['fit']):.3f} ms")
    print(f"added p50 of relevance selection: {added:.3f} ms (target <= {TARGET_MS} ms)")
    print("\nthe index in memory (the fit cache holds it whole; the default cache is "
          f"{DEFAULT_FIT_CACHE_BYTES / MB:.0f} MB):")
    print(f"  this role: {index_size(role)}")
    print(f"  a book at the size limit: {index_size(large_role(BOOK_TOKENS))}")
    print(f"  all words different: {index_size(unique_words_role(int(3.8 * MB), 2_000))}")
    return 0 if added <= TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
