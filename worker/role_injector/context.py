"""The context policy: how a role and a conversation share the context window, turn after turn.

A model server (llama.cpp under Ollama) reuses the longest common token prefix of consecutive
prompts and evaluates everything after the first changed token again. A role in front of the
conversation must therefore stay byte-identical from turn to turn, and when the conversation has
to lose messages, the point where it is cut must not move on every turn.

- `keep_role` (the default): the role's budget depends on nothing that changes during a
  conversation: its `budget` (request, virtual model or role; else no limit), capped so that
  `history_share` of the window stays free for the conversation (`role_budget`). When the
  conversation outgrows the room the role leaves, its oldest exchanges are dropped in chunks
  (`first_kept`): the cut moves only once per chunk of conversation, so between drops the prompt
  only grows at its end. The last exchange is never dropped; if it alone cannot fit, the request
  fails with `ContextOverflow`. The role itself is never cut to make room.
- `shrink_role`: no message is ever dropped; the role gives way, fitted to what the conversation
  leaves, in steps of `BUDGET_STEP` tokens. Its text changes every time the conversation crosses
  a step, and each change makes the model server evaluate the whole prompt again.

`role_injector.injection.inject` applies the policy; the REST API, the Ollama proxy and the
OpenAI-compatible route all go through it.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

PolicyName = Literal["keep_role", "shrink_role"]
CONTEXT_POLICIES: tuple[PolicyName, ...] = ("keep_role", "shrink_role")
DEFAULT_POLICY: PolicyName = "keep_role"
DEFAULT_HISTORY_SHARE = 0.25
# Each drop frees this share of the conversation's room. A drop makes the server evaluate again what
# is kept (at most 1 - DROP_SHARE of the room), once per DROP_SHARE of the room of new turns: at
# most (1 - DROP_SHARE) / DROP_SHARE = 0.5 re-evaluated tokens per new token on top of the new ones.
DROP_SHARE = 2 / 3
# shrink_role: the role's budget shrinks in steps of this many tokens.
BUDGET_STEP = 512


@dataclass(frozen=True)
class ContextPolicy:
    name: PolicyName = DEFAULT_POLICY
    history_share: float = DEFAULT_HISTORY_SHARE  # keep_role: the window's share kept for the conversation

    @classmethod
    def of(cls, name: str | None, share: float | None) -> ContextPolicy:
        """The policy named (checked: ValueError), the defaults for what is None."""
        return cls(policy_name(DEFAULT_POLICY if name is None else name),
                   DEFAULT_HISTORY_SHARE if share is None else history_share(share))


def policy_name(value: object) -> PolicyName:
    """`value` as a policy name, or ValueError saying which names there are."""
    for name in CONTEXT_POLICIES:
        if value == name:
            return name
    raise ValueError(f"must be one of {', '.join(CONTEXT_POLICIES)}, not {value!r}")


def history_share(value: object) -> float:
    """`value` as a share of the window, or ValueError: a number greater than 0 and less than 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"must be a number greater than 0 and less than 1, not {value!r}")
    return float(value)


def role_budget(explicit: int | None, usable_window: int, reserve_output: int, share: float) -> int:
    """keep_role: the role's budget, the same on every turn: `explicit` (or no limit), capped so that
    `share` of the window is left for the conversation beside the answer's reserve."""
    cap = usable_window - reserve_output - math.ceil(share * usable_window)
    return max(0, cap if explicit is None else min(explicit, cap))


def step_down(tokens: int) -> int:
    """shrink_role: what the context leaves, rounded down to a step."""
    return tokens - tokens % BUDGET_STEP if tokens >= BUDGET_STEP else tokens


def first_kept(costs: Sequence[int], starts: Sequence[int], room: int) -> int:
    """keep_role: how many of the oldest messages to drop so that the rest fits in `room` tokens.

    `costs[i]` is what message i adds to the prompt; `starts` are the ascending indexes where an
    exchange starts (a user message), the only places where the kept part may begin. The cut is
    found from the start of the conversation, not from its end: with `chunk` = DROP_SHARE of the
    room, the messages in the first `j` chunks of tokens are dropped, the least `j` that makes the
    rest fit, each chunk boundary moved on to the next exchange. While the conversation grows by
    less than a chunk, `j`, and so the cut, stays where it was. Returns 0 when everything fits, and
    the last exchange's start when nothing less would do (the caller checks that it fits).
    """
    total = sum(costs)
    if total <= room or not starts:
        return 0
    if room <= 0:
        return starts[-1]
    chunk = max(1, math.ceil(room * DROP_SHARE))
    dropped_tokens = math.ceil((total - room) / chunk) * chunk
    offsets = list(itertools.accumulate(costs, initial=0))  # offsets[i]: tokens before message i
    boundaries = [offsets[s] for s in starts]
    found = bisect.bisect_left(boundaries, dropped_tokens)
    return starts[min(found, len(starts) - 1)]
