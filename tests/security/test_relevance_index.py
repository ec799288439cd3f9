"""A book-sized relevance role pays for its index once (issue 22, item 4): a role of 3.8 MB in 8,300
sections, within the limits, used to rebuild its BM25 index on every request (1-2 s each), because the
index's estimated size (206 MiB) exceeded the fit cache. The index is now compact and sized truly, so
every role the default limits admit keeps its index; with a fit cache too small for a role's index,
relevance selection on it is refused at once, with the variable to raise, instead of rebuilt each time.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest
import requests

from tests.security.hostile_roles import serve_roles

MIB = 1024 * 1024
RUSSIAN = "абвгдежзийклмнопрстуфхцчшщыэюя"


def book(words: list[str], sections: int, size: int) -> dict[str, str]:
    """A relevance role of `sections` titled sections, about `size` bytes of `words` in all: the role
    file and its partials (one file may hold 2 MiB, a role with its partials 4 MiB)."""
    chosen = random.Random(7)
    per_section = size // sections
    chapters = []
    for i in range(sections):
        body, length = [], 0
        while length < per_section:
            word = chosen.choice(words)
            body.append(word)
            length += len(word.encode()) + 1
        chapters.append(f"## Chapter {i} {chosen.choice(words)}\n{' '.join(body)}\n")
    parts = {f"_partials/part-{n}.md": "\n".join(chapters[n::3]) for n in range(3)}
    includes = "\n\n".join(f"{{{{> part-{n}}}}}" for n in range(3))
    return {"book.md": f"---\nselection: relevance\n---\nAnswer from the book.\n\n{includes}\n", **parts}


def write(roles: Path, files: dict[str, str]) -> None:
    (roles / "_partials").mkdir(parents=True)
    for name, text in files.items():
        (roles / name).write_text(text, encoding="utf-8")
        assert len(text.encode()) < 2 * MIB


def prose_words() -> list[str]:
    return [w.strip(".,;:!?()") for w in Path(__file__).read_text().split() if w.isalpha()] * 3


def unique_words(letters: str, count: int) -> list[str]:
    chosen = random.Random(11)
    return ["".join(chosen.choice(letters) for _ in range(6)) for _ in range(count)]


BOOKS = {
    "prose, 3.8 MB in 8,300 sections": lambda: book(prose_words(), 8_300, int(3.6 * MIB)),
    "unique Latin words, 3.8 MB in 2,000 sections": lambda: book(unique_words(string.ascii_lowercase, 400_000),
                                                                  2_000, int(3.6 * MIB)),
    "unique Russian words, 3.8 MB in 9,000 sections": lambda: book(unique_words(RUSSIAN, 200_000), 9_000,
                                                                    int(3.6 * MIB)),
}
QUESTIONS = ["Which chapter covers the index?", "What does the book say about caches?", "Где ключ?", "anything"]


def built(log: str) -> int:
    return log.count("built the relevance index of role 'book'")


@pytest.mark.parametrize("shape", BOOKS)
def test_a_book_sized_role_builds_its_index_once(tmp_path: Path, shape: str) -> None:
    roles = tmp_path / "roles"
    write(roles, BOOKS[shape]())
    with serve_roles(roles, tmp_path) as server:
        for question in QUESTIONS:
            reply = requests.post(server.url + "/v1/inject", timeout=300, json={
                "role": "book", "prompt": question, "model": "qwen3:8b", "budget": 2_000})
            assert reply.status_code == 200, reply.text
            assert reply.json()["trim"]["selection"] == "relevance"
            assert reply.json()["usage"]["system_tokens_full"] > 500_000  # the whole book was there to pick from
        assert built(server.log()) == 1, server.log()[-3000:]


def test_a_cache_too_small_for_the_index_refuses_relevance_at_once_and_names_the_variable(tmp_path: Path) -> None:
    roles = tmp_path / "roles"
    write(roles, BOOKS["unique Latin words, 3.8 MB in 2,000 sections"]())
    with serve_roles(roles, tmp_path, ROLE_INJECTOR_FIT_CACHE_BYTES=str(16 * MIB)) as server:
        for question in QUESTIONS:
            reply = requests.post(server.url + "/v1/inject", timeout=300, json={"role": "book", "prompt": question})
            assert reply.status_code == 422
            error = reply.json()["error"]
            assert error["code"] == "invalid_role" and "ROLE_INJECTOR_FIT_CACHE_BYTES" in error["message"]
            assert error["details"]["limit"] == "ROLE_INJECTOR_FIT_CACHE_BYTES"
        priority = requests.post(server.url + "/v1/inject", timeout=300, json={
            "role": "book", "prompt": "hi", "selection": "priority", "budget": 500})
        assert priority.status_code == 200
        assert built(server.log()) == 0
