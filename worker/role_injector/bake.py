"""The bake dataset (context distillation): the base model answers questions WITH the fitted role
(the teacher), and each pair is stored WITHOUT the role (what the student sees), so a LoRA trained on
it behaves in role without the long prompt.

- The teacher's request is built by the Ollama proxy's own code (`engines.ollama.rewrite_chat` on the
  virtual model `<model>@<role>`): the role fitted to what the question leaves, `num_ctx` and the
  role's params, content neutralised — exactly what a client of the proxy gets.
- Questions come from a file, or the base model (without the role) writes them from each section
  of the role, in the section's language (`generate_questions`; kept in `<out>.questions.jsonl`).
- Files, for `--out data.jsonl`: `data.jsonl` (train) and `data.heldout.jsonl` (held out, chosen
  by a hash of the question, so the split is stable), as chat messages
  `{"messages": [{"role": "user", …}, {"role": "assistant", …}]}`; the same in ShareGPT form
  (`{"conversations": [{"from": "human", …}, {"from": "gpt", …}]}`) in `data.sharegpt.jsonl` and
  `data.heldout.sharegpt.jsonl`, rewritten from the first two at the end.
- `data.meta.json` records the role, its version and the teacher model; it is written before any
  other file, and files without it are never touched (a `--out` naming someone else's file is
  refused before anything is written). `bake train` reads the role version from it.
- Resumable: a pair is appended and flushed as soon as it is answered; a new run skips every
  question already in the files (a line cut by an interruption is dropped) — only while the role's
  version and the teacher are the ones the files were made with; otherwise the run is refused.
  Bounded concurrency; the client retries what may pass; what still fails is counted and left for
  the next run.
- The teacher is any `Chat`: Ollama's client, or an OpenAI-compatible server such as llama-server
  (`llama_server.LlamaServerClient`); the request is the proxy's own in both cases.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from role_injector.engines.answer import ChatAnswer
from role_injector.engines.ollama import rewrite_chat
from role_injector.errors import InvalidRequest, RoleInjectorError, UpstreamError
from role_injector.fitting import FitCache
from role_injector.injection import InjectRequest, VirtualRequest, find_role, inject
from role_injector.options import RoleOptions
from role_injector.profiles import Profiles, VirtualModel
from role_injector.roles import Role, fill_variables, resolve_variables
from role_injector.store import RoleSet

META_FORMAT = "role-injector bake dataset 1"
MAX_QUESTIONS = 100_000
MAX_FILE_BYTES = 64 * 1024 * 1024  # a questions file, or a dataset file read to resume
MAX_QUESTION_CHARS = 100_000
MAX_SECTION_CHARS = 12_000  # of a section shown to the model that writes questions
MAX_FAILURES_LISTED = 10
GENERATION_TEMPERATURE = 0.8  # varied questions
THINKING = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
LIST_MARK = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)]|Q\d*[:.])\s*")
QUESTIONS_PROMPT = """\
Below is one section of the instructions that an AI assistant follows.

Write {count} different messages that a user of this assistant might send, which this section \
governs. Vary them: short and long, simple and tricky, some that test the section's rules at their \
edges. Write them in the same language as the section. Answer with the messages only, one per line, \
without numbering or quotes.

