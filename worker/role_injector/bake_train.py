"""`bake train`: a bake dataset and a small GGUF base model → the baked model, trained on the CPU by
llama.cpp's `llama-finetune` (full fine-tuning of F32 weights; docs/bake.md).

1. The dataset is checked against the role: its `.meta.json` records the role version its answers
   were made with; another version than the role's current one is refused unless asked for.
2. The base is checked: a GGUF language model with weights and a chat template. Quantized weights
   are dequantized to F32 (`llama-quantize`), the only type the trainer trains; asked not to, a
   quantized base is an error.
3. Free disk and memory are checked before anything is written (figures in docs/bake.md).
4. The training data: each pair rendered by the base's own chat template exactly as the model sees
   it at inference WITHOUT the role — the template's own default system message included, if it
   has one — contents neutralised as every injection neutralises them; the prompt (up to where the
   answer starts) and the answer tokenized apart, as at inference, by the base's own tokenizer
   (llama-server), and packed into windows where only the answers are trained (`training_windows`).
5. `llama-finetune` (patched to read such windows), its progress passed on; it keeps no checkpoint,
   so an interrupted run leaves nothing behind and is started again from the beginning.
6. The trainer's output gets the base's metadata back (its saver writes the training window as
   the context length and drops the chat template) plus `role_injector.*` keys naming the role
   and version, is checked whole, and only then takes the `--out` name.
"""

from __future__ import annotations

import resource
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from role_injector.bake import DatasetFiles, DatasetMeta, read_pairs
from role_injector.chat_template import ChatTemplate
from role_injector.errors import InvalidRequest, ToolFailed
from role_injector.formats import neutralise
from role_injector.gguf import F32, GgufFile, read_gguf, string_entry, write_with_metadata
from role_injector.llama_server import LlamaServerClient
from role_injector.llama_tools import TrainingProgress, TrainingSettings, dequantize, finetune, llama_server
from role_injector.store import RoleSet
from role_injector.training_windows import TokenizedExchange, Windows, pack

DEFAULT_SETTINGS = TrainingSettings()
WINDOW_BYTES_PER_TEXT_BYTE = 16  # at most a token per byte, 8 bytes per token, half of a window padding
MEMORY_PER_F32_BYTE = 5  # weights, gradients, two AdamW moments and the graph: 2.5 GB measured for 540 MB
TOKENS = "tokenizer.ggml.tokens"
SPECIAL_TOKENS = {"bos_token": "tokenizer.ggml.bos_token_id", "eos_token": "tokenizer.ggml.eos_token_id"}


def _fail(path: Path, message: str) -> InvalidRequest:
    return InvalidRequest(f"{path} {message}", details={"file": str(path)})


def trainable_base(path: Path) -> GgufFile:
    """The base's header, if llama-finetune can train it (once its weights are F32)."""
    base = read_gguf(path, arrays=[TOKENS])
    if base.metadata.get("general.type") == "adapter":
        raise _fail(path, "is a LoRA adapter, not a model: give the base model it was made for")
    if not base.tensors:
        raise _fail(path, "has no weights (a vocabulary-only GGUF): the trainer needs a whole model")
    if base.architecture in (None, "clip"):
        raise _fail(path, f"is not a language model (general.architecture {base.architecture!r})")
    if base.chat_template is None:
        raise _fail(path, "has no chat template (tokenizer.chat_template): the training text must be in the "
                          "model's own chat format")
    unknown = sorted({t.type_name for t in base.tensors if t.size == 0 and t.elements})
    if unknown:
        raise _fail(path, f"has weights of types this version does not know ({', '.join(unknown)})")
    if not base.complete():
        raise _fail(path, "is cut short: its tensor data ends before the table says")
    return base


def chat_template(base: GgufFile) -> ChatTemplate:
    tokens = base.metadata.get(TOKENS) or []
    special = {}
    for name, key in SPECIAL_TOKENS.items():
        index = base.metadata.get(key)
        if isinstance(index, int) and 0 <= index < len(tokens):
            special[name] = str(tokens[index])
    assert base.chat_template is not None
    return ChatTemplate(base.chat_template, special)


@dataclass(frozen=True)
class Exchange:
    """One pair as the model sees it when asked `question` without the role and answering `answer`:
    `prompt` is what it is given (the template up to where the answer starts), `answer` what it
    writes (the answer and the end of its turn)."""

    prompt: str
    answer: str

    @property
    def text(self) -> str:
        return self.prompt + self.answer


def exchange(template: ChatTemplate, question: str, answer: str) -> Exchange:
    asked = [{"role": "user", "content": neutralise(question)}]
    prompt = template.render(asked, add_generation_prompt=True)
    whole = template.render([*asked, {"role": "assistant", "content": neutralise(answer)}],
                            add_generation_prompt=False)
    if not whole.startswith(prompt):
        raise InvalidRequest("the base's chat template renders a question otherwise when an answer follows, so the "
                             "answer's tokens cannot be told from the prompt's")
    return Exchange(prompt, whole[len(prompt):])


