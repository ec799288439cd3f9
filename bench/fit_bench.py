"""Fitting cost, measured in one run (not a test): prints ratios against their targets.

(a) a fit of a cached 200k-token role vs a cached 2k-token role, same 1,000-token budget: ≤ 1.5×
    (each call uses a budget not seen before, so the fit itself is computed, not taken from the
    fit cache: the section counts are cached, the final string is encoded)
(b) the first (cold) fit of a 200k-token role vs one `encode_ordinary` of its text: ≤ 1.3×
(c) counting 1 MiB of the texts that used to crash or stall the tokenizer (blanks, blanks before a
    word, digits, combining marks in falling class) vs counting 1 MiB that is one word, which is
    tiktoken's own cost for its longest piece (one byte-pair merge over the whole MiB): ≤ 3×
    (a megabyte of blanks is such a piece too, merged in more rounds than letters)

Run: make bench   (or .venv/bin/python -m bench.fit_bench)
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path

from role_injector.fitting import FitCache, fit_budget
from role_injector.roles import Role, build_role, parse_role_source
from role_injector.store import RoleStore
from role_injector.tokens import load_tokenizer

ROLES = Path(__file__).resolve().parent.parent / "roles"
BUDGET = 1000
MIB = 1024 * 1024
WORST_CASES = {
    "blanks": " " * MIB,
    "blanks then a word": "\t" * (MIB - 4) + "word",
    "digits": "7" * MIB,
    "marks": "a" + "\u0345\u0301" * (MIB // 4),  # 2 bytes each; falling combining class
}
ONE_WORD = "a" * MIB


def role_from_manifest(target_tokens: int, name: str) -> Role:
    """Copies of the bundled manifest's sections, retitled, until the role has `target_tokens`."""
    manifest = RoleStore(ROLES).current().roles["manifest"]
    tokenizer = load_tokenizer("qwen")
    sections, total, copy = [], 0, 0
    while total < target_tokens:
        for section in manifest.sections[1:]:
            if total >= target_tokens:
                break
            heading, _, body = section.text.partition("\n")
            text = f"{heading} ({copy}) {{priority={section.priority}}}\n{body}"
            text = text.replace("{{team}}", "Platform").replace("{{assistant_name}}", "Keel")
            sections.append(text)
            total += tokenizer.count(text)
        copy += 1
    return build_role(parse_role_source(name, f"{name}.md", "\n\n".join(sections)))


def compare(runs: int, first: Callable[[], object], second: Callable[[], object]) -> tuple[float, float]:
    """Fastest seconds of each action over `runs` alternating rounds: alternating and taking the
    minimum keeps a busy machine (other processes on the 2 cores) from skewing the ratio."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for action, samples in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            action()
            samples.append(time.perf_counter() - started)
    return min(times[0]), min(times[1])


def best_of(runs: int, action: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    tokenizer = load_tokenizer("qwen")
    large = role_from_manifest(203_000, "large")
    small = role_from_manifest(2_000, "small")
    large_tokens, small_tokens = tokenizer.count(large.content), tokenizer.count(small.content)

    cache = FitCache()
    fit_budget(large, {}, BUDGET, tokenizer, cache)  # measure every section once: the role is cached
    fit_budget(small, {}, BUDGET, tokenizer, cache)
    large_budgets, small_budgets = itertools.count(BUDGET + 1), itertools.count(BUDGET + 1)
    warm_large, warm_small = compare(
        500,
        lambda: fit_budget(large, {}, next(large_budgets), tokenizer, cache),
        lambda: fit_budget(small, {}, next(small_budgets), tokenizer, cache),
    )
    cold, encode = compare(
        9,
        lambda: fit_budget(large, {}, BUDGET, tokenizer, FitCache()),
        lambda: tokenizer.encoding.encode_ordinary(large.content),
    )

    prose = large.content.encode()[:MIB].decode(errors="ignore")
    worst = {name: best_of(3, lambda text=text: tokenizer.count(text)) for name, text in WORST_CASES.items()}
    one_word, plain = best_of(3, lambda: tokenizer.count(ONE_WORD)), best_of(3, lambda: tokenizer.count(prose))

    ratio_a, ratio_b, ratio_c = warm_large / warm_small, cold / encode, max(worst.values()) / one_word
    print(f"roles: large {large_tokens} tokens in {len(large.sections)} sections, "
          f"small {small_tokens} tokens in {len(small.sections)} sections; budget {BUDGET}; tokenizer qwen")
    print(f"(a) cached fit: large {warm_large * 1e3:.3f} ms, small {warm_small * 1e3:.3f} ms "
          f"-> ratio {ratio_a:.2f} (target <= 1.5)")
    print(f"(b) cold fit of large {cold * 1e3:.1f} ms vs one encode_ordinary {encode * 1e3:.1f} ms "
          f"-> ratio {ratio_b:.2f} (target <= 1.3)")
    print("(c) counting 1 MiB: " + ", ".join(f"{name} {seconds * 1e3:.0f} ms" for name, seconds in worst.items())
          + f" vs one word {one_word * 1e3:.0f} ms -> worst ratio {ratio_c:.2f} (target <= 3); "
          f"prose {plain * 1e3:.0f} ms")
    return 0 if ratio_a <= 1.5 and ratio_b <= 1.3 and ratio_c <= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
