"""Reading a proxied response from the backend ahead of the client (``proxy``'s buffering).

The upstream connection (or HTTP/2 stream) is held until its response body has been read
to the end. ``read_ahead`` decouples that from how fast the client reads: a body that is
already complete, or announces a length within the buffer, is read at once and the lease
goes back before the client gets a byte; any other body is read by a pump greenlet into at
most ``limit`` bytes while the client drains it, so a response up to the buffer size frees
its upstream lease as soon as the backend has sent it, and a longer one streams with at most
``limit`` bytes held. Streaming responses (server-sent events, long polls) still reach the
client chunk by chunk as they arrive. A body the client's codec can take by ``splice_to``
(plain HTTP/1 on both sides, a known length) is moved by the kernel instead, before any pump
starts: the pipe is then the buffer.

Failures reading the backend surface to the consumer as the ``UpstreamError`` that caused
them, after ``on_error`` has reported it once; so do those of a body relayed without a
buffer (``limit`` 0).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterator

import gevent
from gevent.event import Event

from vane.net.h1.framing import StreamBody
from vane.net.http.errors import UpstreamError
from vane.net.http.message import Body

__all__ = ["read_ahead"]

# The pump waits this long at most for the client to take buffered bytes (the client's own
# send timeout normally ends a stalled response long before).
PUMP_STALL = 600.0


def read_ahead(body: Body, limit: int, on_error: Callable[..., None], *error_args: Any) -> Body:
    """``body`` (an upstream response body) as the client should get it; see module doc.

    ``on_error(exc, *error_args)`` reports a failure of the backend while the body is read.
    Raises ``UpstreamError`` when the body fails before the answer starts.
    """
    if body.is_buffered or body.length == 0:
        return body
    if limit <= 0:
        return _ReportedBody(body, on_error, error_args)
    length = body.length
    if body.__class__ is StreamBody and body.done:
        out = Body.from_bytes(body.take_all())
        out.trailers = body.trailers
        return out
    if length is not None and length <= limit:
        trailers_of = body
        try:
            data = b"".join(body)
        except UpstreamError as exc:
            on_error(exc, *error_args)
            raise
        out = Body.from_bytes(data)
        out.trailers = trailers_of.trailers
        return out
    return _PumpedBody(body, limit, on_error, error_args)


def _splice_reported(inner: Body, io: Any, head: bytes, timeout: float,
                     on_error: Callable[..., None], error_args: tuple) -> int | None:
    """``inner.splice_to``, a failure of the backend reported once on its way."""
    try:
        return inner.splice_to(io, head, timeout)
    except UpstreamError as exc:
        on_error(exc, *error_args)
        raise


class _ReportedBody(Body):
    """``inner`` relayed as it comes, a failure of the backend reported once on its way."""

    __slots__ = ("_inner", "_on_error", "_error_args", "_started")

    def __init__(self, inner: Body, on_error: Callable[..., None], error_args: tuple) -> None:
        super().__init__(self._relay(on_error, error_args), inner.length, inner.close)
        self._inner = inner
        self._on_error = on_error
        self._error_args = error_args
        self._started = False

    def splice_to(self, io: Any, head: bytes, timeout: float) -> int | None:
        if self._started:
            return None
        return _splice_reported(self._inner, io, head, timeout, self._on_error, self._error_args)

    def _relay(self, on_error: Callable[..., None], error_args: tuple) -> Iterator[bytes]:
        self._started = True
        inner = self._inner
        try:
            yield from inner
        except UpstreamError as exc:
            on_error(exc, *error_args)
            raise
        self.trailers = inner.trailers


class _PumpedBody(Body):
    """A body filled by a pump greenlet from ``inner``, at most ``limit`` bytes ahead."""

    __slots__ = ("_inner", "_limit", "_on_error", "_error_args", "_queue", "_queued", "_data", "_room",
                 "_pump", "_ended", "_error", "_closed")

    def __init__(self, inner: Body, limit: int, on_error: Callable[..., None], error_args: tuple) -> None:
        super().__init__((), inner.length)
        self._chunks = None
        self._inner = inner
        self._limit = limit
        self._on_error = on_error
        self._error_args = error_args
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._data = Event()        # the pump added a chunk, ended or failed
        self._room = Event()        # the consumer took chunks
        self._pump: Any = None
        self._ended = False
        self._error: BaseException | None = None
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self._pump is None and not self._closed:
            self._pump = gevent.spawn(self._run)
        queue = self._queue
        while True:
            if queue:
                chunk = queue.popleft()
                self._queued -= len(chunk)
                self._room.set()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._ended or self._closed:
                return
            self._data.clear()
            self._data.wait()       # the pump always ends by setting it (end, error, close)

    def splice_to(self, io: Any, head: bytes, timeout: float) -> int | None:
        """Before the pump started: the backend's body moves to ``io`` by the kernel instead,
        the pipe of the splice then being the read-ahead buffer."""
        if self._pump is not None or self._closed:
            return None
        sent = _splice_reported(self._inner, io, head, timeout, self._on_error, self._error_args)
        if sent is not None:
            self._ended = True
        return sent

    def _run(self) -> None:
        inner = self._inner
        try:
            for chunk in inner:
                if self._closed:
                    return
                self._queue.append(chunk)
                self._queued += len(chunk)
                self._data.set()
                while self._queued >= self._limit and not self._closed:
                    self._room.clear()
                    if not self._room.wait(PUMP_STALL):
                        self._error = UpstreamError("the client took nothing for a long time")
                        return
            self.trailers = inner.trailers
            self._ended = True
        except UpstreamError as exc:
            self._on_error(exc, *self._error_args)
            self._error = exc
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, never lost
            self._error = exc
        finally:
            inner.close()
            self._data.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._room.set()
        pump = self._pump
        if pump is None:
            self._inner.close()
        elif not pump.dead and pump is not gevent.getcurrent():
            pump.kill(block=False)  # it may be waiting on the backend; its finally closes inner