def check_version(meta: DatasetMeta, roles: RoleSet, allow_other_version: bool) -> None:
    role = roles.roles.get(meta.role)
    current = role.version if role else None
    if current == meta.version or allow_other_version:
        return
    if current is None:
        raise InvalidRequest(f"the dataset was made for role {meta.role!r}, which is not in the roles folder; pass "
                             "--any-role-version to train on it anyway", details={"role": meta.role})
    raise InvalidRequest(
        f"the dataset was made with version {meta.version[7:19]} of role {meta.role!r}, and the role is now "
        f"{current[7:19]}: make a new dataset (bake dataset), or pass --any-role-version to train on the old "
        "answers anyway", details={"role": meta.role, "dataset_version": meta.version, "role_version": current})


@dataclass(frozen=True)
class Resources:
    disk_needed: int
    disk_free: int
    memory_needed: int
    memory_available: int | None


def memory_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_resources(base: GgufFile, out: Path, text_bytes: int, min_free_disk: int) -> Resources:
    """Refuses, before anything is written, a run the disk or memory cannot hold: on disk the F32
    copy of the base (unless it is F32), the trainer's output and its copy with the base's metadata,
    the training windows, and `min_free_disk` left over; in memory about 5 bytes per F32 weight byte."""
    f32 = base.f32_size() + base.data_offset
    copies = 2 + any(t.type != F32 for t in base.tensors)
    resources = Resources(disk_needed=copies * f32 + WINDOW_BYTES_PER_TEXT_BYTE * text_bytes + min_free_disk,
                          disk_free=shutil.disk_usage(out.parent).free,
                          memory_needed=MEMORY_PER_F32_BYTE * base.f32_size(), memory_available=memory_available())
    mib = 1 << 20
    if resources.disk_free < resources.disk_needed:
        raise InvalidRequest(
            f"not enough free disk in {out.parent}: training needs {resources.disk_needed // mib} MiB ({copies} F32 "
            f"copies of {f32 // mib} MiB, the training windows, and {min_free_disk // mib} MiB left free), there are "
            f"{resources.disk_free // mib} MiB", details={"needed": resources.disk_needed, "free": resources.disk_free})
    if resources.memory_available is not None and resources.memory_available < resources.memory_needed:
        raise InvalidRequest(
            f"not enough memory: training {base.path.name} needs about {resources.memory_needed // mib} MiB, "
            f"{resources.memory_available // mib} MiB are available", details={"needed": resources.memory_needed})
    return resources


@dataclass
class TrainSummary:
    role: str
    version: str
    base: str
    out: str
    pairs: int = 0
    text_bytes: int = 0
    tokens: int = 0  # of the exchanges, prompts and answers
    trained_tokens: int = 0  # the answers' tokens (and their end of turn) that fit in the windows
    windows: int = 0
    cut: int = 0  # exchanges longer than a window, trained up to its end
    dequantized: bool = False
    epochs: int = 0
    steps: int = 0
    epoch_losses: list[float] = field(default_factory=list)  # each epoch's mean loss per trained token
    training_seconds: float = 0.0
    seconds: float = 0.0
    peak_memory_bytes: int = 0  # of the tools this process ran
    size_bytes: int = 0
    disk_needed_bytes: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self), training_seconds=round(self.training_seconds, 1), seconds=round(self.seconds, 1))


def tokenize(folder: Path, model: Path, exchanges: Sequence[Exchange], work: Path) -> list[TokenizedExchange]:
    """Each exchange's prompt and answer tokenized apart by a short-lived llama-server with the base's
    own tokenizer, as llama-server tokenizes a prompt (control tokens parsed, a BOS if the model
    wants one) and as the model writes an answer after it (contents are neutralised, so only the
    template's control tokens are parsed)."""
    with llama_server(folder, model, work / "llama-server.log", context=512, threads=1) as url:
        client = LlamaServerClient(url)
        try:
            return [TokenizedExchange(client.tokenize(e.prompt, special=True, add_special=True),
                                      client.tokenize(e.answer, special=True)) for e in exchanges]
        finally:
            client.close()


def _provenance(meta: DatasetMeta, dataset: Path) -> dict[str, bytes]:
    values = {"role_injector.role": meta.role, "role_injector.role_version": meta.version,
              "role_injector.teacher": meta.model, "role_injector.dataset": dataset.name}
    return {key: string_entry(key, value) for key, value in values.items()}


