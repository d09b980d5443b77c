"""Addresses and outgoing connections: the one place vaned parses ``host:port`` targets, tells
an IP literal from a name, shows IPv4-mapped peers as IPv4, and dials TCP or UDP.

An IP literal never goes through the resolver (gevent's resolves in a thread pool, a round
trip per connect); TCP connections get TCP_NODELAY.
"""

from __future__ import annotations

import _socket
import os
import socket
from errno import EALREADY, EINPROGRESS, EISCONN
from typing import Any

from gevent import socket as gsocket

__all__ = ["adopt", "ip_family", "split_target", "tcp_connect", "tcp_connect_nonblocking", "tcp_connect_raw",
           "udp_connect", "unix_connect_raw", "unmapped"]

_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_IN_PROGRESS = (EINPROGRESS, EALREADY)


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
        sock = _gevent_connect(family, (host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def tcp_connect_nonblocking(host: str, port: int, timeout: float, family: int) -> Any:
    """A connected TCP socket with TCP_NODELAY for an IP literal ``host`` of ``family``: the
    kernel socket itself, non-blocking, with no gevent wrapper or watchers (for a caller that
    waits on the event loop itself, such as the relay). Raises OSError (``socket.timeout``
    after ``timeout``)."""
    sock = _socket.socket(family, _STREAM_NONBLOCK)
    try:
        addr = (host, port)
        err = sock.connect_ex(addr)
        if err in _IN_PROGRESS:
            err = sock.connect_ex(addr)  # on loopback the handshake is over by now
            if err in _IN_PROGRESS:
                gsocket.wait_write(sock.fileno(), timeout, socket.timeout("timed out"))
                err = sock.connect_ex(addr)
        if err and err != EISCONN:
            raise OSError(err, os.strerror(err))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp_connect_raw(host: str, port: int, timeout: float, family: int | None = None) -> Any:
    """A connected TCP socket with TCP_NODELAY as the kernel socket, non-blocking, for a caller
    that waits on it itself (``PlainStream``): an IP literal is connected directly, a name
    through gevent's resolver and connect."""
    family = ip_family(host) if family is None else family
    if family:
        return tcp_connect_nonblocking(host, port, timeout, family)
    return adopt(tcp_connect(host, port, timeout, 0))


def unix_connect_raw(path: str, timeout: float) -> Any:
    """A connected unix stream socket as the kernel socket, non-blocking."""
    return adopt(_gevent_connect(socket.AF_UNIX, path, timeout))


def _gevent_connect(family: int, addr: Any, timeout: float) -> Any:
    """A gevent stream socket of ``family`` connected to ``addr`` within ``timeout``; closed
    again if that fails."""
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def adopt(sock: Any) -> Any:
    """The kernel socket of a connected gevent socket, taken out of it (its watchers dropped,
    the descriptor kept), non-blocking."""
    family, kind, proto = sock.family, sock.type, sock.proto
    raw = _socket.socket(family, kind, proto, sock.detach())
    raw.setblocking(False)
    return raw


def udp_connect(host: str, port: int) -> Any:
    """A UDP socket connected to ``host:port`` (a name is resolved once)."""
    addr: tuple = (host, port)
    family = ip_family(host)
    if not family:
        family, _, _, _, addr = gsocket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
    sock = gsocket.socket(family, socket.SOCK_DGRAM)
    sock.connect(addr)
    return sock
