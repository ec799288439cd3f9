"""The Ollama stand-in must look like Ollama to real clients, or every test built on it proves nothing."""

from __future__ import annotations

import json
import time

import ollama
import pytest
import requests

from tests.ollama_standin import DEFAULT_ANSWER, Reply, run_ollama_standin


def test_chat_streams_ndjson_and_records_the_request() -> None:
    with run_ollama_standin(answer="hello there, world") as server:
        client = ollama.Client(host=server.url)
        chunks = list(client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "hi"}],
                                  options={"num_ctx": 8192}, stream=True))
        assert "".join(c.message.content or "" for c in chunks) == "hello there, world"
        assert chunks[-1].done and chunks[-1].eval_count and chunks[-1].prompt_eval_count
        assert not any(c.done for c in chunks[:-1])
        (request,) = server.requests_to("/api/chat")
        assert request.method == "POST"
        assert request.body["options"] == {"num_ctx": 8192}
        assert request.body["messages"] == [{"role": "user", "content": "hi"}]


def test_generate_without_stream_is_one_object() -> None:
    with run_ollama_standin() as server:
        response = requests.post(server.url + "/api/generate", timeout=5, json={
            "model": "qwen3:8b", "prompt": "<|im_start|>user\nhi<|im_end|>\n", "raw": True, "stream": False,
        })
        assert response.status_code == 200
        body = response.json()
        assert body["response"] == DEFAULT_ANSWER and body["done"] is True
        assert server.requests_to("/api/generate")[0].body["raw"] is True


def test_answer_may_depend_on_the_request() -> None:
    with run_ollama_standin(answer=lambda body: body["messages"][-1]["content"].upper()) as server:
        client = ollama.Client(host=server.url)
        result = client.chat(model="m", messages=[{"role": "user", "content": "echo"}])
        assert result.message.content == "ECHO"


def test_metadata_endpoints() -> None:
    with run_ollama_standin() as server:
        client = ollama.Client(host=server.url)
        assert {m.model for m in client.list().models} >= {"qwen3:8b"}
        assert client.show("qwen3:8b").modelinfo["qwen3.context_length"] == 40960
        assert requests.get(server.url + "/api/version", timeout=5).json()["version"]
        assert requests.get(server.url + "/api/ps", timeout=5).json()["models"]
        assert requests.get(server.url + "/nope", timeout=5).status_code == 404


def test_faults_and_clear() -> None:
    with run_ollama_standin() as server:
        client = ollama.Client(host=server.url)
        server.set_fault("/api/chat", status=500, body={"error": "boom"})
        with pytest.raises(ollama.ResponseError) as error:
            client.chat(model="qwen3:8b", messages=[])
        assert error.value.status_code == 500 and error.value.error == "boom"

        server.set_fault("/api/chat", model_not_found=True)
        with pytest.raises(ollama.ResponseError) as error:
            client.chat(model="qwen3:8b", messages=[])
        assert error.value.status_code == 404
        assert error.value.error == 'model "qwen3:8b" not found, try pulling it first'

        server.set_fault(delay=0.3)  # every path
        started = time.monotonic()
        client.list()
        assert time.monotonic() - started >= 0.3

        server.clear()
        assert server.requests == []
        client.chat(model="qwen3:8b", messages=[])


def test_chunk_delay_spaces_the_stream() -> None:
    with run_ollama_standin(answer="abcdef") as server:
        server.set_fault("/api/generate", chunk_delay=0.2)
        arrivals = []
        with requests.post(server.url + "/api/generate", json={"model": "m", "prompt": "p"},
                           stream=True, timeout=5) as response:
            for line in response.iter_lines():
                arrivals.append((time.monotonic(), json.loads(line)))
        assert arrivals[-1][1]["done"] is True
        assert arrivals[-1][0] - arrivals[0][0] >= 0.2 * (len(arrivals) - 1) - 0.05


def test_strict_models_answer_404_for_unknown_models() -> None:
    with run_ollama_standin(models={"qwen3:0.6b": 32768}, strict_models=True) as server:
        client = ollama.Client(host=server.url)
        with pytest.raises(ollama.ResponseError) as error:
            client.generate(model="llama3:8b", prompt="x")
        assert error.value.status_code == 404
        assert client.show("qwen3:0.6b").modelinfo["qwen3.context_length"] == 32768


def test_chunk_count_and_interrupted_streams() -> None:
    with run_ollama_standin(answer="x" * 40) as server:
        server.set_fault("/api/generate", chunks=10, chunk_delay=0.05)
        with requests.post(server.url + "/api/generate", json={"model": "m", "prompt": "p"},
                           stream=True, timeout=5) as response:
            lines = list(response.iter_lines())
        assert len(lines) == 11 and server.interrupted == 0

        server.set_fault("/api/generate", chunks=40, chunk_delay=0.05)
        response = requests.post(server.url + "/api/generate", json={"model": "m", "prompt": "p"},
                                 stream=True, timeout=5)
        next(response.iter_lines())
        response.close()
        deadline = time.monotonic() + 3
        while server.interrupted == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.interrupted == 1


def test_chunked_request_bodies_are_recorded_whole() -> None:
    with run_ollama_standin() as server:
        blob = bytes(range(256)) * 100
        response = requests.post(server.url + "/api/blobs/sha256:" + "ab" * 32,
                                 data=iter([blob[:1000], blob[1000:]]), timeout=5)
        assert response.status_code == 404
        assert server.requests_to("/api/blobs/sha256:" + "ab" * 32)[0].raw == blob


CALL = {"id": "call_1", "function": {"index": 0, "name": "add", "arguments": {"a": 2, "b": 3}}}


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_come_as_ollama_sends_them(stream: bool) -> None:
    with run_ollama_standin(answer=Reply(tool_calls=(CALL,))) as server:
        client = ollama.Client(host=server.url)
        tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
        messages = [{"role": "user", "content": "2+3?"}]
        if stream:
            chunks = list(client.chat(model="qwen3:8b", messages=messages, tools=tools, stream=True))
            calls = [c for chunk in chunks for c in chunk.message.tool_calls or ()]
            assert chunks[-1].done and not chunks[-1].message.tool_calls
            assert not any(c.message.content for c in chunks)
        else:
            calls = client.chat(model="qwen3:8b", messages=messages, tools=tools).message.tool_calls or []
        assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("add", {"a": 2, "b": 3})]
        assert server.requests_to("/api/chat")[0].body["tools"] == tools


def test_done_reason_and_images_are_recorded() -> None:
    with run_ollama_standin(answer=Reply("cut sh", done_reason="length")) as server:
        client = ollama.Client(host=server.url)
        image = "iVBORw0KGgo="
        result = client.chat(model="qwen3:8b", messages=[{"role": "user", "content": "see", "images": [image]}])
        assert (result.message.content, result.done_reason) == ("cut sh", "length")
        assert server.requests_to("/api/chat")[0].body["messages"][0]["images"] == [image]


def test_stopped_refuses_connections_drops_open_ones_and_serves_again_at_the_same_url() -> None:
    with run_ollama_standin() as server, requests.Session() as session:
        assert session.get(server.url + "/api/version", timeout=5).status_code == 200  # a kept-alive connection
        with server.stopped():
            for client in (requests, session):
                with pytest.raises(requests.ConnectionError):
                    client.get(server.url + "/api/version", timeout=5)
        assert session.get(server.url + "/api/version", timeout=5).status_code == 200
        assert len(server.requests_to("/api/version")) == 2
