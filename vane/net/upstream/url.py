"""Upstream addresses of the L7 ``fetch`` and ``proxy`` plugins (DESIGN.md §6).

``http://host[:port][/base]``, ``https://host[:port][/base]`` and ``unix:/path/to.sock``
(optionally ``unix:/path/to.sock:/base``, nginx style). Parsed once when a graph is linked
(or once per distinct templated value), never per request on the static path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


class UpstreamURLError(ValueError):
    """An upstream address that cannot be used."""


@dataclass(frozen=True)
class Upstream:
    scheme: str                 # "http" | "https" | "unix"
    host: str                   # host name or IP (no brackets); "localhost" for unix
    port: int                   # 0 for unix
    path: str = ""              # unix socket path
    base: str = ""              # path prefix prepended to the request path ("" when none)
    name: str = field(default="", compare=False)  # canonical text (pool key, metrics label)

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        """``host:port`` as a Host header would carry it (default ports omitted)."""
        if self.scheme == "unix":
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def target(self, path: str) -> str:
        """The upstream request path for the client's ``path``."""
        return self.base + path if self.base else path


def parse_upstream(url: str) -> Upstream:
    """Parse an upstream address; raises ``UpstreamURLError`` with the reason."""
    if not isinstance(url, str) or not url:
        raise UpstreamURLError("empty upstream address")
    if any(c in url for c in " \t\r\n\0"):
        raise UpstreamURLError(f"upstream {url!r} contains whitespace or a control character")
    if url.startswith("unix:"):
        return _parse_unix(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UpstreamURLError(f"upstream {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UpstreamURLError(f"upstream {url!r}: scheme must be http, https or unix")
    host = (parts.hostname or "").lower()
    if not host:
        raise UpstreamURLError(f"upstream {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise UpstreamURLError(f"upstream {url!r}: credentials in the address are not supported")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UpstreamURLError(f"upstream {url!r}: a query or fragment is not allowed")
    if port is None:
        port = 443 if scheme == "https" else 80
    if port == 0:
        raise UpstreamURLError(f"upstream {url!r}: port 0")
    base = _base(parts.path, url)
    shown = f"[{host}]" if ":" in host else host
    return Upstream(scheme, host, port, "", base, f"{scheme}://{shown}:{port}{base}")


def _parse_unix(url: str) -> Upstream:
    rest = url[5:]
    if rest.startswith("//"):          # tolerate unix:///path
        rest = rest[2:]
    sock_path, sep, base = rest.partition(":")
    if not sock_path.startswith("/"):
        raise UpstreamURLError(f"upstream {url!r}: the unix socket path must be absolute")
    if sep and not base.startswith("/"):
        raise UpstreamURLError(f"upstream {url!r}: the base path after ':' must start with '/'")
    base = _base(base, url)
    return Upstream("unix", "localhost", 0, sock_path, base, f"unix:{sock_path}" + (f":{base}" if base else ""))


def _base(path: str, url: str) -> str:
    if not path or path == "/":
        return ""
    if "%2f" in path.lower() or "/../" in path + "/" or "/./" in path + "/":
        raise UpstreamURLError(f"upstream {url!r}: the base path must be normalised")
    return path.rstrip("/")
