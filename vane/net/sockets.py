"""Small operations on kernel sockets that several rooms need: accept without a wrapper,
close with a reset, Nagle off."""

from __future__ import annotations

import _socket
import socket
import struct
from errno import EBADF
from typing import Any

from gevent import socket as gsocket

__all__ = ["RawSocket", "accept_raw", "reset", "set_nodelay", "set_rst_on_close"]

RawSocket = _socket.socket

_LINGER_RST = struct.pack("ii", 1, 0)


def set_rst_on_close(sock: Any) -> None:
    """Make the next ``close`` send RST instead of FIN (SO_LINGER with a zero timeout)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass


def reset(sock: Any) -> None:
    """Close so the peer sees RST, not FIN."""
    set_rst_on_close(sock)
    try:
        sock.close()
    except OSError:
        pass


def set_nodelay(stream: Any) -> None:
    """Disable Nagle on the TCP socket under ``stream`` (a socket, or a stream with a
    ``socket`` attribute); a no-op for anything else (a unix socket)."""
    sock = getattr(stream, "socket", stream)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError, TypeError):
        pass


def accept_raw(listener: gsocket.socket) -> tuple[RawSocket, Any]:
    """Accept on a gevent listening socket, waiting on the event loop for a connection.

    The connection comes as the kernel socket itself, non-blocking, without gevent's wrapper
    and its two watchers: a plain L4 relay needs neither, and ``PlainStream`` gives it
    watchers of its own when a layer reads or writes with blocking calls. Raises OSError
    (the listening socket closed, out of descriptors, ...).
    """
    raw = listener._sock
    while True:
        try:
            fd, peer = raw._accept()
            break
        except BlockingIOError:
            event = listener._read_event
            if event is None:
                raise OSError(EBADF, "listening socket closed") from None
            listener._wait(event)
    sock = RawSocket(raw.family, socket.SOCK_STREAM, 0, fd)
    sock.setblocking(False)
    return sock, peer
