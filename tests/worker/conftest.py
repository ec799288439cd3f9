"""Fixtures shared by the worker tests: role directories written in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLED_ROLES = REPO / "roles"

RoleWriter = Callable[..., Path]


@pytest.fixture
def roles_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "roles"
    (directory / "_partials").mkdir(parents=True)
    return directory


@pytest.fixture
def write_role(roles_dir: Path) -> RoleWriter:
    """write_role("name", "text") writes roles/name.md; partial=True writes roles/_partials/name.md."""

    def write(name: str, text: str, partial: bool = False) -> Path:
        path = roles_dir / ("_partials" if partial else "") / f"{name}.md"
        path.write_text(text, encoding="utf-8")
        return path

    return write
