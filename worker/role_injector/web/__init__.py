"""The HTTP layer: translates requests to library calls and results to JSON, nothing more."""

from role_injector.web.app import create_app

__all__ = ["create_app"]
