"""What the pages the worker serves (the studio, the docs) share, and who wants one: a browser wants a
page, an API client the API's answer."""

from __future__ import annotations

from flask import request

# Every page: nothing from anywhere else, no framing, no sniffing, revalidated (ETag), so an upgraded
# worker never runs an old script.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def wants_page() -> bool:
    """A browser asking for a page: it names text/html in Accept. Ollama clients and curl do not
    (they send application/json or */*), so they keep getting Ollama's heartbeat at `/`."""
    return any(value == "text/html" and quality > 0 for value, quality in request.accept_mimetypes)
