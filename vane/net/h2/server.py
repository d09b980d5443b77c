"""HTTP/2 server codec: one connection, its requests handed to the L7 handler.

``H2ServerConnection.serve`` reads in the connection greenlet and feeds ``ServerProtocol``
(framing, stream states, flow control, HPACK), which reports each new request, its body data
and its end here. Once a read is handled, each new stream runs ``handler(request)``: in a
greenlet of its own, or, when ``inline(request)`` says the handler cannot block and the
request has no body, right there in the reader. The ``Response`` goes back under the peer's
flow control; everything the streams queue during one turn of the read loop leaves in one
write (``H2Output``). Inbound flow control is credited only as the handler consumes the body,
so a slow consumer slows the client down instead of filling memory.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from gevent import get_hub, getcurrent
from gevent.event import Event

from vane.net.h2 import workers
from vane.net.h2.common import (
    RECV_SIZE,
    H2Output,
    StreamGone,
    answer_of,
    await_body,
    response_header_block,
)
from vane.net.h2.protocol import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ConnectionFailure,
    ServerProtocol,
    StreamClosed,
    StreamState,
)
from vane.net.h2.request import check_trailers, request_head
from vane.net.http.errors import HttpError, UpstreamError
from vane.net.http.message import Body, HeaderList, Request, Response, expects_continue, trailer_fields
from vane.net.sockets import set_nodelay
from vane.net.tunnel import linger

__all__ = ["H2Limits", "H2ServerConnection"]

log = logging.getLogger("vane.net.h2")


@dataclass(frozen=True)
class H2Limits:
    """Per-connection HTTP/2 limits (DESIGN.md §8 security floor supplies most of them)."""

    max_concurrent_streams: int = 100
    max_header_list_size: int = 65536
    max_header_count: int = 100        # fields per header block (431 on the stream past it)
    max_uri_bytes: int = 8192          # :path length (414 on the stream past it)
    header_timeout: float = 30.0       # until the first request has arrived
    idle_timeout: float = 300.0        # no open stream for this long: GOAWAY and close
    body_idle_timeout: float = 30.0    # a request body that does not move for this long
    send_timeout: float = 10.0         # a response the client grants no window for this long
    stream_buffer: int = 1 << 20       # request body bytes held per stream = its receive window
    connection_window: int = 4 << 20   # and per connection, shared by all its streams


_BODY_TO_COME = Body.empty()    # a placeholder, replaced by the stream's body at once


class _Wakeup(Exception):
    """Thrown into the reader while it waits in recv, to make it re-check its exit conditions."""


class _ServerStream(StreamState):
    """A request stream: its protocol state, its body as received, and its waiters."""

    __slots__ = ("length", "received", "chunks", "buffered", "ended", "reset", "trailers", "body",
                 "discard", "data_ev", "win_ev", "headers_sent", "continue_due")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        super().__init__(stream_id, send_window, recv_window)
        self.length: int | None = None   # the request's content-length, if announced
        self.received = 0                # body bytes received so far
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False               # the client finished its side, body complete
        self.reset: int | None = None    # error code once reset (by either side) or conn lost
        self.trailers: HeaderList | None = None
        self.body: Body | None = None
        self.discard = False             # the handler dropped the body: credit arrivals at once
        self.data_ev: Event | None = None  # body data / end / reset, for the consumer (made on demand)
        self.win_ev: Event | None = None   # flow-control window opened, for the sender (made on demand)
        self.headers_sent = False
        self.continue_due = False        # the client waits for 100 (Continue) before its body

    def wake(self) -> None:
        if self.data_ev is not None:
            self.data_ev.set()
        if self.win_ev is not None:
            self.win_ev.set()


class H2ServerConnection:
    """An HTTP/2 server connection over a stream (a ``TLSStream`` or an h2c socket).

    ``serve()`` runs in the connection greenlet and returns when the connection is finished
    (peer closed, error, idle, or drained after ``goaway()``); the caller closes the stream.
    ``handler(request)`` returns the ``Response`` (with ``finished``: ``(response, token)``,
    and ``finished(token, response, body_bytes_sent, aborted)`` is called once it went out).
    """

    def __init__(self, stream: Any, handler: Callable[[Request], Any],
                 limits: H2Limits = H2Limits(), scheme: str = "https",
                 spawn: Callable[..., Any] = workers.spawn,
                 finished: Callable[[Any, Response, int, bool], None] | None = None,
                 inline: Callable[[Request], bool] | None = None, preread: bytes = b"",
                 since: float = 0.0) -> None:
        self._stream = stream
        self._preread = preread     # read off the stream before this codec took it (the h2c preface)
        self._since = since         # when those bytes began to arrive (monotonic): the header timeout runs since
        set_nodelay(stream)
        self._handler = handler
        self._finished = finished
        self._inline = inline
        self._limits = limits
        self._scheme = scheme
        self._spawn = spawn
        self._proto = ServerProtocol(self, _ServerStream,
                                     max_concurrent_streams=limits.max_concurrent_streams,
                                     max_header_list_size=limits.max_header_list_size,
                                     stream_window=max(limits.stream_buffer, 65535),
                                     connection_window=limits.connection_window)
        self._streams: dict[int, Any] = self._proto.streams
        self._out = H2Output(self._proto, stream, self._on_write_error)
        self._tick = min(limits.header_timeout, limits.body_idle_timeout, limits.idle_timeout)
        self._reader: Any = None
        self._in_recv = False
        self._closed = False
        self._draining = False
        self._last_stream_id = 0
        self._peer_goaway = False
        self._seen_request = False
        self._last_active = time.monotonic()
        self._new: list[tuple[_ServerStream, Request]] = []  # parsed in this read, not started yet
        # rapid reset (CVE-2023-44487): streams the client cancels before their answer draw
        # on a budget that refills at half the stream limit per second
        self._reset_budget = float(limits.max_concurrent_streams)
        self._reset_refill = time.monotonic()
        self._failed = False    # closed with an error GOAWAY (abuse, protocol error)
        self.bytes_in = 0
        self.requests = 0

    @property
    def bytes_out(self) -> int:
        return self._out.bytes_out

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # -- connection loop ------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the connection until it is finished (see class doc)."""
        self._reader = getcurrent()
        limits = self._limits
        stream = self._stream
        out = self._out
        tick = self._tick
        started = self._since or time.monotonic()
        wait = min(tick, max(started + limits.header_timeout - time.monotonic(), 0.001))
        stream.settimeout(wait)     # shorter than a tick when the header timeout ends sooner
        self._proto.initiate()
        out.flush()
        graceful = False
        try:
            preread, self._preread = self._preread, b""
            if preread and not self._take(preread):
                return
            while not self._closed:
                if (self._draining or self._peer_goaway) and not self._streams:
                    graceful = True
                    break
                try:
                    self._in_recv = True
                    data = stream.recv(RECV_SIZE)
                except _Wakeup:
                    continue
                except TimeoutError:
                    now = time.monotonic()
                    if not self._seen_request:
                        left = started + limits.header_timeout - now
                        if left <= 0:
                            log.debug("h2: no request within %.0fs, closing", limits.header_timeout)
                            break
                        if left < wait:
                            wait = left
                            stream.settimeout(wait)
                        continue
                    if not self._streams and now - self._last_active >= limits.idle_timeout:
                        graceful = True
                        break
                    continue
                except OSError:
                    break
                finally:
                    self._in_recv = False
                if not data or not self._take(data):
                    break
                out.wait_room(self._tick)
        finally:
            self._finish(graceful)

    def _take(self, data: bytes) -> bool:
        """Handle bytes from the client; what they caused leaves in one write. False: the
        connection failed (a protocol error, GOAWAY sent)."""
        self.bytes_in += len(data)
        out = self._out
        out.held = True
        try:
            ok = self._receive(data)
        finally:
            out.held = False
        out.flush()
        return ok

    def _receive(self, data: bytes) -> bool:
        try:
            self._proto.receive(data)
        except ConnectionFailure as exc:
            log.debug("h2 protocol error from client: %s", exc.reason)
            self._proto.goaway(exc.code)
            self._out.seal()
            self._failed = True
            return False
        if self._new:
            self._last_active = time.monotonic()
            new, self._new = self._new, []
            inline = self._inline
            for st, request in new:     # a stream reset in the same read never starts
                if st.reset is not None or self._closed:
                    self._proto.release(st)
                elif inline is not None and st.ended and inline(request):
                    self._run_inline(st, request)
                else:
                    self._spawn(self._run, st, request)
        return not self._closed

    def goaway(self) -> None:
        """Graceful drain: send GOAWAY, let in-flight streams finish, then ``serve`` returns."""
        if self._draining or self._closed:
            return
        self._draining = True
        self._last_stream_id = self._proto.highest_inbound
        self._proto.goaway()
        self._out.flush()
        if not self._streams:
            self._wake_reader()

    def _finish(self, graceful: bool) -> None:
        self._closed = True
        if graceful and self._out.error is None:
            if not self._draining:
                self._draining = True
                self._proto.goaway()
            self._out.flush()   # with the last answers, whose writes may still be scheduled
            self._linger()
        elif self._failed and self._out.error is None:
            self._linger()      # the GOAWAY must arrive before the close resets the connection
        for st in list(self._streams.values()):
            if st.reset is None:
                st.reset = CANCEL
            st.wake()
        self._streams.clear()

    def _linger(self) -> None:
        """Half-close and read briefly, so the peer reads our last frames before any RST."""
        linger(self._stream, 1.0)

    def _on_write_error(self, exc: BaseException) -> None:
        log.debug("h2 write failed: %r", exc)
        self._closed = True
        for st in self._streams.values():
            st.wake()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and self._reader is not getcurrent():
            get_hub().loop.run_callback(self._interrupt_recv)

    def _interrupt_recv(self) -> None:
        # Runs in the hub: the reader is suspended, so if it is inside recv it is waiting on
        # the socket and the exception lands there (the same way gevent.Timeout works).
        if self._in_recv and self._reader is not None:
            self._reader.throw(_Wakeup())

    # -- what the protocol reports (in the reader) ----------------------------------------------

    def on_request(self, st: _ServerStream, fields: HeaderList | None, ended: bool) -> None:
        sid = st.id
        if not self._seen_request:
            self._seen_request = True
            self._stream.settimeout(self._tick)  # it may have been shorter until now (``serve``)
        proto = self._proto
        if (self._draining and sid > self._last_stream_id) or self._closed \
                or len(self._streams) > self._limits.max_concurrent_streams:
            proto.reset(st, REFUSED_STREAM)
            proto.release(st)
            if not self._draining:
                self._count_early_reset()   # a client past the advertised limit
            return
        if fields is None:
            self._reject(st, HttpError(431, "header block too large"), ended)
            return
        try:
            request, length = request_head(fields, self._scheme, self._limits.max_header_count,
                                           Body.empty() if ended else _BODY_TO_COME,
                                           self._limits.max_uri_bytes)
        except HttpError as exc:
            self._reject(st, exc, ended)
            return
        request.stream_id = sid
        st.length = length
        if ended:
            if length:
                self._reject(st, HttpError(400, "content-length without a body"), True)
                return
            st.ended = True
            body = request.body
        else:
            st.continue_due = expects_continue(request.headers.getb(b"expect"))
            body = Body(self._body_chunks(st), length, close=lambda: self._discard(st))
            request.body = body
        st.body = body
        self.requests += 1
        self._new.append((st, request))

    def on_data(self, st: _ServerStream, data: bytes) -> None:
        size = len(data)
        if st.discard:
            self._proto.acknowledge(st, size)
            return
        st.received += size
        if st.length is not None and st.received > st.length:
            self._proto.acknowledge(st, size)
            self._malformed(st, "request body longer than its content-length")
            return
        st.chunks.append(data)
        st.buffered += size
        if st.data_ev is not None:
            st.data_ev.set()

    def on_trailers(self, st: _ServerStream, fields: HeaderList) -> None:
        try:
            check_trailers(fields, self._limits.max_header_count)
        except HttpError as exc:
            self._malformed(st, exc.reason)
            return
        st.trailers = fields
        if st.body is not None:
            st.body.trailers = fields

    def on_end(self, st: _ServerStream) -> None:
        if st.reset is not None:
            return
        if st.length is not None and st.received != st.length:
            self._malformed(st, "request body shorter than its content-length")
            return
        st.ended = True
        if st.data_ev is not None:
            st.data_ev.set()

    def on_reset(self, st: _ServerStream, code: int, remote: bool) -> None:
        st.reset = code if remote or st.reset is None else st.reset
        st.wake()
        if remote and not st.headers_sent:
            self._count_early_reset()

    def on_window(self, st: _ServerStream | None) -> None:
        if st is not None:
            if st.win_ev is not None:
                st.win_ev.set()
            return
        for each in self._streams.values():
            if each.win_ev is not None:
                each.win_ev.set()

    def on_goaway(self, last_stream_id: int, code: int) -> None:
        self._peer_goaway = True

    def _reject(self, st: _ServerStream, exc: HttpError, ended: bool) -> None:
        """Answer a malformed request on its own stream (RFC 9113 §8.1.1); the connection
        and its other streams go on."""
        proto = self._proto
        data = f"{exc.status} {exc.reason}\n".encode()
        proto.send_headers(st, [(b":status", b"%d" % exc.status),
                                (b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", b"%d" % len(data))], False)
        if proto.window(st) >= len(data):
            proto.send_data(st, data, True)
            if not ended:
                proto.reset(st, NO_ERROR)
        else:                                   # no window for the answer
            proto.reset(st, PROTOCOL_ERROR)
        proto.release(st)
        log.debug("h2 stream %d: malformed request (%s)", st.id, exc)

    def _malformed(self, st: _ServerStream, reason: str) -> None:
        """A stream's request turned out malformed after its head (body length, trailers)."""
        log.debug("h2 stream %d: malformed request (%s)", st.id, reason)
        if st.reset is None:
            st.reset = PROTOCOL_ERROR
        st.wake()
        self._proto.reset(st, PROTOCOL_ERROR)

    def _count_early_reset(self) -> None:
        limit = self._limits.max_concurrent_streams
        now = time.monotonic()
        budget = min(float(limit), self._reset_budget + (now - self._reset_refill) * limit / 2.0)
        self._reset_refill = now
        self._reset_budget = budget - 1.0
        if self._reset_budget < 0 and not self._closed:
            log.info("h2: client cancels streams faster than they can be served; closing the connection")
            self._proto.goaway(ENHANCE_YOUR_CALM)
            self._out.seal()
            self._failed = True
            self._closed = True
            for each in self._streams.values():
                if each.reset is None:
                    each.reset = CANCEL
                each.wake()

    # -- request body ---------------------------------------------------------------------------

    def _body_chunks(self, st: _ServerStream) -> Iterator[bytes]:
        timeout = self._limits.body_idle_timeout
        proto = self._proto
        out = self._out
        if st.continue_due:
            self._send_continue(st)
        while True:
            if st.chunks:
                chunk = st.chunks.popleft()
                st.buffered -= len(chunk)
                if not self._closed:    # hand the credit back once the chunk is passed on
                    proto.acknowledge(st, len(chunk))
                    out.flush_soon()
                yield chunk
            elif not await_body(st, self._closed, timeout):
                return

    def _send_continue(self, st: _ServerStream) -> None:
        """The flow reads the body the client holds back for ``Expect: 100-continue``: ask
        for it (RFC 9110 §10.1.1), unless some of it came anyway."""
        st.continue_due = False
        if st.chunks or st.ended or st.reset is not None or self._closed or st.headers_sent:
            return
        try:
            self._proto.send_headers(st, [(b":status", b"100")], False)
        except StreamClosed:
            return
        self._out.flush_soon()

    def _discard(self, st: _ServerStream) -> None:
        if st.discard:
            return
        st.discard = True
        pending, st.buffered = st.buffered, 0
        st.chunks.clear()
        if pending and not self._closed:
            self._proto.acknowledge(st, pending)
            self._out.flush_soon()

    # -- handler and response -------------------------------------------------------------------

    def _run(self, st: _ServerStream, request: Request) -> None:
        """A stream's greenlet: the handler, then the answer."""
        response, token = answer_of(self._handler, request, log, st.id)
        self._deliver(st, request, response, token)

    def _run_inline(self, st: _ServerStream, request: Request) -> None:
        """A stream whose handler cannot block, run by the reader; the answer is queued at
        once when it can go out without waiting for window, else a greenlet sends it."""
        response, token = answer_of(self._handler, request, log, st.id)
        body = response.body
        if body.is_buffered and (body.length or 0) <= self._proto.window(st):
            self._deliver(st, request, response, token)
        else:
            self._spawn(self._deliver, st, request, response, token)

    def _deliver(self, st: _ServerStream, request: Request, response: Response, token: Any) -> None:
        sent = 0
        aborted = True
        try:
            sent = self._respond(st, request, response)
            aborted = False
        except StreamGone:
            pass
        except UpstreamError as exc:    # the backend broke off mid-body (the proxy logged it)
            log.debug("h2 stream %d: response aborted: %s", st.id, exc)
            self._reset(st, INTERNAL_ERROR)
        except Exception:
            log.exception("h2 response failed on stream %d", st.id)
            self._reset(st, INTERNAL_ERROR)
        finally:
            request.body.close()
            response.body.close()
            if self._finished is not None:
                self._finished(token, response, sent, aborted)
            if not st.ended and st.reset is None and not self._closed:
                # RFC 9113 §8.1: the response is complete; the rest of the request is not needed.
                self._reset(st, NO_ERROR)
            self._proto.release(st)
            self._last_active = time.monotonic()
            if (self._draining or self._peer_goaway) and not self._streams:
                self._wake_reader()
            self._out.flush_soon()

    def _respond(self, st: _ServerStream, request: Request, response: Response) -> int:
        """Send the answer on the stream; the body bytes sent."""
        status = response.status
        body = response.body
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        headers = response_header_block(status, response.headers)
        if not no_body and body.length is not None and response.headers.getb(b"content-length") is None:
            headers.append((b"content-length", b"%d" % body.length))
        if no_body:
            body.close()
            self._send_headers(st, headers, True)
            return 0
        if body.is_buffered and not body.trailers:
            data = body.read_all(body.length or 0)
            self._send_headers(st, headers, not data)
            if data:
                if len(data) <= self._proto.window(st):
                    self._proto.send_data(st, data, True)
                else:
                    self._send_data(st, data, True)
            return len(data)
        self._send_headers(st, headers, False)
        self._out.flush_soon()          # the head goes out while the body is awaited
        sent = 0
        for chunk in body:
            self._send_data(st, chunk, False)
            sent += len(chunk)
        trailers = body.trailers
        self._check(st)
        try:
            if trailers:
                self._encode_headers(st, trailer_fields(trailers), True)
            else:
                self._proto.end_stream(st)
        except StreamClosed:
            raise StreamGone from None
        return sent

    def _check(self, st: _ServerStream) -> None:
        if st.reset is not None or self._closed or self._out.error is not None:
            raise StreamGone

    def _send_headers(self, st: _ServerStream, headers: HeaderList, end: bool) -> None:
        self._check(st)
        try:
            self._encode_headers(st, headers, end)
        except StreamClosed:
            raise StreamGone from None
        st.headers_sent = True

    def _encode_headers(self, st: _ServerStream, headers: HeaderList, end: bool) -> None:
        try:
            self._proto.send_headers(st, headers, end)
        except StreamClosed:
            raise
        except Exception as exc:  # noqa: BLE001 - a field HPACK cannot carry
            self._encoding_failed(st, exc)

    def _send_data(self, st: _ServerStream, data: bytes, end: bool) -> None:
        """Send ``data`` as DATA frames as the peer's windows allow, waiting for window
        updates (at most ``send_timeout`` each) and for the writer to keep up."""
        proto = self._proto
        out = self._out
        timeout = self._limits.send_timeout
        view = memoryview(data)
        total = len(view)
        off = 0
        while True:
            self._check(st)
            room = min(proto.window(st), total - off)
            if room > 0 or (end and off == total):
                try:
                    proto.send_data(st, data if room == total else view[off:off + room],
                                    end and off + room == total)
                except StreamClosed:
                    raise StreamGone from None
                off += room
            out.flush()
            out.wait_room(self._tick)
            if off >= total:
                return
            if st.win_ev is None:
                st.win_ev = Event()
            else:
                st.win_ev.clear()
            if proto.window(st) <= 0 and not st.win_ev.wait(timeout):
                log.debug("h2 stream %d: peer window stayed closed for %.0fs", st.id, timeout)
                self._reset(st, CANCEL)
                raise StreamGone

    def _encoding_failed(self, st: _ServerStream, exc: Exception) -> None:
        """A header block could not be encoded, and HPACK state may be half-updated: the
        client's compression context can no longer be trusted, so end the whole connection."""
        log.error("h2 stream %d: invalid response header block (%s); closing the connection", st.id, exc)
        if not self._closed:
            self._proto.goaway(INTERNAL_ERROR)
            self._out.seal()
            self._closed = True
            for each in self._streams.values():
                if each.reset is None:
                    each.reset = CANCEL
                each.wake()
            self._wake_reader()
        raise StreamGone

    def _reset(self, st: _ServerStream, code: int) -> None:
        if st.reset is None:
            st.reset = code
        if self._closed or self._out.error is not None:
            return
        self._proto.reset(st, code)
        self._out.flush_soon()
