"""Command line: `lint`, `render`, `serve`; `ollama create|modelfile|list` (a role as an Ollama
model); `bake dataset|create` (a role trained into a LoRA adapter; docs/bake.md); `export` (a role as
another program's files: text-generation-webui's character and instruction template).

Exit codes: 0 success, 1 `lint` found broken roles, else the error's `exit_code` in
`role_injector.errors.KINDS` (2 for a wrong command line); 141 when the reader of the output went away
(`| head`), as for any program that SIGPIPE ends.

The commands that talk to Ollama import its client (urllib3, and with it ssl) when they run, not here:
`serve` has gevent patch ssl before anything imports it (`server.patch_for_gevent`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from role_injector import text_generation_webui
from role_injector.errors import KINDS, InvalidRequest, RoleInjectorError
from role_injector.fitting import FitCache
from role_injector.formats import FORMATS, Message
from role_injector.injection import InjectRequest, inject
from role_injector.options import SELECTIONS, RoleOptions
from role_injector.profiles import load_profiles
from role_injector.settings import Settings
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import VOCABULARIES, load_tokenizer

if TYPE_CHECKING:
    from role_injector import bake
    from role_injector.ollama_client import OllamaClient

GGUF_MAGIC = b"GGUF"


def open_store(directory: str) -> RoleStore:
    return RoleStore(directory, limits=Settings.from_env().role_limits)


def fit_cache() -> FitCache:
    """The command's own cache of counts and fits, bounded like a worker's (ROLE_INJECTOR_FIT_CACHE_BYTES)."""
    return FitCache(Settings.from_env().fit_cache_bytes)


def cmd_lint(args: argparse.Namespace) -> int:
    store = open_store(args.dir)
    snapshot = store.current()
    if snapshot.directory_error:
        print(f"error: {snapshot.directory_error}", file=sys.stderr)
        return 1
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
        options=RoleOptions(budget=args.budget, selection=args.selection, variables=parse_vars(args.var)),
        model=args.model,
        format=args.format,
        query=args.query,
    )
    result = inject(store.current(), profiles, request, fit_cache())
    print(result.prompt if args.prompt is not None or args.full_prompt else result.system)
    trim = result.fit.report()
    sections = trim.pop("sections")
    report = {
        "role": {"name": result.role.name, "version": result.role.version},
        "format": result.format,
        "usage": asdict(result.usage),
        "trim": {**trim, "sections": None},
    }
    # Indented JSON, one section a line, so the per-section report reads as a table.
    lines = ",\n".join("      " + json.dumps(section, ensure_ascii=False) for section in sections)
    text = json.dumps(report, ensure_ascii=False, indent=2)
    print(text.replace('"sections": null', f'"sections": [\n{lines}\n    ]' if sections else '"sections": []'),
          file=sys.stderr)
    return 0


def current_roles(args: argparse.Namespace) -> RoleSet:
    return open_store(args.roles).current()


def client(args: argparse.Namespace, **options: Any) -> OllamaClient:
    from role_injector.ollama_client import OllamaClient

    settings = Settings.from_env()
    return OllamaClient.at(args.ollama_url, timeout=settings.upstream_timeout,
                           max_json_bytes=settings.max_upstream_json_bytes, **options)


def print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def follow(lines: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Print Ollama's progress lines on stderr; return the last one (our summary)."""
    last: dict[str, Any] = {}
    for line in lines:
        last = line
        if line.get("status") != "success":
            done = f" ({line['completed']}/{line['total']})" if line.get("total") else ""
            print(f"{line.get('status', '')}{done}", file=sys.stderr)
    return last


def cmd_ollama_create(args: argparse.Namespace) -> int:
    from role_injector import ollama_models

    model = ollama_models.plan_role_model(current_roles(args), load_profiles(Settings.from_env().models_file),
                                          fit_cache(), args.role, base=args.base, name=args.name,
                                          budget=args.budget, variables=parse_vars(args.var))
    print_json(follow(ollama_models.create_role_model(client(args), model, replace=args.replace)))
    return 0


