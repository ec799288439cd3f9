"""The pieces of `bake eval` that need no model: the checks a program makes of an answer, the neutral
questions file, retention. The whole of it runs with real models in test_bake_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from role_injector.bake_eval import Checks, answered, language_of, read_neutral, retention
from role_injector.errors import InvalidRequest


def test_checks_read_the_answer_as_the_rules_say() -> None:
    checks = Checks(opening="Bien sûr !", language="fr", forbidden=("the",))
    assert checks.passed("Bien sûr ! La pluie tombe des nuages.") == {"opening": True, "language": True,
                                                                     "forbidden": True}
    assert checks.passed("  bien sur... la pluie, c'est de l'eau") == {"opening": False, "language": True,
                                                                       "forbidden": True}  # û is not u
    assert checks.passed("BIEN SÛR ! The rain is water.") == {"opening": True, "language": False, "forbidden": False}
    assert checks.passed("Sure! Theology and other words") == {"opening": False, "language": False,
                                                               "forbidden": True}  # whole words only


@pytest.mark.parametrize(("text", "language"), [
    ("The rain is water that falls from the clouds.", "en"),
    ("La pluie est de l'eau qui tombe des nuages.", "fr"),
    ("Der Regen ist Wasser, das aus den Wolken fällt.", "de"),
    ("La lluvia es agua que cae de las nubes.", "es"),
    ("12345 !!!", None),
])
def test_a_language_is_told_by_its_commonest_words(text: str, language: str | None) -> None:
    assert language_of(text) == language


@given(st.text(max_size=200))
def test_checks_never_fail_on_any_answer(answer: str) -> None:
    results = Checks(opening="Ahoy", language="en", forbidden=("sorry", "a+b")).passed(answer)
    assert set(results) == {"opening", "language", "forbidden"}


@given(without=st.floats(-10, 0), gain=st.floats(0.01, 10), share=st.floats(0, 1))
def test_retention_is_zero_at_the_base_and_one_at_the_prompt(without: float, gain: float, share: float) -> None:
    with_role = without + gain
    assert retention(without, with_role, without) == 0
    assert retention(without, with_role, with_role) == pytest.approx(1)
    assert retention(without, with_role, without + share * gain) == pytest.approx(share, abs=1e-6)
    assert retention(without, without, with_role) is None  # the prompt changes nothing: nothing to retain


@pytest.mark.parametrize(("text", "message"), [
    ("opening: 3\n", "opening must be text with letters"),
    ("language: klingon\n", "language must be one of en, fr, de, es"),
    ("forbidden: the\n", "forbidden must be a list of words"),
    ("colour: red\n", "expected a mapping of opening, language, forbidden"),
    ("{}\n", "sets no rule"),
])
def test_a_wrong_checks_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "checks.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidRequest, match=message):
        Checks.read(path)


def test_neutral_questions_need_an_expected_answer(tmp_path: Path) -> None:
    path = tmp_path / "neutral.jsonl"
    path.write_text('{"question": "Capital of France?", "expect": ["Paris"]}\n\n', encoding="utf-8")
    assert read_neutral(path) == [("Capital of France?", ["Paris"])]
    path.write_text('{"question": "Capital of France?", "expect": []}\n', encoding="utf-8")
    with pytest.raises(InvalidRequest, match="line 1"):
        read_neutral(path)


@pytest.mark.parametrize(("text", "expect", "right"), [
    ("La capitale de la France est Paris.", ["Paris"], True),
    ("PARIS, bien sûr", ["Paris"], True),
    ("Une araignée a huit pattes.", ["8", "eight", "huit"], True),
    ("Elle en a 8.", ["8", "eight", "huit"], True),
    ("Il y a 18 pattes.", ["8", "eight", "huit"], False),  # a number inside another is not said
    ("En septembre, il fait frais.", ["7", "seven", "sept"], False),  # nor a word inside another
    ("L'eau, c'est H₂O.", ["H2O", "H₂O"], True),
    ("Le dioxyde de carbone (CO2).", ["carbon dioxide", "CO2", "dioxyde de carbone"], True),
])
def test_a_neutral_answer_is_right_when_it_says_an_expected_word(text: str, expect: list[str], right: bool) -> None:
    assert answered(text, expect) is right
