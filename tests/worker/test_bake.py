"""The bake dataset: `role-injector bake dataset` run as a user runs it, against the Ollama stand-in
as the teacher; the format the LoRA trainers read is what these tests pin."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from role_injector.bake import DatasetFiles, done_items, is_held_out, item_id, parse_questions, read_questions
from role_injector.errors import KINDS, InvalidRequest
from role_injector.formats import neutralise
from role_injector.ollama_client import OllamaClient
from tests.engine import LlamaServer
from tests.ollama_standin import OllamaStandin
from tests.worker.conftest import ENGINEER, RoleWriter, run_cli

QUESTIONS = ["How do I test a parser?", "What is a flaky test?", "Why did <|im_end|> break my prompt?",
             "Как проверить граничные случаи?", "Should I mock the database?", "What is property testing?",
             "How many asserts per test?", "Is 100% coverage worth it?", "What is mutation testing?",
             "How do I test time?", "What about randomness in tests?", "Do I need integration tests?"]


def teacher(body: dict[str, Any]) -> str:
    """The stand-in's answers: in role when the request carries the role, else questions to ask."""
    messages = body["messages"]
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    last = messages[-1]["content"]
    if system is not None:
        return f"In role of {system.splitlines()[0]!r}: {last}"
    count = int(re.search(r"Write (\d+) different", last)[1])
    section = re.search(r"<section>\n(.*?)\n", last)[1]
    return "Here they are:\n" + "\n".join(f"{i + 1}. Q{i} on «{section}»?" for i in range(count + 1))


@pytest.fixture
def place(write_role: RoleWriter, roles_dir: Path, tmp_path: Path, ollama: OllamaClient,
          standin: OllamaStandin) -> Path:
    write_role("engineer", ENGINEER)
    (tmp_path / "questions.txt").write_text("\n".join([*QUESTIONS, "", QUESTIONS[0]]) + "\n", encoding="utf-8")
    standin.answer = teacher
    return tmp_path


def bake(place: Path, standin: OllamaStandin, *extra: str, **options: Any) -> subprocess.CompletedProcess[str]:
    source = ["--questions", str(place / "questions.txt")] if "--generate" not in extra else []
    return run_cli("bake", "dataset", "engineer", "--roles", str(place / "roles"), "--ollama-url", standin.url,
               "--model", "qwen3:8b", "--var", "team=QA", "--out", str(place / "out" / "data.jsonl"),
               "--retry-delay", "0.01", *source, *extra, **options)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def chat_requests(standin: OllamaStandin, with_role: bool = True) -> list[Any]:
    return [r for r in standin.requests_to("/api/chat")
            if any(m["role"] == "system" for m in r.body["messages"]) == with_role]


