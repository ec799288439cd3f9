"""What a client asks for beyond its body: a browser wants a page, an API client the API's answer."""

from __future__ import annotations

from flask import request


def wants_page() -> bool:
    """A browser asking for a page: it names text/html in Accept. Ollama clients and curl do not
    (they send application/json or */*), so they keep getting Ollama's heartbeat at `/`."""
    return any(value == "text/html" and quality > 0 for value, quality in request.accept_mimetypes)