def train(dataset: Path, base_path: Path, out: Path, roles: RoleSet, folder: Path, *,
          settings: TrainingSettings = DEFAULT_SETTINGS, dequantize_base: bool = True,
          allow_other_version: bool = False, min_free_disk: int = 100 << 20,
          on_progress: Callable[[TrainingProgress], None] | None = None) -> TrainSummary:
    started = time.monotonic()
    files = DatasetFiles.for_output(dataset)
    if not files.meta.exists():
        raise _fail(dataset, f"has no {files.meta.name}: train on a dataset written by `bake dataset`")
    meta = DatasetMeta.read(files.meta)
    check_version(meta, roles, allow_other_version)
    if out.exists() or out.is_symlink():
        raise _fail(out, "exists; choose another --out, or remove it")
    pairs = read_pairs(files.train)
    base = trainable_base(base_path)
    quantized = sorted({t.type_name for t in base.tensors if t.type != F32})
    if quantized and not dequantize_base:
        raise _fail(base_path, f"has {', '.join(quantized)} weights and llama-finetune trains F32 weights only: leave "
                               f"out --no-dequantize (an F32 copy is made first: {base.f32_size() >> 20} MiB)")
    template = chat_template(base)
    exchanges = [exchange(template, question, answer) for question, answer in pairs]
    summary = TrainSummary(role=meta.role, version=meta.version, base=str(base_path), out=str(out), pairs=len(pairs),
                           text_bytes=sum(len(e.text.encode("utf-8")) for e in exchanges),
                           dequantized=bool(quantized), epochs=settings.epochs)
    out.parent.mkdir(parents=True, exist_ok=True)
    resources = check_resources(base, out, summary.text_bytes, min_free_disk)
    summary.disk_needed_bytes = resources.disk_needed - min_free_disk
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)  # what an interrupted run left
    work.mkdir(parents=True)
    try:
        tokenized = tokenize(folder, base_path, exchanges, work)
        windows = pack(tokenized, settings.context)
        summary.tokens, summary.trained_tokens = sum(map(len, tokenized)), windows.trained
        summary.windows, summary.cut = len(windows.inputs), windows.cut
        if not windows.trained:
            raise InvalidRequest(f"no answer of {dataset} starts within a training window of --context "
                                 f"{settings.context} tokens: its prompts are longer; raise --context",
                                 details={"context": settings.context})
        windows_path = work / "train.windows"
        windows.write(windows_path)
        model = base_path
        if quantized:
            model = work / "base-f32.gguf"
            dequantize(folder, base_path, model)
        trained = work / "trained.gguf"
        training_started = time.monotonic()
        progress = finetune(folder, model, windows_path, trained, settings, work / "llama-finetune.log", on_progress,
                            loss_scale=_loss_scale(windows))
        summary.training_seconds = time.monotonic() - training_started
        summary.steps, summary.epoch_losses = progress.total, progress.epoch_losses
        trained_from = read_gguf(model)
        finished = _checked_output(trained, trained_from)
        metadata = {**trained_from.raw_metadata, **_provenance(meta, dataset)}
        partial = work / "baked.gguf"
        write_with_metadata(finished, metadata, partial)
        if not read_gguf(partial).complete():
            raise ToolFailed(f"writing {partial} stopped short (is the disk full?)")
        partial.replace(out)
    except OSError as exc:  # the disk filled up after all, or the folder went away
        raise InvalidRequest(f"cannot write in {work}: {exc.strerror or exc}", details={"folder": str(work)}) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary.size_bytes = out.stat().st_size
    summary.peak_memory_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    summary.seconds = time.monotonic() - started
    summary.files = {"model": str(out)}
    return summary


def _loss_scale(windows: Windows) -> float:
    """llama-finetune's loss is a mean over every position of a window, the untrained ones adding 0;
    times this it is the mean over trained positions (exactly so for an epoch's mean: every window
    has the same number of positions)."""
    return windows.positions / windows.trained


def _checked_output(trained: Path, model: GgufFile) -> GgufFile:
    """The trainer's output, whole and with the base's tensors (llama-finetune exits 0 even when it
    could not write its output)."""
    if not trained.exists():
        raise ToolFailed(f"llama-finetune wrote no model to {trained} (is the disk full?)")
    result = read_gguf(trained)
    if not result.complete():
        raise ToolFailed(f"llama-finetune's model {trained} is cut short (is the disk full?)")
    shapes = {(t.name, t.shape, t.type) for t in result.tensors}
    if shapes != {(t.name, t.shape, t.type) for t in model.tensors}:
        raise ToolFailed("llama-finetune's model has other tensors than the base it was given")
    return result


def training_text(dataset: Path, base_path: Path) -> str:
    """The exchanges `train` trains on for `dataset` and `base_path`, one after the other, as text
    (tests, and a look before a long run)."""
    template = chat_template(trainable_base(base_path))
    return "".join(exchange(template, q, a).text for q, a in read_pairs(DatasetFiles.for_output(dataset).train))
