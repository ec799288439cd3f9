"""The context policy (role_injector.context): a role that stays byte-identical across the turns of a
conversation, history dropped in rare chunks and always reported, the last exchange always kept,
a prompt that always fits."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from role_injector.context import DROP_SHARE, first_kept, role_budget
from role_injector.errors import ContextOverflow, RoleInjectorError
from role_injector.fitting import FitCache
from role_injector.formats import RENDERERS, Message, render_chatml
from role_injector.injection import Injection, InjectRequest, inject, turn_costs
from role_injector.options import RoleOptions
from role_injector.profiles import load_profiles
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import load_tokenizer
from tests.worker.conftest import RoleWriter

PROFILES = load_profiles()
QWEN = load_tokenizer("qwen")
CACHE = FitCache()
WORDS = ["the", "deploy", "failed", "on", "second", "node", "because", "its", "disk", "was", "full", "so", "we",
         "rolled", "back", "and", "cleared", "logs", "then", "queue", "drained", "slowly", "while", "retries",
         "piled", "up", "behind", "a", "stuck", "consumer"]
SECTIONS = "\n\n".join(
    f"## Topic {i} {{priority={90 - 5 * i}}}\n" + " ".join(f"Rule {i}.{j}: check the {w} first." for j, w in
                                                         enumerate(WORDS[: 10 + 3 * i]))
    for i in range(12)
)
ROLE = f"""---
description: A role of about 3,300 tokens with a required core and prioritised topics
model: qwen3:8b
variables:
  team: {{default: Platform}}
---
You assist the {{{{team}}}} team.

## Core {{required}}
Answer briefly. Say what you do not know.

