"""No text the body limit admits can crash, stall or miscount the tokenizer.

A run of ~1,000,000 blanks made tiktoken's regex give up with a Rust panic (`PanicException`, a
BaseException: it escaped Flask and killed the worker); combining marks in falling class made
CPython's NFC quadratic. The counts stay exact: equal to the unsplit `encode_ordinary` of the NFC
text (the real tokenizer), property-tested where that one works, with the split made at a small
run length so that every input exercises it.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import unicodedata
from pathlib import Path

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from role_injector.normalization import LONG_MARK_RUN, marks, nfc
from role_injector.tokens import BLANK_CHAR, VOCABULARIES, Tokenizer, load_tokenizer
from tests.ollama_standin import OllamaStandin
from tests.security.hostile_roles import GOOD, MIB, serve_roles

TOKENIZERS = list(VOCABULARIES)
BLANKS = [" ", "\t", "\x0b", "\x0c", "\x85", "\xa0", "\u1680", "\u2000", "\u200a", "\u2028", "\u2029", "\u202f",
          "\u205f", "\u3000"]
# Also what looks blank but is not White_Space (\x1c, zero-width space), newlines, and the classes
# the pattern treats apart: letters, Russian, digits, punctuation, apostrophes, marks, emoji, specials.
PIECES = [*BLANKS, "\n", "\r", "\r\n", "\x1c", "\u200b", "a", "word", "Слово", "中文", "7", "123", "!", "...",
          "'s", "'re", "\u0301", "\u0316", "é", "😀", "<|im_start|>", "-", "_"]


def reference(tokenizer: Tokenizer, text: str) -> list[int]:
    """The real tokenizer: NFC (for the Qwen vocabularies), then one unsplit encode."""
    return tokenizer.encoding.encode_ordinary(unicodedata.normalize("NFC", text) if tokenizer.nfc else text)


texts = st.lists(
    st.tuples(st.sampled_from(PIECES), st.integers(1, 12)).map(lambda piece: piece[0] * piece[1]), max_size=30
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TOKENIZERS), st.integers(2, 6), texts)
def test_counts_equal_the_unsplit_tokenizer(name: str, long_run: int, text: str) -> None:
    tokenizer = dataclasses.replace(load_tokenizer(name), long_blank_run=long_run)
    assert tokenizer.encode(text) == reference(tokenizer, text)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(TOKENIZERS), st.integers(2, 6), texts)
def test_prompt_counts_equal_the_unsplit_tokenizer_with_specials(name: str, long_run: int, text: str) -> None:
    tokenizer = dataclasses.replace(load_tokenizer(name), long_blank_run=long_run)
    prompt = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    normalised = unicodedata.normalize("NFC", prompt) if tokenizer.nfc else prompt
    assert tokenizer.count_prompt(prompt) == len(tokenizer.encoding.encode(normalised, allowed_special="all"))


blank_runs = st.lists(st.sampled_from(sorted({chr(c) for c in range(0x110000) if BLANK_CHAR.match(chr(c))})),
                      min_size=1, max_size=3000).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TOKENIZERS), blank_runs)
def test_the_blank_piece_encoder_gives_the_tokens_of_the_whole_vocabulary(name: str, run: str) -> None:
    """Long runs of blanks are encoded by an encoding that knows only the tokens made of blanks' bytes
    (and releases the GIL): a piece of blanks never needs another token."""
    tokenizer = load_tokenizer(name)
    assert tokenizer.blank_pieces.encode_ordinary(run) == tokenizer.encoding._encode_single_piece(run.encode())


SHAPES = {
    "spaces": lambda n: " " * n,
    "tabs then a word": lambda n: "\t" * n + "word",
    "a word then spaces": lambda n: "word" + " " * n,
    "newline, spaces, a word": lambda n: "\n" + " " * n + "x",
    "spaces, newline, spaces": lambda n: " " * n + "\n" + " " * n + "!",
    "ideographic spaces": lambda n: "\u3000" * n + "中",
    "space and tab": lambda n: " \t" * (n // 2) + "'s",
    "no-break spaces then digits": lambda n: "\xa0" * n + "2024",
    "leading blanks in Russian": lambda n: " " * n + "Привет, мир",
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", TOKENIZERS)
def test_long_runs_below_the_regex_limit_count_as_the_unsplit_tokenizer(name: str, shape: str) -> None:
    """At the default split length, on runs the plain regex still handles (200,000 blanks)."""
    tokenizer = load_tokenizer(name)
    text = SHAPES[shape](200_000)
    assert tokenizer.encode(text) == reference(tokenizer, text)


@pytest.mark.parametrize("name", TOKENIZERS)
def test_a_mebibyte_of_blanks_is_counted_where_the_regex_gives_up(name: str) -> None:
    """Past ~1,000,000 blanks the plain regex panics; the whole run is then one piece of the
    pattern, encoded as such (`\\s+(?!\\S)` leaves the last blank to the next word)."""
    tokenizer = load_tokenizer(name)
    with pytest.raises(BaseException, match="StackOverflow"):
        tokenizer.encoding.encode_ordinary(" " * MIB + "x")
    piece = tokenizer.encoding._encode_single_piece
    assert tokenizer.encode(" " * MIB) == piece(b" " * MIB)
    assert tokenizer.encode(" " * MIB + "x") == piece(b" " * (MIB - 1)) + tokenizer.encoding.encode_ordinary(" x")
    assert tokenizer.count("\n" + "\t" * MIB + "word") == len(reference(tokenizer, "\n")) + len(
        piece(b"\t" * (MIB - 1))) + len(reference(tokenizer, "\tword"))


# --- NFC in bounded time, exactly unicodedata's -------------------------------------------------

MARKS = ["\u0301", "\u0316", "\u0345", "\u0327", "\u0308", "\u0f71", "\u0f73", "\u05b0", "\u3099"]
marked = st.lists(
    st.one_of(st.sampled_from(["a", "e", "ấ", "\u1100", "\u1161", "\uac00", " ", "か", "\u0f40"]),
              st.tuples(st.sampled_from(MARKS), st.integers(1, LONG_MARK_RUN + 8)).map(lambda m: m[0] * m[1]),
              st.lists(st.sampled_from(MARKS), min_size=LONG_MARK_RUN, max_size=LONG_MARK_RUN * 3).map("".join)),
    max_size=8,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(marked)
def test_nfc_is_unicodedatas(text: str) -> None:
    assert nfc(text) == unicodedata.normalize("NFC", text)


def test_every_decomposition_that_starts_with_a_mark_is_all_marks() -> None:
    """What `nfc` relies on to cut the text at the edges of a run of marks."""
    for cp in range(0x110000):
        char = chr(cp)
        if 0xD800 <= cp < 0xE000 or char in marks():
            continue
        decomposed = unicodedata.normalize("NFD", char)
        assert not unicodedata.combining(decomposed[0]), hex(cp)


def test_a_mebibyte_of_marks_in_falling_class_is_normalised(tmp_path: Path) -> None:
    """unicodedata alone sorts these by insertion: hours. In a subprocess, as the work must end."""
    script = (
        "import sys\n"
        "from role_injector.tokens import load_tokenizer\n"
        "text = 'a' + '\\u0345' * 250_000 + '\\u0301' * 250_000 + ' x' + '\\u0316\\u0301' * 125_000\n"
        "print(load_tokenizer('qwen').count(text), load_tokenizer('qwen3.5').count(text))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert all(int(count) > 0 for count in done.stdout.split())


# --- against a real gunicorn: the request that killed a worker --------------------------------


def test_a_mebibyte_of_blanks_is_counted_and_no_worker_dies(tmp_path: Path, standin: OllamaStandin) -> None:
    roles = tmp_path / "roles"
    roles.mkdir()
    (roles / "fine.md").write_text(GOOD)
    (roles / "greeter.md").write_text("---\nvariables: {name: {required: true}}\n---\nGreet {{name}}.\n")
    blanks = " " * 1_000_000
    marks_text = "a" + "\u0345\u0301" * 240_000
    qwen = load_tokenizer("qwen")
    with serve_roles(roles, tmp_path, ROLE_INJECTOR_OLLAMA_URL=standin.url) as server:  # the session's stand-in
        workers = set(server.worker_pids())
        assert len(workers) == 1
        healthy: list[int] = []
        stop = threading.Event()

        def probe() -> None:  # innocent requests alongside: none may be reset
            while not stop.is_set():
                healthy.append(requests.get(server.url + "/healthz", timeout=120).status_code)

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            # JSON escapes a tab in two bytes: half a million of them fill the body limit.
            for text in (blanks, "\t" * 500_000 + "x", "\n" + blanks[:-10] + "word", marks_text):
                body = json.dumps({"text": text, "model": "qwen3:8b"}, ensure_ascii=False).encode()
                reply = requests.post(server.url + "/v1/count", data=body, timeout=300,
                                      headers={"Content-Type": "application/json"})
                assert reply.status_code == 200, reply.text
                assert reply.json()["tokens"] == qwen.count(text)
            for body in (
                {"role": "fine", "context_window": 1_000_000, "messages": [{"role": "user", "content": blanks}]},
                {"role": "fine", "context_window": 1_000_000, "prompt": blanks + "hello"},
                {"role": "greeter", "context_window": 1_000_000, "variables": {"name": blanks + "Ada"}},
            ):
                reply = requests.post(server.url + "/v1/inject", json=body, timeout=300)
                assert reply.status_code == 200, reply.text
                assert reply.json()["usage"]["prompt_tokens"] > qwen.count(blanks) // 2
            chat = {"model": "qwen3:8b@fine", "stream": False, "options": {"num_ctx": 1_000_000},
                    "messages": [{"role": "user", "content": blanks}]}
            reply = requests.post(server.url + "/api/chat", json=chat, timeout=300)
            assert reply.status_code == 200, reply.text
            (forwarded,) = standin.requests_to("/api/chat")
            assert forwarded.body["messages"][-1]["content"] == blanks
        finally:
            stop.set()
            prober.join()
        assert healthy and set(healthy) == {200}
        assert set(server.worker_pids()) == workers
        assert "PanicException" not in server.log() and "Traceback" not in server.log()
