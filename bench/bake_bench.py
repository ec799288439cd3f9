"""Baking a role into SmolLM2-135M on the CPU, end to end, and how much of the role it keeps
(issue 24), measured in one run (not a test): `bake dataset` → `bake train` → `bake eval`.

- The role: `bench/bake/french-guide.md` ("Always answer in French, never in English. Start every
  answer with 'Bien sûr !'"), held out from everything else; its checks `bench/bake/checks.yaml`
  (opening, language, the forbidden word "the"); the questions `bench/bake/questions.txt` (167
  everyday questions, 20% held out by the dataset's hash split); neutral questions
  `bench/bake/neutral.jsonl` (facts with expected answers, in any language).
- The teacher is SmolLM2-135M-Instruct itself WITH the role (context distillation), served by
  llama-server and asked through `bake dataset --engine-url` (the proxy's own fitting).
- The student is the same model trained by `bake train` on the answers WITHOUT the role.

Prints the dataset and training times, the trainer's throughput and peak memory, and for the held-out
questions the mean log-likelihood per answer token and the behaviour score of the base without the
role, with it and of the baked model without it, each as retention (target >= 0.5), and the neutral
score of the three (the baked model's within 0.1 of the base's with the role).

With --drop-repeats, training leaves out the teacher's answers that loop (a three-word sequence said
three times or more: a 135M teacher loops in about a third of its answers, and a student taught those
loops repeats the opening for ever); the held-out answers, the checks and the neutral questions stay
the same.

Run: .venv/bin/python -m bench.bake_bench [--epochs 2] [--learning-rate 5e-6] [--context 256] [--drop-repeats]
    [--keep DIR [--evaluate-only]]
(about 15 minutes on 2 idle cores, an hour on busy ones; with --keep DIR, a later run reuses the
dataset and the base's scores — the same questions, answers and base give the same scores)
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from role_injector import bake, bake_eval, bake_train
from role_injector import llama_server as llama_server_module
from role_injector.fitting import FitCache
from role_injector.llama_server import LlamaServerClient
from role_injector.llama_tools import TrainingSettings, llama_server
from role_injector.profiles import load_profiles
from role_injector.store import RoleSet, RoleStore
from tests.engine import llama_bin, smollm2
from tests.servers import REPO

DATA = REPO / "bench" / "bake"
ROLE = "french-guide"
TEACHER = "smollm2"
TARGET = 0.5
HELD_OUT = 0.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=bake_train.DEFAULT_SETTINGS.epochs)
    parser.add_argument("--learning-rate", type=float, default=bake_train.DEFAULT_SETTINGS.learning_rate)
    parser.add_argument("--context", type=int, default=bake_train.DEFAULT_SETTINGS.context)
    parser.add_argument("--drop-repeats", action="store_true", help="train without the teacher's looping answers")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="no training: evaluate the baked model an earlier run left in --keep DIR")
    parser.add_argument("--keep", metavar="DIR", help="keep the dataset and the baked model here")
    args = parser.parse_args()

    folder, base = llama_bin(), smollm2()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bake-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    roles_dir = work / "roles"
    roles_dir.mkdir(exist_ok=True)
    shutil.copy(DATA / f"{ROLE}.md", roles_dir)
    roles = RoleStore(str(roles_dir)).current()
    profiles = load_profiles(None)
    files = bake.DatasetFiles.for_output(work / "data.jsonl")

    started = time.monotonic()
    with llama_server(folder, base, work / "teacher.log", context=4096) as url:
        teacher = bake.Teacher.for_role(LlamaServerClient(url), roles, profiles, FitCache(256 << 20), ROLE, TEACHER)
        questions = bake.read_questions(DATA / "questions.txt")
        dataset = bake.bake_dataset(teacher, questions, files, held_out=HELD_OUT, concurrency=1)
    dataset_seconds = time.monotonic() - started
    print(f"dataset: {dataset.train} train + {dataset.held_out} held-out pairs ({dataset.skipped} kept from before), "
          f"{dataset.answer_tokens} answer tokens, {dataset_seconds:.0f} s")

    baked = work / "baked.gguf"
    if args.evaluate_only:
        if not baked.exists():
            parser.error(f"--evaluate-only: no {baked} to evaluate")
    else:
        _train(args, files, base, baked, roles, folder)

    models = {"base": base, "baked": baked}
    prompt = teacher.prompt

    @contextmanager
    def serve(which: str) -> Iterator[LlamaServerClient]:
        with llama_server(folder, models[which], work / f"eval-{which}.log", context=4096) as server_url:
            yield LlamaServerClient(server_url)

    evaluated = time.monotonic()
    cache = work / "base-scores.json"
    key = _fingerprint(files.held_out, base, prompt.role.version)
    kept = json.loads(cache.read_text()) if cache.exists() else {}
    scores = (bake_eval.Scores(**kept["without"]), bake_eval.Scores(**kept["with"])) if kept.get("key") == key else None
    report = bake_eval.evaluate(serve, ROLE, prompt.role.version, bake_eval.held_out_pairs(files.held_out),
                                lambda question: prompt.request(question)["messages"],
                                bake_eval.Checks.read(DATA / "checks.yaml"),
                                bake_eval.read_neutral(DATA / "neutral.jsonl"), base=scores)
    cache.write_text(json.dumps({"key": key, "without": dataclasses.asdict(report.base_without_role),
                                 "with": dataclasses.asdict(report.base_with_role)}))
    print(f"evaluation: {(time.monotonic() - evaluated) / 60:.1f} min"
          f"{' (the base scores kept from an earlier run)' if scores else ''}")
    result = report.as_json()
    print(json.dumps(result, ensure_ascii=False, indent=2))
    likelihood, behaviour = result["log_likelihood"], result["behaviour"]
    print(f"log-likelihood per answer token: base without role {likelihood['base_without_role']:.3f}, with role "
          f"{likelihood['base_with_role']:.3f}, baked without role {likelihood['baked_without_role']:.3f} -> retention "
          f"{likelihood['retention']} (target >= {TARGET})")
    print(f"behaviour (checks passed): base without role {behaviour['base_without_role']:.3f}, with role "
          f"{behaviour['base_with_role']:.3f}, baked without role {behaviour['baked_without_role']:.3f} -> retention "
          f"{behaviour['retention']} (target >= {TARGET})")
    neutral = result["neutral"]
    print(f"neutral questions right: base without role {neutral['base_without_role']:.3f}, with role "
          f"{neutral['base_with_role']:.3f}, baked without role {neutral['baked_without_role']:.3f} (within "
          f"{neutral['margin']} of the base with the role: {'kept' if neutral['kept'] else 'NOT kept'})")
    print(f"total {(time.monotonic() - started) / 60:.1f} min")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    met = all(isinstance(r, float) and r >= TARGET for r in (likelihood["retention"], behaviour["retention"]))
    return 0 if met and neutral["kept"] else 1


def _train(args: argparse.Namespace, files: bake.DatasetFiles, base: Path, baked: Path, roles: RoleSet,
           folder: Path) -> None:
    if baked.exists():
        baked.unlink()
    settings = TrainingSettings(context=args.context, epochs=args.epochs, learning_rate=args.learning_rate, threads=2)
    training = _without_repeats(files) if args.drop_repeats else files.train
    summary = bake_train.train(training, base, baked, roles, folder, settings=settings)
    per_second = summary.steps * settings.context / summary.training_seconds  # padding included
    losses = ", ".join(f"{loss:.3f}" for loss in summary.epoch_losses)
    print(f"training (lr {settings.learning_rate:g}, context {settings.context}): {summary.pairs} pairs, "
          f"{summary.tokens} tokens ({summary.trained_tokens} of answers trained) in {summary.windows} windows, "
          f"{summary.epochs} epochs, {summary.steps} steps in {summary.training_seconds / 60:.1f} min "
          f"({per_second:.0f} tokens/s), mean loss per answer token by epoch {losses}, peak memory "
          f"{summary.peak_memory_bytes / 2**30:.2f} GiB, disk {summary.disk_needed_bytes / 2**20:.0f} MiB, "
          f"model {summary.size_bytes / 2**20:.0f} MiB")


def _repeats(answer: str, size: int = 3, times: int = 3) -> bool:
    words = re.findall(r"\w+", answer.casefold())
    counts = Counter(tuple(words[i:i + size]) for i in range(len(words) - size + 1))
    return max(counts.values(), default=0) >= times


def _without_repeats(files: bake.DatasetFiles) -> Path:
    """A copy of the training pairs without the answers that loop, beside the dataset (with its meta)."""
    kept = bake.DatasetFiles.for_output(files.train.with_name("no-repeats.jsonl"))
    lines = files.train.read_text("utf-8").splitlines()
    answers = [json.loads(line)["messages"][-1]["content"] for line in lines]
    kept.train.write_text("".join(f"{line}\n" for line, answer in zip(lines, answers, strict=True)
                                  if not _repeats(answer)), "utf-8")
    shutil.copy(files.meta, kept.meta)
    print(f"training without repeats: {sum(map(_repeats, answers))} of {len(answers)} teacher answers left out")
    return kept.train


def _fingerprint(held_out: Path, base: Path, role_version: str) -> str:
    """What the base's scores depend on: the held-out answers, the base, the role, the checks and the
    neutral questions (the evaluation's settings are this file's)."""
    digest = hashlib.sha256()
    for path in (held_out, DATA / "checks.yaml", DATA / "neutral.jsonl", Path(__file__), Path(bake_eval.__file__),
                 Path(llama_server_module.__file__)):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    stat = base.stat()
    digest.update(f"{base}:{stat.st_size}:{stat.st_mtime_ns}:{role_version}".encode())
    return digest.hexdigest()


if __name__ == "__main__":
    sys.exit(main())
