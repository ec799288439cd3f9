"""The worker as a user and as the image install it: no extras, a fresh virtual environment, then
`role-injector serve` answers `/healthz`. The test tools of `.venv` bring packages the worker itself
may forget to declare (gunicorn's gevent worker imports `packaging`, which gunicorn does not declare),
so only an install of the worker alone shows that it serves.

Both installs use the wheels built once here as worker/Dockerfile builds them (`pip wheel ./worker`),
from pip's cache: a few seconds each instead of a download each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.servers import CLEAN_ENV, REPO, free_port, stop_process, wait_for_http

PIP = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
# What the Dockerfile copies is the folder as it is in git: no build leftovers of a developer's machine.
LEFTOVERS = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")


def pip(*args: str) -> None:
    done = subprocess.run([*PIP, *args], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


def fresh_venv(place: Path) -> Path:
    """A virtual environment with nothing in it; this test's pip installs into it (`pip --python`)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(place)], check=True, timeout=120)
    return place / "bin" / "python"


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`pip install -e worker` (a user, from a clone) and `pip install --no-index /wheels/*.whl` (the
    image), each into a fresh venv; the two run side by side."""
    root = tmp_path_factory.mktemp("install")
    source = root / "src" / "worker"
    shutil.copytree(REPO / "worker", source, ignore=LEFTOVERS)
    wheels = root / "wheels"
    pip("wheel", "--wheel-dir", str(wheels), str(source))  # worker/Dockerfile's build stage
    user, image = fresh_venv(root / "user"), fresh_venv(root / "image")
    with ThreadPoolExecutor(2) as both:
        jobs = [both.submit(pip, "--python", str(user), "install", "--find-links", str(wheels), "-e", str(source)),
                both.submit(pip, "--python", str(image), "install", "--no-index",
                            *map(str, sorted(wheels.glob("*.whl"))))]
        for job in jobs:
            job.result()
    return {"user": user.parent.parent, "image": image.parent.parent}


@contextmanager
def serve(bin_dir: Path, scratch: Path) -> Iterator[str]:
    """`role-injector serve` of that environment, outside the repository, with nothing of .venv around."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}, **CLEAN_ENV,
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    log = scratch / f"serve-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(bin_dir / "role-injector"), "serve", "--port", str(port),
                                    "--roles", str(REPO / "roles")], cwd=scratch, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, process=process)
        yield f"http://127.0.0.1:{port}"
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        stop_process(process, timeout=15)


@pytest.mark.parametrize("how", ["user", "image"])
def test_a_plain_install_serves(how: str, installs: dict[str, Path], tmp_path: Path) -> None:
    venv = installs[how]
    extras = subprocess.run([str(venv / "bin" / "python"), "-c", "import pytest"], capture_output=True, check=False)
    assert extras.returncode != 0, "the fresh venv holds a test tool: it does not show what the worker declares"
    with serve(venv / "bin", tmp_path) as url:
        answer = requests.get(url + "/healthz", timeout=30)
        assert answer.status_code == 200
        assert answer.json() == {"status": "ok", "roles": len(list((REPO / "roles").glob("*.md")))}