def test_pairs_are_the_teachers_answers_in_role_stored_without_the_role(place: Path, standin: OllamaStandin) -> None:
    meeting, calls = threading.Barrier(3), itertools.count()

    def three_at_once(body: dict[str, Any]) -> str:
        """The first three questions are answered only when all three are being asked at once."""
        if next(calls) < 3:
            meeting.wait(timeout=60)
        return teacher(body)

    standin.answer = three_at_once
    result = bake(place, standin, "--held-out", "0.25", "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    files = DatasetFiles.for_output(place / "out" / "data.jsonl")
    train, held = lines(files.train), lines(files.held_out)
    pairs = {p["messages"][0]["content"]: p["messages"][1]["content"] for p in train + held}
    assert sorted(pairs) == sorted(QUESTIONS)  # each question once
    for question, answer in pairs.items():  # the teacher saw the question neutralised, as through the proxy
        assert answer == f"In role of 'You are the careful test engineer of QA.': {neutralise(question)}"
    for record in train + held:  # what the student sees: no system prompt
        assert [m["role"] for m in record["messages"]] == ["user", "assistant"] and set(record) == {"messages"}
    assert held and train
    assert all(is_held_out(item_id(p["messages"][0]["content"]), 0.25) for p in held)
    assert not any(is_held_out(item_id(p["messages"][0]["content"]), 0.25) for p in train)
    assert lines(files.sharegpt) == [{"conversations": [{"from": "human", "value": p["messages"][0]["content"]},
                                                        {"from": "gpt", "value": p["messages"][1]["content"]}]}
                                     for p in train]
    assert len(lines(files.held_out_sharegpt)) == len(held)

    # The teacher was asked as the proxy asks: the fitted role first, num_ctx, the role's params.
    requests = chat_requests(standin)
    assert len(requests) == len(QUESTIONS)
    for request in requests:
        system, user = request.body["messages"]
        assert system["content"].startswith("You are the careful test engineer of QA.")
        assert user["role"] == "user"
        assert request.body["options"] == {"temperature": 0.3, "num_ctx": 8192,
                                           "num_keep": request.body["options"]["num_keep"]}
        assert request.body["options"]["num_keep"] > 10  # the role's tokens: a context shift keeps the role
    assert any(r.body["messages"][1]["content"] == "Why did <\u200b|im_end|> break my prompt?" for r in requests)
    assert standin.most_in_flight == 3  # concurrent, and bounded

    summary = json.loads(result.stdout)
    assert summary["questions"] == len(QUESTIONS) and summary["train"] + summary["held_out"] == len(QUESTIONS)
    assert (summary["failed"], summary["skipped"], summary["failures"]) == (0, 0, [])
    assert summary["prompt_tokens"] > 0 and summary["answer_tokens"] > 0 and summary["system_tokens"] > 0
    assert summary["role"] == "engineer" and summary["version"].startswith("sha256:")


def test_an_interrupted_or_failed_run_resumes_where_it_stopped(place: Path, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", status=500, body={"error": "model runner crashed"}, times=3)
    first = bake(place, standin, "--retries", "0", "--concurrency", "1")
    assert first.returncode == KINDS["upstream_refused"].exit_code, first.stderr
    assert "run the same command again" in first.stderr
    summary = json.loads(first.stdout)
    assert summary["failed"] == 3 and summary["train"] + summary["held_out"] == len(QUESTIONS) - 3
    assert "model runner crashed" in summary["failures"][0]["message"]

    train = place / "out" / "data.jsonl"
    with train.open("a", encoding="utf-8") as handle:
        handle.write('{"messages": [{"role": "user", "content": "cut sh')  # a write cut by Ctrl-C
    standin.clear()
    standin.answer = teacher
    second = bake(place, standin)
    assert second.returncode == 0, second.stderr
    assert len(chat_requests(standin)) == 3  # only what was missing
    summary = json.loads(second.stdout)
    assert (summary["skipped"], summary["failed"], summary["train"] + summary["held_out"]) == (len(QUESTIONS) - 3,
                                                                                              0, 3)
    files = DatasetFiles.for_output(train)
    stored = [p["messages"][0]["content"] for p in lines(files.train) + lines(files.held_out)]
    assert sorted(stored) == sorted(QUESTIONS)


def test_busy_answers_are_retried_with_backoff(place: Path, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", status=503, body={"error": "server busy"}, times=2)
    result = bake(place, standin, "--retries", "3", "--concurrency", "1")
    assert result.returncode == 0, result.stderr
    assert len(standin.requests_to("/api/chat")) == len(QUESTIONS) + 2
    assert json.loads(result.stdout)["failed"] == 0


def test_the_model_writes_questions_from_each_section_once(place: Path, standin: OllamaStandin) -> None:
    result = bake(place, standin, "--generate", "7")
    assert result.returncode == 0, result.stderr
    writing = chat_requests(standin, with_role=False)
    assert len(writing) == 3  # one request per section
    prompts = [r.body["messages"][0]["content"] for r in writing]
    assert all("in the same language as the section" in p for p in prompts)
    assert any("Короткие предложения." in p for p in prompts)  # the section itself, in its language
    assert any("careful test engineer of QA" in p for p in prompts)  # variables filled in
    questions = lines(place / "out" / "data.questions.jsonl")
    per_section = {}
    for record in questions:
        per_section[record["title"]] = per_section.get(record["title"], 0) + 1
    assert per_section == {"Mission": 3, "(preamble)": 2, "Стиль": 2}  # required, then by priority
    assert all(not q["question"][0].isdigit() for q in questions)  # list marks removed
    summary = json.loads(result.stdout)
    assert summary["generated"] == 7 and summary["train"] + summary["held_out"] == 7

    standin.clear()
    standin.answer = teacher
    again = bake(place, standin, "--generate", "7")
    assert again.returncode == 0, again.stderr
    assert standin.requests_to("/api/chat") == []
    assert json.loads(again.stdout)["skipped"] == 7


def read_terminal(master: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", "replace")


def test_the_progress_bar_is_drawn_on_a_terminal_only(place: Path, standin: OllamaStandin) -> None:
    piped = bake(place, standin)
    assert piped.returncode == 0 and "\r" not in piped.stderr and "[" not in piped.stderr

    (place / "out" / "data.jsonl").unlink()
    (place / "out" / "data.heldout.jsonl").unlink()
    master, terminal = pty.openpty()
    try:
        result = bake(place, standin, stderr=terminal)
    finally:
        os.close(terminal)
    drawn = read_terminal(master)
    os.close(master)
    assert result.returncode == 0
    assert f"\ranswers   [##############################] {len(QUESTIONS)}/{len(QUESTIONS)}" in drawn


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--var", "team=QA", "--questions", "missing.txt"], "invalid_request", "cannot read"),
    (["--questions", "questions.txt"], "missing_variable", "team"),
    (["--var", "team=QA", "--generate", "0"], "invalid_request", "--generate takes 1 to"),
    (["--var", "team=QA", "--generate", "5", "--held-out", "1"], "invalid_request", "held-out share"),
])
def test_bad_input_fails_before_the_teacher_is_asked(place: Path, standin: OllamaStandin, args: list[str],
                                                     code: str, message: str) -> None:
    result = run_cli("bake", "dataset", "engineer", "--roles", str(place / "roles"), "--ollama-url", standin.url,
                 "--model", "qwen3:8b", "--out", str(place / "data.jsonl"),
                 *[str(place / a) if a.endswith(".txt") else a for a in args])
    assert result.returncode == KINDS[code].exit_code, result.stderr
    assert message in result.stderr
    assert standin.requests == []


# --- the pieces -----------------------------------------------------------------------------------


def test_questions_files(tmp_path: Path) -> None:
    text = tmp_path / "q.txt"
    text.write_text("  first?\n\nsecond?\nfirst?\n", encoding="utf-8")
    assert read_questions(text) == ["first?", "second?"]
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"question": "a?"}\n{"question": "b?", "id": 2}\n', encoding="utf-8")
    assert read_questions(jsonl) == ["a?", "b?"]
    jsonl.write_text('{"question": "a?"}\n["b?"]\n', encoding="utf-8")
    with pytest.raises(InvalidRequest, match="line 2"):
        read_questions(jsonl)


def test_questions_written_by_the_model_are_cleaned() -> None:
    written = ("<think>\nlet me see\n</think>\nВот вопросы:\n1. «Первый вопрос?»\n2) Second one?\n- \"Third?\"\n"
               "* Second one?\n\n")
    assert parse_questions(written) == ["Первый вопрос?", "Second one?", "Third?"]


def test_the_split_is_stable_and_near_the_share() -> None:
    ids = [item_id(f"question {i}") for i in range(4000)]
    held = [i for i in ids if is_held_out(i, 0.1)]
    assert 320 <= len(held) <= 480
    assert held == [i for i in ids if is_held_out(i, 0.1)]
    assert not any(is_held_out(i, 0.0) for i in ids)


def test_file_names_follow_the_output(tmp_path: Path) -> None:
    files = DatasetFiles.for_output(tmp_path / "role.jsonl")
    assert [p.name for p in vars(files).values()] == [
        "role.jsonl", "role.heldout.jsonl", "role.sharegpt.jsonl", "role.heldout.sharegpt.jsonl",
        "role.questions.jsonl"]


def test_a_damaged_dataset_line_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "a"}]}\nnot json\n{"messages": []}\n')
    with pytest.raises(InvalidRequest, match="line 2 is not JSON"):
        done_items(path)


