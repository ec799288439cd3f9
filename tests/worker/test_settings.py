"""Settings: every environment variable the worker reads is documented in the README's tables."""

from __future__ import annotations

import re

from role_injector.settings import Settings
from tests.worker.conftest import REPO

SETTINGS_SOURCES = ["settings.py", "roles.py", "fitting.py", "cpu_pool.py", "server.py", "llama_tools.py"]


def test_every_environment_variable_is_in_a_readme_table() -> None:
    read = set()
    for name in SETTINGS_SOURCES:
        source = (REPO / "worker" / "role_injector" / name).read_text("utf-8")
        read |= set(re.findall(r'"(ROLE_INJECTOR_[A-Z_]+)"', source))
    documented = set(re.findall(r"^\| `(ROLE_INJECTOR_[A-Z_]+)` \|", (REPO / "README.md").read_text("utf-8"), re.M))
    assert len(read) > 15  # the scan found the variables, not nothing
    assert read - documented == set()


def test_an_empty_value_means_the_default() -> None:
    assert Settings.from_env({name: "" for name in ("ROLE_INJECTOR_API_KEY", "ROLE_INJECTOR_RELOAD_INTERVAL")}) \
        == Settings.from_env({})
