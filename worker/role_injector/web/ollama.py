"""The Ollama-compatible proxy (/api/*): roles for every Ollama client."""

from __future__ import annotations

from flask import Blueprint

ollama = Blueprint("ollama", __name__)
