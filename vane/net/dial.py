"""Addresses and outgoing connections: the one place vaned parses ``host:port`` targets, tells
an IP literal from a name, shows IPv4-mapped peers as IPv4, and dials TCP or UDP.

An IP literal never goes through the resolver (gevent's resolves in a thread pool, a round
trip per connect); TCP connections get TCP_NODELAY.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import socket as gsocket

__all__ = ["ip_family", "split_target", "tcp_connect", "udp_connect", "unmapped"]


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host without brackets, port); raises ValueError."""
    host, _, port = target.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"bad target {target!r}: expected host:port")
    return host.strip("[]"), int(port)


def ip_family(host: str) -> int:
    """AF_INET or AF_INET6 for an IP literal, 0 for a name to resolve."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except OSError:
            pass
    return 0


def unmapped(host: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:192.0.2.1``) as the IPv4 address it maps."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def tcp_connect(host: str, port: int, timeout: float, family: int | None = None) -> Any:
    """A connected TCP socket with TCP_NODELAY; ``family`` (when known) skips ``ip_family``."""
    family = ip_family(host) if family is None else family
    if not family:
        sock = gsocket.create_connection((host, port), timeout=timeout)
    else:
        sock = gsocket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def udp_connect(host: str, port: int) -> Any:
    """A UDP socket connected to ``host:port`` (a name is resolved once)."""
    addr: tuple = (host, port)
    family = ip_family(host)
    if not family:
        family, _, _, _, addr = gsocket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    sock = gsocket.socket(family, socket.SOCK_DGRAM)
    sock.connect(addr)
    return sock