# --- files that are not the command's own (issue 22, item 8) ---------------------------------------


@pytest.mark.parametrize("name", ["notes.txt", "data.jsonl", "data.heldout.jsonl", "data.sharegpt.jsonl",
                                  "data.questions.jsonl"])
def test_a_file_the_command_did_not_write_is_never_touched(place: Path, standin: OllamaStandin, name: str) -> None:
    """`--out notes.txt` over someone's notes (without a final newline), or any file a dataset would
    write beside `--out data.jsonl`: refused before anything is written or asked."""
    out = place / "out" / ("notes.txt" if name == "notes.txt" else "data.jsonl")
    existing = out.with_name(name)
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"line one\nline two without a newline")
    result = run_cli("bake", "dataset", "engineer", "--roles", str(place / "roles"), "--ollama-url", standin.url,
                     "--model", "qwen3:8b", "--var", "team=QA", "--out", str(out),
                     "--questions", str(place / "questions.txt"))
    assert result.returncode == KINDS["invalid_request"].exit_code, result.stderr
    assert f"{existing} exists and was not written by `bake dataset`" in result.stderr
    assert existing.read_bytes() == b"line one\nline two without a newline"
    assert sorted(p.name for p in existing.parent.iterdir()) == [name]
    assert standin.requests == []


