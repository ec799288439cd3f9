"""The one error type of the library: a stable code, a message for people, details for programs."""

from __future__ import annotations

from typing import Any


class RoleInjectorError(Exception):
    """Base error. Subclasses fix `code`; the HTTP layer maps codes to statuses."""

    code = "invalid_request"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = details or {}
