"""Small operations on kernel sockets that several rooms need: close with a reset, Nagle off."""

from __future__ import annotations

import socket
import struct
from typing import Any

__all__ = ["reset", "set_nodelay", "set_rst_on_close"]

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
