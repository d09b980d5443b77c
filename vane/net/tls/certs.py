"""Certificates and the OpenSSL contexts built from them (DESIGN.md §3 ``tls``).

Session-ticket keys live inside an OpenSSL ``SSL_CTX`` and pyOpenSSL binds no call to set
them, so the contexts themselves are daemon-scoped: a ``ContextCache`` keyed by the
certificate and key contents hands a reload the very context (and so the ticket keys and the
session cache) that the previous configuration used, and clients resume their sessions
across reloads. Everything a context needs per listener (the SNI map, the ALPN preference)
is looked up through the connection's app data (the ``ServerTLS``), so one cached context
serves any number of listeners.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from OpenSSL import SSL

from vane.config.files import MAX_CERT_BYTES, read_regular

__all__ = ["ACME_TLS_ALPN", "CIPHERS_TLS12", "CertContext", "CertSlot", "ContextCache", "TLSConfigError",
           "context_from_pem"]

ACME_TLS_ALPN = b"acme-tls/1"  # RFC 8737: the TLS-ALPN-01 validation protocol

# TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are all of that kind).
CIPHERS_TLS12 = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
_SESSION_ID_CONTEXT = b"vaned"


class TLSConfigError(Exception):
    """A certificate or key could not be loaded; names the offending file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class CertContext:
    """One loaded certificate: its pyOpenSSL context, the names it serves and its description."""

    __slots__ = ("context", "exact", "wildcards", "info")

    def __init__(self, context: SSL.Context, exact: frozenset[str], wildcards: frozenset[str],
                 info: dict[str, Any]) -> None:
        self.context = context
        self.exact = exact          # "a.example.com"
        self.wildcards = wildcards  # "example.com" for "*.example.com"
        self.info = info

    def matches(self, name: str) -> bool:
        if name in self.exact:
            return True
        dot = name.find(".")
        return dot > 0 and name[dot + 1:] in self.wildcards


def _read(path: str) -> bytes:
    """A certificate or key file: a regular file of at most MAX_CERT_BYTES (never a FIFO or a device)."""
    try:
        return read_regular(path, MAX_CERT_BYTES)
    except OSError as exc:
        raise TLSConfigError(path, exc.strerror or str(exc)) from None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    if not names:  # CN fallback, only for certificates without DNS SANs
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return [n.lower().rstrip(".") for n in names]


def _describe(cert: x509.Certificate, cert_path: str, key_path: str, names: list[str]) -> dict[str, Any]:
    return {
        "path": cert_path,
        "key_path": key_path,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": names,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "serial": format(cert.serial_number, "x"),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "source": "file",
    }


def _alpn_select(conn: SSL.Connection, offered: list[bytes]) -> bytes | object:
    """Pick the first of the server's protocols that the client offered.

    A client offering ``acme-tls/1`` for a name with a pending TLS-ALPN-01 challenge is the CA
    validating it: it gets the challenge certificate (in TLS 1.3 the certificate is chosen
    after ALPN) and that protocol; any other client, or a name without a challenge, goes on
    as usual.
    """
    owner = conn.get_app_data()
    challenges = getattr(owner, "challenges", None)
    if ACME_TLS_ALPN in offered and challenges is not None:
        name = conn.get_servername()
        pair = challenges.tls_alpn01(name.decode("ascii", "replace").lower().rstrip(".")) if name else None
        if pair is not None:
            conn.use_certificate(pair[0])
            conn.use_privatekey(pair[1])
            return ACME_TLS_ALPN
    for proto in owner.alpn_wire if owner is not None else ():
        if proto in offered:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


def _servername(conn: SSL.Connection) -> None:
    """Switch the connection to the context whose certificate names match the SNI."""
    owner = conn.get_app_data()
    name = conn.get_servername()
    if owner is None or not name:
        return
    ctx = owner.context_for(name.decode("ascii", "replace").lower().rstrip("."))
    if ctx is not conn.get_context():
        conn.set_context(ctx)


def _build_context(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str) -> CertContext:
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        raise TLSConfigError(cert_path, f"no PEM certificate could be read ({exc})") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TLSConfigError(key_path, "the private key is encrypted; vaned needs it unencrypted") from None
    except Exception as exc:  # ValueError, UnsupportedAlgorithm
        raise TLSConfigError(key_path, f"no PEM private key could be read ({exc})") from None

    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_IGNORE_UNEXPECTED_EOF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_cipher_list(CIPHERS_TLS12)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)  # type: ignore[arg-type]
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as exc:
        raise TLSConfigError(key_path, f"the key does not fit the certificate {cert_path} ({exc})") from None
    ctx.set_tlsext_servername_callback(_servername)
    ctx.set_alpn_select_callback(_alpn_select)  # type: ignore[arg-type]

    names = _names(chain[0])
    exact = frozenset(n for n in names if not n.startswith("*."))
    wildcards = frozenset(n[2:] for n in names if n.startswith("*."))
    return CertContext(ctx, exact, wildcards, _describe(chain[0], cert_path, key_path, names))


def context_from_pem(cert_pem: bytes, key_pem: bytes, cert_path: str, key_path: str) -> CertContext:
    """A context from PEM bytes already in memory (``cert_path``/``key_path`` only describe them)."""
    return _build_context(cert_pem, key_pem, cert_path, key_path)


class CertSlot:
    """A certificate that changes while listeners serve it (an ACME certificate and, until it is
    issued, its self-signed fallback). Owns the current ``CertContext`` and the names it is for;
    every new handshake reads the current one, established connections keep theirs, so
    ``swap`` replaces a certificate without a reload and without touching a connection."""

    __slots__ = ("names", "entry", "status")

    def __init__(self, names: tuple[str, ...], entry: CertContext) -> None:
        self.names = frozenset(names)
        self.entry = entry
        self.status: dict[str, Any] = {}  # what the slot's owner says about it (source, error, ...)

    @property
    def context(self) -> SSL.Context:
        return self.entry.context

    @property
    def info(self) -> dict[str, Any]:
        return {**self.entry.info, **self.status}

    def matches(self, name: str) -> bool:
        return name in self.names

    def swap(self, entry: CertContext) -> None:
        self.entry = entry


class ContextCache:
    """Daemon-scoped store of loaded contexts, so their ticket keys survive config reloads.

    The key is the certificate and key paths plus a hash of both files' contents: a reload
    with unchanged files reuses the context, a renewed certificate gets a fresh one.
    Least recently used entries beyond ``max_entries`` are dropped (contexts still referenced
    by a live ``ServerTLS`` stay alive through that reference).
    """

    def __init__(self, max_entries: int = 256) -> None:
        self._entries: OrderedDict[tuple[str, str, bytes], CertContext] = OrderedDict()
        self._max = max_entries

    def load(self, cert_path: str, key_path: str) -> CertContext:
        cert_path = os.path.abspath(cert_path)
        key_path = os.path.abspath(key_path or cert_path)
        cert_pem = _read(cert_path)
        key_pem = cert_pem if key_path == cert_path else _read(key_path)
        digest = hashlib.sha256(cert_pem + b"\0" + key_pem).digest()
        key = (cert_path, key_path, digest)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        entry = _build_context(cert_pem, key_pem, cert_path, key_path)
        self._entries[key] = entry
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return entry

    def __len__(self) -> int:
        return len(self._entries)