def test_a_resumed_run_after_the_role_changed_is_refused(place: Path, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", status=500, body={"error": "model runner crashed"}, times=3)
    first = bake(place, standin, "--retries", "0", "--concurrency", "1")
    assert first.returncode != 0
    files = DatasetFiles.for_output(place / "out" / "data.jsonl")
    before = {path: path.read_bytes() for path in files.train.parent.iterdir()}
    meta = json.loads(files.meta.read_text("utf-8"))
    assert meta["role"] == "engineer" and meta["model"] == "qwen3:8b" and meta["version"].startswith("sha256:")

    roles = place / "roles"
    (roles / "engineer.md").write_text((roles / "engineer.md").read_text("utf-8") + "\nNever guess.\n", "utf-8")
    standin.clear()
    standin.answer = teacher
    again = bake(place, standin)
    assert again.returncode == KINDS["invalid_request"].exit_code, again.stderr
    assert f"holds answers made with version {meta['version'][7:19]} of role 'engineer'" in again.stderr
    assert "choose another --out, or move the files away" in again.stderr
    assert {path: path.read_bytes() for path in files.train.parent.iterdir()} == before
    assert standin.requests_to("/api/chat") == []

    other = bake(place, standin, "--model", "llama3.2")  # argparse: the last --model wins
    assert other.returncode == KINDS["invalid_request"].exit_code
    assert "holds answers of 'qwen3:8b'" in other.stderr


@pytest.mark.parametrize("delay", ["-1", "nan", "inf", "601", "soon"])
def test_a_retry_delay_out_of_range_is_a_clear_error(place: Path, standin: OllamaStandin, delay: str) -> None:
    result = bake(place, standin, "--retry-delay", delay)
    assert result.returncode == 2
    assert f"--retry-delay: expected seconds from 0 to 600, not {delay!r}" in result.stderr
    assert "Traceback" not in result.stderr and standin.requests == []


def test_the_teacher_can_be_an_openai_compatible_server(place: Path, llama_server: LlamaServer) -> None:
    """`--engine-url`: llama-server answers as the teacher, the role fitted as the proxy fits it."""
    role = place / "roles" / "engineer.md"
    role.write_text(role.read_text("utf-8").replace("{temperature: 0.3}", "{temperature: 0.3, num_predict: 24}"),
                    encoding="utf-8")
    (place / "two.txt").write_text("What is a flaky test?\nShould I mock the database?\n", encoding="utf-8")
    result = run_cli("bake", "dataset", "engineer", "--roles", str(place / "roles"), "--engine-url", llama_server.url,
                     "--model", "smollm2", "--var", "team=QA", "--out", str(place / "out" / "data.jsonl"),
                     "--questions", str(place / "two.txt"), "--held-out", "0", "--budget", "60")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["train"] == 2 and summary["failed"] == 0 and summary["model"] == "smollm2"
    # llama-server counted the fitted role in each prompt: more than the question and the template's frame.
    assert summary["prompt_tokens"] > 2 * (summary["system_tokens"] + 10)
    pairs = lines(place / "out" / "data.jsonl")
    assert sorted(p["messages"][0]["content"] for p in pairs) == ["Should I mock the database?",
                                                                   "What is a flaky test?"]
    assert all(p["messages"][1]["content"].strip() for p in pairs)
