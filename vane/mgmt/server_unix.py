"""Management server on a unix socket: NDJSON, one request per line (DESIGN.md §9).

The socket is created 0600 (umask around bind), handed to ``mgmt_group`` when configured,
then opened to 0660. A leftover socket file is replaced only when nothing answers on it
(connect refused); a live daemon makes ``start()`` fail with ``MgmtStartError``.

Each connection serves any number of requests in order. A line longer than ``max_line``
gets a TooLarge error and the connection is closed. A stream request (``tail_*``) owns the
connection until the stream ends; the client closing the connection cancels it. At most
``max_streams`` streams run at once: one more is answered with an Unavailable error and the
connection stays usable. The connection table is bounded (``max_clients``); when it is full,
the connection that has waited longest for a request is closed to make room, so a command
always gets through. Handler failures become Internal error responses; the server greenlets
never die from a request. When the process is out of file descriptors, the accept spends one
of the reserve's (``vane.mgmt.fds``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
from typing import Any

import gevent

from vane.mgmt.api import DaemonAPI
from vane.mgmt.fds import FdReserve
from vane.mgmt.protocol import (
    INTERNAL,
    MAX_LINE,
    TOO_LARGE,
    UNAVAILABLE,
    MgmtError,
    encode,
    error_frame,
    parse_request,
    response_frame,
)
from vane.mgmt.slots import BUSY, IDLE, STREAM, Slot, Slots, accept_loop
from vane.mgmt.streams import stream_frames, stream_refused, watch_eof
from vane.mgmt.verbs import Stream, dispatch
from vane.observe.hub import Subscription

__all__ = ["MAX_CLIENTS", "MAX_STREAMS", "MgmtStartError", "UnixMgmtServer"]

log = logging.getLogger("vane.mgmt")


class MgmtStartError(RuntimeError):
    """The management server cannot start (socket in use, bad group, unsafe HTTP settings)."""


class AlreadyRunning(MgmtStartError):
    """A live daemon answers on the socket path: a second one must not start."""


MAX_CLIENTS = 64
MAX_STREAMS = 32

_TOO_LARGE = b"<too large>"  # identity-compared marker returned by _read_line


def _clear_stale(path: str) -> None:
    """Remove a dead socket file at ``path``; refuse when it is live or not a socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise MgmtStartError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        log.info("removing stale management socket", extra={"path": path})
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        raise MgmtStartError(f"cannot check the existing socket {path}: {e}") from None
    finally:
        probe.close()
    raise AlreadyRunning(f"another vaned is already running: it answers on {path}")


