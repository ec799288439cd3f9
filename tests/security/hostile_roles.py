"""A roles folder of hostile and unlucky files, one per way a role file used to freeze, crash or
exhaust the worker, next to one good role that must keep serving.

`write_hostile_roles(folder)` returns, for each file that must fail, a part of its error message
(the limits name their environment variable); `VALID_BUT_HEAVY` are files that must load, quickly,
though a backtracking regex or a quadratic merge once choked on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import WorkerProcess, run_worker

MIB = 1024 * 1024
GOOD = "---\ndescription: A good role next to hostile ones\n---\nYou are fine.\n\n## Rules\nBe kind.\n"
CHAIN = 40  # roles extending each other in one line; RecursionError used to need ~300


def front(yaml: str, body: str = "Text.\n") -> str:
    return f"---\n{yaml}\n---\n{body}"


def alias_bomb(levels: int) -> str:
    """Billion laughs: each level lists the one above nine times (400 bytes → 300 MB expanded)."""
    lines = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return front("params:\n" + "\n".join(lines))


def headings(count: int, prefix: str) -> str:
    return "".join(f"## {prefix} {i}\nText {i}.\n\n" for i in range(count))


# name -> (file text, part of the error)
FAILING: dict[str, tuple[str, str]] = {
    "alias-bomb": (alias_bomb(9), "YAML aliases (*name) are not allowed"),
    "alias-merge": (front("params: &p {a: 1}\ndescription: {<<: *p}"), "YAML aliases"),
    "yaml-deep-flow": (front("params: {a: " + "[" * 20_000 + "]" * 20_000 + "}"),
                       "nested too deep at line 1: over the limit of 16 levels (set by ROLE_INJECTOR_MAX_YAML_DEPTH)"),
    "yaml-deep-block": (front("params:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(200))),
                        "over the limit of 16 levels"),
    "yaml-huge": (front("description: " + "x" * (100 * 1024)),
                  "over the limit of 65536 (set by ROLE_INJECTOR_MAX_YAML_BYTES)"),
    "yaml-long-int": (front("budget: " + "9" * 5_000), "a value cannot be read"),
    "yaml-bad-date": (front("params: {until: 2024-02-31}"), "a value cannot be read"),
    "yaml-python-tag": (front("params: !!python/object/apply:os.system [echo]"), "not valid YAML"),
    "params-date": (front("params: {stop_date: 2024-01-01}"), "params.stop_date is a date"),
    "params-set": (front("params: {stop: !!set {a, b}}"), "params.stop is of YAML type set"),
    "params-binary": (front("params: {blob: !!binary aGVsbG8=}"), "params.blob is of YAML type bytes"),
    "params-nan": (front("params: {temperature: .nan}"), "params.temperature is nan"),
    "params-huge-int": (front("params: {seed: 123456789012345678901234567890}"),
                        "params.seed is a whole number beyond 64 bits"),
    "params-int-key": (front("params: {1: a}"), "params has the key 1"),
    "budget-huge": (front("budget: 1000000000000"), "at most 100000000"),
    "partial-count-bomb": ("{{> count-1}}\n", "over the limit of 1000 (set by ROLE_INJECTOR_MAX_PARTIAL_EXPANSIONS)"),
    "partial-size-bomb": ("{{> size-3}}\n{{> size-3}}\n", "(set by ROLE_INJECTOR_MAX_RESOLVED_ROLE_BYTES)"),
    "partial-too-deep": ("{{> deep-1}}\n", "over the limit of 5 (set by ROLE_INJECTOR_MAX_PARTIAL_DEPTH)"),
    "partial-cycle": ("{{> ring-a}}\n", "partials include each other in a cycle: ring-a -> ring-b -> ring-a"),
    "extends-heavy-child": (
        front("extends: extends-heavy-parent", "## Child\n" + "c" * int(1.9 * MIB) + "\n{{> size-2}}\n"),
        "after partials and extends: over the limit of 4194304",
    ),
    "many-sections": (headings(30_000, "Heading"), "over the limit of 10000 (set by ROLE_INJECTOR_MAX_SECTIONS)"),
    "many-sections-merged": (front("extends: many-sections-parent", headings(6_000, "Child")),
                             "the role has 12000 sections: over the limit of 10000"),
    "chain-0": (front("extends: chain-1"), "over the limit of 8 (set by ROLE_INJECTOR_MAX_EXTENDS_DEPTH)"),
    "empty": ("", "the file is empty"),
}

# name -> file text: valid roles that once froze a worker (backtracking regexes) or loaded slowly.
VALID_BUT_HEAVY: dict[str, str] = {
    "braces-then-newlines": "Start {{" + "\n" * MIB + "end.\n",
    "braces-then-blanks": "Start {{ > " + " \t" * (MIB // 2) + "x\n",
    "heading-with-blanks": "# Title" + " " * MIB + "tail\nText.\n",
    "heading-with-braces": "# Title " + "{" * (MIB // 2) + " x\nText.\n",
    "heading-attributes-far": "# Title" + " " * MIB + "{priority=60}\nText.\n",
    "closers": "Quote" + ".)" * (MIB // 4) + "\n",
}

PARTIALS: dict[str, str] = {
    **{f"count-{i}": f"{{{{> count-{i + 1}}}}}" * 10 + "\n" for i in range(1, 4)},
    "count-4": "x\n",
    "size-1": "s" * (30 * 1024) + "\n",
    "size-2": "{{> size-1}}\n" * 10,
    "size-3": "{{> size-2}}\n" * 10,
    **{f"deep-{i}": f"{{{{> deep-{i + 1}}}}}\n" for i in range(1, 7)},
    "deep-7": "bottom\n",
    "ring-a": "{{> ring-b}}\n",
    "ring-b": "{{> ring-a}}\n",
}


def write_hostile_roles(folder: Path) -> dict[str, str]:
    """Write the hostile folder; returns file name -> a part of its expected error."""
    (folder / "_partials").mkdir(parents=True, exist_ok=True)
    (folder / "fine.md").write_text(GOOD)
    for name, text in PARTIALS.items():
        (folder / "_partials" / f"{name}.md").write_text(text)
    for name, (text, _) in FAILING.items():
        (folder / f"{name}.md").write_text(text)
    for name, text in VALID_BUT_HEAVY.items():
        (folder / f"{name}.md").write_text(text)
    (folder / "extends-heavy-parent.md").write_text(front("description: heavy", "## Parent\n" + "p" * int(1.9 * MIB)))
    (folder / "many-sections-parent.md").write_text(headings(6_000, "Parent"))
    for i in range(1, CHAIN):
        (folder / f"chain-{i}.md").write_text(front(f"extends: chain-{i + 1}") if i < CHAIN - 1 else "Root.\n")
    expected = {f"{name}.md": part for name, (_, part) in FAILING.items()}
    # Every role with more than 8 parents above it fails the same way; the ones nearer the root load.
    for i in range(1, CHAIN - 1 - 8):
        expected[f"chain-{i}.md"] = "(set by ROLE_INJECTOR_MAX_EXTENDS_DEPTH)"
    return expected


def loading_roles(folder: Path) -> set[str]:
    """The roles of the hostile folder that must load."""
    return {"fine", "extends-heavy-parent", "many-sections-parent", *VALID_BUT_HEAVY,
            *(f"chain-{i}" for i in range(CHAIN - 1 - 8, CHAIN))}


@contextmanager
def serve_roles(folder: Path, scratch: Path, workers: int = 1, **env: str) -> Iterator[WorkerProcess]:
    """`role-injector serve` (gunicorn) on `folder`, with exactly these settings."""
    (scratch / "metrics").mkdir(exist_ok=True)
    full_env = {"PROMETHEUS_MULTIPROC_DIR": str(scratch / "metrics"), **env}
    with run_worker(folder, scratch, env=full_env, workers=workers) as server:
        yield server