<section>
{section}
</section>"""


def item_id(question: str) -> str:
    return hashlib.sha256(question.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def is_held_out(identifier: str, fraction: float) -> bool:
    return int(identifier[:8], 16) < fraction * 16**8


@dataclass(frozen=True)
class DatasetFiles:
    train: Path
    held_out: Path
    sharegpt: Path
    held_out_sharegpt: Path
    questions: Path

    @classmethod
    def for_output(cls, out: Path) -> DatasetFiles:
        stem, suffix = (out.stem, out.suffix) if out.suffix else (out.name, ".jsonl")

        def sibling(tag: str) -> Path:
            return out.with_name(f"{stem}{tag}{suffix}")

        return cls(train=out, held_out=sibling(".heldout"), sharegpt=sibling(".sharegpt"),
                   held_out_sharegpt=sibling(".heldout.sharegpt"), questions=sibling(".questions"))

    @property
    def meta(self) -> Path:
        """Where the dataset records its role, version and teacher (`DatasetMeta`)."""
        return self.train.with_name(f"{self.train.stem if self.train.suffix else self.train.name}.meta.json")

    def as_json(self) -> dict[str, str]:
        return {name: str(path) for name, path in vars(self).items()}


@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset was made from, in `<out>.meta.json`."""

    role: str
    version: str
    model: str

    def as_json(self) -> dict[str, str]:
        return {"format": META_FORMAT, **vars(self)}

    @classmethod
    def read(cls, path: Path) -> DatasetMeta:
        try:
            value = json.loads(_read_bounded(path))
        except ValueError:
            value = None
        fields = ("role", "version", "model")
        if not isinstance(value, dict) or value.get("format") != META_FORMAT or \
                not all(isinstance(value.get(name), str) for name in fields):
            raise InvalidRequest(f"{path} is not the record of a bake dataset ({META_FORMAT!r})",
                                 details={"file": str(path)})
        return cls(**{name: value[name] for name in fields})


