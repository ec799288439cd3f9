"""Where an engine is: a URL such as ROLE_INJECTOR_OLLAMA_URL, checked once, for every caller (the
proxies through the app's engine, the CLI and model creation through `ollama_client`).

It may have a base path (`http://gateway/ollama`: every request goes under it) and a user and password
(`http://user:pass@gateway`), which are sent as Basic auth and never shown: `shown` is the only form
of the URL for messages, logs and details.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from role_injector.errors import ConfigError

# A path segment as engines' APIs have them (`chat`, `blobs`, `sha256:…`): no '%' escapes, no '\', not
# empty, not '.' or '..' (nothing starting with a dot).
SEGMENT = re.compile(r"[A-Za-z0-9_:~-][A-Za-z0-9._:~-]*")


@dataclass(frozen=True)
class EngineUrl:
    scheme: str
    host: str
    port: int
    base_path: str  # '' or '/prefix', without a trailing slash
    authorization: str | None = field(repr=False)  # Basic credentials from the URL's userinfo
    shown: str  # the URL without its userinfo: the only form that appears in messages and logs

    @classmethod
    def parse(cls, url: str, setting: str = "ROLE_INJECTOR_OLLAMA_URL") -> EngineUrl:
        parts = urlsplit(url.strip())
        netloc = parts.netloc.rpartition("@")[2]
        shown = f"{parts.scheme}://{'***@' if '@' in parts.netloc else ''}{netloc}{parts.path}"
        problem = None
        try:
            port = parts.port
        except ValueError:
            port, problem = None, "its port is not a number from 0 to 65535"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "it must start with http:// or https:// and name a host"
        elif parts.query or parts.fragment:
            problem = "it may not have a query or a fragment"
        elif parts.path.strip("/") and not all(SEGMENT.fullmatch(s) for s in parts.path.strip("/").split("/")):
            problem = "its path may only have plain segments (no '.', '..', '%' escapes or empty segments)"
        if problem:
            raise ConfigError(f"{setting} {shown!r} is not usable: {problem}")
        authorization = None
        if "@" in parts.netloc:
            credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
        return cls(
            scheme=parts.scheme,
            host=parts.hostname or "",
            port=port or (443 if parts.scheme == "https" else 80),
            base_path=parts.path.rstrip("/"),
            authorization=authorization,
            shown=shown.rstrip("/"),
        )

    @property
    def base(self) -> str:
        """What paths are appended to: scheme, host, port and base path, without the userinfo."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"
