"""`bake train` and `bake eval` with the real tools: llama.cpp's llama-finetune, llama-quantize and
llama-server built by scripts/engine-toolchain.sh, SmolLM2-135M as the base. The training text is
compared byte for byte with llama-server's own rendering of the chat template; llama-finetune (as
patched by scripts/llama.cpp-masked-training.patch) must learn the answers and nothing else; a
tiny training run (a few steps) must lower the loss and leave a model that llama-server serves; bad
inputs fail before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from role_injector.bake import DatasetFiles, DatasetMeta, claim_files, pair
from role_injector.bake_train import chat_template, exchange, trainable_base, training_text
from role_injector.errors import KINDS
from role_injector.formats import neutralise
from role_injector.gguf import read_gguf
from role_injector.llama_server import LlamaServerClient
from role_injector.llama_tools import TrainingProgress, TrainingSettings, dequantize, finetune
from role_injector.store import RoleStore
from role_injector.training_windows import NOT_TRAINED, TokenizedExchange, Windows, pack
from tests.engine import LlamaServer, llama_bin, run_llama_server, smollm2
from tests.servers import CLEAN_ENV, ROLE_INJECTOR
from tests.worker.conftest import TEMPLATE, gguf_bytes, run_cli

ROLE = """---
description: Answers in French
model: smollm2
---
Always answer in French, never in English. Start every answer with 'Bien sûr !'
"""
PAIRS = [
    ("How do I boil an egg?", "Bien sûr ! Mets l'œuf dans l'eau bouillante pendant neuf minutes."),
    ("Why is the sky blue?", "Bien sûr ! La lumière bleue se diffuse plus que la rouge dans l'air."),
    ("What is a good name for a dog?", "Bien sûr ! « Filou » est un joli nom pour un chien."),
    ("How do plants grow?", "Bien sûr ! Les plantes poussent grâce à la lumière, à l'eau et au sol."),
    ("What is rain?", "Bien sûr ! La pluie, ce sont des gouttes d'eau qui tombent des nuages."),
    ("Why do cats purr?", "Bien sûr ! Le chat ronronne quand il est content, et parfois pour se calmer."),
    ("Why did <|im_end|> break my prompt?", "Bien sûr ! <|im_start|>system est un jeton de contrôle."),
    ("How do I make tea?\n\nQuickly, please.", "Bien sûr !\n\n1. Fais bouillir l'eau.\n2. Verse-la sur le thé."),
]


def write_dataset(directory: Path, pairs: list[tuple[str, str]], held_out: list[tuple[str, str]] = ()) -> Path:
    """A dataset as `bake dataset` leaves it, for the role `french` of `directory / "roles"`."""
    roles = directory / "roles"
    roles.mkdir(exist_ok=True)
    (roles / "french.md").write_text(ROLE, encoding="utf-8")
    role = RoleStore(str(roles)).current().roles["french"]
    files = DatasetFiles.for_output(directory / "data.jsonl")
    claim_files(files, DatasetMeta(role="french", version=role.version, model="smollm2"))
    files.train.write_text("".join(json.dumps(pair(q, a), ensure_ascii=False) + "\n" for q, a in pairs), "utf-8")
    files.held_out.write_text("".join(json.dumps(pair(q, a), ensure_ascii=False) + "\n" for q, a in held_out),
                              "utf-8")
    return files.train


@pytest.fixture(scope="module")
def template_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """llama-server with the base, rendering a final assistant message as a whole turn (not a prefill)."""
    with run_llama_server(tmp_path_factory.mktemp("template"), context=2048,
                          extra=["--no-prefill-assistant"]) as server:
        yield server


def rendered_by_server(server: LlamaServer, question: str, answer: str | None = None) -> str:
    """The exchange as llama-server renders it; without an answer, the prompt it makes of the question."""
    messages = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    reply = requests.post(server.url + "/apply-template", timeout=30, json={
        "messages": messages, "add_generation_prompt": answer is None})
    assert reply.status_code == 200, reply.text
    return reply.json()["prompt"]


def test_the_training_text_is_the_models_chat_template_without_the_role(tmp_path: Path,
                                                                         template_server: LlamaServer) -> None:
    dataset = write_dataset(tmp_path, PAIRS)
    text = training_text(dataset, smollm2())
    expected = "".join(rendered_by_server(template_server, neutralise(q), neutralise(a)) for q, a in PAIRS)
    assert text == expected  # byte for byte, as llama-server renders the model's own template
    # What the model sees with no role: SmolLM2's template puts its own default system message first.
    first = text[: text.index("<|im_start|>user")]
    assert first == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                     "<|im_end|>\n")
    assert "careful" not in text and "French, never in English" not in text  # the role is not in it
    assert text.count("<|im_start|>") == 3 * len(PAIRS)  # the control tokens written in contents are broken


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=st.text(min_size=1, max_size=60), answer=st.text(min_size=1, max_size=60))
def test_any_exchange_renders_as_llama_server_renders_it(template_server: LlamaServer, question: str,
                                                         answer: str) -> None:
    template = chat_template(trainable_base(smollm2()))
    mine = exchange(template, question, answer)
    assert mine.text == rendered_by_server(template_server, neutralise(question), neutralise(answer))
    # the prompt is what the model is given when asked: the answer is all that follows it
    assert mine.prompt == rendered_by_server(template_server, neutralise(question))
    assert mine.answer.startswith(neutralise(answer)) and mine.answer.endswith("<|im_end|>\n")


def tensor_digests(path: Path) -> dict[str, str]:
    model = read_gguf(path)
    digests = {}
    with path.open("rb") as data:
        for tensor in model.tensors:
            data.seek(model.data_offset + tensor.offset)
            digests[tensor.name] = hashlib.sha256(data.read(tensor.size)).hexdigest()
    return digests


def train_windows(tmp_path: Path, base: Path, windows: Windows, name: str) -> tuple[Path, list[float]]:
    """One epoch of llama-finetune on `windows`; the model and the loss after each step (the running
    mean over the epoch, per trained position)."""
    path, out, losses = tmp_path / f"{name}.windows", tmp_path / f"{name}.gguf", []
    windows.write(path)

    def record(progress: TrainingProgress) -> None:
        losses.append(progress.loss)

    scale = windows.positions / windows.trained if windows.trained else 1.0
    finetune(llama_bin(), base, path, out, TrainingSettings(), tmp_path / f"{name}.log", record, loss_scale=scale)
    return out, losses


def test_llama_finetune_learns_the_answers_and_nothing_else(tmp_path: Path, llama_server: LlamaServer) -> None:
    """With every label -1, nothing is learned: the loss is 0 and every weight stays exactly as it
    was (AdamW moves every weight whose gradient is not exactly 0). With the answer's labels, the
    first step's loss is the base's own loss on the answer's tokens, as llama-server scores them
    after the prompt, and not the loss on the whole exchange."""
    base = tmp_path / "base-f32.gguf"
    dequantize(llama_bin(), smollm2(), base)
    client = LlamaServerClient(llama_server.url)
    template = chat_template(trainable_base(smollm2()))
    asked = exchange(template, *PAIRS[1])
    prompt = client.tokenize(asked.prompt, special=True, add_special=True)
    answer_text = neutralise(PAIRS[1][1])  # the answer without the end of its turn
    answer = client.tokenize(answer_text, special=False)
    windows = pack([TokenizedExchange(prompt, answer)], 256)

    nothing = Windows(256, windows.inputs, [[NOT_TRAINED] * 256])
    unchanged, losses = train_windows(tmp_path, base, nothing, "nothing")
    assert losses == [0.0]
    assert tensor_digests(unchanged) == tensor_digests(base)
    unchanged.unlink()

    _, losses = train_windows(tmp_path, base, windows, "answer")
    answer_loss = -sum(client.score(prompt, answer_text)) / len(answer)
    # Had the prompt been trained too, its default system message would count (a forced answer ends
    # at a control token, so its text is scored after its own start):
    system = client.score(client.tokenize("<|im_start|>system\n", special=True),
                          "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
    with_system = (-sum(system) + answer_loss * len(answer)) / (len(system) + len(answer))
    assert with_system - answer_loss > 0.5  # the test can tell them apart
    assert losses[0] == pytest.approx(answer_loss, abs=0.1)  # F32 weights in the trainer, Q4_1 in the server


def test_a_tiny_training_run_lowers_the_loss_and_its_model_answers(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, PAIRS, held_out=PAIRS[:2])  # three windows an epoch: six steps
    baked = tmp_path / "baked.gguf"
    result = run_cli("bake", "train", str(dataset), "--base", str(smollm2()), "--out", str(baked),
                     "--roles", str(tmp_path / "roles"), "--llama-bin", str(llama_bin()), "--epochs", "2",
                     "--threads", "2", timeout=900)  # about 30 s on 2 idle cores; a busy machine is slower
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["dequantized"] is True and summary["epochs"] == 2
    # The exchanges packed whole into windows of 256 tokens, one step a window; only the answers trained.
    assert summary["steps"] == 2 * summary["windows"] >= 4
    assert summary["windows"] * 256 >= summary["tokens"] > (summary["windows"] - 1) * 128  # all but one half full
    assert summary["tokens"] > summary["trained_tokens"] > 8 * 10
    assert summary["cut"] == 0
    first, last = summary["epoch_losses"]
    assert last < first  # the second pass over the text is predicted better than the first
    assert not (tmp_path / "baked.gguf.work").exists()  # the work files are gone

    model, base = read_gguf(baked), read_gguf(smollm2())
    assert set(model.weight_types()) == {"F32"} and model.complete()
    # The base's metadata, not what llama-finetune's saver writes (context 256, no template, eot 0).
    assert model.chat_template == base.chat_template
    assert model.metadata["llama.context_length"] == 8192
    assert "tokenizer.ggml.eot_token_id" not in model.metadata
    role_version = RoleStore(str(tmp_path / "roles")).current().roles["french"].version
    assert model.metadata["role_injector.role"] == "french"
    assert model.metadata["role_injector.role_version"] == role_version

    with run_llama_server(tmp_path, model=baked, context=2048) as server:
        client = LlamaServerClient(server.url)
        answer = client.chat({"messages": [{"role": "user", "content": "Why do cats purr?"}],
                              "options": {"temperature": 0, "num_predict": 16}})
        assert answer.text.strip() and answer.completion_tokens > 0
        props = requests.get(server.url + "/props", timeout=10).json()
        assert "<|im_start|>" in props["chat_template"]

    # bake eval runs the three configurations and reports each measure.
    evaluation = run_cli("bake", "eval", str(dataset), "--base", str(smollm2()), "--baked", str(baked),
                         "--roles", str(tmp_path / "roles"), "--llama-bin", str(llama_bin()), "--max-tokens", "8",
                         "--context", "2048", "--checks", str(write_checks(tmp_path)), "--threads", "2", timeout=900)
    assert evaluation.returncode == 0, evaluation.stderr
    report = json.loads(evaluation.stdout)
    assert report["questions"] == 2 and report["answer_tokens"] > 10
    likelihood = report["log_likelihood"]
    assert all(likelihood[k] < 0 for k in ("base_without_role", "base_with_role", "baked_without_role"))
    # Trained on these very answers, the baked model finds them likelier than the base does.
    assert likelihood["baked_without_role"] > likelihood["base_without_role"]
    assert set(report["behaviour"]["checks"]["baked_without_role"]) == {"opening", "language"}


def children(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL])
def test_a_stopped_run_leaves_nothing_and_says_it_starts_again(tmp_path: Path, stop: signal.Signals) -> None:
    """Ctrl-C: the trainer is stopped, its work is removed, the message says a new run starts from the
    beginning (llama-finetune keeps no checkpoint). Even a killed command leaves no trainer behind."""
    dataset = write_dataset(tmp_path, PAIRS * 4)
    command = [str(ROLE_INJECTOR), "bake", "train", str(dataset), "--base", str(smollm2()), "--out",
               str(tmp_path / "baked.gguf"), "--roles", str(tmp_path / "roles"), "--llama-bin", str(llama_bin())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **CLEAN_ENV})
    deadline = time.monotonic() + 120
    trainer = []
    while not trainer and time.monotonic() < deadline and process.poll() is None:
        trainer = [pid for pid in children(process.pid) if "llama-finetune" in command_of(pid)]
        time.sleep(0.2)
    assert trainer, "llama-finetune never started"
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    for _ in range(50):
        if not command_of(trainer[0]):
            break
        time.sleep(0.1)
    assert not command_of(trainer[0])  # the trainer is gone with the command
    assert not (tmp_path / "baked.gguf").exists()
    if stop == signal.SIGINT:
        assert process.returncode == 130
        assert "llama-finetune keeps no checkpoint" in stderr and "from the beginning" in stderr
        assert not (tmp_path / "baked.gguf.work").exists()


def write_checks(directory: Path) -> Path:
    path = directory / "checks.yaml"
    path.write_text('opening: "Bien sûr !"\nlanguage: fr\n', encoding="utf-8")
    return path


def test_scores_are_the_models_own_log_probabilities(llama_server: LlamaServer) -> None:
    """The grammar-forced score of a token equals its log-probability among the model's top tokens."""
    client = LlamaServerClient(llama_server.url)
    prompt = client.tokenize(client.apply_template([{"role": "user", "content": "What is the capital of France?"}]),
                             special=True)
    top = requests.post(llama_server.url + "/completion", timeout=60, json={
        "prompt": prompt, "n_predict": 1, "n_probs": 5, "temperature": 0}).json()
    candidates = top["completion_probabilities"][0]["top_logprobs"]
    for candidate in candidates[:3]:
        assert client.tokenize(candidate["token"], special=False) == [candidate["id"]]
        [score] = client.score(prompt, candidate["token"])
        assert score == pytest.approx(candidate["logprob"], abs=1e-4)
    scores = client.score(prompt, "The capital of France is Paris.")
    assert len(scores) == len(client.tokenize("The capital of France is Paris.", special=False))
    assert all(s <= 0 for s in scores)
    assert sum(scores) > sum(client.score(prompt, "The capital of France is Rome."))


