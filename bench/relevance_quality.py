"""Quality of relevance selection, measured in one run (not a test): prints shares against the target.

The role is the Orrery Works staff handbook (`bench/handbook.py`), in English and in Russian: 160
sections on distinct topics, each holding facts found in no other section, and two questions per section
written in other words (no question copies a run of four words from its section). The budget is 5% of
the role. For every question, asked as the user's message, it counts whether the section that answers
it is in the fitted system prompt, whole:

- relevance: `selection: relevance` (the question ranks the sections);
- priority: the sections' priority order (here all equal, so document order: the same few sections);
- random: a random order of the sections (20 shuffles, one per question in turn).

Target: relevance >= 90% in both languages.

Run: make bench   (or .venv/bin/python -m bench.relevance_quality)
"""

from __future__ import annotations

import dataclasses
import random
import sys
from dataclasses import dataclass

from bench.handbook import LANGUAGES, role_text, topics
from role_injector.fitting import FitCache, fit_budget
from role_injector.formats import Message
from role_injector.injection import InjectRequest, inject
from role_injector.options import RoleOptions
from role_injector.profiles import load_profiles
from role_injector.relevance import terms
from role_injector.roles import Role, build_role, parse_role_source
from role_injector.store import RoleSet
from role_injector.tokens import load_tokenizer

BUDGET_SHARE = 0.05
TARGET = 0.90
SHUFFLES = 20
MODEL = "qwen3:8b"


@dataclass(frozen=True)
class Result:
    language: str
    sections: int
    questions: int
    role_tokens: int
    budget: int
    relevance: float
    relevance_whole_or_cut: float
    priority: float
    random: float
    no_shared_stem: float  # questions that share no word stem with their section: BM25 cannot see them


def load_role(language: str) -> Role:
    name = f"handbook-{language}"
    return build_role(parse_role_source(name, f"{name}.md", role_text(language)))


def shuffled(role: Role, seed: int) -> Role:
    """The role with its topic sections in a random priority order (required and preamble unchanged)."""
    rng = random.Random(seed)
    order = list(range(len(role.sections)))
    rng.shuffle(order)
    sections = tuple(s if s.required or s.title is None else dataclasses.replace(s, priority=order[i])
                     for i, s in enumerate(role.sections))
    return dataclasses.replace(role, sections=sections, version=f"{role.version}-shuffle{seed}")


def evaluate(language: str) -> Result:
    role = load_role(language)
    tokenizer = load_tokenizer(load_profiles().for_model(MODEL).tokenizer)
    cache = FitCache()
    role_tokens = tokenizer.count(role.content)
    budget = round(role_tokens * BUDGET_SHARE)
    roles, profiles = RoleSet(roles={role.name: role}), load_profiles()
    variants = [shuffled(role, seed) for seed in range(SHUFFLES)]
    where = {s.title: i for i, s in enumerate(role.sections)}

    hits = {"relevance": 0, "relevance_whole_or_cut": 0, "priority": 0, "random": 0}
    asked = no_shared_stem = 0
    for topic in topics(language):
        index = where[topic.title]
        for question in topic.questions:
            turns = (Message("user", question),)
            states = {}
            for selection in ("relevance", "priority"):
                request = InjectRequest(role.name, turns, options=RoleOptions(budget=budget, selection=selection),
                                        model=MODEL)
                states[selection] = inject(roles, profiles, request, cache).fit.sections[index].state
            random_fit = fit_budget(variants[asked % SHUFFLES], {}, budget, tokenizer, cache)
            hits["relevance"] += states["relevance"] == "kept"
            hits["relevance_whole_or_cut"] += states["relevance"] != "dropped"
            hits["priority"] += states["priority"] == "kept"
            hits["random"] += random_fit.sections[index].state == "kept"
            no_shared_stem += not set(terms(question)) & set(terms(role.sections[index].text))
            asked += 1
    return Result(language, len(role.sections), asked, role_tokens, budget,
                  no_shared_stem=no_shared_stem / asked, **{k: v / asked for k, v in hits.items()})


def main() -> int:
    results = [evaluate(language) for language in LANGUAGES]
    print(f"share of questions whose answering section is in the fitted prompt, whole; budget "
          f"{BUDGET_SHARE:.0%} of the role; tokenizer of {MODEL}")
    print(f"{'language':<9}{'sections':>9}{'questions':>10}{'role tokens':>12}{'budget':>8}"
          f"{'relevance':>11}{'(or cut)':>9}{'priority':>9}{'random':>8}{'no shared stem':>16}")
    for r in results:
        print(f"{r.language:<9}{r.sections:>9}{r.questions:>10}{r.role_tokens:>12}{r.budget:>8}"
              f"{r.relevance:>11.1%}{r.relevance_whole_or_cut:>9.1%}{r.priority:>9.1%}{r.random:>8.1%}"
              f"{r.no_shared_stem:>16.1%}")
    ok = all(r.relevance >= TARGET for r in results)
    print(f"target: relevance >= {TARGET:.0%} in every language -> {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
