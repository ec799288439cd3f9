"""The studio's files over HTTP from a real gunicorn: the page, its headers, what it may load, the key."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import requests

from tests.servers import REPO, WorkerProcess
from tests.worker.rest.support import API_KEY

STUDIO_FILES = REPO / "worker" / "role_injector" / "web" / "studio"
FILES = {"index.html": "text/html", "studio.js": "text/javascript", "studio.css": "text/css"}


def test_the_page_and_its_files_are_served_with_strict_headers(studio: WorkerProcess) -> None:
    for name, media_type in FILES.items():
        reply = requests.get(f"{studio.url}/studio/{'' if name == 'index.html' else name}", timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.headers["Content-Type"].split(";")[0] == media_type
        assert reply.content == (STUDIO_FILES / name).read_bytes()
        policy = reply.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Cache-Control"] == "no-cache" and reply.headers["ETag"]
    assert requests.get(studio.url + "/studio/", timeout=10).headers["Content-Type"] == "text/html; charset=utf-8"


def test_studio_without_the_slash_redirects_to_the_page(studio: WorkerProcess) -> None:
    reply = requests.get(studio.url + "/studio", timeout=10, allow_redirects=False)
    assert reply.status_code == 308 and reply.headers["Location"].endswith("/studio/")


def test_a_missing_file_is_the_apis_404(studio: WorkerProcess) -> None:
    reply = requests.get(studio.url + "/studio/nothing.js", timeout=10)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "not_found"


def test_the_files_load_nothing_from_elsewhere() -> None:
    """Relative references only: no scheme, no protocol-relative URL, no @import."""
    for name in FILES:
        text = (STUDIO_FILES / name).read_text("utf-8")
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp):", text), name
        assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?//""", text), name
        assert "@import" not in text, name


def test_the_page_is_open_when_the_api_needs_a_key(keyed_studio: WorkerProcess) -> None:
    assert requests.get(keyed_studio.url + "/studio/", timeout=10).status_code == 200
    assert requests.get(keyed_studio.url + "/studio/studio.js", timeout=10).status_code == 200
    assert requests.post(keyed_studio.url + "/v1/plan", json={"role": "plain"}, timeout=10).status_code == 401
    keyed = requests.post(keyed_studio.url + "/v1/plan", json={"role": "plain"}, timeout=10,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    assert keyed.status_code == 200 and keyed.json()["sections"][0]["state"] == "kept"


def test_every_studio_file_ships_in_the_package() -> None:
    """`pip install` (the Docker image) copies only what package-data names."""
    pyproject = tomllib.loads((REPO / "worker" / "pyproject.toml").read_text("utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["role_injector"]
    package = REPO / "worker" / "role_injector"
    shipped = [p for p in STUDIO_FILES.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {p.name for p in shipped} == set(FILES)
    for path in shipped:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatchcase(relative, pattern) for pattern in patterns), relative