def bind_unix(path: str, group: str | None = None, mode: int = 0o660, backlog: int = 64) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` and, optionally, ``group``."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, mode=0o755, exist_ok=True)
    _clear_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # nobody else can connect before chgrp/chmod
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        if group:
            try:
                shutil.chown(path, group=group)
            except (LookupError, PermissionError) as e:
                os.unlink(path)
                raise MgmtStartError(f"cannot give {path} to group {group!r}: {e}") from None
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise MgmtStartError(f"cannot listen on {path}: {e}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class UnixMgmtServer:
    """Serve management verbs for ``daemon`` on the unix socket at ``path``; owns the listening
    socket, the connection table and the live streams."""

    def __init__(
        self,
        daemon: DaemonAPI,
        path: str,
        group: str | None = None,
        mode: int = 0o660,
        max_line: int = MAX_LINE,
        idle_timeout: float = 600.0,
        write_timeout: float = 30.0,
        max_clients: int = MAX_CLIENTS,
        max_streams: int = MAX_STREAMS,
        reserve: FdReserve | None = None,
    ) -> None:
        self.daemon = daemon
        self.path = path
        self.group = group
        self.mode = mode
        self.max_line = max_line
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_streams = max_streams
        self.slots = Slots(max_clients)
        self._own_reserve = reserve is None
        self.reserve = reserve if reserve is not None else FdReserve(2)
        self._sock: socket.socket | None = None
        self._loop: gevent.Greenlet | None = None
        self._inode: int | None = None
        self._streams: set[Subscription] = set()

    @property
    def address(self) -> str:
        return self.path

    @property
    def connections(self) -> int:
        return len(self.slots)

    def start(self) -> None:
        """Bind and start accepting; raises MgmtStartError."""
        self._sock = bind_unix(self.path, self.group, self.mode)
        self._inode = os.stat(self.path).st_ino
        self._loop = gevent.spawn(accept_loop, self._sock, self._admit, self.reserve, "management socket")
        log.info("management socket listening", extra={"path": self.path})

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, end streams with reason "shutdown", close clients, remove the socket file."""
        for sub in list(self._streams):
            sub.close("shutdown")
        if self._sock is not None:
            self._loop.kill(block=False)
            self._sock.close()
            self._sock = None
            self.slots.close_all((IDLE,))  # waiting for a request: nothing to finish
            busy = [slot.greenlet for slot in self.slots if slot.greenlet is not None]
            gevent.joinall(busy, timeout=timeout)
            self.slots.close_all()
            gevent.killall(busy, block=True, timeout=1)
        if self._own_reserve:
            self.reserve.close()
        try:
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except OSError:
            pass
        self._inode = None

    # connection ---------------------------------------------------------------------
    def _admit(self, sock: socket.socket, _addr: Any) -> None:
        if not self.slots.make_room():
            # every slot answers a command or runs a stream: say so instead of waiting
            try:
                sock.settimeout(0.0)
                sock.send(encode(error_frame(None, MgmtError(
                    UNAVAILABLE, f"all {self.slots.capacity} management connections are busy; try again"))))
            except OSError:
                pass
            sock.close()
            self.reserve.refill()
            return
        slot = self.slots.add(sock, IDLE)
        slot.greenlet = gevent.spawn(self._handle, sock, slot)

    def _handle(self, sock: socket.socket, slot: Slot) -> None:
        buf = bytearray()
        try:
            while True:
                sock.settimeout(self.idle_timeout)
                slot.state = IDLE
                line = self._read_line(sock, buf)
                slot.state = BUSY
                if line is _TOO_LARGE:
                    err = MgmtError(TOO_LARGE, f"request line longer than {self.max_line} bytes")
                    self._send(sock, error_frame(None, err))
                    return
                if line is None:
                    return
                if line.strip() and not self._serve(sock, line, slot):
                    return
        except (OSError, gevent.Timeout):
            pass  # client went away or stalled (or the connection was closed to make room)
        except Exception:
            log.exception("management connection failed")
        finally:
            self.slots.discard(slot)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            self.reserve.refill()

    def _read_line(self, sock: socket.socket, buf: bytearray) -> bytes | None:
        scanned = 0
        while True:
            i = buf.find(b"\n", scanned)
            if i >= 0:
                if i > self.max_line:
                    return _TOO_LARGE
                line = bytes(buf[:i])
                del buf[: i + 1]
                return line
            if len(buf) > self.max_line:
                return _TOO_LARGE
            scanned = len(buf)
            chunk = sock.recv(65536)
            if not chunk:
                if buf:
                    line = bytes(buf)
                    buf.clear()
                    return line
                return None
            buf += chunk

    def _send(self, sock: socket.socket, frame: dict) -> None:
        sock.settimeout(self.write_timeout)
        sock.sendall(encode(frame))

    def _serve(self, sock: socket.socket, line: bytes, slot: Slot) -> bool:
        """Answer one request; False when the connection should close."""
        try:
            req = parse_request(line)
        except MgmtError as e:
            self._send(sock, error_frame(e.request_id, e))
            return True
        try:
            refused = stream_refused(req.verb, len(self._streams), self.max_streams)
            if refused is not None:
                raise refused
            result = dispatch(self.daemon, req)
        except MgmtError as e:
            self._send(sock, error_frame(req.request_id, e))
            return True
        if isinstance(result, Stream):
            slot.state = STREAM
            self._serve_stream(sock, req.request_id, result)
            return False
        try:
            data = encode(response_frame(req.request_id, result))
        except (TypeError, ValueError) as e:
            log.exception("management result not serialisable", extra={"verb": req.verb})
            data = encode(error_frame(req.request_id, MgmtError(INTERNAL, f"bad result: {e}")))
        sock.settimeout(self.write_timeout)
        sock.sendall(data)
        return True

    def _serve_stream(self, sock: socket.socket, request_id: Any, stream: Stream) -> None:
        sub = stream.subscription
        self._streams.add(sub)
        watcher = gevent.spawn(watch_eof, sock, sub)
        try:
            for frame in stream_frames(stream, request_id):
                self._send(sock, frame)
        except (OSError, gevent.Timeout):
            pass
        finally:
            watcher.kill(block=False)
            sub.close()
            self._streams.discard(sub)

