"""Documentation pages served by the worker, so that the links n8n shows lead to a page that exists
wherever the worker runs: the node's and its credential's Docs links point at /docs/n8n-node, the
node package's README (the same file its packed tarball ships; the package is not on the npm
registry), rendered to HTML. Static text only, under the studio's Content-Security-Policy."""

from __future__ import annotations

import itertools
import re
from functools import cache
from importlib import resources

from flask import Blueprint, Response, abort
from markdown_it import MarkdownIt

from role_injector.web.pages import SECURITY_HEADERS

docs = Blueprint("docs", __name__, static_folder="docs", static_url_path="/docs/static")

PAGES = {"n8n-node": ("n8n-node.md", "Role Injector node for n8n")}


def slug(title: str) -> str:
    """A heading's anchor as GitHub and npm make it: lower case, punctuation dropped, blanks as '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@cache
def rendered(name: str) -> str:
    file, title = PAGES[name]
    markdown = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML in the file stays text
    tokens = markdown.parse(resources.files("role_injector.web").joinpath("docs", file).read_text("utf-8"))
    for heading, inline in itertools.pairwise(tokens):
        if heading.type == "heading_open":
            heading.attrSet("id", slug(inline.content))
    body = markdown.renderer.render(tokens, markdown.options, {})
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{title}</title>\n'
            f'<link rel="stylesheet" href="static/docs.css">\n</head>\n<body>\n{body}</body>\n</html>\n')


@docs.get("/docs/<name>")
def page(name: str) -> Response:
    if name not in PAGES:
        abort(404)
    return Response(rendered(name), mimetype="text/html")


@docs.after_request
def secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
