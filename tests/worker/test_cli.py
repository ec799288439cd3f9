"""The command line: lint and render, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from role_injector.errors import KINDS
from tests.servers import CLEAN_ENV, ROLE_INJECTOR, run_worker
from tests.worker.conftest import BUNDLED_ROLES, RoleWriter, run_cli


def test_lint_of_the_bundled_roles_is_clean() -> None:
    result = run_cli("lint", str(BUNDLED_ROLES))
    assert result.returncode == 0, result.stdout + result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["role", "version", "sections", "tokens", "(qwen)", "tokens", "(qwen3.5)",
                              "tokens", "(cl100k_base)", "errors"]
    names = {row.split()[0] for row in rows}
    assert {"agi-engineer", "general-assistant", "manifest", "base-assistant"} <= names
    manifest = next(row.split() for row in rows if row.startswith("manifest "))
    assert int(manifest[3]) > 20_000 and int(manifest[5]) > 20_000 and manifest[-1] == "-"


def test_lint_reports_broken_files_and_fails(write_role: RoleWriter, roles_dir: Path) -> None:
    write_role("good", "Fine.")
    write_role("bad", "Hello {{nobody}}.")
    result = run_cli("lint", str(roles_dir))
    assert result.returncode == 1
    assert "bad.md" in result.stdout and "undeclared variable(s) nobody" in result.stdout
    assert any(line.startswith("good ") for line in result.stdout.splitlines())


def test_render_prints_the_fitted_prompt_and_the_report() -> None:
    result = run_cli("render", "agi-engineer", "--roles", str(BUNDLED_ROLES), "--budget", "500",
                 "--var", "user_name=Анна", "--model", "qwen3:8b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Ты — инженер AGI.")
    report = json.loads(result.stderr)
    assert report["usage"]["system_tokens"] <= 500 and report["trim"]["trimmed"] is True
    assert report["role"]["version"].startswith("sha256:")


def test_render_with_a_query_selects_by_relevance_and_reports_each_section_on_a_line() -> None:
    result = run_cli("render", "manifest", "--roles", str(BUNDLED_ROLES), "--budget", "900",
                 "--query", "What went wrong with invoices around daylight saving time?")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stderr)
    trim = report["trim"]
    assert trim["selection"] == "relevance" and report["usage"]["system_tokens"] <= 900
    sections = {s["title"]: s for s in trim["sections"]}
    assert len(trim["sections"]) == len(trim["kept"]) + len(trim["truncated"]) + len(trim["dropped"])
    assert sections["Charter"]["reason"] == "required" and sections[None]["reason"] == "priority"
    lessons = sections["Lessons from past incidents"]
    assert lessons["reason"] == "relevance" and lessons["state"] in ("kept", "truncated")
    assert lessons["score"] == max(s["score"] for s in trim["sections"])
    assert "## Lessons from past incidents" in result.stdout and "## Non-negotiables" not in result.stdout
    lines = result.stderr.splitlines()
    assert sum(line.strip().startswith('{"title"') for line in lines) == len(trim["sections"])
    by_priority = json.loads(run_cli("render", "manifest", "--roles", str(BUNDLED_ROLES), "--budget", "900",
                                 "--query", "invoices", "--selection", "priority").stderr)
    assert by_priority["trim"]["selection"] == "priority"


def test_render_with_a_prompt_prints_the_whole_formatted_prompt() -> None:
    result = run_cli("render", "general-assistant", "--roles", str(BUNDLED_ROLES), "--prompt", "Hi",
                 "--format", "llama3", "--model", "llama3.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>")
    assert result.stdout.rstrip("\n").endswith("<|start_header_id|>assistant<|end_header_id|>")


def test_render_errors_are_clear() -> None:
    result = run_cli("render", "agi-engineer", "--roles", str(BUNDLED_ROLES))
    assert result.returncode == KINDS["missing_variable"].exit_code
    assert "missing_variable" in result.stderr and "user_name" in result.stderr


def test_an_unknown_role_with_no_close_name_lists_the_bundled_ones() -> None:
    result = run_cli("render", "pirate", "--roles", str(BUNDLED_ROLES))
    assert result.returncode == KINDS["role_not_found"].exit_code
    assert result.stderr.strip() == ("error (role_not_found): role 'pirate' not found; the roles are agi-engineer, "
                                     "base-assistant, code-reviewer, general-assistant, handbook, manifest")


def test_render_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    """`role-injector render manifest | head -1`, with a window that takes the whole manifest (about
    90 KB, more than a pipe holds), so the reader leaves while the command still writes."""
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {match: 'wide*', tokenizer: qwen, format: chatml, context_window: 131072, "
                      "reserve_output: 1024}\n")
    env = {**os.environ, **CLEAN_ENV, "ROLE_INJECTOR_MODELS": str(models)}
    process = subprocess.Popen([str(ROLE_INJECTOR), "render", "manifest", "--roles", str(BUNDLED_ROLES),
                                "--model", "wide", "--budget", "100000"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"You are Keel")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141, stderr  # what a shell reports for a writer whose reader left
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_serve_starts_without_a_warning(tmp_path: Path) -> None:
    """gevent patches ssl before anything imports it: nothing the command line imports first brings it."""
    with run_worker(BUNDLED_ROLES, tmp_path) as worker:
        log = worker.log()
    assert "Listening at: " in log
    assert "Warning" not in log, log
    imports = subprocess.run([str(ROLE_INJECTOR.parent / "python"), "-c",
                              "import sys, role_injector.cli; print(sorted({'ssl', 'urllib3'} & set(sys.modules)))"],
                             capture_output=True, text=True, check=True)
    assert imports.stdout.strip() == "[]"
