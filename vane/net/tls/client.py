"""Client-side TLS for ``https://`` upstreams, on the (gevent) stdlib ``ssl`` module.

The stdlib verifies certificate chains and host names; contexts are built once per
(verify, ALPN list, CA file) and shared. ``wrap`` runs the handshake with SNI under a timeout
and returns a socket that also has the stream interface's ``shutdown_write``.
"""

from __future__ import annotations

import functools
import socket
from typing import Sequence

from gevent import socket as gsocket
from gevent import ssl as gssl

__all__ = ["ClientTLSSocket", "client_context", "wrap"]


class ClientTLSSocket(gssl.SSLSocket):
    """A gevent ``SSLSocket`` with ``shutdown_write``."""

    def shutdown_write(self) -> None:
        """Half-close with a TCP FIN and no close_notify.

        ``SSLSocket.shutdown`` would drop the TLS layer and a TLS 1.2 peer answers close_notify
        by closing its side too; a bare FIN keeps the response readable.
        """
        gsocket.socket.shutdown(self, socket.SHUT_WR)


class _ClientContext(gssl.SSLContext):
    sslsocket_class = ClientTLSSocket


@functools.lru_cache(maxsize=64)
def _context(verify: bool, alpn: tuple[str, ...], ca_file: str | None) -> gssl.SSLContext:
    ctx = _ClientContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = gssl.TLSVersion.TLSv1_2
    if verify:
        ctx.verify_mode = gssl.CERT_REQUIRED
        ctx.check_hostname = True
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs(gssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = gssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(verify: bool = True, alpn: Sequence[str] = ("http/1.1",),
                   ca_file: str | None = None) -> gssl.SSLContext:
    """A shared client context; ``verify=False`` skips chain and host name checks.

    With ``ca_file`` only that bundle is trusted, otherwise the system store.
    """
    return _context(bool(verify), tuple(alpn), ca_file or None)


def wrap(sock: socket.socket, server_hostname: str | None, ctx: gssl.SSLContext,
         timeout: float | None) -> ClientTLSSocket:
    """Handshake as a client over a connected socket, sending SNI for ``server_hostname``.

    The socket is consumed: on failure (``ssl.SSLError`` incl. certificate errors, timeout,
    ``OSError``) it is closed before the exception propagates. The returned socket keeps
    ``timeout``; ``selected_alpn_protocol()`` tells what the server chose.
    """
    host = server_hostname.strip("[]") if server_hostname else None
    sock.settimeout(timeout)
    try:
        tls = ctx.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        tls.do_handshake()
    except BaseException:
        tls.close()
        raise
    return tls  # type: ignore[return-value]
