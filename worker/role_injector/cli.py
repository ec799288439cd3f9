"""Command line: `lint`, `render`, `serve`; `ollama create|modelfile|list` (a role as an Ollama
model); `bake dataset|train|eval|create` (a role trained into a model's weights: on the CPU with
llama.cpp's tools, or a LoRA adapter trained elsewhere; docs/bake.md); `export` (a role as another
program's files: text-generation-webui's character and instruction template).

Exit codes: 0 success, 1 `lint` found broken roles, else the error's `exit_code` in
`role_injector.errors.KINDS` (2 for a wrong command line); 141 when the reader of the output went away
(`| head`), as for any program that SIGPIPE ends.

The commands that talk to Ollama import its client (urllib3, and with it ssl) when they run, not here:
`serve` has gevent patch ssl before anything imports it (`server.patch_for_gevent`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from role_injector import text_generation_webui
from role_injector.errors import KINDS, InvalidRequest, RoleInjectorError
from role_injector.fitting import FitCache
from role_injector.formats import FORMATS, Message
from role_injector.gguf import read_gguf
from role_injector.injection import InjectRequest, inject
from role_injector.llama_tools import DEFAULT_LEARNING_RATE
from role_injector.options import SELECTIONS, RoleOptions
from role_injector.profiles import load_profiles
from role_injector.settings import Settings
from role_injector.store import RoleSet, RoleStore
from role_injector.tokens import VOCABULARIES, load_tokenizer

if TYPE_CHECKING:
    from role_injector import bake
    from role_injector.llama_server import LlamaServerClient
    from role_injector.llama_tools import TrainingProgress
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


def number_in(low: float, high: float, what: str, kind: type = float) -> Callable[[str], float]:
    """An argparse type: a number from `low` to `high` (NaN and infinities are out of every range)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low:g} to {high:g}, not {text!r}")
        return value

    return parse


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
        note = f", {progress.note}" if progress.note else ""
        self.stream.write(f"\r{progress.phase:<9} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{progress.done}/{progress.total}{failed}, {rate:.1f}/s{left}{note}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.active and self.phase:
            self.stream.write("\n")
            self.stream.flush()
            self.phase = ""


def cmd_bake_dataset(args: argparse.Namespace) -> int:
    from role_injector import bake

    roles = current_roles(args)
    chat: bake.Chat
    if args.engine_url:
        from role_injector.llama_server import LlamaServerClient

        chat = LlamaServerClient(args.engine_url, timeout=Settings.from_env().upstream_timeout,
                                 connections=args.concurrency)
    else:
        chat = client(args, retries=args.retries, retry_delay=args.retry_delay, connections=args.concurrency)
    options = RoleOptions(budget=args.budget, variables=parse_vars(args.var))
    teacher = bake.Teacher.for_role(chat, roles, load_profiles(Settings.from_env().models_file), fit_cache(),
                                    args.role, args.model, options)
    teacher.system_tokens()  # a missing variable or a budget too small: fail before asking anything
    bake.check_share(args.held_out)
    files = bake.DatasetFiles.for_output(Path(args.out))
    questions = bake.read_questions(Path(args.questions)) if args.questions else []
    if not args.questions:
        bake.check_count(args.generate)
    bake.claim_files(files, teacher.meta)  # before anything is written
    bar = ProgressBar()
    try:
        generated, failures = 0, []
        if not args.questions:
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


def read_adapter(path: Path, what: str = "adapter") -> tuple[str, str]:
    """(file name for Ollama, sha256 digest) of a GGUF file to upload (an adapter or a whole model): a
    regular file only (a FIFO or a device would block the read, or never end)."""
    from role_injector.ollama_client import file_digest

    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise InvalidRequest(f"the {what} {path} is not a regular file", details={"file": str(path)})
            magic = handle.read(4)
    except OSError as exc:
        raise InvalidRequest(f"cannot read the {what} {path}: {exc.strerror or exc}",
                             details={"file": str(path)}) from None
    if magic != GGUF_MAGIC:
        hint = "; convert a PEFT adapter with llama.cpp's convert_lora_to_gguf.py (docs/bake.md)" \
            if what == "adapter" else " (bake train writes one)"
        raise InvalidRequest(f"{path} is not a GGUF file{hint}", details={"file": str(path)})
    name = path.name if path.name.endswith(".gguf") else f"{what}.gguf"  # Ollama tells GGUF by the name
    return name, file_digest(path)


def cmd_bake_create(args: argparse.Namespace) -> int:
    from role_injector import ollama_models

    upload = Path(args.adapter or args.model)
    what = "adapter" if args.adapter else "model"
    name, digest = read_adapter(upload, what)
    roles = current_roles(args)
    if args.adapter:
        model = ollama_models.plan_baked_model(roles, load_profiles(Settings.from_env().models_file), fit_cache(),
                                               args.role, adapter=(name, digest), base=args.base, name=args.name,
                                               reminder_budget=args.reminder_budget, variables=parse_vars(args.var))
    else:
        info = read_gguf(upload)
        window = info.metadata.get(f"{info.architecture}.context_length")
        model = ollama_models.plan_model_from_file(roles, args.role, file=(name, digest), name=args.name,
                                                   window=window if isinstance(window, int) else 0)
    ollama = client(args)
    if ollama.has_blob(digest):
        print(f"the {what} is in Ollama already ({digest})", file=sys.stderr)
    else:
        print(f"uploading {upload} ({upload.stat().st_size} bytes) as {digest}", file=sys.stderr)
        ollama.push_blob(upload, digest)
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


def training_bar(bar: ProgressBar) -> Callable[[TrainingProgress], None]:
    from role_injector import bake

    def show(progress: TrainingProgress) -> None:
        note = f"loss {progress.loss:.3f}" if progress.loss is not None else ""
        bar(bake.Progress("training", progress.total, progress.done, note=note))

    return show


def cmd_bake_train(args: argparse.Namespace) -> int:
    from role_injector import bake_train
    from role_injector.llama_tools import TrainingSettings, tools_folder

    folder = tools_folder(args.llama_bin)
    settings = TrainingSettings(context=args.context, epochs=args.epochs, learning_rate=args.learning_rate,
                                threads=args.threads)
    bar = ProgressBar()
    try:
        summary = bake_train.train(Path(args.dataset), Path(args.base), Path(args.out), current_roles(args), folder,
                                   settings=settings, dequantize_base=not args.no_dequantize,
                                   allow_other_version=args.any_role_version,
                                   min_free_disk=args.min_free_disk << 20, on_progress=training_bar(bar))
    except KeyboardInterrupt:
        bar.close()
        print("interrupted: llama-finetune keeps no checkpoint, so nothing of this run is kept; the same command "
              "trains again from the beginning", file=sys.stderr)
        return 130
    bar.close()
    print_json(summary.as_json())
    return 0


def cmd_bake_eval(args: argparse.Namespace) -> int:
    from role_injector import bake, bake_eval, bake_train
    from role_injector.llama_server import LlamaServerClient
    from role_injector.llama_tools import llama_server, tools_folder

    folder = tools_folder(args.llama_bin)
    files = bake.DatasetFiles.for_output(Path(args.dataset))
    meta = bake.DatasetMeta.read(files.meta)
    roles = current_roles(args)
    bake_train.check_version(meta, roles, args.any_role_version)
    pairs = bake_eval.held_out_pairs(files.held_out, args.limit)
    checks = bake_eval.Checks.read(Path(args.checks)) if args.checks else None
    neutral = bake_eval.read_neutral(Path(args.neutral)) if args.neutral else []
    prompt = bake.RolePrompt.for_role(roles, load_profiles(Settings.from_env().models_file), fit_cache(), meta.role,
                                      meta.model, RoleOptions(budget=args.budget, variables=parse_vars(args.var)))
    prompt.system_tokens()
    models = {"base": Path(args.base), "baked": Path(args.baked)}
    for path in models.values():
        read_gguf(path)  # a clear error before any server starts
    logs = Path(tempfile.mkdtemp(prefix="role-injector-eval-"))

    @contextmanager
    def serve(which: str) -> Iterator[LlamaServerClient]:
        with llama_server(folder, models[which], logs / f"llama-server-{which}.log", context=args.context,
                          threads=args.threads) as url:
            server = LlamaServerClient(url)
            try:
                yield server
            finally:
                server.close()

    bar = ProgressBar()
    try:
        report = bake_eval.evaluate(serve, meta.role, meta.version, pairs,
                                    lambda question: prompt.request(question)["messages"], checks, neutral,
                                    max_tokens=args.max_tokens, neutral_margin=args.margin, on_progress=bar)
    finally:
        bar.close()
    shutil.rmtree(logs, ignore_errors=True)
    print_json(report.as_json())
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
    dataset.add_argument("--engine-url", metavar="URL", help="ask this OpenAI-compatible server (llama-server) "
                         "instead of Ollama; the role is fitted as the proxy fits it for --model")
    source = dataset.add_mutually_exclusive_group(required=True)
    source.add_argument("--questions", metavar="FILE", help="one question per line, or .jsonl {\"question\"}")
    source.add_argument("--generate", type=int, metavar="N", help="let the model write N questions from the role")
    dataset.add_argument("--out", required=True, metavar="FILE.jsonl")
    dataset.add_argument("--budget", type=int)
    dataset.add_argument("--held-out", type=float, default=0.1, help="share of pairs held out (default 0.1)")
    dataset.add_argument("--concurrency", type=int, default=2, choices=range(1, 33), metavar="1-32")
    dataset.add_argument("--retries", type=int, default=3, choices=range(0, 11), metavar="0-10")
    dataset.add_argument("--retry-delay", type=number_in(0, 600, "seconds"), default=1.0,
                         help="seconds before the first retry (0-600)")
    dataset.set_defaults(run=cmd_bake_dataset)
    baked = bake_commands.add_parser("create", help="create the Ollama model: a base and a trained GGUF adapter, "
                                     "or a whole baked GGUF model (bake train)")
    role_options(baked)
    model_options(baked)
    upload = baked.add_mutually_exclusive_group(required=True)
    upload.add_argument("--adapter", metavar="FILE.gguf", help="a LoRA adapter for --base")
    upload.add_argument("--model", metavar="FILE.gguf", help="a whole model, such as bake train writes")
    baked.add_argument("--reminder-budget", type=int, metavar="TOKENS",
                       help="with --adapter: also set SYSTEM to the role fitted to this many tokens")
    baked.set_defaults(run=cmd_bake_create)

    def tool_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("dataset", metavar="DATASET.jsonl", help="the --out of bake dataset")
        command.add_argument("--base", required=True, metavar="FILE.gguf", help="the base model, as a GGUF file")
        command.add_argument("--roles", default=default_roles_dir)
        command.add_argument("--llama-bin", metavar="DIR", help="llama.cpp's tools (default: ROLE_INJECTOR_LLAMA_BIN, "
                             "else $ROLE_INJECTOR_TOOLS/bin, where scripts/engine-toolchain.sh puts them)")
        command.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8), choices=range(1, 257),
                             metavar="1-256")
        command.add_argument("--any-role-version", action="store_true",
                             help="use a dataset made with another version of the role than the current one")

    training = bake_commands.add_parser("train", help="train the role into a small GGUF model on the CPU "
                                        "(llama.cpp's llama-finetune)")
    tool_options(training)
    training.add_argument("--out", required=True, metavar="FILE.gguf")
    training.add_argument("--epochs", type=int, default=1, choices=range(1, 101), metavar="1-100")
    training.add_argument("--learning-rate", type=number_in(1e-9, 1, "a rate"), default=DEFAULT_LEARNING_RATE,
                          help=f"AdamW's (default {DEFAULT_LEARNING_RATE:g}; on SmolLM2-135M 3e-5 already cost more "
                          "than it taught, docs/bake.md)")
    training.add_argument("--context", type=int, default=256, choices=(256, 512, 1024, 2048),
                          help="tokens per training window (default 256)")
    training.add_argument("--no-dequantize", action="store_true",
                          help="refuse a quantized base instead of training an F32 copy of it")
    training.add_argument("--min-free-disk", type=number_in(0, 1 << 40, "MiB", int), default=100, metavar="MiB",
                          help="disk to leave free after training (default 100)")
    training.set_defaults(run=cmd_bake_train)

    evaluation = bake_commands.add_parser("eval", help="how much of the role the baked model keeps, on the "
                                          "held-out questions")
    tool_options(evaluation)
    evaluation.add_argument("--baked", required=True, metavar="FILE.gguf")
    evaluation.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    evaluation.add_argument("--budget", type=int)
    evaluation.add_argument("--checks", metavar="FILE.yaml", help="the role's rules a program checks: opening, "
                            "language, forbidden")
    evaluation.add_argument("--neutral", metavar="FILE.jsonl", help="neutral questions {\"question\", \"expect\"}")
    evaluation.add_argument("--margin", type=number_in(0, 1, "a share"), default=0.1,
                            help="how much lower the baked model's neutral score may be than the base's with the "
                            "role (default 0.1)")
    evaluation.add_argument("--max-tokens", type=int, default=48, choices=range(1, 4097), metavar="1-4096")
    evaluation.add_argument("--limit", type=number_in(1, 1_000_000, "pairs", int), metavar="N",
                            help="only the first N held-out pairs")
    evaluation.add_argument("--context", type=number_in(512, 1 << 20, "tokens", int), default=4096,
                            help="llama-server's window (default 4096)")
    evaluation.set_defaults(run=cmd_bake_eval)

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
