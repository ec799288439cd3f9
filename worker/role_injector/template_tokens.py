"""The control strings a model's chat template writes (<|im_start|>, [INST], <start_of_turn>, <think>,
...), read from the Jinja text an engine reports (llama.cpp's `/props` `chat_template`), so that
user and variable text can be neutralised with them as with `formats.CONTROL_TOKEN`.

The template's text is scanned as it is: a control string stands in it literally (in a string literal
or as template data), so no Jinja is parsed or run. The BOS and EOS strings are added when the
template names `bos_token` / `eos_token` (the engine reports their values beside the template).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from role_injector.errors import UpstreamError
from role_injector.formats import CONTROL_TOKEN

# Every control string here starts with '<' or '[', as CONTROL_TOKEN's do, so `formats.neutralise`
# may keep skipping text without either character.
CONTROL_STRING = re.compile(
    r"<\|[^|<>\s]{1,64}\|>"  # ChatML, Llama 3, Phi, Granite, Command R: <|im_start|>, <|eot_id|>
    r"|<\uff5c[^\uff5c<>\s]{1,64}\uff5c>"  # DeepSeek's full-width bars: <｜User｜>, <｜end▁of▁sentence｜>
    r"|</?[A-Za-z_][A-Za-z0-9_.-]{0,63}>"  # tags: <s>, </s>, <bos>, <start_of_turn>, <think>, <tool_call>
    r"|\[/?[A-Z][A-Z0-9_]{1,63}\]"  # Mistral: [INST], [/INST], [SYSTEM_PROMPT], [TOOL_CALLS]
)
MAX_TEMPLATE_CHARS = 1024 * 1024  # real templates are a few KB (Qwen3's: 4 KB)


def template_control_tokens(template: str, bos_token: str | None = None,
                            eos_token: str | None = None) -> frozenset[str]:
    """The control strings `template` can write: those standing in its text, and the BOS / EOS strings
    where it uses `bos_token` / `eos_token` and they look like control strings."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise UpstreamError(f"the engine's chat template has {len(template)} characters, more than"
                            f" {MAX_TEMPLATE_CHARS}")
    found = set(CONTROL_STRING.findall(template))
    for name, value in (("bos_token", bos_token), ("eos_token", eos_token)):
        if value and name in template and CONTROL_STRING.fullmatch(value):
            found.add(value)
    return frozenset(found)


def control_pattern(tokens: Iterable[str]) -> re.Pattern[str]:
    """`formats.CONTROL_TOKEN` and `tokens` in one pattern for `formats.neutralise` (longest first, so
    a token is never neutralised as a shorter one inside it)."""
    distinct = set(tokens)
    if not all(token[:1] in ("<", "[") for token in distinct):
        raise ValueError("control tokens start with '<' or '[' (formats.neutralise skips text without them)")
    literal = "|".join(map(re.escape, sorted(distinct, key=lambda t: (-len(t), t))))
    return re.compile(f"{literal}|{CONTROL_TOKEN.pattern}" if literal else CONTROL_TOKEN.pattern)
