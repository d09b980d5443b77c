"""An established TLS connection as a stream (pyOpenSSL over a gevent socket)."""

from __future__ import annotations

import socket
import time
from typing import Any

from gevent import get_hub
from gevent.socket import wait as wait_watcher
from gevent.socket import wait_read, wait_write
from OpenSSL import SSL

__all__ = ["TLSError", "TLSHandshakeError", "TLSHandshakeTimeout", "TLSStream"]

_SEND_CHUNK = 1 << 20
READ_EVENT = 1
WRITE_EVENT = 2


class TLSError(OSError):
    """A TLS protocol failure on an established stream."""


class TLSHandshakeError(TLSError):
    """The TLS handshake failed (protocol version, cipher, malformed hello, peer gone)."""


class TLSHandshakeTimeout(TLSHandshakeError, TimeoutError):
    """The client did not finish the handshake within the handshake timeout."""


def _timeout() -> socket.timeout:
    return socket.timeout("timed out")


def ssl_reason(exc: SSL.Error) -> str:
    try:
        errors = exc.args[0]
        return "; ".join(str(e[2]) for e in errors) or str(exc)
    except (IndexError, TypeError):
        return str(exc)


class TLSStream:
    """A stream (recv/recv_into/sendall/shutdown_write/close) over an established TLS connection.

    Reads and writes may run in two greenlets at once (one each). OpenSSL returns "want read"
    only when no decrypted record is buffered, so a read always tries ``SSL_read`` before it
    waits on the socket. ``settimeout`` bounds every wait; a read times out per call, a write
    for the whole ``sendall``.
    """

    __slots__ = ("_sock", "_conn", "_fd", "_timeout", "_rw", "_ww", "_closed", "_writing",
                 "version", "cipher", "alpn", "sni")

    def __init__(self, sock: socket.socket, conn: SSL.Connection) -> None:
        self._sock = sock
        self._conn = conn
        self._fd = sock.fileno()
        # the socket's own timeout, if any (0.0, a bare non-blocking socket's, is none: waits are ours)
        self._timeout: float | None = sock.gettimeout() or None
        loop = get_hub().loop
        self._rw: Any = loop.io(self._fd, READ_EVENT)
        self._ww: Any = loop.io(self._fd, WRITE_EVENT)
        self._closed = False
        self._writing = False
        self.version = ""
        self.cipher = ""
        self.alpn = ""
        self.sni = ""

    def _negotiated(self) -> None:
        conn = self._conn
        self.version = conn.get_protocol_version_name() or ""
        self.cipher = conn.get_cipher_name() or ""
        proto = conn.get_alpn_proto_negotiated()
        self.alpn = proto.decode("ascii", "replace") if proto else ""
        name = conn.get_servername()
        self.sni = name.decode("ascii", "replace").lower() if name else ""

    # -- waiting ------------------------------------------------------------------------------

    def _wait(self, event: int, deadline: float | None, exc: BaseException | None = None) -> None:
        if self._closed:
            raise OSError(9, "TLS stream closed")
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise exc if exc is not None else _timeout()
        watcher = self._rw if event == READ_EVENT else self._ww
        if watcher.callback is not None:
            # The other direction's greenlet is waiting on this watcher (rare: a read that
            # needs a write, or the reverse); use a one-off watcher instead.
            waiter = wait_read if event == READ_EVENT else wait_write
            waiter(self._fd, timeout, exc if exc is not None else _timeout())
            return
        wait_watcher(watcher, timeout, exc if exc is not None else _timeout())

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    # -- stream interface ---------------------------------------------------------------------

    def recv(self, n: int) -> bytes:
        """Up to ``n`` decrypted bytes; ``b""`` at EOF (close_notify or TCP close)."""
        deadline = self._deadline()
        conn = self._conn
        while True:
            try:
                return conn.recv(n)
            except SSL.WantReadError:
                self._wait(READ_EVENT, deadline)
            except SSL.WantWriteError:
                self._wait(WRITE_EVENT, deadline)
            except SSL.ZeroReturnError:
                return b""
            except SSL.SysCallError as exc:
                if exc.args[0] == -1:
                    return b""
                raise OSError(exc.args[0], exc.args[1]) from None
            except SSL.Error as exc:
                if self._closed:
                    raise OSError(9, "TLS stream closed") from None
                raise TLSError(f"TLS read failed: {ssl_reason(exc)}") from None

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        """Read into ``buf``; returns the count, 0 at EOF."""
        deadline = self._deadline()
        conn = self._conn
        size = nbytes or len(buf)
        while True:
            try:
                return conn.recv_into(buf, size)
            except SSL.WantReadError:
                self._wait(READ_EVENT, deadline)
            except SSL.WantWriteError:
                self._wait(WRITE_EVENT, deadline)
            except SSL.ZeroReturnError:
                return 0
            except SSL.SysCallError as exc:
                if exc.args[0] == -1:
                    return 0
                raise OSError(exc.args[0], exc.args[1]) from None
            except SSL.Error as exc:
                if self._closed:
                    raise OSError(9, "TLS stream closed") from None
                raise TLSError(f"TLS read failed: {ssl_reason(exc)}") from None

    def sendall(self, data: Any) -> None:
        """Encrypt and send all of ``data``, waiting for the socket as needed."""
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        total = len(view)
        sent = 0
        deadline = self._deadline()
        conn = self._conn
        self._writing = True
        try:
            while sent < total:
                try:
                    sent += conn.send(view[sent:sent + _SEND_CHUNK])
                except SSL.WantWriteError:
                    self._wait(WRITE_EVENT, deadline)
                except SSL.WantReadError:
                    self._wait(READ_EVENT, deadline)
                except SSL.SysCallError as exc:
                    if exc.args[0] == -1:
                        raise BrokenPipeError(32, "TLS peer closed the connection") from None
                    raise OSError(exc.args[0], exc.args[1]) from None
                except SSL.Error as exc:
                    if self._closed:
                        raise OSError(9, "TLS stream closed") from None
                    raise TLSError(f"TLS write failed: {ssl_reason(exc)}") from None
        finally:
            self._writing = False

    def shutdown_write(self) -> None:
        """Half-close: send close_notify, then FIN; reading stays possible."""
        deadline = self._deadline()
        try:
            for _ in range(8):
                try:
                    self._conn.shutdown()
                    break
                except SSL.WantWriteError:
                    self._wait(WRITE_EVENT, deadline)
                except SSL.WantReadError:
                    self._wait(READ_EVENT, deadline)
        except (SSL.Error, OSError):
            pass
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        """Send close_notify if that cannot block, wake any waiting greenlet, close the socket."""
        if self._closed:
            return
        if not self._writing and not (self._conn.get_shutdown() & SSL.SENT_SHUTDOWN):
            try:
                self._conn.shutdown()
            except (SSL.Error, OSError):
                pass
        self._release()

    def pending(self) -> int:
        """Decrypted bytes buffered inside the TLS object (invisible to a read watcher)."""
        return self._conn.pending()

    def abort(self) -> None:
        """Close without close_notify: the peer must not take a cut-off stream as complete."""
        self._release()

    def _release(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Greenlets blocked on our watchers get the error; the socket closes after they do.
        get_hub().cancel_waits_close_and_then(
            (self._rw, self._ww), OSError(9, "TLS stream closed"), self._sock.close)

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    @property
    def socket(self) -> socket.socket:
        """The TCP socket underneath (addresses, socket options)."""
        return self._sock

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<TLSStream fd={self._fd} {self.version} alpn={self.alpn!r} sni={self.sni!r}>"
