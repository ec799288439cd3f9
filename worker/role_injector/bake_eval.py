"""`bake eval`: how much of the role a baked model keeps, on the dataset's held-out questions.

Three configurations, each served by llama-server: the base model without the role, the base with
the role (fitted as the teacher got it), the baked model without the role. Two measures:

- **log-likelihood**: the mean natural-log probability per token of the teacher's held-out answers,
  scored on the answer tokens only, after the prompt the configuration's chat template makes of
  the question (`LlamaServerClient.score`: exact, by forcing the tokens with a grammar);
- **behaviour**: the share of checks passed by greedy answers to the held-out questions, for
  rules a program can check (`Checks`: a required opening, a language, forbidden words).

Each is reported as retention = (baked − base without) / (base with − base without): 0 is the base
without the role, 1 the base with it. General knowledge is checked on neutral questions
(`{"question", "expect": [...]}`: passed when the answer says one of the expected answers as a
whole word, in whichever language): the baked model's share must stay within `margin` of the
base's WITH the role — the model it stands in for, whose answers it learned; what the role itself
costs (a small model answering in another language knows less) is not lost by baking.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from role_injector.bake import MAX_QUESTION_CHARS, Progress, read_pairs
from role_injector.errors import InvalidRequest
from role_injector.formats import neutralise
from role_injector.llama_server import LlamaServerClient
from role_injector.roles import DEFAULT_LIMITS, LIMIT_VARIABLES
from role_injector.yaml_input import YamlRefused, load_yaml

MAX_NEUTRAL = 10_000
MAX_FILE_BYTES = 4 * 1024 * 1024  # a checks or neutral-questions file
# A language is told by its commonest short words (a program's check, not a classifier): the
# language whose words an answer uses most, if it uses any.
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset({"the", "and", "is", "are", "of", "to", "in", "it", "that", "you", "for", "with", "this", "be",
                     "not", "have", "on", "as", "was", "what", "can", "your"}),
    "fr": frozenset({"le", "la", "les", "et", "est", "un", "une", "des", "du", "de", "que", "qui", "pour", "dans",
                     "pas", "vous", "il", "elle", "ce", "sont", "avec", "sur", "au"}),
    "de": frozenset({"der", "die", "das", "und", "ist", "ein", "eine", "nicht", "ich", "du", "sie", "es", "zu", "mit",
                     "den", "auf", "für", "sind", "von", "dem"}),
    "es": frozenset({"el", "la", "los", "las", "y", "es", "un", "una", "que", "de", "en", "no", "por", "para", "con",
                     "se", "su", "del", "al", "lo"}),
}
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

Messages = list[dict[str, str]]


def _read_small(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise InvalidRequest(f"{path} is larger than {MAX_FILE_BYTES} bytes", details={"file": str(path)})
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}", details={"file": str(path)}) from None


def language_of(text: str) -> str | None:
    words = [w.lower() for w in WORD.findall(text)]
    hits = {code: sum(word in vocabulary for word in words) for code, vocabulary in STOP_WORDS.items()}
    best = max(hits, key=lambda code: hits[code])
    return best if hits[best] else None


def _letters(text: str) -> str:
    return re.sub(r"\W+", "", text.casefold())


@dataclass(frozen=True)
class Checks:
    """Rules of a role a program can check in one answer."""

    opening: str | None = None  # the answer starts with it (case, spaces and punctuation aside)
    language: str | None = None  # a key of STOP_WORDS
    forbidden: tuple[str, ...] = ()  # whole words the answer must not contain

    @classmethod
    def read(cls, path: Path) -> Checks:
        """`opening: …`, `language: fr`, `forbidden: [word, …]` from a YAML file."""
        try:
            value = load_yaml(_read_small(path), DEFAULT_LIMITS.max_yaml_depth, LIMIT_VARIABLES["max_yaml_depth"])
        except YamlRefused as exc:
            raise InvalidRequest(f"{path}: {exc}", details={"file": str(path)}) from None
        if not isinstance(value, dict) or not set(value) <= {"opening", "language", "forbidden"}:
            raise InvalidRequest(f"{path}: expected a mapping of opening, language, forbidden",
                                 details={"file": str(path)})
        opening, language, forbidden = value.get("opening"), value.get("language"), value.get("forbidden") or []
        if opening is not None and (not isinstance(opening, str) or not _letters(opening)):
            raise InvalidRequest(f"{path}: opening must be text with letters", details={"file": str(path)})
        if language is not None and language not in STOP_WORDS:
            raise InvalidRequest(f"{path}: language must be one of {', '.join(STOP_WORDS)}",
                                 details={"file": str(path)})
        if not isinstance(forbidden, list) or not all(isinstance(w, str) and w.strip() for w in forbidden):
            raise InvalidRequest(f"{path}: forbidden must be a list of words", details={"file": str(path)})
        checks = cls(opening, language, tuple(forbidden))
        if not checks.names():
            raise InvalidRequest(f"{path} sets no rule", details={"file": str(path)})
        return checks

    def names(self) -> list[str]:
        return [name for name, on in (("opening", self.opening), ("language", self.language),
                                      ("forbidden", self.forbidden)) if on]

    def passed(self, answer: str) -> dict[str, bool]:
        results = {}
        if self.opening:
            results["opening"] = _letters(answer).startswith(_letters(self.opening))
        if self.language:
            results["language"] = language_of(answer) == self.language
        if self.forbidden:
            results["forbidden"] = not any(re.search(rf"\b{re.escape(word)}\b", answer, re.I | re.U)
                                           for word in self.forbidden)
        return results


def answered(text: str, expect: Sequence[str]) -> bool:
    """Whether `text` says one of `expect` as a whole word or number, case aside: "sept" is not said by
    "septembre", nor "8" by "18"."""
    return any(re.search(rf"(?<!\w){re.escape(e)}(?!\w)", text, re.I) for e in expect)


def read_neutral(path: Path) -> list[tuple[str, list[str]]]:
    """Neutral questions: JSON lines `{"question": "...", "expect": ["...", ...]}`."""
    lines = _read_small(path).splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            question, expect = record["question"], record["expect"]
            if not isinstance(question, str) or not 0 < len(question) <= MAX_QUESTION_CHARS or \
                    not isinstance(expect, list) or not expect or not all(isinstance(e, str) and e for e in expect):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest(f"{path}, line {number}: expected {{\"question\": \"...\", \"expect\": [\"...\"]}}",
                                 details={"file": str(path), "line": number}) from None
        found.append((question, expect))
    if not found or len(found) > MAX_NEUTRAL:
        raise InvalidRequest(f"{path} must have 1 to {MAX_NEUTRAL} questions", details={"file": str(path)})
    return found


@dataclass
class Scores:
    """One configuration's scores."""

    log_likelihood: float = 0.0  # mean per answer token
    answer_tokens: int = 0
    behaviour: float | None = None  # share of checks passed
    checks: dict[str, float] = field(default_factory=dict)  # share passed, per rule
    neutral: float | None = None
    samples: list[str] = field(default_factory=list)  # the first answers, to read


