"""The handbook behind the sample role and the relevance quality benchmark: its data keeps its promises
(enough distinct sections and questions in both languages, questions in other words than their section),
roles/handbook.md is what the generator writes, and relevance selection meets its target on it."""

from __future__ import annotations

import pytest

from bench import handbook, relevance_quality
from tests.worker.conftest import BUNDLED_ROLES


@pytest.mark.parametrize("language", handbook.LANGUAGES)
def test_the_data_has_distinct_sections_and_paraphrased_questions(language: str) -> None:
    topics = handbook.topics(language)
    assert len(topics) >= 150
    assert len({t.title for t in topics}) == len(topics)
    assert sum(len(t.questions) for t in topics) >= 300
    copied = [(q, run) for t in topics for q in t.questions if (run := handbook.copied_run(q, t.text))]
    assert copied == []
    assert all(q.endswith("?") for t in topics for q in t.questions)


def test_copied_runs_are_found_across_case_and_punctuation() -> None:
    assert handbook.copied_run("Where? It IS behind building-C!", "The cage is behind building C.") == (
        "is behind building c")
    assert handbook.copied_run("Какой код у клетки?", "Клетка открывается кодом.") is None


def test_the_sample_role_is_what_the_generator_writes() -> None:
    assert (BUNDLED_ROLES / "handbook.md").read_text("utf-8") == handbook.role_text("en")


@pytest.mark.parametrize("language", handbook.LANGUAGES)
def test_relevance_finds_the_answering_section_for_most_questions(language: str) -> None:
    result = relevance_quality.evaluate(language)
    assert result.relevance >= relevance_quality.TARGET
    assert result.priority < 0.1 and result.random < 0.1
