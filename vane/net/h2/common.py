"""Pieces the HTTP/2 server and client codecs share.

- ``H2Output``: the one path to the socket. Any greenlet may queue frames in the connection
  state (an h2 ``H2Connection`` or the server's ``ServerProtocol``) and call ``flush`` or
  ``flush_soon``; one of them at a time writes, the others leave their bytes to it, and
  producers wait while the backlog is above a high-water mark.
- ``GoawayFilter`` (the client's): h2 closes its state machine on a GOAWAY in either
  direction, which rules out the graceful shutdown HTTP/2 allows (in-flight streams finish
  after a GOAWAY). The filter takes inbound GOAWAY frames out of the byte stream before h2
  sees them, and outbound GOAWAYs are written as raw frames, so h2 keeps serving the streams
  already open.
"""

from __future__ import annotations

from typing import Any, Callable

import h2.connection
from gevent.event import Event

from vane.net.h2 import workers
from vane.net.h2.protocol import goaway_frame
from vane.net.http.errors import HttpError
from vane.net.http.message import HOP_BY_HOP, HeaderList, Headers, Response, connection_tokens
from vane.net.http.status import plain_response

__all__ = ["GoawayFilter", "H2Output", "StreamGone", "answer_of", "await_body", "goaway_frame", "response_header_block",
           "take_chunk", "write_data"]

RECV_SIZE = 65536
HIGH_WATER = 65536
_GOAWAY = 0x7
_MAX_GOAWAY_PAYLOAD = 16384

