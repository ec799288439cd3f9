"""A small client for llama.cpp's `llama-server`: the one piece of the bake code that speaks its API
(chat, templates, tokens, scores), over the engines' one HTTP transport (`engines/transport.py`:
bounded answers, a dropped keep-alive connection tried once more, errors in the engines' terms).

- `chat` answers an Ollama `/api/chat` body (what `ollama_proxy.rewrite_chat` builds) through the
  OpenAI-compatible `/v1/chat/completions`: the messages as they are, Ollama's sampling options
  under their OpenAI (or llama-server) names. `num_ctx` and `num_keep` have no per-request
  equivalent there: the window is the server's `-c`.
- `score` is the exact log-probability of each token of a text after a prompt: `/completion` with a
  grammar that allows only those token ids (`<[id]>`, grammars/README.md), `n_probs` and
  `post_sampling_probs: false`, so each reported `logprob` is the model's own softmax over the raw
  logits for the forced token (tools/server/README.md: `n_probs`; server-context.cpp:
  `populate_token_probs`). One request per text; the prompt's KV cache is reused. llama-server
  reports nothing for a token after which the text ends inside a character (a byte of `œ`, of an
  emoji, of a letter the vocabulary splits; server-context.cpp: `process_token`); such a token is
  scored from the whole distribution at its position, one more request each.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

from role_injector.engines.answer import ChatAnswer, Delta
from role_injector.engines.transport import Transport, encode_json
from role_injector.engines.url import EngineUrl
from role_injector.errors import UpstreamError

MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_SCORED_TOKENS = 8192
EVERY_TOKEN = 1 << 24  # n_probs for the whole distribution: llama-server returns at most the vocabulary
# Ollama's option -> the field of llama-server's /v1/chat/completions (OpenAI's, or its extensions).
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
           "num_predict": "max_tokens", "stop": "stop", "repeat_penalty": "repeat_penalty",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


class LlamaServerClient:
    def __init__(self, url: str, *, timeout: float = 300.0, connections: int = 4) -> None:
        self.transport = Transport(EngineUrl.parse(url, "the llama-server URL"), "llama-server",
                                   timeout=timeout, max_json_bytes=MAX_ANSWER_BYTES, pool_size=connections)

    def close(self) -> None:
        self.transport.close()

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        value = self.transport.request_json("POST", path, encode_json(body))
        if not isinstance(value, dict):
            raise UpstreamError(f"{self.transport.where} answered {path} with something that is not a JSON object")
        return value

    def chat(self, body: Mapping[str, Any]) -> ChatAnswer:
        options = body.get("options") or {}
        request: dict[str, Any] = {"messages": [{"role": m["role"], "content": m["content"]}
                                                for m in body["messages"]]}
        request |= {OPTIONS[name]: value for name, value in options.items() if name in OPTIONS}
        if request.get("max_tokens", 0) < 0:  # Ollama's -1: no limit
            del request["max_tokens"]
        answer = self._post("/v1/chat/completions", request)
        try:
            message = answer["choices"][0]["message"]
            usage = answer.get("usage") or {}
            chat = ChatAnswer(str(body.get("model") or ""))
            chat.add(Delta(content=str(message.get("content") or ""),
                           reasoning=str(message.get("reasoning_content") or ""), done=True,
                           prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=int(usage.get("completion_tokens") or 0)))
            return chat
        except (KeyError, IndexError, TypeError, ValueError):
            raise UpstreamError(f"{self.transport.where} answered a chat without a message") from None

    def apply_template(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt the model's own chat template makes of `messages`."""
        answer = self._post("/apply-template", {"messages": list(messages),
                                                "add_generation_prompt": add_generation_prompt})
        prompt = answer.get("prompt")
        if not isinstance(prompt, str):
            raise UpstreamError(f"{self.transport.where} answered /apply-template without a prompt")
        return prompt

    def tokenize(self, text: str, *, special: bool, add_special: bool = False) -> list[int]:
        """Token ids of `text`; with `special`, control tokens written in it (`<|im_start|>`) are parsed;
        with `add_special`, the model's BOS comes first if it wants one (as for a prompt)."""
        answer = self._post("/tokenize", {"content": text, "add_special": add_special, "parse_special": special})
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError(f"{self.transport.where} answered /tokenize without token ids")
        return tokens

    def pieces(self, text: str) -> list[tuple[int, bytes]]:
        """The tokens of `text` (control tokens not parsed), each with its bytes."""
        answer = self._post("/tokenize", {"content": text, "add_special": False, "parse_special": False,
                                          "with_pieces": True})
        try:
            return [(int(t["id"]), t["piece"].encode() if isinstance(t["piece"], str) else bytes(t["piece"]))
                    for t in answer["tokens"]]
        except (KeyError, TypeError, ValueError):
            raise UpstreamError(f"{self.transport.where} answered /tokenize without pieces") from None

    def score(self, prompt: Sequence[int], text: str) -> list[float]:
        """The natural-log probability of each token of `text` following `prompt` and the tokens before it."""
        pieces = self.pieces(text)
        tokens = [token for token, _ in pieces]
        if not tokens:
            return []
        if len(tokens) > MAX_SCORED_TOKENS:
            raise UpstreamError(f"cannot score more than {MAX_SCORED_TOKENS} tokens at once")
        answer = self._post("/completion", {
            "prompt": list(prompt), "n_predict": len(tokens), "n_probs": 1, "post_sampling_probs": False,
            "grammar": _only(tokens), "temperature": 0, "return_tokens": True, "cache_prompt": True,
            "response_fields": ["tokens", "completion_probabilities"],
        })
        probabilities = answer.get("completion_probabilities")
        if answer.get("tokens") != tokens or not isinstance(probabilities, list):
            raise UpstreamError(f"{self.transport.where} did not follow the scoring grammar")
        reported = iter(probabilities)
        scores = []
        for index, (token, inside) in enumerate(zip(tokens, _inside_character(piece for _, piece in pieces),
                                                     strict=True)):
            if inside:
                scores.append(self._score_from_distribution([*prompt, *tokens[:index]], token))
                continue
            entry = next(reported, None)
            if not isinstance(entry, dict) or entry.get("id") != token:
                raise UpstreamError(f"{self.transport.where} did not report a log-probability for every token")
            scores.append(float(entry.get("logprob", math.nan)))
        if next(reported, None) is not None or any(math.isnan(s) for s in scores):
            raise UpstreamError(f"{self.transport.where} did not report a log-probability for every token")
        return scores

    @cached_property
    def _one_letter(self) -> str:
        """A grammar of one token that is a character of its own (an ASCII letter), asked once."""
        return _only(self.tokenize("a", special=False)[:1])

    def _score_from_distribution(self, prompt: Sequence[int], token: int) -> float:
        """The log-probability of `token` after `prompt`, read from the whole distribution there (reported
        with one generated token that is a character of its own: an ASCII letter)."""
        answer = self._post("/completion", {
            "prompt": list(prompt), "n_predict": 1, "n_probs": EVERY_TOKEN, "post_sampling_probs": False,
            "grammar": self._one_letter, "temperature": 0, "cache_prompt": True,
            "response_fields": ["completion_probabilities"],
        })
        try:
            [entry] = answer["completion_probabilities"]
            return next(float(t["logprob"]) for t in entry["top_logprobs"] if t["id"] == token)
        except (KeyError, TypeError, ValueError, StopIteration):
            raise UpstreamError(f"{self.transport.where} did not report the distribution of a token") from None


def _only(tokens: Sequence[int]) -> str:
    """A grammar that allows exactly `tokens`, in order."""
    return "root ::= " + " ".join(f"<[{token}]>" for token in tokens)


def _inside_character(pieces: Iterable[bytes]) -> Iterator[bool]:
    """For each piece, whether the text up to it ends inside a UTF-8 character, as llama-server's
    `validate_utf8` tells: one of the last four bytes starts a character longer than what follows."""
    text = b""
    for piece in pieces:
        text = (text + piece)[-4:]
        yield any(back < _character_length(byte) for back, byte in enumerate(reversed(text), 1))


def _character_length(lead: int) -> int:
    """The bytes of the UTF-8 character that `lead` starts (0: not a lead byte of a longer one)."""
    if lead & 0xE0 == 0xC0:
        return 2
    if lead & 0xF0 == 0xE0:
        return 3
    return 4 if lead & 0xF8 == 0xF0 else 0
