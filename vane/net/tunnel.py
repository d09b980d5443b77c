"""The L4 byte relay behind the ``proxy`` terminator (DESIGN.md §6): client <-> upstream.

Both directions run at once. When a side reads EOF the other side's write half is shut down
and the other direction goes on, so half-closed protocols work. The relay ends when both
directions are done, when no byte moved either way for ``idle_timeout`` seconds, or on the
first error (then both sides are closed with RST, so a reset upstream never looks like a
clean end to the client). The calling greenlet blocks until then, whatever the path.

Two plain sockets are relayed by the event loop itself: each direction is a small state
machine run by the loop's readiness callbacks (a bounded burst per callback, never a
blocking call), the calling greenlet sleeps until the relay ends, and no other greenlet,
timer per wait or socket wrapper is made per connection. The bytes move with ``os.splice``
through a pipe and never enter Python. A direction holds a pipe only while bytes are in
flight and gives it back to a small process-wide pool before it waits for input, so idle
tunnels hold no pipes (no extra file descriptors, no pipe quota); without a pipe (out of
descriptors) it copies through a buffer instead.

Anything else (a TLS stream, whose reads and writes block) runs one direction in the calling
greenlet and one in a helper greenlet, each copying through one preallocated buffer.
"""

from __future__ import annotations

import _socket
import os
import socket
import time
from os import splice
from typing import Any, Callable

import gevent
from gevent import Timeout, get_hub
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.hub import Waiter
from gevent.monkey import get_original

from vane.net.pipes import SPLICE_FLAGS, pipes
from vane.net.plain import PlainStream
from vane.net.sockets import set_rst_on_close

