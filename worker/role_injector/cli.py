"""Command line: `lint`, `render` and `serve`.

Exit codes: 0 success, 1 `lint` found broken roles, else the error's `exit_code` in
`role_injector.errors.KINDS` (2 for a wrong command line).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from role_injector.errors import RoleInjectorError
from role_injector.formats import FORMATS, Message
from role_injector.injection import InjectRequest, inject
from role_injector.profiles import load_profiles
from role_injector.settings import Settings
from role_injector.store import RoleStore
from role_injector.tokens import VOCABULARIES, load_tokenizer


def open_store(directory: str) -> RoleStore:
    return RoleStore(directory, max_file_bytes=Settings.from_env().max_role_bytes)


def cmd_lint(args: argparse.Namespace) -> int:
    store = open_store(args.dir)
    snapshot = store.current()
    tokenizers = [load_tokenizer(name) for name in VOCABULARIES]
    rows = [["role", "version", "sections", *(f"tokens ({t.name})" for t in tokenizers), "errors"]]
    for name, role in sorted(snapshot.roles.items()):
        counts = [str(t.count(role.content)) for t in tokenizers]
        rows.append([name, role.version[7:19], str(len(role.sections)), *counts, "-"])
    for error in snapshot.errors:
        rows.append([error.file, "-", "-", *("-" for _ in tokenizers), error.message])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    if not snapshot.roles and not snapshot.errors:
        print(f"no roles found in {args.dir}", file=sys.stderr)
        return 1
    return 1 if snapshot.errors else 0


def parse_vars(pairs: Sequence[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq:
            raise SystemExit(f"--var takes name=value, not {pair!r}")
        values[name] = value
    return values


def cmd_render(args: argparse.Namespace) -> int:
    store = open_store(args.roles)
    profiles = load_profiles(Settings.from_env().models_file)
    request = InjectRequest(
        role=args.role,
        turns=(Message("user", args.prompt),) if args.prompt is not None else (),
        variables=parse_vars(args.var),
        model=args.model,
        budget=args.budget,
        format=args.format,
    )
    result = inject(store.current(), profiles, request)
    print(result.prompt if args.prompt is not None or args.full_prompt else result.system)
    report = {
        "role": {"name": result.role.name, "version": result.role.version},
        "format": result.format,
        "usage": asdict(result.usage),
        "trim": {"trimmed": result.fit.trimmed, "kept": result.fit.kept,
                 "truncated": result.fit.truncated, "dropped": result.fit.dropped},
    }
    print(json.dumps(report, ensure_ascii=False, indent=2), file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from role_injector.server import serve  # gunicorn is only needed here

    return serve(host=args.host, port=args.port, roles_dir=args.roles, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    default_roles_dir = Settings.from_env().roles_dir
    parser = argparse.ArgumentParser(prog="role-injector", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    lint = commands.add_parser("lint", help="validate every role and print a table")
    lint.add_argument("dir", nargs="?", default=default_roles_dir)
    lint.set_defaults(run=cmd_lint)

    render = commands.add_parser("render", help="print a role fitted to a budget (report on stderr)")
    render.add_argument("role")
    render.add_argument("--roles", default=default_roles_dir)
    render.add_argument("--budget", type=int)
    render.add_argument("--model")
    render.add_argument("--format", choices=FORMATS)
    render.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    render.add_argument("--prompt", help="a user message: print the whole rendered prompt")
    render.add_argument("--full-prompt", action="store_true", help="print the rendered prompt, not the system text")
    render.set_defaults(run=cmd_render)

    serve = commands.add_parser("serve", help="serve the REST API and the Ollama proxy with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--roles", default=default_roles_dir)
    serve.add_argument("--workers", type=int, default=2)
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RoleInjectorError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return exc.kind.exit_code


if __name__ == "__main__":
    sys.exit(main())