def without_role(question: str) -> Messages:
    return [{"role": "user", "content": neutralise(question)}]


def score(client: LlamaServerClient, messages_for: Callable[[str], Messages], pairs: Sequence[tuple[str, str]],
          checks: Checks | None, neutral: Sequence[tuple[str, list[str]]], max_tokens: int,
          progress: Progress, on_progress: Callable[[Progress], None] | None = None) -> Scores:
    """The scores of the model behind `client` when each question is sent as `messages_for(question)`."""
    scores = Scores()
    total = 0.0

    def step() -> None:
        progress.done += 1
        if on_progress:
            on_progress(progress)

    def generate(question: str) -> str:
        return client.chat({"messages": messages_for(question),
                            "options": {"temperature": 0, "num_predict": max_tokens}}).text

    passed: dict[str, int] = dict.fromkeys(checks.names() if checks else (), 0)
    for question, answer in pairs:
        # The prompt as llama-server makes it for a chat (a BOS if the model wants one); the answer
        # is generated right after the scoring, which leaves the prompt in the KV cache.
        prompt = client.tokenize(client.apply_template(messages_for(question)), special=True, add_special=True)
        scored = client.score(prompt, neutralise(answer))
        total += sum(scored)
        scores.answer_tokens += len(scored)
        step()
        if checks is not None:
            text = generate(question)
            if len(scores.samples) < 5:
                scores.samples.append(text)
            for name, ok in checks.passed(text).items():
                passed[name] += ok
            step()
    scores.log_likelihood = total / max(1, scores.answer_tokens)
    if checks is not None:
        scores.checks = {name: count / len(pairs) for name, count in passed.items()}
        scores.behaviour = sum(scores.checks.values()) / len(scores.checks)
    if neutral:
        right = 0
        for question, expect in neutral:
            right += answered(generate(question), expect)
            step()
        scores.neutral = right / len(neutral)
    return scores