def claim_files(files: DatasetFiles, meta: DatasetMeta) -> None:
    """Make `files` this dataset's, before anything is written: files already there are resumed only
    when their record says the same role version and teacher; files without a record are someone
    else's and are never touched."""
    if files.meta.exists():
        found = DatasetMeta.read(files.meta)
        if found.role != meta.role or found.model != meta.model:
            raise InvalidRequest(
                f"{files.train} holds answers of {found.model!r} in role {found.role!r}, not of {meta.model!r} in "
                f"role {meta.role!r}; choose another --out", details={"file": str(files.meta)})
        if found.version != meta.version:
            raise InvalidRequest(
                f"{files.train} holds answers made with version {found.version[7:19]} of role {meta.role!r}; the "
                f"role is now {meta.version[7:19]}, and old answers must not be mixed with new ones: choose another "
                "--out, or move the files away to answer every question again", details={"file": str(files.meta),
                                                                                          "version": found.version})
        return
    others = [path for path in vars(files).values() if path.exists() or path.is_symlink()]
    if others:
        raise InvalidRequest(f"{others[0]} exists and was not written by `bake dataset` (there is no "
                             f"{files.meta.name}); choose another --out", details={"file": str(others[0])})
    files.train.parent.mkdir(parents=True, exist_ok=True)
    partial = files.meta.with_name(files.meta.name + ".part")
    partial.write_text(json.dumps(meta.as_json(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    partial.replace(files.meta)


@dataclass
class Progress:
    """What a run has done so far; `phase` names the work ("questions", "answers", "training", …)."""

    phase: str
    total: int
    done: int = 0
    failed: int = 0
    note: str = ""  # shown after the figures (the trainer's loss)


@dataclass
class BakeSummary:
    role: str
    version: str
    model: str
    questions: int = 0  # distinct questions this run had
    generated: int = 0  # questions the model wrote in this run
    generation_failures: list[str] = field(default_factory=list)  # sections it could not write questions for
    train: int = 0  # pairs written in this run
    held_out: int = 0
    skipped: int = 0  # already in the files from an earlier run
    failed: int = 0
    prompt_tokens: int = 0  # as Ollama counted the teacher's prompts and answers
    answer_tokens: int = 0
    system_tokens: int = 0  # of the fitted role without a question
    failures: list[dict[str, str]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def fail(self, question: str, exc: RoleInjectorError) -> None:
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_LISTED:
            self.failures.append({"question": question[:200], "code": exc.code, "message": exc.message})

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self), seconds=round(self.seconds, 2))


# --- the teacher -----------------------------------------------------------------------------------


class Chat(Protocol):
    """A model server that answers an Ollama `/api/chat` body (`OllamaClient`, `LlamaServerClient`)."""

    def chat(self, body: Mapping[str, Any]) -> ChatAnswer: ...


@dataclass(frozen=True)
class RolePrompt:
    """The fitted role before a question, exactly as the Ollama proxy sends it for `<model>@<role>`."""

    roles: RoleSet
    profiles: Profiles
    cache: FitCache
    role: Role
    model: str
    options: RoleOptions = field(default_factory=RoleOptions)  # budget and variables, over the role's

    @classmethod
    def for_role(cls, roles: RoleSet, profiles: Profiles, cache: FitCache, role: str, model: str,
                 options: RoleOptions | None = None) -> RolePrompt:
        return cls(roles, profiles, cache, find_role(roles, role), model, options or RoleOptions())

    @property
    def meta(self) -> DatasetMeta:
        return DatasetMeta(role=self.role.name, version=self.role.version, model=self.model)

    def system_tokens(self) -> int:
        """The fitted role without a question; raises what every question would (a missing variable,
        a budget too small) before any is asked."""
        request = InjectRequest(role=self.role.name, options=self.options, model=self.model)
        return inject(self.roles, self.profiles, request, self.cache).usage.system_tokens

    def request(self, question: str) -> dict[str, Any]:
        """The chat body for `question` that the proxy sends for the virtual model `<model>@<role>`."""
        virtual = VirtualModel(name=f"{self.model}@{self.role.name}", base=self.model, role=self.role.name,
                               options=self.options)
        body, _ = rewrite_chat({"model": virtual.name, "messages": [{"role": "user", "content": question}]},
                               VirtualRequest(virtual, self.roles, self.profiles, self.cache))
        return body


@dataclass(frozen=True)
class Teacher:
    """The base model with the fitted role (`prompt`), asked through `client`."""

    client: Chat
    prompt: RolePrompt

    @classmethod
    def for_role(cls, client: Chat, roles: RoleSet, profiles: Profiles, cache: FitCache, role: str, model: str,
                 options: RoleOptions | None = None) -> Teacher:
        return cls(client, RolePrompt.for_role(roles, profiles, cache, role, model, options))

    @property
    def role(self) -> Role:
        return self.prompt.role

    @property
    def model(self) -> str:
        return self.prompt.model

    @property
    def meta(self) -> DatasetMeta:
        return self.prompt.meta

    def system_tokens(self) -> int:
        return self.prompt.system_tokens()

    def answer(self, question: str) -> ChatAnswer:
        return self.client.chat(self.prompt.request(question))

    def write_questions(self, section: str, count: int) -> list[str]:
        """`count` questions or fewer about one section, written by the base model without the role."""
        if len(section) > MAX_SECTION_CHARS:
            section = section[:MAX_SECTION_CHARS] + " …"
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": QUESTIONS_PROMPT.format(count=count, section=section)}],
            "options": {"num_ctx": self.prompt.profiles.for_model(self.model).context_window,
                        "temperature": GENERATION_TEMPERATURE},
        }
        return parse_questions(self.client.chat(body).text)[:count]


def answer_text(answer: ChatAnswer) -> str:
    """The answer without a reasoning block, for models whose thinking Ollama leaves in the content."""
    return THINKING.sub("", answer.text).strip()


def parse_questions(text: str) -> list[str]:
    """One question per line: list marks and surrounding quotes removed; empty lines, repeats and
    lead-ins ("Here they are:") dropped."""
    found: list[str] = []
    for line in THINKING.sub("", text).splitlines():
        question = LIST_MARK.sub("", line).strip().strip("\"'«»“”").strip()
        if question and not question.endswith(":") and question not in found:
            found.append(question)
    return found


# --- files ---------------------------------------------------------------------------------------


def _read_bounded(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidRequest(f"{path} is larger than {MAX_FILE_BYTES} bytes", details={"file": str(path)})
        return path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"cannot read {path}: {exc}", details={"file": str(path)}) from None


def read_questions(path: Path) -> list[str]:
    """Questions from a file: `.jsonl` lines `{"question": "..."}`, else one question per non-empty
    line. Repeats are dropped."""
    questions: dict[str, None] = {}
    for number, line in enumerate(_read_bounded(path).splitlines(), 1):
        if not line.strip():
            continue
        question: Any = line.strip()
        if path.suffix == ".jsonl":
            try:
                question = json.loads(line).get("question")
            except (ValueError, AttributeError):
                question = None
            if not isinstance(question, str) or not question.strip():
                raise InvalidRequest(f"{path}, line {number}: expected {{\"question\": \"...\"}}",
                                     details={"file": str(path), "line": number})
        if len(question) > MAX_QUESTION_CHARS:
            raise InvalidRequest(f"{path}, line {number}: a question longer than {MAX_QUESTION_CHARS} characters",
                                 details={"file": str(path), "line": number})
        questions[question] = None
        if len(questions) > MAX_QUESTIONS:
            raise InvalidRequest(f"{path} has more than {MAX_QUESTIONS} questions", details={"file": str(path)})
    if not questions:
        raise InvalidRequest(f"{path} has no questions", details={"file": str(path)})
    return list(questions)


def _records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a dataset file being appended to (one `claim_files` made ours); a last line
    cut short by an interruption is removed from the file, once every other line has been read."""
    if not path.exists():
        return []
    text = _read_bounded(path)
    complete = text[: text.rfind("\n") + 1]
    records = []
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise InvalidRequest(f"{path}, line {number} is not JSON; move the file away or repair it",
                                 details={"file": str(path), "line": number}) from None
    if complete != text:
        with path.open("r+b") as handle:
            handle.truncate(len(complete.encode("utf-8")))
    return records


def _question_of(record: Any) -> str | None:
    try:
        first = record["messages"][0]
        return first["content"] if first["role"] == "user" else None
    except (KeyError, IndexError, TypeError):
        return None


def done_items(path: Path) -> set[str]:
    return {item_id(question) for record in _records(path) if (question := _question_of(record)) is not None}


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """(question, answer) of every line of a dataset file, which must each be a user/assistant pair."""
    pairs = []
    for number, line in enumerate(_read_bounded(path).splitlines(), 1):
        try:
            user, assistant = json.loads(line)["messages"]
            if (user["role"], assistant["role"]) != ("user", "assistant") or \
                    not isinstance(user["content"], str) or not isinstance(assistant["content"], str):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest(f"{path}, line {number}: expected {{\"messages\": [user, assistant]}} (a line cut "
                                 "by an interruption: run the same `bake dataset` again)",
                                 details={"file": str(path), "line": number}) from None
        pairs.append((user["content"], assistant["content"]))
    if not pairs:
        raise InvalidRequest(f"{path} has no pairs", details={"file": str(path)})
    return pairs


def pair(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def sharegpt(record: Mapping[str, Any]) -> dict[str, Any]:
    speakers = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": speakers[m["role"]], "value": m["content"]} for m in record["messages"]]}


def write_sharegpt(source: Path, target: Path) -> None:
    with target.open("w", encoding="utf-8") as out:
        for record in _records(source):
            out.write(json.dumps(sharegpt(record), ensure_ascii=False) + "\n")


# --- running -------------------------------------------------------------------------------------


def _run(work: Iterable[tuple[str, Callable[[], Any]]], concurrency: int,
         done: Callable[[str, Any, RoleInjectorError | None], None]) -> None:
    """Run the (key, task) pairs on `concurrency` threads, at most twice that many queued; `done(key,
    result, error)` is called on this thread as each finishes. Ctrl-C cancels what has not started."""
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bake")
    pending: dict[Future[Any], str] = {}
    tasks = iter(work)
    try:
        while True:
            for key, task in tasks:
                pending[pool.submit(task)] = key
                if len(pending) >= 2 * concurrency:
                    break
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                key = pending.pop(future)
                try:
                    result = future.result()
                except RoleInjectorError as exc:
                    done(key, None, exc)
                else:
                    done(key, result, None)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def generate_questions(teacher: Teacher, count: int, path: Path, concurrency: int,
                       on_progress: Callable[[Progress], None] | None = None) -> tuple[list[str], int, list[str]]:
    """`count` questions spread over the role's sections (most important first), asked once per
    section and kept in `path`; a section already there is not asked again. Returns the questions,
    how many were written now, and the errors of sections that failed."""
    check_count(count)
    role = teacher.role
    values = resolve_variables(role, teacher.prompt.options.variables)
    texts = {i: fill_variables(role.sections[i].text, values).strip() for i in role.walk_order}
    sections = [i for i in role.walk_order if texts[i]]
    if not sections:
        raise InvalidRequest(f"role {role.name!r} has no text to write questions about")
    share = {i: count // len(sections) + (rank < count % len(sections)) for rank, i in enumerate(sections)}
    existing = _records(path)
    asked = {record.get("section") for record in existing if isinstance(record, dict)}
    todo = [i for i in sections if share[i] and i not in asked]
    progress = Progress("questions", len(todo))
    errors: list[str] = []
    written = 0

    def finished(key: str, questions: list[str] | None, error: RoleInjectorError | None) -> None:
        nonlocal written
        index = int(key)
        if error is None and not questions:
            error = UpstreamError(f"the model wrote no questions for section {role.sections[index].label!r}")
        if error is not None:
            progress.failed += 1
            errors.append(f"section {role.sections[index].label!r}: {error.message}")
        else:
            with path.open("a", encoding="utf-8") as out:
                for question in questions or []:
                    record = {"section": index, "title": role.sections[index].label, "question": question}
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += len(questions or [])
        progress.done += 1
        if on_progress:
            on_progress(progress)

    work = ((str(i), lambda i=i: teacher.write_questions(texts[i], share[i])) for i in todo)
    _run(work, concurrency, finished)
    questions = list(dict.fromkeys(str(r["question"]) for r in _records(path)
                                   if isinstance(r, dict) and isinstance(r.get("question"), str)))
    return questions, written, errors


def check_count(count: int) -> int:
    if not 1 <= count <= MAX_QUESTIONS:
        raise InvalidRequest(f"--generate takes 1 to {MAX_QUESTIONS} questions", details={"count": count})
    return count


def check_share(held_out: float) -> float:
    if not 0 <= held_out < 1:
        raise InvalidRequest("the held-out share must be from 0 to below 1", details={"held_out": held_out})
    return held_out


def bake_dataset(teacher: Teacher, questions: list[str], files: DatasetFiles, *, held_out: float = 0.1,
                 concurrency: int = 2, on_progress: Callable[[Progress], None] | None = None) -> BakeSummary:
    """Answer every question not yet in `files` with the teacher and append the pairs."""
    check_share(held_out)
    claim_files(files, teacher.meta)
    started = time.monotonic()
    summary = BakeSummary(role=teacher.role.name, version=teacher.role.version, model=teacher.model,
                          files=files.as_json())
    summary.system_tokens = teacher.system_tokens()
    distinct = {item_id(q): q for q in questions}
    done = done_items(files.train) | done_items(files.held_out)
    summary.questions = len(distinct)
    summary.skipped = len(distinct.keys() & done)
    todo = [(key, q) for key, q in distinct.items() if key not in done]
    progress = Progress("answers", len(todo))
    with files.train.open("a", encoding="utf-8") as train, files.held_out.open("a", encoding="utf-8") as held:

        def finished(key: str, answer: ChatAnswer | None, error: RoleInjectorError | None) -> None:
            text = answer_text(answer) if answer is not None else ""
            if error is None and not text:
                error = UpstreamError("the teacher's answer is empty")
            if error is not None:
                summary.fail(distinct[key], error)
                progress.failed += 1
            else:
                assert answer is not None
                out = held if is_held_out(key, held_out) else train
                out.write(json.dumps(pair(distinct[key], text), ensure_ascii=False) + "\n")
                out.flush()
                if out is held:
                    summary.held_out += 1
                else:
                    summary.train += 1
                summary.prompt_tokens += answer.prompt_tokens
                summary.answer_tokens += answer.completion_tokens
            progress.done += 1
            if on_progress:
                on_progress(progress)

        _run(((key, lambda q=q: teacher.answer(q)) for key, q in todo), concurrency, finished)
    write_sharegpt(files.train, files.sharegpt)
    write_sharegpt(files.held_out, files.held_out_sharegpt)
    summary.seconds = time.monotonic() - started
    return summary