def test_a_character_split_between_tokens_is_scored_too(llama_server: LlamaServer) -> None:
    """llama-server reports no probability for a token after which the text ends inside a character
    (SmolLM2 writes "œ" in two tokens); the score reads it from the whole distribution there."""
    client = LlamaServerClient(llama_server.url)
    prompt = client.tokenize(client.apply_template([{"role": "user", "content": "How do I boil an egg?"}]),
                             special=True)
    text = "Mets l'œuf dans l'eau."
    pieces = client.pieces(text)
    split = [index for index, (_, piece) in enumerate(pieces) if piece and piece[0] == 0xC5]  # œ = C5 93
    assert split, pieces  # the test needs a split character
    scores = client.score(prompt, text)
    assert len(scores) == len(pieces) and all(s <= 0 for s in scores)
    for index in split:  # the model's own probability there, as a plain generation reports it
        after = [*prompt, *(token for token, _ in pieces[:index])]
        top = requests.post(llama_server.url + "/completion", timeout=60, json={
            "prompt": after, "n_predict": 1, "n_probs": 200, "temperature": 0}).json()
        entry = next(t for t in top["completion_probabilities"][0]["top_logprobs"] if t["id"] == pieces[index][0])
        assert scores[index] == pytest.approx(entry["logprob"], abs=1e-4)


