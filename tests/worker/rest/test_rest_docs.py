"""/docs/n8n-node: the page the n8n node's and its credential's Docs links open. It is the node
package's README (n8n-node/README.md, which the packed tarball ships too), served by the worker."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

from tests.servers import REPO
from tests.worker.rest.support import Api

README = REPO / "n8n-node" / "README.md"
PAGE = "/docs/n8n-node"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("a", "link") and found.get("href"):
            self.hrefs.append(str(found["href"]))
        if found.get("id"):
            self.ids.add(str(found["id"]))


def test_the_node_page_is_the_package_readme_with_an_anchor_per_heading(api: Api) -> None:
    reply = api.request("GET", PAGE)
    assert reply.status == 200 and reply.content_type.startswith("text/html")
    assert reply.headers["content-security-policy"].startswith("default-src 'none'")
    page = reply.body.decode()
    links = Links()
    links.feed(page)
    headings = re.findall(r"^#+ (.+)$", README.read_text(), re.MULTILINE)
    assert "Credentials" in headings and "Installation" in headings
    assert {"credentials", "installation"} <= links.ids
    assert len(links.ids) == len(headings)
    assert "Role Injector API" in page


def test_every_link_of_the_page_and_of_the_node_leads_to_a_page_that_exists(api: Api) -> None:
    """Links to the worker itself (relative ones, and the node's http://localhost:8000/docs/… with the
    anchors they name) answer here; the only other links are to n8n's own site."""
    package = json.loads((REPO / "n8n-node" / "package.json").read_text())
    codex = json.loads((REPO / "n8n-node" / "nodes" / "RoleInjector" / "RoleInjector.node.json").read_text())
    credential = (REPO / "n8n-node" / "credentials" / "RoleInjectorApi.credentials.ts").read_text()
    node_links = [package["homepage"], *(entry["url"] for entries in codex["resources"].values() for entry in entries),
                  *re.findall(r"documentationUrl\s*=\s*'([^']+)'", credential)]
    assert len(node_links) == 4 and "repository" not in package  # the repository has no public home
    page = api.request("GET", PAGE).body.decode()
    links = Links()
    links.feed(page)
    ids = links.ids
    for link in node_links:
        assert link.startswith("http://localhost:8000/docs/"), link
        path, _, anchor = link.removeprefix("http://localhost:8000").partition("#")
        assert api.request("GET", path).status == 200, link
        assert not anchor or anchor in ids, link
    for href in links.hrefs:
        if href.startswith("https://"):
            assert href.startswith(("https://n8n.io", "https://docs.n8n.io")), href
        elif href.startswith("#"):
            assert href[1:] in ids, href
        else:
            assert api.request("GET", "/docs/" + href).status == 200, href
