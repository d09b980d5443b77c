"""What vaned answers while the CA validates an order (RFC 8555 §8.3 HTTP-01, RFC 8737 TLS-ALPN-01).

``ChallengeBoard`` is filled only by vaned's own orders (never by client data) and emptied
when each order ends, so its size is bounded by the names being validated at once.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Any, Callable

import josepy as jose
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

__all__ = ["ChallengeBoard", "TLSALPN01", "TLSALPN01Response", "alpn_challenge_cert", "self_signed"]

ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier (RFC 8737 §3)
MAX_PENDING = 1000


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """The (empty) answer to a tls-alpn-01 challenge: "ready, validate now"."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    """tls-alpn-01 (RFC 8737); the validation is the key authorization the certificate carries."""

    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **kwargs: Any) -> str:
        return self.key_authorization(account_key)


def self_signed(names: tuple[str, ...], days: float = 7.0, extensions: tuple = ()) -> tuple[x509.Certificate,
                                                                                          ec.EllipticCurvePrivateKey]:
    """A throwaway self-signed P-256 certificate for ``names`` (fallbacks, TLS-ALPN-01 answers)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256()), key


def alpn_challenge_cert(name: str, key_authorization: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """RFC 8737 §3: the name as the only SAN and a critical acmeIdentifier extension holding
    the DER OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    ext = x509.UnrecognizedExtension(ACME_IDENTIFIER, b"\x04\x20" + digest)
    return self_signed((name,), days=1, extensions=((ext, True),))


class ChallengeBoard:
    """The pending challenges of this process's orders: HTTP-01 tokens and TLS-ALPN-01 certificates.

    ``on_change(kind, key, key_authorization or None)``, when set, is called after each change
    and returns once the other serving processes have it too (the master tells its workers),
    so the CA is asked to validate only when every process can answer."""

    def __init__(self) -> None:
        self._http: dict[str, str] = {}
        self._alpn: dict[str, tuple[x509.Certificate, Any]] = {}
        self._pending: dict[tuple[str, str], str] = {}
        self.on_change: Callable[[str, str, str | None], None] | None = None

    def pending(self) -> list[tuple[str, str, str]]:
        """(kind, token or name, key authorization) of every answer up now (for a new worker)."""
        return [(kind, key, authz) for (kind, key), authz in self._pending.items()]

    def http01(self, token: str) -> str | None:
        return self._http.get(token)

    def tls_alpn01(self, name: str) -> tuple[x509.Certificate, Any] | None:
        return self._alpn.get(name)

    def put_http01(self, token: str, key_authorization: str) -> None:
        self.apply("http-01", token, key_authorization)

    def put_tls_alpn01(self, name: str, key_authorization: str) -> None:
        self.apply("tls-alpn-01", name, key_authorization)

    def remove(self, token: str | None = None, name: str | None = None) -> None:
        if token is not None:
            self.apply("http-01", token, None)
        if name is not None:
            self.apply("tls-alpn-01", name, None)

    def apply(self, kind: str, key: str, key_authorization: str | None) -> None:
        """Add (``key_authorization``) or remove (None) the answer for a token or a name."""
        table: dict[str, Any] = self._http if kind == "http-01" else self._alpn
        if key_authorization is None:
            table.pop(key, None)
            self._pending.pop((kind, key), None)
        elif len(table) < MAX_PENDING:
            table[key] = key_authorization if kind == "http-01" else alpn_challenge_cert(key, key_authorization)
            self._pending[(kind, key)] = key_authorization
        if self.on_change is not None:
            self.on_change(kind, key, key_authorization)