class H2Output:
    """Serialised writes of a connection's pending bytes (``conn.data_to_send()``) to its stream.

    ``flush`` never blocks a caller on another greenlet's write: if a write is in progress,
    the bytes join the backlog and the writing greenlet sends them next. ``flush_soon`` writes
    from a greenlet of its own once the greenlets already runnable have queued their frames
    too, so that the answers of many streams leave in one write; while ``held`` is set (the
    reader is handling a read and flushes when done) it does nothing. A failed write records
    ``error`` and calls ``on_error`` once; later flushes are no-ops, as they are once ``seal``
    said the last frame (a GOAWAY that ends the connection) went out.
    """

    __slots__ = ("_h2", "_stream", "_backlog", "_writing", "_drained", "_on_error", "error",
                 "bytes_out", "held", "_scheduled", "_sealed")

    def __init__(self, conn: Any, stream: Any, on_error: Callable[[BaseException], None]) -> None:
        self._h2 = conn
        self._stream = stream
        self._backlog = bytearray()
        self._writing = False
        self._drained = Event()
        self._on_error = on_error
        self.error: BaseException | None = None
        self.bytes_out = 0
        self.held = False
        self._scheduled = False
        self._sealed = False

    def flush(self) -> None:
        if self.error is not None or self._sealed:
            self._h2.data_to_send()  # discard: nothing can be written any more
            return
        if self._writing:
            self._backlog += self._h2.data_to_send()
            return
        self._writing = True
        try:
            while True:
                data: Any = self._h2.data_to_send()
                if self._sealed:
                    data = b""
                if self._backlog:
                    self._backlog += data
                    data, self._backlog = self._backlog, bytearray()
                if not data:
                    break
                self._stream.sendall(data)
                self.bytes_out += len(data)
                self._wake()
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._writing = False
            self._wake()

    def flush_soon(self) -> None:
        if self.held or self._writing or self._scheduled:
            return
        if self.error is not None or self._sealed:
            self._h2.data_to_send()
            return
        self._scheduled = True
        workers.spawn(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        self.flush()

    def seal(self) -> None:
        """Write what is queued, then nothing more."""
        self.flush()
        self._sealed = True

    def raw(self, frame: bytes) -> None:
        """Queue bytes that did not come from h2 (keeping order with what h2 queued before)."""
        self._backlog += self._h2.data_to_send()
        self._backlog += frame
        self.flush()

    def wait_room(self, timeout: float | None) -> None:
        """Block while a write is in progress and the backlog is above the high-water mark."""
        while (self._writing or self._scheduled) and self.error is None and len(self._backlog) >= HIGH_WATER:
            if not self._drained.wait(timeout):
                self._fail(TimeoutError("peer is not reading"))
                return

    def _wake(self) -> None:
        drained, self._drained = self._drained, Event()
        drained.set()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
            self._backlog = bytearray()
            self._on_error(exc)


class GoawayFilter:
    """Splits inbound bytes at frame boundaries and removes GOAWAY frames (see module doc).

    ``feed`` returns the bytes to hand to h2 and the ``(last_stream_id, error_code)`` of each
    GOAWAY removed. Malformed GOAWAYs (non-zero stream, bad length) are left for h2 to reject.
    """

    __slots__ = ("_skip", "_pass", "_head", "_goaway", "_goaway_left")

    def __init__(self, preface: int = 0) -> None:
        self._skip = preface
        self._pass = 0
        self._head = b""
        self._goaway: bytearray | None = None
        self._goaway_left = 0

    def feed(self, data: bytes) -> tuple[bytes | bytearray, list[tuple[int, int]]]:
        n = len(data)
        mv = memoryview(data)
        out: list[Any] = []
        found: list[tuple[int, int]] = []
        pos = seg = 0
        while pos < n:
            if self._skip or self._pass:
                if self._skip:
                    take = min(self._skip, n - pos)
                    self._skip -= take
                else:
                    take = min(self._pass, n - pos)
                    self._pass -= take
                pos += take
                continue
            if self._goaway is not None:
                take = min(self._goaway_left, n - pos)
                self._goaway += mv[pos:pos + take]
                self._goaway_left -= take
                pos += take
                seg = pos
                if not self._goaway_left:
                    payload, self._goaway = self._goaway, None
                    found.append((int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
                                  int.from_bytes(payload[4:8], "big")))
                continue
            need = 9 - len(self._head)
            if n - pos < need:  # frame header split across reads: hold it back
                if pos > seg:
                    out.append(mv[seg:pos])
                self._head += data[pos:n]
                pos = seg = n
                break
            held = self._head
            header = held + data[pos:pos + need] if held else data[pos:pos + 9]
            self._head = b""
            length = int.from_bytes(header[0:3], "big")
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            if header[3] == _GOAWAY and stream_id == 0 and 8 <= length <= _MAX_GOAWAY_PAYLOAD:
                if pos > seg:
                    out.append(mv[seg:pos])
                pos += need
                seg = pos
                self._goaway = bytearray()
                self._goaway_left = length
                continue
            if held:
                out.append(held)  # pos == seg == 0 here: held bytes only exist at a read's start
            pos += need
            self._pass = length
        if seg == 0 and pos == n and not out:
            return data, found
        if pos > seg:
            out.append(mv[seg:pos])
        return b"".join(out), found


def answer_of(handler: Callable[[Any], Any], request: Any, logger: Any, stream_id: int) -> tuple[Response, Any]:
    """``handler(request)`` as ``(response, token)`` for a stream's codec (HTTP/2 and HTTP/3):
    a bare ``Response`` gets no token; an ``HttpError`` (the client's fault) becomes its plain
    answer, any other exception a 500 logged with the stream; none reaches the codec."""
    try:
        answer = handler(request)
    except HttpError as exc:
        return plain_response(exc.status, f"{exc.status} {exc.reason}\n"), None
    except Exception:
        logger.exception("handler failed on stream %d", stream_id)
        return plain_response(500), None
    return answer if answer.__class__ is tuple else (answer, None)


def await_body(st: Any, closed: bool, timeout: float) -> bool:
    """For a request stream's body reader (HTTP/2 and HTTP/3) with no chunk at hand: False
    once the body ended, else wait up to ``timeout`` (or the body's own ``idle_timeout``) for
    ``st.data_ev`` (data, end or reset) and return True. A reset stream or a closed connection
    is 400; silence is 408."""
    if st.ended:
        return False
    if st.reset is not None or closed:
        raise HttpError(400, "the client reset the stream")
    body = st.body
    if body is not None and body.idle_timeout is not None:
        timeout = body.idle_timeout
    if st.data_ev is None:
        st.data_ev = Event()
    else:
        st.data_ev.clear()
    if not st.data_ev.wait(timeout):
        raise HttpError(408, "request body timed out")
    return True


def response_header_block(status: int, headers: Headers) -> HeaderList:
    """``:status`` plus the headers HTTP/2 may carry (no hop-by-hop, no ``connection`` tokens)."""
    drop = connection_tokens(headers.items_)
    out: HeaderList = [(b":status", b"%d" % status)]
    for k, v in headers.items_:
        if k in HOP_BY_HOP or k[:1] == b":" or k in drop:
            continue
        out.append((k, v))
    return out


def take_chunk(conn: h2.connection.H2Connection, out: H2Output, st: Any, closed: bool) -> bytes:
    """The next received DATA chunk of ``st`` (``chunks``/``buffered``); its flow-control
    credit goes back to the peer once it is handed on, unless the connection is closed."""
    chunk = st.chunks.popleft()
    st.buffered -= len(chunk)
    if not closed:
        conn.acknowledge_received_data(len(chunk), st.id)
        out.flush()
    return chunk


def write_data(conn: h2.connection.H2Connection, out: H2Output, st: Any, data: bytes, end: bool,
               timeout: float, check: Callable[[Any], None], room_timeout: float) -> bool:
    """Send ``data`` on stream ``st`` as DATA frames within the peer's flow-control windows.

    ``st`` needs ``id`` and ``win_ev`` (set by the reader on WINDOW_UPDATE / SETTINGS);
    ``check(st)`` raises when the stream is gone. Returns False if the window stayed shut for
    ``timeout`` seconds.
    """
    view = memoryview(data)
    total = len(view)
    off = 0
    while True:
        check(st)
        try:
            room = min(conn.local_flow_control_window(st.id), total - off)
            frame = conn.max_outbound_frame_size
            while room > 0:
                size = min(room, frame)
                conn.send_data(st.id, view[off:off + size] if size < total else data,
                               end_stream=end and off + size == total)
                off += size
                room -= size
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        out.flush()
        out.wait_room(room_timeout)
        if off >= total:
            return True
        st.win_ev.clear()
        try:
            shut = conn.local_flow_control_window(st.id) <= 0
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        if shut and not st.win_ev.wait(timeout):
            return False


class StreamGone(Exception):
    """The stream was reset or the connection is gone: stop working on it."""


