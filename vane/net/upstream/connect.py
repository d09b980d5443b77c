"""Opening one upstream connection for the pool (DESIGN.md §6 ``fetch`` / ``proxy``).

TCP with TCP_NODELAY (an IP literal skips the resolver) or a unix socket, as a
``PlainStream``; or TLS on top of TCP with SNI, verification and ALPN as the endpoint asks.
Failures become ``UpstreamTimeout`` or ``UpstreamConnectError`` with the reason an operator
needs (refused, certificate, resolve).
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from vane.net.dial import tcp_connect, tcp_connect_raw, unix_connect_raw
from vane.net.http.errors import UpstreamConnectError, UpstreamTimeout
from vane.net.plain import PlainStream
from vane.net.tls import client as tls_client
from vane.net.upstream.endpoint import EndpointSpec


def connect(spec: EndpointSpec, timeout: float) -> tuple[Any, str | None]:
    """Open a stream to the endpoint; returns (stream, negotiated ALPN protocol or None)."""
    up = spec.upstream
    try:
        if up.scheme == "unix":
            return PlainStream(unix_connect_raw(up.path, timeout)), None
        if not up.tls:
            return PlainStream(tcp_connect_raw(up.host, up.port, timeout, spec.family)), None
        sock = tcp_connect(up.host, up.port, timeout, spec.family)
        alpn = ("h2", "http/1.1") if spec.version == "auto" else (
            ("h2",) if spec.version == "h2" else ("http/1.1",))
        ctx = tls_client.client_context(spec.verify, alpn, spec.ca_file)
        tls = tls_client.wrap(sock, spec.sni or up.host, ctx, timeout)
        return tls, tls.selected_alpn_protocol()
    except (socket.timeout, TimeoutError):
        raise UpstreamTimeout(f"connect to {spec.label} timed out after {timeout:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        raise UpstreamConnectError(
            f"TLS certificate of {spec.label} rejected: {exc.verify_message or exc}") from None
    except ssl.SSLError as exc:
        raise UpstreamConnectError(f"TLS handshake with {spec.label} failed: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise UpstreamConnectError(f"cannot resolve {up.host}: {exc.strerror or exc}") from None
    except OSError as exc:
        raise UpstreamConnectError(f"connect to {spec.label} failed: {exc.strerror or exc}") from None
