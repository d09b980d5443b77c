"""The L4 byte relay behind the ``proxy`` terminator (DESIGN.md §6): client <-> upstream.

Both directions run at once, one in the calling greenlet and one in a helper greenlet. When a
side reads EOF the other side's write half is shut down and the other direction goes on, so
half-closed protocols work. The relay ends when both directions are done, when no byte moved
either way for ``idle_timeout`` seconds, or on the first error (then both sides are closed
with RST, so a reset upstream never looks like a clean end to the client).

Two plain sockets are relayed with ``os.splice`` through a pipe: the bytes never enter
Python. A direction holds a pipe only while bytes are in flight and gives it back to a small
process-wide pool before it waits for input, so idle tunnels hold no pipes (no extra file
descriptors, no pipe quota). Anything else (a TLS stream) is copied through one
preallocated buffer per direction.
"""

from __future__ import annotations

import _socket
import fcntl
import os
import socket
import time
from typing import Any, Callable

import gevent
from gevent import Timeout, get_hub
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.monkey import get_original

from vane.net.sockets import set_rst_on_close

PIPE_SIZE = 262144  # requested pipe capacity; the kernel default (64 KiB) when not allowed
PIPE_POOL_KEEP = 64  # empty pipes kept for reuse
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_BURST = 16  # chunks moved without waiting before yielding to other greenlets
_PLAIN_TYPES = (_socket.socket, gsocket.socket)
_TLS_TYPES = (get_original("ssl", "SSLSocket"), gssl.SSLSocket)
_monotonic = time.monotonic


class Counters:
    """Bytes relayed so far: ``up`` client -> upstream, ``down`` upstream -> client (prefixes included)."""

    __slots__ = ("up", "down")

    def __init__(self) -> None:
        self.up = 0
        self.down = 0


class _Stop(Exception):
    """Thrown into a direction when the other one ended the relay."""


class _Idle(Exception):
    """No byte moved in either direction for the idle timeout."""


def is_plain_socket(obj: object) -> bool:
    """A kernel socket without a TLS layer, usable with splice."""
    return isinstance(obj, _PLAIN_TYPES) and not isinstance(obj, _TLS_TYPES)


def shutdown_write(end: Any) -> None:
    """Half-close: a plain socket gets ``shutdown(SHUT_WR)``, a Stream ``shutdown_write()``."""
    if is_plain_socket(end):
        end.shutdown(socket.SHUT_WR)
    else:
        method = getattr(end, "shutdown_write", None)
        if method is not None:
            method()


def linger(end: Any, seconds: float, max_bytes: int | None = None) -> None:
    """Lingering close: half-close, then read and discard the peer's input until EOF, for at
    most ``seconds`` (and ``max_bytes``), so input left unread does not make the kernel answer
    with an RST that destroys the last bytes sent. The caller closes ``end`` afterwards."""
    deadline = time.monotonic() + seconds
    try:
        shutdown_write(end)
        while (left := deadline - time.monotonic()) > 0:
            end.settimeout(left)
            data = end.recv(65536)
            if not data:
                return
            if max_bytes is not None:
                max_bytes -= len(data)
                if max_bytes <= 0:
                    return
    except OSError:     # timeouts and TLS errors included
        pass


def close(end: Any, abort: bool = False) -> None:
    """Close a socket or Stream; with ``abort``, end it with RST rather than a clean close."""
    closer = end.close
    if abort:
        if is_plain_socket(end):
            set_rst_on_close(end)
        else:
            closer = getattr(end, "abort", closer)
            inner = getattr(end, "socket", None)
            if is_plain_socket(inner):
                set_rst_on_close(inner)
    try:
        closer()
    except OSError:
        pass


