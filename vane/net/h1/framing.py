"""Pieces shared by the HTTP/1 server and client codecs.

- ``StreamBody``: a ``Body`` filled by an llhttp parser that pulls more bytes from its
  connection only when the consumer asks, so memory stays bounded by one read.
- the receive buffer: one per process, because a read and the parse of what it returned run
  without a greenlet switch in between (the parser copies out everything it keeps). The codecs
  must therefore run in the gevent hub's thread only.
- ``StreamIO``: reads and writes bounded by ``IoTimers``, libev timers reused per duration.
  A gevent socket timeout builds and tears down a ``Timeout`` on every wait (about 3 us);
  re-arming a kept timer costs a tenth of that, and reads wait on every request.
- head serialisation helpers: cached status lines and Date value, chunk framing.
"""

from __future__ import annotations

import os
from email.utils import formatdate
from os import splice
from time import time
from typing import Any, Iterator, Protocol

from gevent import get_hub, getcurrent

from vane.net.http.message import Body, FileBody, HeaderList, trailer_fields
from vane.net.http.status import PHRASES
from vane.net.pipes import SPLICE_FLAGS
from vane.net.plain import PlainStream
from vane.net.stream import Stream

RECV_SIZE = 65536
recv_buffer = bytearray(RECV_SIZE)
recv_view = memoryview(recv_buffer)

# Bodies up to this size are joined with the head into one send.
COALESCE_LIMIT = 65536

