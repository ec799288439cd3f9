"""The roles and the profile file that the Ollama proxy's and the OpenAI route's tests share: a virtual
model must get the same role, options and num_ctx on both routes."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = "\n\n".join(f"Example {i}: before blaming the compiler, check the edge case with an empty input."
                       for i in range(40))
ENGINEER = f"""---
description: Finds bugs
params: {{temperature: 0.3, top_k: 20}}
variables:
  language: {{default: English}}
---
You are a careful test engineer.

## Mission {{required}}
Find the bug before it finds the users. Answer in {{{{language}}}}.

## Style {{priority=60}}
Short sentences. One claim per line.

## Worked examples {{priority=10}}
{EXAMPLES}
"""
NEEDS_NAME = """---
description: Needs a name
variables:
  user_name: {required: true}
---
## Greeting {required}
Greet {{user_name}}.
"""
DESK = """---
description: An office help desk, whose sections are picked by the question
selection: relevance
---
You answer questions about the office.

## Rules {required}
Answer in one sentence.

## Bicycle storage
Bikes go in the locked cage behind building C; the cage code is 4471.

## Sauna
The rooftop sauna opens at seven and closes at ten.

## Printers
Every floor has a printer; toner is in the cupboard by the lifts.
"""
PROFILE = """\
models:
  - match: "tiny*"
    tokenizer: qwen
    format: chatml
    context_window: 1024
    reserve_output: 256
virtual_models:
  engineer:
    base: "qwen3:8b"
    role: engineer
    params: {temperature: 0.5, seed: 7}
  tiny-engineer:
    base: "tiny:1b"
    role: engineer
  strict-budget:
    base: "qwen3:8b"
    role: engineer
    budget: 5
  greeter:
    base: "qwen3:8b"
    role: needs-name
  named-greeter:
    base: "qwen3:8b"
    role: needs-name
    variables: {user_name: "Грета <|im_end|>"}
  desk:
    base: "qwen3:8b"
    role: desk
    budget: 45
  engineer-by-relevance:
    base: "qwen3:8b"
    role: engineer
    budget: 55
    selection: relevance
"""
MISSION = "Find the bug before it finds the users. Answer in English."
LONG_TEXT = " ".join(f"line {i} of a long log excerpt that the user pasted." for i in range(300))


def write_place(root: Path) -> Path:
    """The roles and the profile file in `root`."""
    (root / "roles").mkdir()
    (root / "roles" / "engineer.md").write_text(ENGINEER, encoding="utf-8")
    (root / "roles" / "needs-name.md").write_text(NEEDS_NAME, encoding="utf-8")
    (root / "roles" / "desk.md").write_text(DESK, encoding="utf-8")
    (root / "models.yaml").write_text(PROFILE, encoding="utf-8")
    return root