def retention(without: float | None, with_role: float | None, baked: float | None) -> float | None:
    """(baked − without) / (with − without); None when the role changes nothing to measure against."""
    if without is None or with_role is None or baked is None or with_role - without <= 1e-9:
        return None
    return (baked - without) / (with_role - without)


@dataclass
class EvalReport:
    role: str
    version: str
    questions: int
    base_without_role: Scores
    base_with_role: Scores
    baked_without_role: Scores
    neutral_margin: float
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        configurations = {"base_without_role": self.base_without_role, "base_with_role": self.base_with_role,
                          "baked_without_role": self.baked_without_role}

        def measure(name: str) -> dict[str, Any]:
            values = {key: _round(getattr(s, name)) for key, s in configurations.items()}
            return values | {"retention": _round(retention(*(getattr(s, name) for s in configurations.values())))}

        out: dict[str, Any] = {"role": self.role, "version": self.version, "questions": self.questions,
                               "answer_tokens": self.base_without_role.answer_tokens,
                               "log_likelihood": measure("log_likelihood")}
        if self.base_without_role.behaviour is not None:
            out["behaviour"] = measure("behaviour") | {
                "checks": {key: {k: _round(v) for k, v in s.checks.items()} for key, s in configurations.items()}}
        reference, baked = self.base_with_role.neutral, self.baked_without_role.neutral
        if reference is not None and baked is not None:
            out["neutral"] = {key: _round(s.neutral) for key, s in configurations.items()} | {
                "margin": self.neutral_margin, "kept": baked >= reference - self.neutral_margin}
        out["samples"] = {key: s.samples for key, s in configurations.items() if s.samples}
        out["seconds"] = round(self.seconds, 1)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def evaluate(serve: Callable[[str], Any], role: str, version: str, pairs: Sequence[tuple[str, str]],
             with_role: Callable[[str], Messages], checks: Checks | None, neutral: Sequence[tuple[str, list[str]]],
             *, max_tokens: int = 48, neutral_margin: float = 0.1,
             on_progress: Callable[[Progress], None] | None = None,
             base: tuple[Scores, Scores] | None = None) -> EvalReport:
    """`serve("base")` / `serve("baked")` are context managers yielding a `LlamaServerClient`. `base`:
    the base's scores without and with the role from an earlier run on the same questions, if kept."""
    started = time.monotonic()

    def run(client: LlamaServerClient, phase: str, messages_for: Callable[[str], Messages]) -> Scores:
        progress = Progress(phase, len(pairs) * (2 if checks else 1) + len(neutral))
        return score(client, messages_for, pairs, checks, neutral, max_tokens, progress, on_progress)

    if base is None:
        with serve("base") as client:
            base = run(client, "base", without_role), run(client, "base+role", with_role)
    base_without, base_with = base
    with serve("baked") as client:
        baked = run(client, "baked", without_role)
    return EvalReport(role=role, version=version, questions=len(pairs), base_without_role=base_without,
                      base_with_role=base_with, baked_without_role=baked, neutral_margin=neutral_margin,
                      seconds=time.monotonic() - started)


def held_out_pairs(path: Path, limit: int | None = None) -> list[tuple[str, str]]:
    pairs = read_pairs(path)
    return pairs[:limit] if limit else pairs