_BURST = 16  # chunks moved without waiting before yielding to other greenlets / callbacks
_DRAINED = 16384  # a read shorter than this emptied the socket: wait for readiness, not EAGAIN
_READ = 1
_WRITE = 2
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

    ``client`` and ``upstream`` are plain sockets or ``Stream`` objects (a ``PlainStream`` is
    relayed as the socket it holds); both are closed on return. ``upstream_prefix`` (e.g. a
    PROXY header) and ``client_prefix`` are sent before anything relayed. ``buffer_size`` is
    the copy buffer of a direction that cannot splice; splice moves up to the pool's pipe
    capacity per call. Socket errors end the relay and are not raised; any other exception (a
    bug, a Stream's own error type) is re-raised after cleanup. A Stream's own read timeout
    counts as an error: clear it (``None``) so that ``idle_timeout`` alone decides.
    """
    if counters is None:
        counters = Counters()
    if client.__class__ is PlainStream:
        client = client.detach()        # the relay waits on the kernel socket itself
    if upstream.__class__ is PlainStream:
        upstream = upstream.detach()
    if is_plain_socket(client) and is_plain_socket(upstream):
        for end in (client, upstream):
            if not isinstance(end, gsocket.socket) and end.gettimeout() != 0.0:
                end.setblocking(False)  # a stdlib socket: its fd must not block the hub
        _SpliceRelay(idle_timeout, counters, buffer_size).run(client, upstream, client_prefix, upstream_prefix)
    else:
        _relay_streams(client, upstream, idle_timeout, counters, buffer_size, client_prefix, upstream_prefix)


# -- two plain sockets: driven by the event loop ------------------------------------------------

class _SpliceRelay:
    """A relay between two plain sockets run by the loop's callbacks; ``run`` blocks the
    calling greenlet until it ends and then closes both sockets."""

    __slots__ = ("loop", "idle", "last", "counters", "buffer_size", "waiter", "timer", "halves",
                 "abort", "error", "ended")

    def __init__(self, idle: float | None, counters: Counters, buffer_size: int) -> None:
        hub = get_hub()
        self.loop = hub.loop
        self.idle = idle
        self.last = _monotonic()
        self.counters = counters
        self.buffer_size = buffer_size
        self.waiter = Waiter(hub)
        self.timer: Any = None
        self.halves: tuple[_Half, ...] = ()
        self.abort = False
        self.error: BaseException | None = None
        self.ended = False

    def run(self, client: Any, upstream: Any, client_prefix: bytes, upstream_prefix: bytes) -> None:
        try:
            up = _Half(self, client, upstream, upstream_prefix, upward=True)
            down = _Half(self, upstream, client, client_prefix, upward=False)
            up.other, down.other = down, up
            self.halves = (up, down)
            up.start()
            down.start()
            if self.idle is not None:
                self.timer = self.loop.timer(self.idle)
                self.timer.start(self._on_timer)
            self.waiter.get()
        except BaseException:
            self.abort = True  # killed from outside (drain budget, shutdown): reset both sides
            raise
        finally:
            self.ended = True
            self._release()
            close(client, self.abort)
            close(upstream, self.abort)
        if self.error is not None:
            raise self.error

    # -- from the loop's callbacks ---------------------------------------------------------

    def finish(self, abort: bool) -> None:
        """End the relay (once): no more callbacks; wake the greenlet waiting in ``run``."""
        if self.ended:
            return
        self.ended = True
        if abort:
            self.abort = True
        self._stop_watchers()
        self.waiter.switch(None)

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, OSError):  # a bug: end the relay, report it from ``run``
            self.error = exc
        self.finish(abort=True)

    def _on_timer(self) -> None:
        remaining = self.last + self.idle - _monotonic()
        if remaining > 0:  # bytes moved meanwhile: wait for the rest of the idle time
            self.timer.close()
            self.timer = self.loop.timer(remaining)
            self.timer.start(self._on_timer)
            return
        self.finish(abort=False)

    # -- cleanup ---------------------------------------------------------------------------

    def _stop_watchers(self) -> None:
        for half in self.halves:
            half.rw.stop()
            if half.ww is not None:
                half.ww.stop()
        if self.timer is not None:
            self.timer.stop()

    def _release(self) -> None:
        halves, self.halves = self.halves, ()  # no cycles left: freed by reference counting
        for half in halves:
            half.release()
            half.other = None
        if self.timer is not None:
            self.timer.close()
            self.timer = None


class _Half:
    """One direction of a ``_SpliceRelay``: src -> dst, run by the loop's callbacks.

    Waits for src to be readable, moves what is there (through a pipe, or a buffer without
    one), and when dst is full waits for dst to be writable instead; EOF half-closes dst.
    Bytes to write from memory (a prefix, the buffer) are in ``out``; bytes in the pipe are
    counted by ``pending``.
    """

    __slots__ = ("relay", "dst", "src_fd", "dst_fd", "upward", "other", "rw", "ww", "pipe",
                 "pending", "buf", "out", "done")

    def __init__(self, relay: _SpliceRelay, src: Any, dst: Any, prefix: bytes, upward: bool) -> None:
        self.relay = relay
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.upward = upward
        self.other: _Half | None = None
        self.rw: Any = relay.loop.io(self.src_fd, _READ)
        self.ww: Any = None  # made the first time dst is full
        self.pipe: tuple[int, int, int] | None = None
        self.pending = 0
        self.buf: memoryview | None = None
        self.out: memoryview | None = memoryview(prefix) if prefix else None
        self.done = False

    def start(self) -> None:
        if self.out is not None:
            self._wait_writable()  # the prefix goes first
        else:
            self.rw.start(self._on_readable)

    def release(self) -> None:
        self.rw.close()
        if self.ww is not None:
            self.ww.close()
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            if self.pending:
                pipes.discard(pipe)  # bytes stuck inside: not reusable
            else:
                pipes.put(pipe)
        self.buf = self.out = None

    # -- callbacks -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            self._pump()
        except BaseException as exc:  # noqa: BLE001 - never into the loop: it ends the relay
            self.relay.fail(exc)

    def _on_writable(self) -> None:
        try:
            if self._flush():
                self.ww.stop()
                self.rw.start(self._on_readable)
        except BaseException as exc:  # noqa: BLE001 - as above
            self.relay.fail(exc)

    # -- moving bytes ----------------------------------------------------------------------

    def _pump(self) -> None:
        """Move up to ``_BURST`` chunks; stop when src is drained, dst is full, or at EOF."""
        src_fd = self.src_fd
        for _ in range(_BURST):
            buf = self.buf
            if buf is None:
                pipe = self.pipe
                if pipe is None:
                    try:
                        pipe = self.pipe = pipes.get()
                    except OSError:  # out of file descriptors: copy through a buffer instead
                        self.buf = memoryview(bytearray(self.relay.buffer_size))
                        continue
                try:
                    n = splice(src_fd, pipe[1], pipe[2], flags=SPLICE_FLAGS)
                except BlockingIOError:
                    self._put_pipe()
                    return
                self.pending = n
            else:
                try:
                    n = os.readv(src_fd, (buf,))
                except BlockingIOError:
                    return
                self.out = buf[:n]
            if not n:
                self._eof()
                return
            self.relay.last = _monotonic()
            if not self._flush():
                return
            if n < _DRAINED:
                break
        self._put_pipe()  # empty again; the read watcher calls back while src stays readable

    def _flush(self) -> bool:
        """Write what is in flight to dst; False (and waiting for dst) when dst is full."""
        dst_fd = self.dst_fd
        out = self.out
        while out is not None:
            try:
                n = os.write(dst_fd, out)
            except BlockingIOError:
                self._wait_writable()
                return False
            self._count(n)
            out = self.out = out[n:] if n < len(out) else None
        pending = self.pending
        if pending:
            pipe_r = self.pipe[0]
            while pending:
                try:
                    n = splice(pipe_r, dst_fd, pending, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    self._wait_writable()
                    return False
                pending = self.pending = pending - n
                self._count(n)
        self.relay.last = _monotonic()
        return True

    def _count(self, n: int) -> None:
        if self.upward:
            self.relay.counters.up += n
        else:
            self.relay.counters.down += n

    def _eof(self) -> None:
        self._put_pipe()
        self.rw.stop()
        self.done = True
        if self.other.done:  # both read to EOF: the relay closes both now, and closing sends this FIN
            self.relay.finish(abort=False)
            return
        self.dst.shutdown(socket.SHUT_WR)

    def _wait_writable(self) -> None:
        self.rw.stop()
        if self.ww is None:
            self.ww = self.relay.loop.io(self.dst_fd, _WRITE)
        self.ww.start(self._on_writable)

    def _put_pipe(self) -> None:
        pipe = self.pipe
        if pipe is not None and not self.pending:
            self.pipe = None
            pipes.put(pipe)


# -- a Stream on either side: one greenlet per direction ----------------------------------------

def _relay_streams(client: Any, upstream: Any, idle_timeout: float | None, counters: Counters,
                   buffer_size: int, client_prefix: bytes, upstream_prefix: bytes) -> None:
    for end in (client, upstream):
        if is_plain_socket(end) and not isinstance(end, gsocket.socket):
            end.setblocking(False)  # a stdlib socket: its fd must not block the hub
    state = _Relay(idle_timeout)
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


class _Relay:
    """State shared by the two directions of a Stream relay."""

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
    """One direction of a Stream relay: src -> dst through a buffer, in its own greenlet."""

    __slots__ = (
        "relay", "src", "dst", "prefix", "counters", "upward", "other", "glet", "running",
        "timer", "src_fd", "dst_fd", "src_watch", "dst_watch", "buf", "buf_size",
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
        self.src_watch = loop.io(self.src_fd, _READ) if self.src_fd >= 0 else None
        self.dst_watch = loop.io(self.dst_fd, _WRITE) if self.dst_fd >= 0 else None
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

    # -- copying -------------------------------------------------------------------------

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
