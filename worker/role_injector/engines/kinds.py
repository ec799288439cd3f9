"""The kinds of engine the worker can put roles in front of, as settings and profile files name them
(`ROLE_INJECTOR_ENGINE`, an `engines:` entry's `kind`). Every kind but Ollama speaks OpenAI's Chat
Completions (`engines/openai_server.py`); they differ in what else they answer: a window, a tokenize
endpoint, a chat template (docs/engines.md)."""

from __future__ import annotations

from enum import StrEnum


class EngineKind(StrEnum):
    OLLAMA = "ollama"  # Ollama's native API (/api/chat)
    OPENAI = "openai"  # any OpenAI-compatible server: chat only (window and counts from the profile)
    LLAMA_CPP = "llama.cpp"  # llama-server: /props (window, template), /tokenize
    VLLM = "vllm"  # /v1/models max_model_len, /tokenize
    SGLANG = "sglang"  # /v1/models max_model_len, /tokenize
    LM_STUDIO = "lm-studio"  # /api/v1/models (window of a loaded model)
    TEXT_GENERATION_WEBUI = "text-generation-webui"  # chat only


KINDS = tuple(kind.value for kind in EngineKind)


def engine_kind(value: object, setting: str) -> EngineKind:
    """`value` as a kind, else ValueError naming `setting` and the kinds there are."""
    for kind in EngineKind:
        if value == kind.value:
            return kind
    raise ValueError(f"{setting} must be one of {', '.join(KINDS)}, not {value!r}")
