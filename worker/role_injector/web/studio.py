"""The role studio: one page, served by the worker, where role authors see what a budget does to a role.

Static files only (HTML, CSS and JavaScript written by hand: no build step, nothing loaded from
elsewhere, which the Content-Security-Policy enforces). Every figure the page shows comes from the
REST API (/v1/roles, /v1/plan, /v1/profiles), so the page has no fitting rule of its own.
"""

from __future__ import annotations

from flask import Blueprint, Response

from role_injector.web.error_shapes import REST, answer_errors
from role_injector.web.pages import SECURITY_HEADERS

studio = Blueprint("studio", __name__, static_folder="studio", static_url_path="/studio")
answer_errors(studio, REST)


@studio.get("/studio/")
def page() -> Response:
    return studio.send_static_file("index.html")


@studio.after_request
def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
