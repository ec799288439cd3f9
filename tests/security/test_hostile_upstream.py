"""Class 7: an engine whose answers are not text, stall or break, through a real gunicorn.

- A lone UTF-16 surrogate (escaped, or as its encoded bytes) or bytes that are not UTF-8, anywhere in
  an engine's JSON (a streamed answer line, a model's name, an error message), is read as Go's
  decoder (Ollama's) reads it: U+FFFD. No answer is a 500.
- An answer that is not a stream is read whole (within ROLE_INJECTOR_MAX_UPSTREAM_JSON_BYTES) before
  the status goes out: one that stalls or breaks after its first bytes is a JSON 504 / 502.
- A failure after a stream's first event is the stream's own error (an SSE `data: {"error": …}` event,
  Ollama's `{"error": …}` line), never a cut connection, whatever kind of failure it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from role_injector import openai_compat
from role_injector.settings import Settings
from role_injector.web import create_app
from tests.ollama_standin import OllamaStandin
from tests.servers import WorkerProcess

CHAT = {"model": "guarded", "messages": [{"role": "user", "content": "hi"}]}
REPLACEMENT = "\ufffd"


def sse_events(text: str) -> list[Any]:
    return [json.loads(line[6:]) if line[6:] != "[DONE]" else "[DONE]"
            for line in text.splitlines() if line.startswith("data: ")]


def ndjson(*lines: Any) -> bytes:
    return b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)


def chat_line(content: str | bytes, done: bool = False) -> bytes:
    """One line of Ollama's /api/chat stream, the content's JSON text given as it is (bytes) or escaped."""
    text = content if isinstance(content, bytes) else json.dumps(content).encode()
    line = b'{"model": "qwen3:8b", "message": {"role": "assistant", "content": ' + text + b'}, "done": '
    line += b'true, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 2}' if done else b"false}"
    return line


# --- text that is not text ----------------------------------------------------------------------------


ODD_TEXTS = [  # the JSON text of a content, and what the client gets
    (b'"a\\ud800b"', f"a{REPLACEMENT}b"),
    (b'"\\udfff"', REPLACEMENT),
    (b'"\\ud83d\\ud83d x"', f"{REPLACEMENT}{REPLACEMENT} x"),
    (b'"\\ud83d\\ude00"', "\U0001f600"),  # a pair is a character
    (b'"a\xed\xa0\x80b"', f"a{REPLACEMENT * 3}b"),  # an encoded surrogate
    (b'"a\xffb"', f"a{REPLACEMENT}b"),  # not UTF-8
]


@pytest.mark.parametrize(("text", "shown"), ODD_TEXTS)
@pytest.mark.parametrize("model", ["guarded", "qwen3:8b"])
def test_odd_text_in_a_streamed_answer(guarded: WorkerProcess, standin: OllamaStandin, text: bytes, shown: str,
                                       model: str) -> None:
    for stream in (False, True):
        standin.set_fault("/api/chat", status=200, body=ndjson(chat_line("x"), chat_line(text), chat_line("", True)))
        answer = requests.post(guarded.url + "/v1/chat/completions", json={**CHAT, "model": model, "stream": stream},
                               timeout=30)
        assert answer.status_code == 200, answer.text
        if stream:
            events = sse_events(answer.content.decode())
            assert events[-1] == "[DONE]"
            content = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
        else:
            content = answer.json()["choices"][0]["message"]["content"]
        assert content == "x" + shown
    assert "Traceback" not in guarded.log()


def test_odd_text_in_tool_calls_and_reasoning(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    line = (b'{"message": {"role": "assistant", "content": "", "thinking": "t\\udc00", "tool_calls": '
            b'[{"function": {"name": "f\\ud800", "arguments": {"k\\udbff": "v\\udfff"}}}]}, "done": false}')
    standin.set_fault("/api/chat", status=200, body=ndjson(line, chat_line("", True)))
    answer = requests.post(guarded.url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert answer.status_code == 200, answer.text
    message = answer.json()["choices"][0]["message"]
    assert message["reasoning"] == f"t{REPLACEMENT}"
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == f"f{REPLACEMENT}"
    assert json.loads(call["function"]["arguments"]) == {f"k{REPLACEMENT}": f"v{REPLACEMENT}"}


@pytest.mark.parametrize("name", ["odd\ud800name", "\udfff", "a\ud83d"])
def test_odd_model_names_in_the_model_list(guarded: WorkerProcess, standin: OllamaStandin, name: str) -> None:
    standin.models[name] = 4096  # (the stand-in's `clear` forgets it)
    tags = requests.get(guarded.url + "/api/tags", timeout=30)
    models = requests.get(guarded.url + "/v1/models", timeout=30)
    assert tags.status_code == 200 and models.status_code == 200, (tags.text, models.text)
    shown = name.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert shown in [m["name"] for m in tags.json()["models"]]
    assert shown in [m["id"] for m in models.json()["data"]]


def test_odd_text_in_an_engines_refusal(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    for path, url, body in (("/api/chat", "/v1/chat/completions", CHAT), ("/api/tags", "/v1/models", None),
                            ("/api/show", "/api/show", {"model": "guarded"})):
        standin.set_fault(path, status=400, body={"error": "bad \ud800 thing"})
        answer = requests.request("POST" if body else "GET", guarded.url + url, json=body, timeout=30)
        assert answer.status_code == 400, (url, answer.text)
        assert "bad" in answer.text
    standin.set_fault("/api/create", status=500, body={"error": "no \udfff"})
    answer = requests.post(guarded.url + "/v1/roles/guarded/ollama-model", json={"name": "g-model", "base": "qwen3:8b"},
                           timeout=30)
    assert answer.status_code == 502 and REPLACEMENT in answer.json()["error"]["message"], answer.text


# --- an answer that is not a stream, cut or stalled ---------------------------------------------------


@pytest.mark.parametrize(("path", "body"), [
    ("/api/chat", {**CHAT, "stream": False}),
    ("/api/chat", {**CHAT, "model": "qwen3:8b", "stream": False}),
    ("/api/generate", {"model": "guarded", "prompt": "hi", "stream": False}),
    ("/api/show", {"model": "qwen3:8b"}),
    ("/api/embed", {"model": "qwen3:8b", "input": "hi"}),
    ("/api/ps", None),
    ("/api/version", None),
])
@pytest.mark.parametrize(("fault", "status"), [({"stall": 6}, 504), ({"stall": 0}, 502)])
def test_an_answer_cut_or_stalled_after_its_first_bytes_is_json(guarded: WorkerProcess, standin: OllamaStandin,
                                                               path: str, body: Any, fault: dict[str, Any],
                                                               status: int) -> None:
    standin.set_fault(path, status=200, body={"done": True}, length=200_000, cut_after=70_000, **fault)
    answer = requests.request("POST" if body else "GET", guarded.url + path, json=body, timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json" and set(answer.json()) == {"error"}


def test_a_whole_answer_still_comes_whole(guarded: WorkerProcess, standin: OllamaStandin) -> None:
    standin.set_fault("/api/ps", status=200, body={"models": []}, length=3_000_000)
    answer = requests.get(guarded.url + "/api/ps", timeout=30)
    assert answer.status_code == 200 and len(answer.content) == 3_000_000
    assert answer.json()["models"] == []


# --- a failure after the first event -------------------------------------------------------------------


FIRST = ndjson(chat_line("hello"))
WHOLE = FIRST + ndjson(chat_line(" and more"), chat_line("", True))
BROKEN_STREAMS = [  # the stream after one good line, and what the error says
    (dict(body=ndjson(chat_line("hello")) + b"garbage\n"), "not a JSON object"),
    (dict(body=ndjson(chat_line("hello"), {"error": "out of memory"})), "out of memory"),
    (dict(body=ndjson(chat_line("hello"), {"message": {"tool_calls": 5}, "done": False})), "tool_calls"),
    (dict(body=WHOLE, cut_after=len(FIRST) + 20, stall=0), "broke off"),
    (dict(body=WHOLE, cut_after=len(FIRST) + 20, stall=6), "sent nothing"),
    (dict(body=ndjson(chat_line("hello"))), "ended before it was complete"),
]


@pytest.mark.parametrize(("fault", "said"), BROKEN_STREAMS)
def test_a_failure_after_the_first_event_is_an_error_event(guarded: WorkerProcess, standin: OllamaStandin,
                                                           fault: dict[str, Any], said: str) -> None:
    standin.set_fault("/api/chat", status=200, **fault)
    answer = requests.post(guarded.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
    assert answer.status_code == 200
    events = sse_events(answer.content.decode())
    assert events[0]["choices"][0]["delta"]["content"] == "hello"
    assert set(events[-1]) == {"error"} and said in events[-1]["error"]["message"], events[-1]
    assert "[DONE]" not in events


@pytest.mark.parametrize(("fault", "said"), BROKEN_STREAMS[:2] + BROKEN_STREAMS[3:5])
def test_a_failure_inside_ollamas_stream_is_its_error_line(guarded: WorkerProcess, standin: OllamaStandin,
                                                           fault: dict[str, Any], said: str) -> None:
    standin.set_fault("/api/chat", status=200, **fault)
    answer = requests.post(guarded.url + "/api/chat", json=CHAT, timeout=30)
    lines = [json.loads(line) for line in answer.text.splitlines() if line.startswith("{")]
    assert lines[0]["message"]["content"] == "hello"
    if "broke off" in said or "sent nothing" in said:  # relayed bytes, then the proxy's own line
        assert said in lines[-1]["error"]


def test_a_defect_after_the_first_event_is_an_error_event_too(place: Path, standin: OllamaStandin,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a library error but a defect (here: the chunk encoder fails on the second delta): the client
    still reads an error event in OpenAI's shape, and the log has the trace."""
    calls = {"n": 0}
    real = openai_compat.ChatStream.events

    def failing(self: openai_compat.ChatStream, delta: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("a defect")
        return real(self, delta)

    monkeypatch.setattr(openai_compat.ChatStream, "events", failing)
    app = create_app(Settings.from_env({}, roles_dir=str(place / "roles"), models_file=str(place / "models.yaml"),
                                       ollama_url=standin.url))
    answer = app.test_client().post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(answer.get_data(as_text=True))
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["code"] == "internal_error" and events[-1]["error"]["type"] == "server_error"