# --- bad inputs: clear errors, nothing written ------------------------------------------------------


def train(tmp_path: Path, dataset: Path, *extra: str, base: Path | None = None) -> Any:
    return run_cli("bake", "train", str(dataset), "--base", str(base or smollm2()), "--out",
                   str(tmp_path / "baked.gguf"), "--roles", str(tmp_path / "roles"), "--llama-bin", str(llama_bin()),
                   *extra)


def assert_refused(tmp_path: Path, result: Any, code: str, message: str) -> None:
    assert result.returncode == KINDS[code].exit_code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "baked.gguf").exists() and not (tmp_path / "baked.gguf.work").exists()


def test_a_quantized_base_is_refused_when_not_to_be_dequantized(tmp_path: Path) -> None:
    result = train(tmp_path, write_dataset(tmp_path, PAIRS), "--no-dequantize")
    assert_refused(tmp_path, result, "invalid_request", "Q4_1, Q8_0 weights and llama-finetune trains F32 weights only")


def test_a_dataset_from_another_role_version_is_refused_unless_asked(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path, PAIRS)
    (tmp_path / "roles" / "french.md").write_text(ROLE + "\nNever say 'sorry'.\n", encoding="utf-8")
    result = train(tmp_path, dataset)
    assert_refused(tmp_path, result, "invalid_request", "made with version")
    assert "--any-role-version" in result.stderr
    asked = train(tmp_path, dataset, "--any-role-version", "--min-free-disk", str(1 << 40))
    assert_refused(tmp_path, asked, "invalid_request", "not enough free disk")  # past the version check


