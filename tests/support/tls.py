"""TLS material for tests: a trustme CA issuing server certificates, and the contexts built on
them (a backend's server context, a client that trusts only that CA)."""

from __future__ import annotations

import ssl
from pathlib import Path
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


def write_cert(ca: Any, directory: Path, name: str, *hosts: str) -> tuple[str, str]:
    """Issue a certificate of ``ca`` for ``hosts`` (default: ``name``) and write it and its key
    as ``directory/name.pem`` and ``directory/name.key``; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert(*(hosts or (name,)))
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    return str(cert_path), str(key_path)
