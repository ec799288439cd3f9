"""The training windows of `bake train` (training_windows): exchanges packed whole, only the answers
trained, and the file llama-finetune reads. What llama-finetune makes of them is tested with the
real tool in test_bake_train.py."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from role_injector.training_windows import MAGIC, NOT_TRAINED, TokenizedExchange, pack

tokens = st.lists(st.integers(1, 40), min_size=1, max_size=30)
exchanges = st.lists(st.builds(TokenizedExchange, tokens, tokens), min_size=1, max_size=40)
contexts = st.sampled_from([8, 16, 32, 64])


@given(exchanges, contexts)
def test_each_exchange_is_in_one_window_and_only_its_answer_is_trained(found: list[TokenizedExchange],
                                                                         context: int) -> None:
    windows = pack(found, context)
    assert len(windows.places) == len(found) and len(windows.inputs) == len(windows.labels)
    trained = 0
    for exchange, (index, start) in zip(found, windows.places, strict=True):
        whole = [*exchange.prompt, *exchange.answer]
        size = min(len(whole), context)
        assert start + size <= context
        assert windows.inputs[index][start:start + size] == whole[:size]  # whole, or the start of it if too long
        labels = windows.labels[index][start:start + size]
        # the token after each position, where it is one of the answer's; nothing for the prompt's
        expected = [whole[p + 1] if len(exchange.prompt) <= p + 1 < len(whole) else NOT_TRAINED for p in range(size)]
        assert labels == expected
        trained += sum(label != NOT_TRAINED for label in expected)
    assert windows.trained == trained  # and nothing else in the windows is
    assert windows.cut == sum(len(e) > context for e in found)


@given(exchanges, contexts)
def test_windows_hold_nothing_else_and_are_packed_first_fit(found: list[TokenizedExchange], context: int) -> None:
    windows = pack(found, context)
    used = [0] * len(windows.inputs)
    for exchange, (index, _) in zip(found, windows.places, strict=True):
        used[index] += min(len(exchange), context)
    for index, window_labels in enumerate(windows.labels):
        assert all(label == NOT_TRAINED for label in window_labels[used[index]:])  # the padding is never trained
    assert sum(used) == sum(min(len(e), context) for e in found)
    # first fit: every window but one is more than half full, and none is started while an open one fits
    assert sum(u * 2 <= context for u in used) <= 1
    assert windows.places[0] == (0, 0)


def test_the_file_is_what_llama_finetune_reads(tmp_path: Path) -> None:
    windows = pack([TokenizedExchange([5, 6, 7], [8, 9]), TokenizedExchange([5, 6], [10])], 8)
    path = tmp_path / "train.windows"
    windows.write(path)
    data = path.read_bytes()
    assert data[:8] == MAGIC and struct.unpack("<ii", data[8:16]) == (8, 1)
    values = struct.unpack("<16i", data[16:])
    assert list(values[:8]) == [5, 6, 7, 8, 9, 5, 6, 10]
    assert list(values[8:]) == [-1, -1, 8, 9, -1, -1, 10, -1]
    assert windows.trained == 3 and windows.positions == 8


@pytest.mark.parametrize("context", [4, 5])
def test_an_exchange_longer_than_a_window_is_cut_at_its_end(context: int) -> None:
    windows = pack([TokenizedExchange([1, 2], [3, 4, 5, 6])], context)
    assert windows.cut == 1 and windows.inputs == [[1, 2, 3, 4, 5][:context]]
    assert windows.labels == [[-1, 3, 4, 5, 6][:context]]  # the token after the window's end is known: learned too
