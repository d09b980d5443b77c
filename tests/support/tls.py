"""TLS material for tests: a trustme CA issuing server certificates, and the contexts built on
them (a backend's server context, a client that trusts only that CA)."""

from __future__ import annotations

import ssl
from typing import Any


class TlsCerts:
    """A trustme CA and server certs; ``client_context()`` trusts only that CA."""

    def __init__(self) -> None:
        import trustme
        self.ca = trustme.CA()
        self._certs: dict[str, Any] = {}

    def server_context(self, hostname: str) -> ssl.SSLContext:
        cert = self._certs.get(hostname)
        if cert is None:
            cert = self._certs[hostname] = self.ca.issue_cert(hostname)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


def backend_tls_context(ca: Any, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                        alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server context with a certificate of the trustme ``ca`` for ``hosts``."""
    cert = ca.issue_cert(*hosts)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ctx.set_alpn_protocols(list(alpn))
    return ctx
