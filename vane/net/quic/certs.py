"""Certificates for QUIC listeners, chosen by SNI like TCP TLS (``vane.net.tls.certs``).

aioquic takes the certificate from its configuration when the connection starts and asks
nothing at ClientHello time, so ``QuicCerts.configure`` hooks the TLS context's ClientHello
handling: the ClientHello's ``server_name`` is read first and the matching certificate
installed before aioquic goes on with the handshake.
"""

from __future__ import annotations

from typing import Any

from aioquic.buffer import Buffer
from aioquic.tls import pull_client_hello
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vane.config.files import MAX_CERT_BYTES, read_regular
from vane.net.tls.certs import ContextCache, TLSConfigError

__all__ = ["QuicCert", "QuicCerts"]


class QuicCert:
    """One certificate chain and key as aioquic objects, with the names it serves."""

    __slots__ = ("names", "certificate", "chain", "key")

    def __init__(self, names: Any, certificate: Any, chain: list, key: Any) -> None:
        self.names = names              # the CertContext: ``matches(name)``
        self.certificate = certificate
        self.chain = chain
        self.key = key


def _load(cache: ContextCache, cert_path: str, key_path: str) -> QuicCert:
    names = cache.load(cert_path, key_path)        # validates both files and the pair
    try:
        chain = x509.load_pem_x509_certificates(read_regular(cert_path, MAX_CERT_BYTES))
        key = serialization.load_pem_private_key(read_regular(key_path, MAX_CERT_BYTES), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TLSConfigError(cert_path, f"cannot be used for QUIC ({exc})") from None
    return QuicCert(names, chain[0], chain[1:], key)


class QuicCerts:
    """A QUIC listener's certificates; the first is the default."""

    def __init__(self, pairs: list[tuple[str, str]], cache: ContextCache | None = None) -> None:
        cache = cache if cache is not None else ContextCache()
        self.certs = [_load(cache, c, k) for c, k in pairs]

    def for_name(self, name: str | None) -> QuicCert:
        if name:
            name = name.lower().rstrip(".")
            for cert in self.certs:
                if cert.names.matches(name):
                    return cert
        return self.certs[0]

    def configure(self, tls: Any) -> None:
        """Make aioquic's server ``tls.Context`` present the certificate the SNI names."""
        handle_hello = tls._server_handle_hello

        def with_sni(input_buf: Buffer, initial_buf: Buffer, handshake_buf: Buffer) -> None:
            start = input_buf.tell()
            try:
                name = pull_client_hello(input_buf).server_name
            except Exception:  # noqa: BLE001 - malformed: aioquic raises the proper alert itself
                name = None
            input_buf.seek(start)
            cert = self.for_name(name)
            tls.certificate = cert.certificate
            tls.certificate_chain = cert.chain
            tls.certificate_private_key = cert.key
            tls.sni = name
            handle_hello(input_buf, initial_buf, handshake_buf)

        tls._server_handle_hello = with_sni
