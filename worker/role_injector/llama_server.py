"""A small client for llama.cpp's `llama-server`: the one piece of the bake code that speaks its API
(chat, templates, tokens, scores), so an engine layer can take its place in one spot.

- `chat` answers an Ollama `/api/chat` body (what `ollama_proxy.rewrite_chat` builds) through the
  OpenAI-compatible `/v1/chat/completions`: the messages as they are, Ollama's sampling options
  under their OpenAI (or llama-server) names. `num_ctx` and `num_keep` have no per-request
  equivalent there: the window is the server's `-c`.
- `score` is the exact log-probability of given tokens after a prompt: `/completion` with a
  grammar that allows only those token ids (`<[id]>`, grammars/README.md), `n_probs` and
  `post_sampling_probs: false`, so each reported `logprob` is the model's own softmax over the raw
  logits for the forced token (tools/server/README.md: `n_probs`; server-context.cpp:
  `populate_token_probs`). One request per answer; the prompt's KV cache is reused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import urllib3

from role_injector.engines.answer import ChatAnswer, Delta
from role_injector.errors import UpstreamError, UpstreamRefused, UpstreamTimeout, UpstreamUnreachable

MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_SCORED_TOKENS = 8192
# Ollama's option -> the field of llama-server's /v1/chat/completions (OpenAI's, or its extensions).
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p", "seed": "seed",
           "num_predict": "max_tokens", "stop": "stop", "repeat_penalty": "repeat_penalty",
           "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}


class LlamaServerClient:
    def __init__(self, url: str, *, timeout: float = 300.0, connections: int = 4) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.pool = urllib3.PoolManager(maxsize=connections, retries=False)

    def close(self) -> None:
        self.pool.clear()

    def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        try:
            response = self.pool.request("POST", self.url + path, body=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, preload_content=False,
                                         timeout=urllib3.Timeout(connect=min(self.timeout, 10.0), read=self.timeout))
            data = response.read(MAX_ANSWER_BYTES + 1)
            response.release_conn()
        except urllib3.exceptions.TimeoutError:
            raise UpstreamTimeout(f"llama-server at {self.url} did not answer within {self.timeout:g} s",
                                  details={"url": self.url}) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise UpstreamUnreachable(f"cannot reach llama-server at {self.url}: {exc}",
                                      details={"url": self.url}) from None
        if len(data) > MAX_ANSWER_BYTES:
            raise UpstreamError(f"llama-server's answer to {path} is larger than {MAX_ANSWER_BYTES} bytes")
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if response.status != 200:
            error = value.get("error") if isinstance(value, dict) else None
            message = error.get("message") if isinstance(error, dict) else data[:500].decode("utf-8", "replace")
            raise UpstreamRefused(f"llama-server at {self.url} refused {path}: {message}",
                                  details={"status": response.status, "retriable": response.status == 503})
        if not isinstance(value, dict):
            raise UpstreamError(f"llama-server at {self.url} answered {path} with something that is not a JSON object")
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
            raise UpstreamError(f"llama-server at {self.url} answered a chat without a message") from None

    def apply_template(self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
        """The prompt the model's own chat template makes of `messages`."""
        answer = self._post("/apply-template", {"messages": list(messages),
                                                "add_generation_prompt": add_generation_prompt})
        prompt = answer.get("prompt")
        if not isinstance(prompt, str):
            raise UpstreamError(f"llama-server at {self.url} answered /apply-template without a prompt")
        return prompt

    def tokenize(self, text: str, *, special: bool, add_special: bool = False) -> list[int]:
        """Token ids of `text`; with `special`, control tokens written in it (`<|im_start|>`) are parsed;
        with `add_special`, the model's BOS comes first if it wants one (as for a prompt)."""
        answer = self._post("/tokenize", {"content": text, "add_special": add_special, "parse_special": special})
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError(f"llama-server at {self.url} answered /tokenize without token ids")
        return tokens

    def score(self, prompt: Sequence[int], tokens: Sequence[int]) -> list[float]:
        """The natural-log probability of each of `tokens` following `prompt` and the tokens before it."""
        if not tokens:
            return []
        if len(tokens) > MAX_SCORED_TOKENS:
            raise UpstreamError(f"cannot score more than {MAX_SCORED_TOKENS} tokens at once")
        answer = self._post("/completion", {
            "prompt": list(prompt), "n_predict": len(tokens), "n_probs": 1, "post_sampling_probs": False,
            "grammar": "root ::= " + " ".join(f"<[{token}]>" for token in tokens), "temperature": 0,
            "return_tokens": True, "cache_prompt": True, "response_fields": ["tokens", "completion_probabilities"],
        })
        probabilities = answer.get("completion_probabilities")
        if answer.get("tokens") != list(tokens) or not isinstance(probabilities, list):
            raise UpstreamError(f"llama-server at {self.url} did not follow the scoring grammar")
        scores = [float(p.get("logprob", math.nan)) for p in probabilities]
        if len(scores) != len(tokens) or any(math.isnan(s) for s in scores):
            raise UpstreamError(f"llama-server at {self.url} did not report a log-probability for every token")
        return scores
