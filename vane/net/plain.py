"""A plain TCP connection as a stream: the kernel socket as accepted, and two watchers of its own."""

from __future__ import annotations

import socket
import time
from errno import EBADF
from typing import Any

from gevent import get_hub
from gevent.socket import wait as wait_watcher
from gevent.socket import wait_read, wait_write

from .sockets import set_rst_on_close

__all__ = ["PlainStream"]

_READ, _WRITE = 1, 2


def _closed() -> OSError:
    return OSError(EBADF, "socket closed")


class PlainStream:
    """A connected, non-blocking kernel socket as a ``Stream``, with a read and a write watcher
    on the hub's loop: what a gevent socket would give the HTTP layers, without its wrapper
    around the socket and its deferred close.

    Owns the socket until ``detach`` hands it on. ``close`` wakes a greenlet waiting on it
    (with EBADF) and then closes. A read and a write may wait at once, in two greenlets. A
    blocking call waits at most ``settimeout``'s seconds for each wake-up (``sendall``: for the
    whole call) and then raises ``socket.timeout``; ``wait_read``/``wait_write`` wait with no
    limit, for a caller whose own timer bounds them (``StreamIO``).
    """

    __slots__ = ("sock", "_fd", "_rw", "_ww", "_timeout", "_closed")

    def __init__(self, sock: Any) -> None:
        self.sock = sock                # non-blocking (``accept_raw``)
        self._fd = sock.fileno()
        loop = get_hub().loop
        self._rw: Any = loop.io(self._fd, _READ)
        self._ww: Any = loop.io(self._fd, _WRITE)
        self._timeout: float | None = None
        self._closed = False

    # -- waiting ------------------------------------------------------------------------------

    def _wait(self, watcher: Any, timeout: float | None) -> None:
        if self._closed:
            raise _closed()
        if watcher.callback is not None:
            # another greenlet waits on this direction already (rare): a one-off watcher
            (wait_read if watcher is self._rw else wait_write)(self._fd, timeout)
            return
        wait_watcher(watcher, timeout)

    def wait_read(self) -> None:
        """Until the socket is readable (no time limit of its own)."""
        watcher = self._rw
        if watcher.callback is None and not self._closed:
            wait_watcher(watcher)       # the usual case, without a frame more
        else:
            self._wait(watcher, None)

    def wait_write(self) -> None:
        """Until the socket is writable (no time limit of its own)."""
        watcher = self._ww
        if watcher.callback is None and not self._closed:
            wait_watcher(watcher)
        else:
            self._wait(watcher, None)

    # -- stream interface ---------------------------------------------------------------------

    def recv(self, n: int, flags: int = 0) -> bytes:
        """Up to ``n`` bytes (``flags``: ``MSG_PEEK`` ...); ``b""`` at EOF."""
        sock = self.sock
        while True:
            try:
                return sock.recv(n, flags)
            except BlockingIOError:
                self._wait(self._rw, self._timeout)

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        """Read into ``buf``; the count, 0 at EOF."""
        sock = self.sock
        while True:
            try:
                return sock.recv_into(buf, nbytes)
            except BlockingIOError:
                self._wait(self._rw, self._timeout)

    def sendall(self, data: Any) -> None:
        """Send all of ``data``; ``socket.timeout`` if it has not all gone within the timeout."""
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        total = len(data)
        if sent == total:
            return
        view = memoryview(data).cast("B")
        total = len(view)
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while sent < total:
            if deadline is not None:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    raise socket.timeout("timed out")
            self._wait(self._ww, timeout)
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                pass

    def shutdown_write(self) -> None:
        """Half-close (FIN); reading stays possible."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def fileno(self) -> int:
        return self._fd

    @property
    def socket(self) -> Any:
        """The kernel socket (addresses, socket options)."""
        return self.sock

    @property
    def closed(self) -> bool:
        return self._closed

    # -- ending -------------------------------------------------------------------------------

    def close(self) -> None:
        """Wake any greenlet waiting on the socket (EBADF), then close it; after ``detach``,
        nothing (the socket is someone else's)."""
        self._release(self.sock.close)

    def abort(self) -> None:
        """Close with a reset: the peer must not take a cut-off stream as complete."""
        if not self._closed:
            set_rst_on_close(self.sock)
        self.close()

    def detach(self) -> Any:
        """The kernel socket, handed to a caller that waits on it by itself (a TLS handshake,
        a splice relay); this stream is closed without closing it."""
        self._release(_nothing)
        return self.sock

    def _release(self, then: Any) -> None:
        """Once: wake the greenlets waiting on the watchers (EBADF), drop them, then ``then()``."""
        if not self._closed:
            self._closed = True
            get_hub().cancel_waits_close_and_then((self._rw, self._ww), _closed(), then)

    def __repr__(self) -> str:
        return f"<PlainStream fd={self._fd}{' closed' if self._closed else ''}>"


def _nothing() -> None:
    pass
