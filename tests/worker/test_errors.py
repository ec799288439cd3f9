"""The one table of errors: the contract's statuses, every error class has a row, the README's copy."""

from __future__ import annotations

import role_injector.errors as errors
from role_injector.errors import KINDS, RoleInjectorError
from tests.worker.conftest import REPO

# The REST contract (its error codes and statuses) that the node, the workflows and users rely on.
CONTRACT = {
    "invalid_request": 400,
    "unauthorized": 401,
    "role_not_found": 404,
    "payload_too_large": 413,
    "missing_variable": 422,
    "budget_too_small": 422,
    "context_overflow": 422,
}


def test_the_contracts_codes_keep_their_rest_statuses() -> None:
    assert {code: KINDS[code].rest_status for code in CONTRACT} == CONTRACT


def test_every_error_class_has_a_row_and_every_row_is_complete() -> None:
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, RoleInjectorError)]
    assert {cls.code for cls in classes} <= set(KINDS)
    for code, kind in KINDS.items():
        assert kind.code == code and kind.meaning
        assert 400 <= kind.rest_status < 600 and 400 <= kind.ollama_status < 600
        assert kind.openai_type in {"invalid_request_error", "authentication_error", "server_error"}
        assert kind.exit_code > 1  # 0 is success, 1 is lint's "broken roles found"


def test_only_a_defect_is_a_500() -> None:
    assert [code for code, kind in KINDS.items() if kind.rest_status == 500] == ["internal_error"]
    assert [code for code, kind in KINDS.items() if kind.ollama_status == 500] == ["internal_error"]


def test_openai_clients_get_no_422() -> None:
    """OpenAI answers a context overflow with 400, and LangChain retries a 422 as if it could pass."""
    assert 422 not in {kind.openai_status for kind in KINDS.values()}
    assert KINDS["context_overflow"].openai_status == 400


def readme_error_rows() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text("utf-8")
    table = text[text.index("| code | meaning | REST |"):].split("\n\n")[0].splitlines()[2:]
    rows = {}
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_the_readme_lists_every_error_as_the_table_says() -> None:
    expected = {
        code: [kind.meaning, str(kind.rest_status), str(kind.ollama_status),
               f"{kind.openai_status} `{kind.openai_type}`", str(kind.exit_code)]
        for code, kind in KINDS.items()
    }
    assert readme_error_rows() == expected