# Writes through a stream that cannot report progress (TLS) go out in slices, each bounded by
# the write timeout, so a slow but live reader is not cut off; plain sockets are bounded per
# wait for room instead.
SEND_SLICE = 1 << 16

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def last_chunk(trailers: HeaderList | None) -> bytes:
    """The end of a chunked body: the last chunk and the ``trailer_fields`` of ``trailers``."""
    if not trailers:
        return LAST_CHUNK
    parts = [b"0\r\n"]
    for k, v in trailer_fields(trailers):
        parts += (k, b": ", v, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class IoTimeout(TimeoutError):
    """A read or write of a codec passed its deadline (thrown in by an ``IoTimers`` timer)."""


class IoTimers:
    """Timers for the blocking calls of one connection.

    ``timer = timers.start(seconds)`` before the call and ``timer.stop()`` in a ``finally``
    after it: if the call is still blocked when the timer fires, ``IoTimeout`` is raised in
    the calling greenlet. A greenlet only waits inside that call while the timer runs, so the
    exception cannot land anywhere else. Streams handled this way run without a socket timeout.

    Every call gets a fresh timer: a reused libev timer whose expiry was already queued can
    deliver that stale expiry into a later wait, cutting it short.
    """

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        self._loop = get_hub().loop

    def start(self, seconds: float) -> Any:
        """Arm a timer for ``seconds``."""
        timer = self._loop.timer(seconds)
        timer.start(getcurrent().throw, IoTimeout)
        return timer


def sendall_timed(stream: Any, data: bytes, timers: IoTimers, seconds: float) -> None:
    """``stream.sendall(data)`` where each MiB must leave within ``seconds``."""
    if len(data) <= SEND_SLICE:
        timer = timers.start(seconds)
        try:
            stream.sendall(data)
        finally:
            timer.stop()
        return
    view = memoryview(data)
    for i in range(0, len(data), SEND_SLICE):
        timer = timers.start(seconds)
        try:
            stream.sendall(view[i:i + SEND_SLICE])
        finally:
            timer.stop()


class StreamIO:
    """Timed reads and writes on a stream, with a fast path for plain TCP streams.

    On a ``PlainStream`` (an accepted connection, a plain upstream one) the non-blocking kernel
    socket is used directly, and the stream's watchers for waiting: a send that the kernel
    takes whole needs no wait and no timer, and a read expected to wait (an upstream answer)
    waits first instead of failing with EAGAIN. Any other stream (TLS) goes through its own
    ``recv_into``/``sendall`` under the same timers.
    """

    __slots__ = ("stream", "timers", "_raw", "sent")

    def __init__(self, stream: Stream) -> None:
        self.stream: Any = stream
        self.timers = IoTimers()
        self.sent = 0               # bytes handed to the kernel, all writes together
        self._raw: Any = stream.sock if type(stream) is PlainStream else None
        stream.settimeout(None)     # every blocking call is bounded by self.timers instead

    def recv_into(self, buf: bytearray, seconds: float, wait_first: bool = False) -> int:
        """Read once into ``buf`` (0 at EOF); ``IoTimeout`` after ``seconds`` without data."""
        raw = self._raw
        if raw is not None:
            if not wait_first:
                try:
                    return raw.recv_into(buf)
                except BlockingIOError:
                    pass
            timer = self.timers.start(seconds)
            try:
                wait_read = self.stream.wait_read
                while True:
                    wait_read()
                    try:
                        return raw.recv_into(buf)
                    except BlockingIOError:
                        continue
            finally:
                timer.stop()
        timer = self.timers.start(seconds)
        try:
            return self.stream.recv_into(buf)
        finally:
            timer.stop()

    @property
    def plain(self) -> bool:
        """A plain TCP stream (not TLS): the kernel can write to it directly (sendfile)."""
        return self._raw is not None

    def sendfile(self, fd: int, offset: int, count: int, seconds: float) -> int:
        """Send ``count`` bytes of file ``fd`` from ``offset`` with ``os.sendfile`` (plain
        streams only); ``IoTimeout`` if the peer stops reading for ``seconds``."""
        out = self._raw.fileno()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(out, fd, offset + sent, min(count - sent, 1 << 20))
            except BlockingIOError:
                timer = self.timers.start(seconds)
                try:
                    self.stream.wait_write()
                finally:
                    timer.stop()
                continue
            if not n:
                raise OSError("file shrank while being served")
            sent += n
            self.sent += n
        return sent

    def splice_in(self, pipe_w: int, count: int, seconds: float) -> int:
        """Move up to ``count`` bytes from the socket into a pipe (plain streams only); 0 at
        EOF, ``IoTimeout`` after ``seconds`` without data."""
        fd = self._raw.fileno()
        try:
            return splice(fd, pipe_w, count, flags=SPLICE_FLAGS)
        except BlockingIOError:
            pass
        timer = self.timers.start(seconds)
        try:
            wait_read = self.stream.wait_read
            while True:
                wait_read()
                try:
                    return splice(fd, pipe_w, count, flags=SPLICE_FLAGS)
                except BlockingIOError:
                    continue
        finally:
            timer.stop()

    def splice_out(self, pipe_r: int, count: int, seconds: float) -> None:
        """Move ``count`` bytes from a pipe to the socket (plain streams only); ``IoTimeout``
        if the peer takes nothing for ``seconds``."""
        fd = self._raw.fileno()
        while count:
            try:
                n = splice(pipe_r, fd, count, flags=SPLICE_FLAGS)
            except BlockingIOError:
                timer = self.timers.start(seconds)
                try:
                    self.stream.wait_write()
                finally:
                    timer.stop()
                continue
            count -= n
            self.sent += n

    def sendall(self, data: bytes, seconds: float) -> None:
        """Send all of ``data``; ``IoTimeout`` if the peer takes nothing for ``seconds``."""
        sock = self._raw
        if sock is None:
            sendall_timed(self.stream, data, self.timers, seconds)
            self.sent += len(data)
            return
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            self.sent += sent
            return
        view = memoryview(data)
        total = len(view)
        wait_write = self.stream.wait_write
        while sent < total:
            timer = self.timers.start(seconds)
            try:
                wait_write()
            finally:
                timer.stop()
            try:
                sent += sock.send(view[sent:])
            except BlockingIOError:
                continue
        self.sent += total


def write_body(io: StreamIO, head: bytes, body: Body, chunked: bool, timeout: float,
               trailers: bool = False) -> int:
    """Send a message head and its body (chunked, or as it comes); the bytes written.
    ``trailers``: a chunked body ends with the body's trailer fields (``last_chunk``).

    The one body writer of the HTTP/1 server and client. A buffered body small enough goes
    out with the head in one write, and so do the chunks the parser already holds of a body
    being relayed; a static file on a plain socket is copied by the kernel (sendfile). Raises
    what ``io`` raises (``IoTimeout``, ``OSError``) and what the body's iterator raises.
    """
    sendall = io.sendall
    if body.is_buffered and not chunked:
        data = body.read_all(body.length or 0)
        if len(data) <= COALESCE_LIMIT:
            sendall(head + data, timeout)
        else:
            sendall(head, timeout)
            sendall(data, timeout)
        return len(head) + len(data)
    sent = 0
    if body.__class__ is StreamBody:
        # what the parser already holds goes out with the head when small
        ready = body.take_ready()
        if chunked:
            first = frame_chunks(ready) if ready else b""
            if body.done:
                first += last_chunk(body.trailers) if trailers else LAST_CHUNK
        else:
            first = ready[0] if len(ready) == 1 else b"".join(ready)
        if len(first) <= COALESCE_LIMIT:
            head += first
        else:
            sendall(head, timeout)
            sent += len(head)
            head = first
        if body.done:
            sendall(head, timeout)
            return sent + len(head)
    elif body.__class__ is FileBody and not chunked and (body.length or 0) > COALESCE_LIMIT and io.plain:
        region = body.take_region()     # a static file: the kernel copies it (sendfile)
        if region is not None:
            sendall(head, timeout)
            return len(head) + io.sendfile(*region, timeout)
    if not chunked and (body.length or 0) > COALESCE_LIMIT and io.plain:
        moved = body.splice_to(io, head, timeout)   # a relayed body: socket to socket (splice)
        if moved is not None:
            return sent + moved
    sendall(head, timeout)
    sent += len(head)
    if chunked:
        for chunk in body:
            data = frame_chunk(chunk)
            sendall(data, timeout)
            sent += len(data)
        end = last_chunk(body.trailers) if trailers else LAST_CHUNK
        sendall(end, timeout)
        sent += len(end)
    else:
        for chunk in body:
            sendall(chunk, timeout)
            sent += len(chunk)
    return sent


class BodySource(Protocol):
    """What a ``StreamBody`` needs from its connection."""

    def _fill(self, body: "StreamBody") -> None: ...

    def _body_end(self, body: "StreamBody", complete: bool) -> None: ...

    def _splice(self, body: "StreamBody", io: StreamIO, head: bytes, timeout: float) -> int | None: ...


class StreamBody(Body):
    """A body whose chunks the connection's parser appends to ``pending``.

    ``done`` turns True when the parser saw the end of the message. Iterating yields what is
    pending and asks the source for more; the end of iteration (or ``close``) tells the source
    whether the body was read to its end, which decides whether the connection is reusable.
    """

    __slots__ = ("pending", "done", "received", "_source")

    def __init__(self, source: BodySource, length: int | None) -> None:
        # Body.__init__ is bypassed on purpose (hot path); _chunks and _close are never read
        # because __iter__ and close are overridden.
        self.length = length
        self.trailers = None
        self._buffered = None
        self.pending: list[bytes] = []
        self.done = False
        self.received = 0
        self._source: BodySource | None = source

    def take_all(self) -> bytes:
        """The whole body of a message the parser has finished (``done``), the chunks joined;
        the source hears the body was read to its end (a pooled connection goes back)."""
        pending = self.pending
        self.pending = []
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        source, self._source = self._source, None
        if source is not None:
            source._body_end(self, True)
        return data

    def take_ready(self) -> list[bytes]:
        """Chunks already parsed, without blocking (used to coalesce head and body)."""
        ready = self.pending
        if ready:
            self.pending = []
        return ready

    def __iter__(self) -> Iterator[bytes]:
        if self._buffered is not None:
            if self._buffered:
                yield self._buffered
            return
        source = self._source
        if source is None:
            return
        while True:
            pending = self.pending
            if pending:
                self.pending = []
                yield from pending
            elif self.done:
                break
            else:
                source._fill(self)
        self._source = None
        source._body_end(self, True)

    def splice_to(self, io: Any, head: bytes, timeout: float) -> int | None:
        source = self._source
        if source is None or self.length is None or self.done:
            return None
        return source._splice(self, io, head, timeout)

    def close(self) -> None:
        source, self._source = self._source, None
        if source is not None:
            self.pending = []
            source._body_end(self, self.done)


class _NoBody(Body):
    """The empty body shared by every request without one; read-only so sharing is safe."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("the shared empty body is read-only; assign a new Body instead")

    def close(self) -> None:
        pass


NO_BODY: Body = _NoBody.__new__(_NoBody)
for _name, _value in (("_chunks", None), ("length", 0), ("trailers", None), ("_buffered", b""),
                      ("_close", None)):
    object.__setattr__(NO_BODY, _name, _value)


def _status_line(code: int, reason: str) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (code, reason.encode("latin-1", "replace"))


STATUS_LINES: dict[int, bytes] = {code: _status_line(code, phrase) for code, phrase in PHRASES.items()}


def status_line(code: int, reason: str = "") -> bytes:
    """``HTTP/1.1 <code> <reason>\\r\\n``; the standard phrase wins for known codes."""
    line = STATUS_LINES.get(code)
    if line is None:
        if not 100 <= code <= 999:
            raise ValueError(f"bad status code {code}")
        line = _status_line(code, "".join(c for c in reason if c.isprintable()) or "Unknown")
    return line


_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """The current IMF-fixdate, recomputed at most once per second."""
    global _date_second, _date_value
    now = int(time())
    if now != _date_second:
        _date_value = formatdate(now, usegmt=True).encode("ascii")
        _date_second = now
    return _date_value


def frame_chunk(data: bytes) -> bytes:
    """One chunk of the chunked transfer coding (``data`` must not be empty)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def frame_chunks(chunks: list[bytes]) -> bytes:
    """Several non-empty chunks framed and joined."""
    if len(chunks) == 1:
        return frame_chunk(chunks[0])
    return b"".join([b"%x\r\n%b\r\n" % (len(c), c) for c in chunks])


def head_is_clean(head: bytes, lines: int) -> bool:
    """True if ``head`` has exactly the expected line breaks (no CR/LF smuggled in a value)."""
    return head.count(b"\n") == lines and head.count(b"\r") == lines
