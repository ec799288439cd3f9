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
score of the base and the baked model (within 0.1).

Run: .venv/bin/python -m bench.bake_bench [--epochs 1] [--learning-rate 3e-5] [--keep DIR]
(about 25 minutes on 2 idle cores, an hour or more on busy ones; --keep reuses the dataset)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from role_injector import bake, bake_eval, bake_train
from role_injector.fitting import FitCache
from role_injector.llama_server import LlamaServerClient
from role_injector.llama_tools import TrainingSettings, llama_server
from role_injector.profiles import load_profiles
from role_injector.store import RoleStore
from tests.engine import llama_bin, smollm2
from tests.servers import REPO

DATA = REPO / "bench" / "bake"
ROLE = "french-guide"
TEACHER = "smollm2"
TARGET = 0.5
HELD_OUT = 0.2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
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
    if baked.exists():
        baked.unlink()
    settings = TrainingSettings(epochs=args.epochs, learning_rate=args.learning_rate, threads=2)
    summary = bake_train.train(files.train, base, baked, roles, folder, settings=settings)
    # llama-finetune trains a window of `context` tokens every `context / 2`: each token about twice an epoch.
    per_second = summary.steps * settings.context / summary.training_seconds
    losses = ", ".join(f"{loss:.3f}" for loss in summary.epoch_losses)
    print(f"training: {summary.pairs} pairs, {summary.tokens} tokens of text, {summary.epochs} epochs, "
          f"{summary.steps} steps of {settings.context} tokens in {summary.training_seconds / 60:.1f} min "
          f"({per_second:.0f} tokens/s), mean loss by epoch {losses}, peak memory "
          f"{summary.peak_memory_bytes / 2**30:.2f} GiB, disk {summary.disk_needed_bytes / 2**20:.0f} MiB, "
          f"model {summary.size_bytes / 2**20:.0f} MiB")

    models = {"base": base, "baked": baked}
    prompt = teacher.prompt

    @contextmanager
    def serve(which: str) -> Iterator[LlamaServerClient]:
        with llama_server(folder, models[which], work / f"eval-{which}.log", context=4096) as server_url:
            yield LlamaServerClient(server_url)

    report = bake_eval.evaluate(serve, ROLE, prompt.role.version, bake_eval.held_out_pairs(files.held_out),
                                lambda question: prompt.request(question)["messages"],
                                bake_eval.Checks.read(DATA / "checks.yaml"),
                                bake_eval.read_neutral(DATA / "neutral.jsonl"))
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
    print(f"neutral questions right: base {neutral['base']:.3f}, baked {neutral['baked']:.3f} (margin "
          f"{neutral['margin']}: {'kept' if neutral['kept'] else 'NOT kept'})")
    print(f"total {(time.monotonic() - started) / 60:.1f} min")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    met = all(isinstance(r, float) and r >= TARGET for r in (likelihood["retention"], behaviour["retention"]))
    return 0 if met and neutral["kept"] else 1


if __name__ == "__main__":
    sys.exit(main())
