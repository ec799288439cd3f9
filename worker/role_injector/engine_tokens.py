"""An engine's own vocabulary as a `tokens.Tokenizer`: exact counts through the engine's tokenize
endpoint, for a model the worker has no vocabulary file of (docs/engines.md has each engine's API).

No HTTP here: the engine layer passes its transport as a `PostJson`, which owns the rules on paths,
secrets, sizes of answers and timeouts. What this module adds:

- Every count is the engine's: a fault is an error (`errors.VocabularyError` for an engine that
  cannot tokenize, `UpstreamError` for an answer that is not its API, the transport's own for the
  rest), never an estimate in its place.
- Each distinct text is sent once: counts go into the process's `FitCache`, keyed by the tokenizer's
  name and the text's sha256 (the fitter already keeps a role's section counts per role version).
- Texts are bounded (`max_text_bytes`). llama.cpp's server tokenizes 1 MiB of blanks in ~1 s and
  4 MiB in ~6 s on 2 cores (slower than words: the blank run is one piece), and answers one id per
  token, up to one per byte; 1 MiB keeps a request near a second and its answer within the
  transport's JSON limit, and is more than any local model's window holds.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from role_injector.errors import InvalidRequest, UpstreamError, UpstreamRefused, VocabularyError
from role_injector.fitting import FitCache

PostJson = Callable[[str, Mapping[str, Any]], Any]
"""POST a JSON body to a path of the engine and return the parsed JSON of its 2xx answer. Faults are
`role_injector.errors` classes: `UpstreamUnreachable`, `UpstreamTimeout`, `UpstreamError` (not JSON,
too large) and `UpstreamRefused` (an error status, in `details["status"]`)."""

PROBE_TEXT = "Hello"  # a word every vocabulary has tokens for
DEFAULT_MAX_TEXT_BYTES = 1024 * 1024
# Above this a text's token boundaries are spread evenly instead of read from the pieces, whose answer
# is ~25 bytes a token (they are estimates either way; see `Tokenizer.token_boundaries`).
MAX_PIECES_TEXT_BYTES = 256 * 1024
# Statuses of an engine that has no such endpoint (or, on vLLM, no such model).
NO_ENDPOINT = frozenset({404, 405, 501})


class TokenizeApi(StrEnum):
    """How an engine tokenizes (docs/engines.md, with the source of each fact)."""

    # llama.cpp's llama-server: POST /tokenize {content, add_special, parse_special, with_pieces}
    # -> {tokens: [id, ...]} or [{id, piece}, ...]; special tokens in the text are parsed (as a
    # chat prompt's are); add_special adds BOS/EOS where the model's vocabulary asks for them.
    LLAMA_CPP = "llama.cpp"
    # vLLM and SGLang: POST /tokenize {model, prompt, add_special_tokens} -> {tokens, count,
    # max_model_len}; special tokens in the text are always parsed (Hugging Face tokenizers).
    VLLM = "vllm"


class EngineTokenizer:
    """Counts with the vocabulary of `model` as the engine behind `post_json` has it.

    `name` says which engine and model (it keys cached counts and is shown as the usage's tokenizer,
    so it must carry no secret). Counts match what the engine does with a chat prompt: special-token
    strings in a text count as the engine reads them (the worker neutralises the template's control
    tokens in content beforehand), and `count_prompt` adds the BOS/EOS the engine adds."""

    heading_joins_add_up = False  # not true of SmolLM2 under llama.cpp (docs/engines.md); unknown elsewhere

    def __init__(self, post_json: PostJson, api: TokenizeApi, model: str, name: str, cache: FitCache,
                 max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES) -> None:
        self.post_json = post_json
        self.api = api
        self.model = model
        self.name = name
        self.cache = cache
        self.max_text_bytes = max_text_bytes

    def count(self, text: str) -> int:
        if not text:
            return 0
        return self._cached("text", text, lambda: len(self._tokens(text, add_special=False)))

    def count_prompt(self, prompt: str) -> int:
        return self._cached("prompt", prompt, lambda: self._prompt_tokens(prompt))

    def is_special(self, token: str) -> bool:
        return bool(self._cached("special", token, lambda: int(self._special(token))))

    def token_boundaries(self, text: str) -> Sequence[int]:
        size = _utf8_size(text)
        if self.api is TokenizeApi.LLAMA_CPP and size <= MAX_PIECES_TEXT_BYTES:
            pieces = self._tokens(text, add_special=False, pieces=True)
            return list(itertools.accumulate((_piece_size(p) for p in pieces), initial=0))
        tokens = self.count(text)
        return [round(i * size / tokens) for i in range(tokens + 1)] if tokens else [0]

    def _cached(self, kind: str, text: str, compute: Callable[[], int]) -> int:
        key = ("engine-tokens", self.name, kind, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        found = self.cache.get(key)
        if isinstance(found, int):
            return found
        value = compute()
        self.cache.put(key, value)
        return value

    def _prompt_tokens(self, prompt: str) -> int:
        tokens = self._tokens(prompt, add_special=False)
        if self.api is TokenizeApi.VLLM:
            return len(tokens)  # vLLM's chat prompts are tokenized without added special tokens
        # llama.cpp's chat path (common/chat.cpp) drops the template's leading BOS text where the model
        # adds a BOS itself, then tokenizes with add_special: so a BOS is counted once either way.
        added = self._added_specials()
        return len(tokens) + len(added) - (1 if added and tokens and tokens[0] == added[0] else 0)

    def _added_specials(self) -> list[int]:
        """The tokens the engine adds around any text (a BOS, rarely an EOS), asked once."""
        found = self.cache.get(("engine-tokens", self.name, "added"))
        if isinstance(found, tuple):
            return list(found)
        added = self._tokens("", add_special=True)
        if len(added) > 2:
            raise UpstreamError(f"{self.name}: tokenizing an empty text gave {len(added)} tokens")
        self.cache.put(("engine-tokens", self.name, "added"), tuple(added))
        return added

    def _reads_text(self) -> bool:
        """Whether the engine tokenizes a plain word into tokens at all (asked once)."""
        try:
            return bool(self._cached("reads", PROBE_TEXT,
                                     lambda: int(bool(self._tokens(PROBE_TEXT, add_special=False)))))
        except UpstreamError:  # no tokens for the word either
            return False

    def _special(self, token: str) -> bool:
        if len(self._tokens(token, add_special=False)) != 1:
            return False
        # llama.cpp can read the text as plain text too: a special token then splits into pieces.
        return self.api is not TokenizeApi.LLAMA_CPP or len(self._tokens(token, add_special=False, plain=True)) > 1

    def _tokens(self, text: str, *, add_special: bool, pieces: bool = False, plain: bool = False) -> list[Any]:
        size = _utf8_size(text)
        if size > self.max_text_bytes:
            raise InvalidRequest(
                f"a text of {size} bytes is more than {self.name} is asked to count at once"
                f" ({self.max_text_bytes} bytes)", details={"bytes": size, "limit": self.max_text_bytes})
        if self.api is TokenizeApi.LLAMA_CPP:
            body: dict[str, Any] = {"content": text, "add_special": add_special, "parse_special": not plain,
                                    "with_pieces": pieces}
        else:
            body = {"model": self.model, "prompt": text, "add_special_tokens": add_special}
        try:
            answer = self.post_json("/tokenize", body)
        except UpstreamRefused as exc:
            if exc.details.get("status") not in NO_ENDPOINT:
                raise
            raise VocabularyError(
                f"{self.name} cannot tokenize ({exc.message}); its counts are needed because the profile"
                " names no vocabulary of the worker's for this model",
                details={"tokenizer": self.name, "status": exc.details.get("status")}) from None
        return self._parse(answer, text, pieces)

    def _parse(self, answer: Any, text: str, pieces: bool) -> list[Any]:
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(map(_is_id if not pieces else _is_piece, tokens)):
            raise UpstreamError(f"{self.name} answered /tokenize without a list of token"
                                f" {'pieces' if pieces else 'ids'}", details={"tokenizer": self.name})
        if text and not tokens and (text == PROBE_TEXT or not self._reads_text()):
            # An engine that ignores the field it was sent (another engine's API) answers no tokens for
            # anything; some texts (control characters such as U+0006) are no tokens in a real vocabulary.
            raise UpstreamError(f"{self.name} answered /tokenize with no tokens for a text of {len(text)}"
                                " characters: is the engine's kind right?", details={"tokenizer": self.name})
        count = answer.get("count")
        if count is not None and count != len(tokens):
            raise UpstreamError(f"{self.name} answered /tokenize with {len(tokens)} tokens and a count of"
                                f" {count!r}", details={"tokenizer": self.name})
        return tokens


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_piece(value: object) -> bool:
    if not isinstance(value, dict) or not _is_id(value.get("id")):
        return False
    piece = value.get("piece")
    return isinstance(piece, str) or (isinstance(piece, list) and all(_is_id(b) and b < 256 for b in piece))


def _piece_size(piece: Mapping[str, Any]) -> int:
    """Bytes of a piece: llama.cpp sends a piece as text when it is valid UTF-8, else as its bytes."""
    value = piece["piece"]
    return len(value) if isinstance(value, list) else len(value.encode())