def cmd_ollama_modelfile(args: argparse.Namespace) -> int:
    from role_injector import ollama_models

    model = ollama_models.plan_role_model(current_roles(args), load_profiles(Settings.from_env().models_file),
                                          fit_cache(), args.role, base=args.base, name=args.name,
                                          budget=args.budget, variables=parse_vars(args.var))
    text, changed = ollama_models.role_modelfile(model)
    sys.stdout.write(text)
    if changed:
        print("note: SYSTEM in this Modelfile differs from the fitted role in characters a Modelfile cannot carry "
              "(see its comment); `role-injector ollama create` sends the exact text", file=sys.stderr)
    return 0


def cmd_ollama_list(args: argparse.Namespace) -> int:
    from role_injector import ollama_models

    ollama = client(args)
    models = ollama_models.list_role_models(ollama, current_roles(args))
    deleted = ollama_models.prune_stale_labels(ollama, models) if args.prune else []
    if args.json:
        print_json({"models": [m.as_json() for m in models], "deleted": deleted})
        return 0
    rows = [["model", "role", "made from", "role now", "status"]]
    rows += [[m.name, m.role, m.version, m.current or "-", m.status] for m in models]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for name in deleted:
        print(f"deleted stale label {name}", file=sys.stderr)
    return 0


class ProgressBar:
    """One line on stderr redrawn in place, only when stderr is a terminal."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.active = stream.isatty()
        self.phase = ""
        self.started = self.drawn = 0.0

    def __call__(self, progress: bake.Progress) -> None:
        if not self.active:
            return
        now = time.monotonic()
        if progress.phase != self.phase:
            self.close()
            self.phase, self.started = progress.phase, now
        if now - self.drawn < 0.1 and progress.done < progress.total:
            return
        self.drawn = now
        filled = 30 * progress.done // max(1, progress.total)
        rate = progress.done / (now - self.started) if now > self.started else 0.0
        left = f", {(progress.total - progress.done) / rate:.0f} s left" if rate else ""
        failed = f", {progress.failed} failed" if progress.failed else ""
        self.stream.write(f"\r{progress.phase:<9} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{progress.done}/{progress.total}{failed}, {rate:.1f}/s{left}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self.phase:
            self.stream.write("\n")
            self.stream.flush()
            self.phase = ""


def cmd_bake_dataset(args: argparse.Namespace) -> int:
    from role_injector import bake

    roles = current_roles(args)
    teacher = bake.Teacher.for_role(
        client(args, retries=args.retries, retry_delay=args.retry_delay, connections=args.concurrency),
        roles, load_profiles(Settings.from_env().models_file), fit_cache(), args.role, args.model,
        RoleOptions(budget=args.budget, variables=parse_vars(args.var)))
    teacher.system_tokens()  # a missing variable or a budget too small: fail before asking anything
    bake.check_share(args.held_out)
    files = bake.DatasetFiles.for_output(Path(args.out))
    bar = ProgressBar()
    try:
        generated, failures = 0, []
        if args.questions:
            questions = bake.read_questions(Path(args.questions))
        else:
            files.questions.parent.mkdir(parents=True, exist_ok=True)
            questions, generated, failures = bake.generate_questions(teacher, args.generate, files.questions,
                                                                     args.concurrency, bar)
        summary = bake.bake_dataset(teacher, questions, files, held_out=args.held_out,
                                    concurrency=args.concurrency, on_progress=bar)
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: what was answered is saved; run the same command to go on", file=sys.stderr)
        return 130
    bar.close()
    summary.generated, summary.generation_failures = generated, failures
    print_json(summary.as_json())
    if summary.failed or failures:
        print(f"{summary.failed} question(s) and {len(failures)} section(s) failed; run the same command again "
              "to retry them", file=sys.stderr)
        codes = [f["code"] for f in summary.failures] or ["bad_upstream"]
        return KINDS[codes[0]].exit_code
    return 0


def read_adapter(path: Path) -> tuple[str, str]:
    """(file name for Ollama, sha256 digest) of a GGUF adapter file."""
    from role_injector.ollama_client import file_digest

    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the adapter {path}: {exc}", details={"file": str(path)}) from None
    if magic != GGUF_MAGIC:
        raise InvalidRequest(f"{path} is not a GGUF file; convert a PEFT adapter with llama.cpp's "
                             "convert_lora_to_gguf.py (docs/bake.md)", details={"file": str(path)})
    name = path.name if path.name.endswith(".gguf") else "adapter.gguf"  # Ollama tells GGUF by the name
    return name, file_digest(path)


def cmd_bake_create(args: argparse.Namespace) -> int:
    from role_injector import ollama_models

    adapter = Path(args.adapter)
    name, digest = read_adapter(adapter)
    model = ollama_models.plan_baked_model(current_roles(args), load_profiles(Settings.from_env().models_file),
                                           fit_cache(), args.role, adapter=(name, digest), base=args.base,
                                           name=args.name, reminder_budget=args.reminder_budget,
                                           variables=parse_vars(args.var))
    ollama = client(args)
    if ollama.has_blob(digest):
        print(f"the adapter is in Ollama already ({digest})", file=sys.stderr)
    else:
        print(f"uploading {adapter} ({adapter.stat().st_size} bytes) as {digest}", file=sys.stderr)
        ollama.push_blob(adapter, digest)
    print_json(follow(ollama_models.create_role_model(ollama, model, replace=args.replace)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    export = text_generation_webui.export_role(current_roles(args), load_profiles(Settings.from_env().models_file),
                                               fit_cache(), args.role, model=args.model, budget=args.budget,
                                               variables=parse_vars(args.var))
    try:
        written = export.write(Path(args.out))
    except OSError as exc:
        raise InvalidRequest(f"cannot write into {args.out}: {exc.strerror or exc}",
                             details={"out": args.out}) from None
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    print_json(export.summary())
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
    render.add_argument("--selection", choices=SELECTIONS,
                        help="how sections beyond the required ones are chosen (default: the role's)")
    render.add_argument("--query", help="rank sections by relevance to this text (implies --selection relevance)")
    render.add_argument("--prompt", help="a user message: print the whole rendered prompt")
    render.add_argument("--full-prompt", action="store_true", help="print the rendered prompt, not the system text")
    render.set_defaults(run=cmd_render)

    serve = commands.add_parser("serve", help="serve the REST API and the Ollama proxy with gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--roles", default=default_roles_dir)
    serve.add_argument("--workers", type=int, default=2)
    serve.set_defaults(run=cmd_serve)

    ollama_url = Settings.from_env().ollama_url

    def role_options(command: argparse.ArgumentParser, ollama: bool = True) -> None:
        command.add_argument("role")
        command.add_argument("--roles", default=default_roles_dir)
        command.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
        if ollama:
            command.add_argument("--ollama-url", default=ollama_url, help="default: ROLE_INJECTOR_OLLAMA_URL")

    def model_options(command: argparse.ArgumentParser, creates: bool = True) -> None:
        command.add_argument("--base", help="the base model (default: the role's model)")
        command.add_argument("--name", help="the model to create (default: the role's name)")
        if creates:
            command.add_argument("--replace", action="store_true",
                                 help="overwrite a model of that name that Role Injector did not make")

    ollama = commands.add_parser("ollama", help="the role as an Ollama model: its SYSTEM, num_ctx and params")
    ollama_commands = ollama.add_subparsers(dest="ollama_command", required=True)
    create = ollama_commands.add_parser("create", help="create the model in Ollama (progress on stderr)")
    role_options(create)
    model_options(create)
    create.add_argument("--budget", type=int, help="tokens for the system prompt (default: the role's, else "
                        "what leaves the conversation its share of the window, as the keep_role policy does)")
    create.set_defaults(run=cmd_ollama_create)
    modelfile = ollama_commands.add_parser("modelfile", help="print an equivalent Modelfile")
    role_options(modelfile, ollama=False)
    model_options(modelfile, creates=False)
    modelfile.add_argument("--budget", type=int)
    modelfile.set_defaults(run=cmd_ollama_modelfile)
    listing = ollama_commands.add_parser("list", help="the models created from roles, and which are stale")
    listing.add_argument("--roles", default=default_roles_dir)
    listing.add_argument("--ollama-url", default=ollama_url)
    listing.add_argument("--prune", action="store_true", help="delete stale labels no model name shares")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=cmd_ollama_list)

    baking = commands.add_parser("bake", help="train the role into the model: dataset, then adapter → model")
    bake_commands = baking.add_subparsers(dest="bake_command", required=True)
    dataset = bake_commands.add_parser("dataset", help="question/answer pairs from the model with the role")
    role_options(dataset)
    dataset.add_argument("--model", required=True, help="the teacher: the base model, given the fitted role")
    source = dataset.add_mutually_exclusive_group(required=True)
    source.add_argument("--questions", metavar="FILE", help="one question per line, or .jsonl {\"question\"}")
    source.add_argument("--generate", type=int, metavar="N", help="let the model write N questions from the role")
    dataset.add_argument("--out", required=True, metavar="FILE.jsonl")
    dataset.add_argument("--budget", type=int)
    dataset.add_argument("--held-out", type=float, default=0.1, help="share of pairs held out (default 0.1)")
    dataset.add_argument("--concurrency", type=int, default=2, choices=range(1, 33), metavar="1-32")
    dataset.add_argument("--retries", type=int, default=3, choices=range(0, 11), metavar="0-10")
    dataset.add_argument("--retry-delay", type=float, default=1.0, help="seconds before the first retry")
    dataset.set_defaults(run=cmd_bake_dataset)
    baked = bake_commands.add_parser("create", help="create the model from the base and a trained GGUF adapter")
    role_options(baked)
    model_options(baked)
    baked.add_argument("--adapter", required=True, metavar="FILE.gguf")
    baked.add_argument("--reminder-budget", type=int, metavar="TOKENS",
                       help="also set SYSTEM to the role fitted to this many tokens")
    baked.set_defaults(run=cmd_bake_create)

    export = commands.add_parser("export", help="write the fitted role as another program's files")
    role_options(export, ollama=False)
    export.add_argument("--to", required=True, choices=["text-generation-webui"],
                        help="text-generation-webui: a character and an instruction template")
    export.add_argument("--model", help="the model the role is fitted for (default: the role's)")
    export.add_argument("--budget", type=int, help="tokens for the role (default: as `ollama create`)")
    export.add_argument("--out", default="user_data", metavar="DIR",
                        help="text-generation-webui's user_data folder (default: ./user_data)")
    export.set_defaults(run=cmd_export)
    return parser


# The status a shell reports for a program that SIGPIPE ended (128 + 13): its reader went away.
READER_GONE = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:  # the parser's defaults come from the settings: a wrong one is a clear error too
        args = build_parser().parse_args(argv)
        code = int(args.run(args))
        sys.stdout.flush()  # here, so that a reader gone by now is seen below, not at exit
        return code
    except RoleInjectorError as exc:
        print(f"error ({exc.code}): {exc.message}", file=sys.stderr)
        return exc.kind.exit_code
    except BrokenPipeError:
        # `role-injector render ... | head`: the reader had enough. Stop quietly; stdout goes to /dev/null
        # so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return READER_GONE


if __name__ == "__main__":
    sys.exit(main())
