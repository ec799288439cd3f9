"""Chat formats: each renders system + turns exactly as its model family's own chat template.

- chatml: Qwen2.5 / Qwen3 (with a system message; assistant turns without reasoning blocks)
- llama3: Meta-Llama-3-Instruct (contents trimmed, as the template does)
- mistral: Mistral-7B-Instruct-v0.3 (system text joined to the last user turn)
- gemma: Gemma 3 instruction-tuned (system text joined to the first user turn)

Control tokens of every format are neutralised in content, so no content can open or close a frame.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Speaker = Literal["user", "assistant"]

ZERO_WIDTH_SPACE = "\u200b"
CONTROL_TOKEN = re.compile(
    r"<\|[A-Za-z0-9_]+\|>"  # Qwen and Llama 3: <|im_start|>, <|eot_id|>, ...
    r"|</?s>|<(?:bos|eos|pad|start_of_turn|end_of_turn|start_of_image|end_of_image)>"  # Mistral, Gemma
    r"|</?(?:think|tool_call|tool_response|tools)>"  # Qwen's reasoning and tool frames (tokens of its own)
    r"|\[/?(?:INST|SYSTEM_PROMPT|AVAILABLE_TOOLS|TOOL_RESULTS|TOOL_CALLS)\]"  # Mistral
)


def neutralise(text: str, pattern: re.Pattern[str] = CONTROL_TOKEN) -> str:
    """Break every control token with a zero-width space after its first character. `pattern` may add an
    engine's own (`template_tokens.control_pattern`); every token it matches starts with '<' or '['."""
    if "<" not in text and "[" not in text:  # most text: skip the regex scan
        return text
    return pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)


@dataclass(frozen=True)
class Message:
    role: Speaker
    content: str


def render_chatml(system: str, turns: Sequence[Message]) -> str:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in turns]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def render_llama3(system: str, turns: Sequence[Message]) -> str:
    messages = [("system", system)] + [(m.role, m.content) for m in turns]
    body = "".join(f"<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>"
                   for role, content in messages)
    return f"<|begin_of_text|>{body}<|start_header_id|>assistant<|end_header_id|>\n\n"


def render_mistral(system: str, turns: Sequence[Message]) -> str:
    # Mistral and Gemma carry the system text inside a user turn; with none, an empty one carries it.
    if not any(m.role == "user" for m in turns):
        turns = [*turns, Message("user", "")]
    last_user = max(i for i, m in enumerate(turns) if m.role == "user")
    parts = ["<s>"]
    for i, m in enumerate(turns):
        if m.role == "user":
            text = f"{system}\n\n{m.content}" if i == last_user else m.content
            parts.append(f"[INST] {text}[/INST]")
        else:
            parts.append(f" {m.content.strip()}</s>")
    return "".join(parts)


def render_gemma(system: str, turns: Sequence[Message]) -> str:
    turns = turns or [Message("user", "")]
    parts = ["<bos>"]
    for i, m in enumerate(turns):
        prefix = f"{system}\n\n" if i == 0 else ""
        role = "model" if m.role == "assistant" else m.role
        parts.append(f"<start_of_turn>{role}\n{prefix}{m.content.strip()}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return "".join(parts)


RENDERERS: dict[str, Callable[[str, Sequence[Message]], str]] = {
    "chatml": render_chatml,
    "llama3": render_llama3,
    "mistral": render_mistral,
    "gemma": render_gemma,
}
FORMATS = tuple(RENDERERS)


def system_part(format_name: str, system: str) -> str | None:
    """The start of every prompt of this format up to the end of the system text (what Ollama's
    num_keep should cover), or None where the system text is not at the start (mistral: it goes
    into the last user turn)."""
    if format_name == "chatml":
        return f"<|im_start|>system\n{system}<|im_end|>\n"
    if format_name == "llama3":
        return f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system.strip()}<|eot_id|>"
    if format_name == "gemma":
        return f"<bos><start_of_turn>user\n{system}\n\n"
    return None


def render(format_name: str, system: str, turns: Sequence[Message]) -> str:
    """The whole prompt, ending where the model starts its answer. Content is neutralised here."""
    safe = [Message(m.role, neutralise(m.content)) for m in turns]
    return RENDERERS[format_name](neutralise(system), safe)