class _PipePool:
    """Empty pipes for splice, reused across connections (LIFO, at most ``keep`` kept)."""

    __slots__ = ("free", "size", "keep")

    def __init__(self, size: int, keep: int) -> None:
        self.free: list[tuple[int, int]] = []
        self.size = size
        self.keep = keep

    def get(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError:
            pass  # over the per-user pipe quota: the default capacity still works
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        """Return an empty pipe."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])


_pipes = _PipePool(PIPE_SIZE, PIPE_POOL_KEEP)


class _Relay:
    """State shared by the two directions."""

    __slots__ = ("hub", "idle", "last", "stopping", "abort", "error")

    def __init__(self, idle: float | None) -> None:
        self.hub = get_hub()
        self.idle = idle
        self.last = _monotonic()
        self.stopping = False
        self.abort = False
        self.error: BaseException | None = None

    def stop(self, pump: _Pump, abort: bool) -> None:
        """End the relay: flag it and interrupt the other direction if it is still running."""
        if abort:
            self.abort = True
        if self.stopping:
            return
        self.stopping = True
        other = pump.other
        if other is not None and other.running:
            self.hub.loop.run_callback(_interrupt, other)


def _interrupt(pump: _Pump) -> None:
    # Runs from the hub. The direction may have finished meanwhile; then nothing is thrown,
    # so the exception can never land in code outside the relay.
    if pump.running:
        pump.glet.throw(_Stop())


class _Pump:
    """One direction: src -> dst."""

    __slots__ = (
        "relay", "src", "dst", "prefix", "counters", "upward", "other", "glet", "running",
        "timer", "src_fd", "dst_fd", "src_watch", "dst_watch", "splice", "buf", "buf_size",
    )  # fmt: skip

    def __init__(
        self, relay: _Relay, src: Any, dst: Any, prefix: bytes, counters: Counters, upward: bool
    ) -> None:
        self.relay = relay
        self.src = src
        self.dst = dst
        self.prefix = prefix
        self.counters = counters
        self.upward = upward
        self.other: _Pump | None = None
        self.glet: Any = None
        self.running = False
        self.timer = Timeout(relay.idle) if relay.idle is not None else None
        loop = relay.hub.loop
        self.src_fd = src.fileno() if is_plain_socket(src) else -1
        self.dst_fd = dst.fileno() if is_plain_socket(dst) else -1
        self.src_watch = loop.io(self.src_fd, 1) if self.src_fd >= 0 else None
        self.dst_watch = loop.io(self.dst_fd, 2) if self.dst_fd >= 0 else None
        self.splice = self.src_fd >= 0 and self.dst_fd >= 0
        self.buf: memoryview | None = None
        self.buf_size = 0

    def release(self) -> None:
        for w in (self.src_watch, self.dst_watch):
            if w is not None:
                w.close()
        if self.timer is not None:
            self.timer.close()
        self.buf = None

    def run(self) -> None:
        relay = self.relay
        if relay.stopping:
            return
        self.glet = gevent.getcurrent()
        self.running = True
        try:
            if self.prefix:
                self._write(memoryview(self.prefix))
                self._count(len(self.prefix))
            if self.splice:
                self._splice_loop()
            else:
                self._copy_loop()
            shutdown_write(self.dst)
        except _Stop:
            pass
        except _Idle:
            relay.stop(self, abort=False)
        except OSError:
            relay.stop(self, abort=True)
        except Exception as exc:  # a Stream's own error type, or a bug: end the relay, report it
            relay.error = exc
            relay.stop(self, abort=True)
        finally:
            self.running = False

    def _count(self, n: int) -> None:
        if self.upward:
            self.counters.up += n
        else:
            self.counters.down += n

    # -- waiting -------------------------------------------------------------------------

    def _blocking(self, call: Callable[[Any], Any], arg: Any, retry: bool = True) -> Any:
        """Run a blocking call under the idle timeout; on expiry, re-arm if the other direction
        kept the relay busy (``retry``), else raise ``_Idle``."""
        relay = self.relay
        if relay.stopping:
            raise _Stop()
        timer = self.timer
        if timer is None:
            return call(arg)
        timer.start()
        try:
            return call(arg)
        except Timeout as t:
            if t is not timer:
                raise
        finally:
            timer.cancel()
        while retry:  # rare path: one-shot timers for the remaining idle time
            remaining = relay.last + relay.idle - _monotonic()
            if remaining <= 0:
                break
            once = Timeout(remaining)
            once.start()
            try:
                return call(arg)
            except Timeout as t:
                if t is not once:
                    raise
            finally:
                once.close()
        raise _Idle()

    def _wait(self, watcher: Any) -> None:
        self._blocking(self.relay.hub.wait, watcher)

    # -- splice path ---------------------------------------------------------------------

    def _splice_loop(self) -> None:
        splice = os.splice
        src_fd, dst_fd = self.src_fd, self.dst_fd
        relay = self.relay
        chunk = _pipes.size
        pipe: tuple[int, int] | None = None
        left = 0
        burst = 0
        try:
            while True:
                if pipe is None:
                    try:
                        pipe = _pipes.get()
                    except OSError:  # out of file descriptors: copy through a buffer instead
                        self._copy_loop()
                        return
                try:
                    n = splice(src_fd, pipe[1], chunk, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    _pipes.put(pipe)  # empty: nobody needs to hold it while we wait
                    pipe = None
                    burst = 0
                    self._wait(self.src_watch)
                    continue
                if n == 0:
                    return
                relay.last = _monotonic()
                left = n
                while left:  # drain the pipe completely before reading again
                    try:
                        m = splice(pipe[0], dst_fd, left, flags=_SPLICE_FLAGS)
                    except BlockingIOError:
                        burst = 0
                        self._wait(self.dst_watch)
                        continue
                    left -= m
                    self._count(m)
                relay.last = _monotonic()
                burst += 1
                if burst >= _BURST:
                    burst = 0
                    gevent.sleep(0)
                    if relay.stopping:
                        raise _Stop()
        finally:
            if pipe is not None:
                if left:
                    _pipes.discard(pipe)  # bytes stuck inside: not reusable
                else:
                    _pipes.put(pipe)

    # -- buffered path -------------------------------------------------------------------

    def _copy_loop(self) -> None:
        if self.buf is None:
            self.buf = memoryview(bytearray(self.buf_size))
        buf = self.buf
        relay = self.relay
        read = self._read
        write = self._write
        burst = 0
        while True:
            n = read(buf)
            if not n:
                return
            relay.last = _monotonic()
            write(buf[:n])
            self._count(n)
            relay.last = _monotonic()
            burst += 1
            if burst >= _BURST:
                burst = 0
                gevent.sleep(0)
                if relay.stopping:
                    raise _Stop()

    def _read(self, buf: memoryview) -> int:
        fd = self.src_fd
        if fd < 0:
            return self._blocking(self.src.recv_into, buf)
        while True:
            try:
                return os.readv(fd, (buf,))
            except BlockingIOError:
                self._wait(self.src_watch)

    def _write(self, data: memoryview) -> None:
        fd = self.dst_fd
        if fd < 0:
            # A Stream's sendall cannot be resumed: stalled for the whole idle time ends it.
            self._blocking(self.dst.sendall, data, retry=False)
            return
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                self._wait(self.dst_watch)


def relay(
    client: Any,
    upstream: Any,
    idle_timeout: float | None,
    counters: Counters | None = None,
    buffer_size: int = 65536,
    client_prefix: bytes = b"",
    upstream_prefix: bytes = b"",
) -> None:
    """Relay bytes both ways until both directions end, idle time runs out, or an error.

    ``client`` and ``upstream`` are plain sockets or ``Stream`` objects; both are closed on
    return. ``upstream_prefix`` (e.g. a PROXY header) and ``client_prefix`` are sent before
    anything relayed. ``buffer_size`` is the copy buffer of a direction that cannot splice;
    splice moves up to the pool's pipe capacity per call. Socket errors end the relay and
    are not raised; any other exception (a bug, a Stream's own error type) is re-raised
    after cleanup. A Stream's own read timeout counts as an error: clear it (``None``) so
    that ``idle_timeout`` alone decides.
    """
    if counters is None:
        counters = Counters()
    state = _Relay(idle_timeout)
    for end in (client, upstream):
        if is_plain_socket(end) and not isinstance(end, gsocket.socket):
            end.setblocking(False)  # a stdlib socket: its fd must not block the hub
    up = _Pump(state, client, upstream, upstream_prefix, counters, upward=True)
    down = _Pump(state, upstream, client, client_prefix, counters, upward=False)
    up.other, down.other = down, up
    up.buf_size = down.buf_size = buffer_size
    helper = gevent.spawn(down.run)
    try:
        up.run()
        helper.join()
    except BaseException:
        state.stop(up, abort=True)  # killed from outside: end the helper too
        helper.join(timeout=1.0)
        raise
    finally:
        if not helper.dead:
            helper.kill(block=False)
        up.release()
        down.release()
        close(client, state.abort)
        close(upstream, state.abort)
    if state.error is not None:
        raise state.error
