"""The Orrery Works staff handbook: a book-sized role made of many short sections, in English and Russian.

The topics live in `bench/handbook/<language>-*.yaml`: each has a title, the text of its section (facts
that no other section holds) and questions written in other words, each answered by that section only.
This module turns them into a role file; `roles/handbook.md` is the English one, written by

    .venv/bin/python -m bench.handbook en > roles/handbook.md

and a test checks that the committed file is what this prints. The quality benchmark
(`bench/relevance_quality.py`) asks every question of both languages.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

DATA = Path(__file__).resolve().parent / "handbook"
LANGUAGES = ("en", "ru")

FRONT = {
    "en": """\
---
description: Orrery Works staff handbook, {count} sections; each question gets the sections it needs
selection: relevance
tags: [handbook, sample]
---
You are Orbit, the staff handbook assistant of Orrery Works, a maker of telescopes and sky-tracking
devices with offices in Tallinn, Lisbon and Montreal. Below are the sections of the handbook that matter
to the conversation; the rest of the handbook exists but is not shown.

## How to answer {{required}}
Answer from the handbook sections below, briefly, and name the section you used. If they do not answer
the question, say so and suggest asking the People team at people@orrery.example; never guess a number,
a date or a name.
""",
    "ru": """\
---
description: Справочник сотрудника Orrery Works, {count} разделов; на каждый вопрос — нужные разделы
selection: relevance
tags: [handbook, sample]
---
Ты — Орбита, помощник по справочнику сотрудника Orrery Works, компании, которая делает телескопы и
устройства слежения за небом, с офисами в Таллине, Лиссабоне и Монреале. Ниже — разделы справочника,
нужные для разговора; остальные разделы существуют, но не показаны.

## Как отвечать {{required}}
Отвечай по разделам справочника ниже, кратко, и называй раздел, на который опираешься. Если ответа в них
нет, так и скажи и предложи спросить отдел персонала по адресу people@orrery.example; никогда не угадывай
числа, даты и имена.
""",
}


@dataclass(frozen=True)
class Topic:
    title: str
    text: str
    questions: tuple[str, ...]


def topics(language: str) -> list[Topic]:
    """The topics of one language, in the order of the data files."""
    found = []
    for path in sorted(DATA.glob(f"{language}-*.yaml")):
        for item in yaml.safe_load(path.read_text("utf-8")):
            found.append(Topic(item["title"], " ".join(item["text"].split()), tuple(item["questions"])))
    return found


def role_text(language: str) -> str:
    """The role file: front matter, the preamble and the required section, then one section per topic."""
    all_topics = topics(language)
    sections = [f"## {topic.title}\n{wrap(topic.text)}" for topic in all_topics]
    return FRONT[language].format(count=len(all_topics)) + "\n" + "\n\n".join(sections) + "\n"


def wrap(text: str, width: int = 100) -> str:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def words(text: str) -> list[str]:
    return re.findall(r"[^\W_]+", text.casefold().replace("ё", "е"))


def copied_run(question: str, text: str, length: int = 4) -> str | None:
    """A run of `length` words that the question copies from the text, if any."""
    source = words(text)
    runs = {tuple(source[i : i + length]) for i in range(len(source) - length + 1)}
    asked = words(question)
    for i in range(len(asked) - length + 1):
        if tuple(asked[i : i + length]) in runs:
            return " ".join(asked[i : i + length])
    return None


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in LANGUAGES:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(LANGUAGES)}  (prints the role file)")
    sys.stdout.write(role_text(sys.argv[1]))
