"""The native Ollama client against the stand-in: retries with backoff on what may pass and only on
that, timeouts, streamed answers, blobs checked by digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from role_injector.errors import ModelNotFound, UpstreamRefused, UpstreamTimeout, UpstreamUnreachable
from role_injector.ollama_client import OllamaClient, file_digest
from tests.ollama_standin import OllamaStandin
from tests.servers import free_port

ANSWER = "one two three"


@pytest.fixture(autouse=True)
def answer(standin: OllamaStandin, ollama: OllamaClient) -> None:
    standin.answer = ANSWER


def test_busy_answers_are_retried_until_they_pass(ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/tags", status=503, body={"error": "server busy"}, times=2)
    assert "qwen3:8b" in {m["name"] for m in ollama.tags()}
    assert len(standin.requests_to("/api/tags")) == 3


def test_retries_end_with_ollamas_message(ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/tags", status=503, body={"error": "server busy"})
    with pytest.raises(UpstreamRefused, match="server busy") as error:
        ollama.tags()
    assert error.value.details["status"] == 503
    assert len(standin.requests_to("/api/tags")) == 4  # the first try and 3 retries


def test_a_refusal_is_not_retried(ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/copy", status=400, body={"error": "invalid model name"})
    with pytest.raises(UpstreamRefused, match="invalid model name"):
        ollama.copy("qwen3:8b", "x")
    assert len(standin.requests_to("/api/copy")) == 1


def test_a_missing_model_is_model_not_found(ollama: OllamaClient, standin: OllamaStandin) -> None:
    with pytest.raises(ModelNotFound, match='model "nope:1b" not found'):
        ollama.show("nope:1b")
    assert len(standin.requests_to("/api/show")) == 1


def test_an_unreachable_ollama_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UpstreamUnreachable, match=f"cannot reach Ollama at {url}"):
        OllamaClient.at(url, retries=1, retry_delay=0.01).tags()


def test_a_silent_ollama_times_out(ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/tags", delay=1.5)
    with pytest.raises(UpstreamTimeout, match=r"did not answer within 0\.3 s"):
        OllamaClient.at(standin.url, timeout=0.3, retries=0).tags()


def test_chat_collects_the_stream_and_the_counts(ollama: OllamaClient, standin: OllamaStandin) -> None:
    answer = ollama.chat({"model": "qwen3:8b", "messages": [{"role": "user", "content": "a b c"}]})
    assert answer.text == ANSWER
    assert (answer.prompt_tokens, answer.completion_tokens) == (3, 3)
    assert standin.requests_to("/api/chat")[0].body["stream"] is True


def test_an_answer_cut_off_mid_stream_is_asked_again(ollama: OllamaClient, standin: OllamaStandin) -> None:
    standin.set_fault("/api/chat", chunk_delay=1.5, times=1)  # the first answer stalls after its first chunk
    client = OllamaClient.at(standin.url, timeout=0.5, retries=2, retry_delay=0.01)
    assert client.chat({"model": "qwen3:8b", "messages": []}).text == ANSWER
    assert len(standin.requests_to("/api/chat")) == 2


def test_blobs_are_uploaded_once_and_checked_by_digest(ollama: OllamaClient, standin: OllamaStandin,
                                                       tmp_path: Path) -> None:
    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    digest = file_digest(adapter)
    assert digest == "sha256:" + hashlib.sha256(adapter.read_bytes()).hexdigest()
    assert not ollama.has_blob(digest)
    ollama.push_blob(adapter, digest)
    assert ollama.has_blob(digest)
    assert standin.blobs[digest] == adapter.read_bytes()
    (upload,) = [r for r in standin.requests if r.method == "POST" and r.path.startswith("/api/blobs/")]
    assert upload.headers["Content-Length"] == str(adapter.stat().st_size)  # streamed, not chunked

    wrong = "sha256:" + "0" * 64
    with pytest.raises(UpstreamRefused, match="digest mismatch"):
        ollama.push_blob(adapter, wrong)
    assert not ollama.has_blob(wrong)


def test_a_failed_create_raises_with_ollamas_line(ollama: OllamaClient) -> None:
    lines = ollama.create({"model": "x", "from": "nope:1b"})
    with pytest.raises(UpstreamRefused, match="pull model manifest: file does not exist"):
        list(lines)