{SECTIONS}
"""


@pytest.fixture(scope="module")
def roles(tmp_path_factory: pytest.TempPathFactory) -> RoleSet:
    directory = tmp_path_factory.mktemp("roles")
    (directory / "assistant.md").write_text(ROLE, encoding="utf-8")
    lean = ROLE.replace("---\n", "---\ncontext_policy: shrink_role\nhistory_share: 0.5\n", 1)
    (directory / "lean.md").write_text(lean, encoding="utf-8")
    return RoleStore(directory).current()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def conversation(seed: int, sizes: Sequence[tuple[int, int]]) -> list[Message]:
    """user, assistant, user, ... of the given word counts (the last answer is left out)."""
    rng = random.Random(seed)
    turns: list[Message] = []
    for question, answer in sizes:
        turns += [Message("user", text(rng, question)), Message("assistant", text(rng, answer))]
    return turns[:-1]


# --- the cut: first_kept -------------------------------------------------------------------------

costs_lists = st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=40)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    costs = draw(costs_lists)
    starts = sorted(draw(st.sets(st.integers(min_value=0, max_value=len(costs) - 1), min_size=1)))
    return costs, starts, draw(st.integers(min_value=-50, max_value=3000))


@settings(max_examples=500, deadline=None)
@given(history=histories())
def test_the_cut_is_an_exchange_start_and_what_is_kept_fits(history: tuple[list[int], list[int], int]) -> None:
    costs, starts, room = history
    first = first_kept(costs, starts, room)
    assert first == 0 or first in starts
    assert (first == 0) == (sum(costs) <= room) or first == starts[0] == 0
    assert sum(costs[first:]) <= room or first == starts[-1]


@settings(max_examples=500, deadline=None)
@given(history=histories(), more=costs_lists, new_starts=st.lists(st.booleans(), min_size=40, max_size=40))
def test_the_cut_only_moves_forward_and_only_once_per_chunk(
    history: tuple[list[int], list[int], int], more: list[int], new_starts: list[bool]
) -> None:
    costs, starts, room = history
    longer = costs + more
    longer_starts = starts + [len(costs) + i for i, new in enumerate(new_starts[: len(more)]) if new]
    before, after = first_kept(costs, starts, room), first_kept(longer, longer_starts, room)
    assert after >= before
    if room > 0 and sum(costs) > room and before != starts[-1]:
        chunk = math.ceil(room * DROP_SHARE)
        if math.ceil((sum(longer) - room) / chunk) == math.ceil((sum(costs) - room) / chunk):
            assert after == before, "the conversation grew by less than a chunk: the cut stays"


def test_the_role_budget_leaves_the_share_of_the_window() -> None:
    assert role_budget(None, 8192, 1024, 0.25) == 8192 - 1024 - 2048
    assert role_budget(3000, 8192, 1024, 0.25) == 3000
    assert role_budget(9000, 8192, 1024, 0.25) == 5120
    assert role_budget(None, 1000, 900, 0.25) == 0


# --- keep_role through inject, turn after turn ---------------------------------------------------


def ask(roles: RoleSet, turns: Sequence[Message], **fields: object) -> Injection:
    """`fields` of InjectRequest and of its options (budget, context_policy, history_share)."""
    options = {name: fields.pop(name) for name in ("budget", "context_policy", "history_share") if name in fields}
    request = InjectRequest("assistant", tuple(turns), RoleOptions(**options), **fields)  # type: ignore[arg-type]
    return inject(roles, PROFILES, request, CACHE)


shapes = st.fixed_dictionaries({
    "model": st.sampled_from(["qwen3:8b", "qwen3:8b", "llama3.1:8b", "mistral:7b", "gemma3:4b"]),
    "context_window": st.sampled_from([1536, 2048, 3072, 4096]),
    "reserve_output": st.sampled_from([0, 128, 512]),
    "history_share": st.sampled_from([0.1, 0.25, 0.4, 0.6]),
    "attached_tokens": st.sampled_from([0, 0, 40]),
})


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10**6),
       sizes=st.lists(st.tuples(st.integers(1, 200), st.integers(1, 300)), min_size=1, max_size=24))
def test_keep_role_turn_after_turn(roles: RoleSet, shape: dict[str, object], seed: int,
                                   sizes: list[tuple[int, int]]) -> None:
    """The role is byte-identical on every turn; what is dropped is reported and is the oldest
    messages; the last user message is always kept; the prompt fits; the cut only moves forward and
    between cuts each prompt extends the one before."""
    full = conversation(seed, sizes)
    profile = PROFILES.for_model(str(shape["model"]))
    usable = profile.usable_window(int(shape["context_window"]))  # type: ignore[call-overload]
    reserve, attached = int(shape["reserve_output"]), int(shape["attached_tokens"])  # type: ignore[call-overload]
    assume(role_budget(None, usable, reserve, float(shape["history_share"])) >= 100)  # type: ignore[arg-type]
    tokenizer = load_tokenizer(profile.tokenizer)
    system: str | None = None
    previous: Injection | None = None
    for end in range(1, len(full) + 1, 2):  # a request at every user turn
        turns = full[:end]
        try:
            result = ask(roles, turns, **shape)
        except ContextOverflow as error:
            # Only when the last message cannot fit beside the role (or the answer's reserve); with
            # estimated counts the whole prompt decides, which may merge a token or two at the joins.
            needed = error.details["messages_tokens"] + error.details.get("system_tokens", 0) + reserve + attached
            assert needed > usable - (0 if profile.exact else 4)
            break
        system = system or result.system
        assert result.system == system, "the role is byte-identical on every turn"
        assert result.turns == tuple(turns[result.dropped_messages:]), "exactly the oldest messages are dropped"
        assert result.turns[-1] == turns[-1], "the last message is always kept"
        assert result.turns[0].role == "user" or result.dropped_messages == 0
        assert result.prompt == RENDERERS[result.format](result.system, result.turns)
        assert result.usage.prompt_tokens == tokenizer.count_prompt(result.prompt)
        assert result.usage.prompt_tokens + reserve + attached <= usable
        if previous is not None:
            assert result.dropped_messages >= previous.dropped_messages
            if result.dropped_messages == previous.dropped_messages and result.format == "chatml":
                # nothing newly dropped: the new prompt only adds to the end of the last one
                assert result.prompt.startswith(previous.prompt.removesuffix("<|im_start|>assistant\n"))
        previous = result


def test_drops_come_in_rare_chunks_and_cost_little_to_a_prefix_cache(roles: RoleSet) -> None:
    """150 turns in a 4k window: the cut moves about once per two thirds of the conversation's room,
    and the tokens a prefix cache would evaluate again stay under twice the new ones."""
    full = conversation(7, [(40, 90)] * 150)
    shape = {"model": "qwen3:8b", "context_window": 4096, "reserve_output": 512}
    results = [ask(roles, full[:end], **shape) for end in range(1, len(full) + 1, 2)]
    assert len({r.system for r in results}) == 1
    dropped = [r.dropped_messages for r in results]
    cuts = sum(1 for a, b in itertools.pairwise(dropped) if b != a)
    costs = turn_costs("chatml", full, QWEN, CACHE)
    room = 4096 - 512 - results[0].usage.system_tokens - costs.frame
    grown = sum(costs.each) - room
    assert 1 <= cuts <= math.ceil(grown / math.ceil(room * DROP_SHARE)) + 1, (cuts, grown, room)

    evaluated = added = 0
    for end, before, after in zip(range(3, len(full) + 1, 2), results, results[1:], strict=False):
        old, new = QWEN.encoding.encode(before.prompt, allowed_special="all"), \
            QWEN.encoding.encode(after.prompt, allowed_special="all")
        common = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b), min(len(old), len(new)))
        evaluated += len(new) - common
        # what the turn added: the answer and the next question, as a prompt that kept everything grows
        added += QWEN.count_prompt(render_chatml("", full[:end])) - QWEN.count_prompt(render_chatml("", full[:end - 2]))
    assert evaluated / added <= 2.0, (evaluated, added)


def test_the_role_changes_only_with_what_sets_its_budget(roles: RoleSet) -> None:
    turns = conversation(3, [(30, 60)] * 4)
    base = ask(roles, turns, context_window=2048, reserve_output=256).system
    assert ask(roles, turns[:1], context_window=2048, reserve_output=256).system == base
    assert ask(roles, turns, context_window=2048, reserve_output=256, attached_tokens=300).system == base
    # the documented events: a different share, window, reserve or budget
    assert ask(roles, turns, context_window=2048, reserve_output=256, history_share=0.5).system != base
    assert ask(roles, turns, context_window=3072, reserve_output=256).system != base
    assert ask(roles, turns, context_window=2048, reserve_output=0).system != base
    assert ask(roles, turns, context_window=2048, reserve_output=256, budget=300).system != base


def test_the_last_message_that_cannot_fit_beside_the_role_is_a_context_overflow(roles: RoleSet) -> None:
    long = [Message("user", text(random.Random(1), 700))]
    with pytest.raises(ContextOverflow) as error:
        ask(roles, long, context_window=2048, reserve_output=256)
    assert error.value.details["context_policy"] == "keep_role"
    assert error.value.details["system_tokens"] > 0 and "keep_role never cuts it" in error.value.message
    # shrink_role lets the role give way to the same message
    shrunk = ask(roles, long, context_window=2048, reserve_output=256, context_policy="shrink_role")
    kept = ask(roles, [], context_window=2048, reserve_output=256)
    assert shrunk.dropped_messages == 0 and shrunk.usage.budget < kept.usage.budget
    # a message that cannot fit even without a role names only the message and the answer
    with pytest.raises(ContextOverflow) as error:
        ask(roles, [Message("user", text(random.Random(1), 3000))], context_window=2048)
    assert "system_tokens" not in error.value.details and "the last message needs" in error.value.message


def test_history_is_cut_only_where_an_exchange_starts(roles: RoleSet) -> None:
    turns = conversation(5, [(60, 100)] * 5)
    assert ask(roles, turns, context_window=2048, reserve_output=256).dropped_messages > 0
    # The Ollama proxy counts tool results as user turns but cuts only before real user messages.
    starts = frozenset({0, 4})
    assert ask(roles, turns, context_window=2048, reserve_output=256, exchange_starts=starts).dropped_messages == 4
    with pytest.raises(ContextOverflow):  # nowhere to cut: too long, but never cut in an exchange
        ask(roles, turns, context_window=2048, reserve_output=256, exchange_starts=frozenset({0}))


# --- choosing the policy -------------------------------------------------------------------------


def test_the_policy_comes_from_the_request_else_the_role(roles: RoleSet) -> None:
    turns = conversation(1, [(200, 300)] * 6)
    lean = inject(roles, PROFILES, InjectRequest("lean", tuple(turns), context_window=8192), CACHE)
    assert (lean.usage.context_policy, lean.usage.history_share, lean.dropped_messages) == ("shrink_role", 0.5, 0)
    kept = inject(roles, PROFILES, InjectRequest("lean", tuple(turns), options=RoleOptions(context_policy="keep_role"),
                                                 context_window=4096), CACHE)
    assert kept.usage.context_policy == "keep_role" and kept.usage.budget == 4096 - 1024 - 2048
    default = ask(roles, turns, context_window=4096)
    assert (default.usage.context_policy, default.usage.history_share) == ("keep_role", 0.25)
    assert default.dropped_messages > 0


@pytest.mark.parametrize(("field", "value"), [("context_policy", "drop_all"), ("history_share", 1.0),
                                              ("history_share", 0), ("history_share", True)])
def test_wrong_policies_are_invalid_requests(roles: RoleSet, field: str, value: object) -> None:
    with pytest.raises(RoleInjectorError) as error:
        ask(roles, [], **{field: value})
    assert error.value.code == "invalid_request" and field in error.value.message


@pytest.mark.parametrize(("front_matter", "problem"), [
    ("context_policy: sometimes", "context_policy' must be one of keep_role, shrink_role"),
    ("history_share: 2", "history_share' must be a number greater than 0 and less than 1"),
    ("history_share: half", "history_share' must be a number"),
])
def test_wrong_policies_in_front_matter_are_role_errors(write_role: RoleWriter, roles_dir: Path,
                                                        front_matter: str, problem: str) -> None:
    write_role("odd", f"---\n{front_matter}\n---\nHello.\n")
    (error,) = RoleStore(roles_dir).current().errors
    assert problem in error.message


def test_a_child_role_inherits_the_policy(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("parent", "---\ncontext_policy: shrink_role\nhistory_share: 0.4\n---\nParent.\n")
    write_role("child", "---\nextends: parent\n---\n## Extra\nMore.\n")
    write_role("plain", "Plain.\n")
    snapshot = RoleStore(roles_dir).current()
    child = snapshot.roles["child"]
    assert (child.context_policy, child.history_share) == ("shrink_role", 0.4)
    assert (snapshot.roles["plain"].context_policy, snapshot.roles["plain"].history_share) == (None, None)


def test_num_keep_is_the_system_part_of_the_prompt(roles: RoleSet) -> None:
    result = ask(roles, conversation(2, [(10, 10)] * 2))
    assert result.usage.num_keep == QWEN.count_prompt(render_chatml(result.system, [])
                                                      .removesuffix("<|im_start|>assistant\n"))
    assert ask(roles, [], model="mistral:7b").usage.num_keep is None  # its system text is in the last user turn