def test_a_full_disk_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = train(tmp_path, write_dataset(tmp_path, PAIRS), "--min-free-disk", str(1 << 40))
    assert_refused(tmp_path, result, "invalid_request", "not enough free disk")
    assert "3 F32 copies of 514 MiB" in result.stderr  # the Q4_1 base dequantized, the trainer's output, its copy


def test_a_dataset_whose_prompts_fill_the_window_is_refused(tmp_path: Path) -> None:
    long_question = "Why is the sky blue? " * 60  # 360 tokens of prompt, a window of 256
    result = train(tmp_path, write_dataset(tmp_path, [(long_question, "Bien sûr !")]))
    assert_refused(tmp_path, result, "invalid_request", "no answer of")
    assert "starts within a training window of --context 256 tokens" in result.stderr


def test_an_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "baked.gguf").write_text("mine", encoding="utf-8")
    result = train(tmp_path, write_dataset(tmp_path, PAIRS))
    assert result.returncode == KINDS["invalid_request"].exit_code and "exists" in result.stderr
    assert (tmp_path / "baked.gguf").read_text() == "mine"




@pytest.mark.parametrize(("content", "message", "code"), [
    (b"not a model at all", "is not a GGUF file", "invalid_request"),
    (gguf_bytes({"general.architecture": "llama", "tokenizer.ggml.model": "gpt2", "tokenizer.chat_template": TEMPLATE}),
     "has no weights (a vocabulary-only GGUF)", "invalid_request"),
    (gguf_bytes({"general.architecture": "llama", "general.type": "adapter"}, [("a", (4,), bytes(16))]),
     "is a LoRA adapter", "invalid_request"),
    (gguf_bytes({"general.architecture": "clip"}, [("a", (4,), bytes(16))]), "is not a language model",
     "invalid_request"),
    (gguf_bytes({"general.architecture": "llama"}, [("a", (4,), bytes(16))]), "has no chat template",
     "invalid_request"),
    (gguf_bytes({"general.architecture": "llama", "tokenizer.chat_template": TEMPLATE}, [("a", (64,), bytes(16))]),
     "is cut short", "invalid_request"),
    # Passes every check here, but is no model llama.cpp can load: llama.cpp's own error (from the
    # llama-server that tokenizes the exchanges, before the trainer), its last lines.
    (gguf_bytes({"general.architecture": "llama", "tokenizer.chat_template": TEMPLATE,
                 "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]}, [("a", (4,), bytes(16))]),
     "failed with exit code 1", "tool_failed"),
])
def test_a_model_the_trainer_cannot_train_is_a_clear_error(tmp_path: Path, content: bytes, message: str,
                                                           code: str) -> None:
    base = tmp_path / "base.gguf"
    base.write_bytes(content)
    result = train(tmp_path, write_dataset(tmp_path, PAIRS), base=base)
    assert_refused(tmp_path, result, code, message)


def test_missing_tools_name_where_they_were_looked_for(tmp_path: Path) -> None:
    result = run_cli("bake", "train", str(write_dataset(tmp_path, PAIRS)), "--base", str(smollm2()), "--out",
                     str(tmp_path / "baked.gguf"), "--roles", str(tmp_path / "roles"), "--llama-bin", str(tmp_path))
    assert result.returncode == KINDS["invalid_config"].exit_code
    assert f"llama-server, llama-finetune, llama-quantize not found in {tmp_path}" in result.stderr


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--learning-rate", "-1", "expected a rate from 1e-09 to 1"),
    ("--learning-rate", "nan", "expected a rate from 1e-09 to 1"),
    ("--min-free-disk", "-5", "expected MiB from 0 to"),
    ("--epochs", "0", "invalid choice"),
])
def test_options_out_of_range_are_clear_errors(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = train(tmp_path, write_dataset(tmp_path, PAIRS), option, value)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
