"""Which Host names the worker answers to when it has no API key: the defence against DNS rebinding.

A web page at `http://rebind.attacker.example:8000` can make its name resolve to 127.0.0.1 after it
loaded; the browser then lets the page read the worker's answers (same origin, as far as it knows),
and every request names the attacker's host in `Host`. Without an API key nothing else stops it, so
then only these Hosts are answered (the rule Ollama applies to its own API, `allowedHostsMiddleware`):

- an IP address, any (a page can only be at an address itself: no name was rebound);
- `localhost`, a name under `.localhost`, `.local` or `.internal` (Docker's `host.docker.internal`),
  the machine's own host name;
- the names in ROLE_INJECTOR_ALLOWED_HOSTS (`worker`, `roles.example.com`, `.example.com` for the
  names under it, `*` for any) and the name `serve --host` listens on;
- no Host at all (HTTP/1.0: no browser sends that).

Anything else is a 403 `host_not_allowed`. With an API key the page would need the key, so every
Host is answered.
"""

from __future__ import annotations

import ipaddress
import re
import socket

LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
# `name`, `name:port`, `[v6]`, `[v6]:port`: the host part, without the port.
HOST_HEADER = re.compile(r"(?P<host>\[[0-9A-Fa-f:.%]+\]|[^\[\]:/@\s]+)(?::\d{1,5})?")


def host_name(header: str) -> str | None:
    """The host of a Host header, lower-cased, without a final dot; None when it is not one."""
    found = HOST_HEADER.fullmatch(header)
    if found is None:
        return None
    return found.group("host").lower().rstrip(".")


def is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return True


class AllowedHosts:
    """The Host names answered without an API key (see the module's docstring)."""

    def __init__(self, names: frozenset[str]) -> None:
        self.any = "*" in names
        self.names = {name for name in names if not name.startswith(".")} | {"localhost",
                                                                              socket.gethostname().lower()}
        self.suffixes = LOCAL_SUFFIXES + tuple(name for name in names if name.startswith("."))

    def __contains__(self, header: object) -> bool:
        if self.any or header is None or header == "":
            return True
        name = host_name(header) if isinstance(header, str) else None
        if name is None:
            return False
        return name in self.names or name.endswith(self.suffixes) or is_address(name)
