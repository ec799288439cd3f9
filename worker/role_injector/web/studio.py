"""The role studio: one page, served by the worker, where role authors see what a budget does to a role.

Static files only (HTML, CSS and JavaScript written by hand: no build step, nothing loaded from
elsewhere, which the Content-Security-Policy enforces). Every figure the page shows comes from the
REST API (/v1/roles, /v1/plan, /v1/profiles), so the page has no fitting rule of its own.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

studio = Blueprint("studio", __name__, static_folder="studio", static_url_path="/studio")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an upgraded worker never runs an old script
}


def wants_page() -> bool:
    """A browser asking for a page: it names text/html in Accept. Ollama clients and curl do not
    (they send application/json or */*), so they keep getting Ollama's heartbeat at `/`."""
    return any(value == "text/html" and quality > 0 for value, quality in request.accept_mimetypes)


@studio.get("/studio/")
def page() -> Response:
    return studio.send_static_file("index.html")


@studio.after_request
def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
