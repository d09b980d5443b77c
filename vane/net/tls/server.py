"""Server-side TLS termination on pyOpenSSL over gevent sockets (DESIGN.md §3 ``tls``, §6 ``upgrade``).

``ServerTLS`` holds the contexts for one listener's certificates (``vane.net.tls.certs``),
picks a certificate by SNI and a protocol by ALPN, and turns an accepted socket into a
``TLSStream``.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Sequence

from OpenSSL import SSL

from vane.net.tls.certs import CertContext, CertSlot, ContextCache
from vane.net.tls.stream import (
    READ_EVENT,
    WRITE_EVENT,
    TLSHandshakeError,
    TLSHandshakeTimeout,
    TLSStream,
    ssl_reason,
)

__all__ = ["ServerTLS"]


class ServerTLS:
    """TLS termination for one listener: the certificates of its rules, the first the default.

    ``certs`` are (cert, key) file pairs or ``CertSlot``s (certificates swapped while serving);
    ``challenges``, when given, answers ACME TLS-ALPN-01 validations (``tls_alpn01(name)``
    returns the challenge certificate and key, or None)."""

    def __init__(self, certs: Sequence[tuple[str, str] | CertSlot], alpn: Sequence[str] = ("h2", "http/1.1"),
                 cache: ContextCache | None = None, handshake_timeout: float = 10.0,
                 challenges: Any = None) -> None:
        if not certs:
            raise ValueError("ServerTLS needs at least one certificate")
        cache = cache if cache is not None else ContextCache()
        self._certs: list[CertContext | CertSlot] = [
            c if isinstance(c, CertSlot) else cache.load(c[0], c[1]) for c in certs]
        self.alpn = tuple(alpn)
        self.alpn_wire = tuple(p.encode("ascii") for p in alpn)
        self.handshake_timeout = handshake_timeout
        self.challenges = challenges
        self._by_name: dict[str, CertContext | CertSlot] = {}

    def context_for(self, name: str) -> SSL.Context:
        """The context whose certificate serves ``name`` (lower-case); the default otherwise."""
        entry = self._by_name.get(name)
        if entry is None:
            entry = self._certs[0]
            for candidate in self._certs:
                if candidate.matches(name):
                    entry = candidate
                    break
            if len(self._by_name) < 1024:  # SNI values are client-chosen: bound the memo
                self._by_name[name] = entry
        return entry.context  # a slot's current certificate, read at every handshake

    def certs_info(self) -> list[dict[str, Any]]:
        """Subject, SANs, validity and path of each certificate, default first."""
        return [dict(entry.info, default=(i == 0)) for i, entry in enumerate(self._certs)]

    def accept(self, sock: socket.socket) -> "TLSStream":
        """Run the server handshake on an accepted socket (bare as accepted, or gevent's: the
        stream waits on watchers of its own); bytes peeked earlier are still queued.

        Raises ``TLSHandshakeTimeout`` or ``TLSHandshakeError`` after closing the socket.
        """
        conn = SSL.Connection(self._certs[0].context, sock)
        conn.set_app_data(self)
        conn.set_accept_state()
        stream = TLSStream(sock, conn)
        deadline = time.monotonic() + self.handshake_timeout
        try:
            while True:
                try:
                    conn.do_handshake()
                    break
                except SSL.WantReadError:
                    stream._wait(READ_EVENT, deadline, TLSHandshakeTimeout("TLS handshake timed out"))
                except SSL.WantWriteError:
                    stream._wait(WRITE_EVENT, deadline, TLSHandshakeTimeout("TLS handshake timed out"))
        except SSL.SysCallError as exc:
            stream._release()
            code, text = exc.args[0], exc.args[1] if len(exc.args) > 1 else ""
            raise TLSHandshakeError(f"peer closed during the TLS handshake ({text or code})") from None
        except SSL.Error as exc:
            stream._release()
            raise TLSHandshakeError(f"TLS handshake failed: {ssl_reason(exc)}") from None
        except BaseException:
            stream._release()
            raise
        conn.set_app_data(None)  # the callbacks are done; drop the reference cycle
        stream._negotiated()
        return stream
