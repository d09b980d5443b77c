"""HTTP/3 server (RFC 9114) over one ``QuicSession``: its requests handed to the L7 handler.

The driver greenlet runs the session and turns each request stream's HEADERS into a
``Request`` (the HTTP/2 rules of ``vane.net.h2.request``, ``version`` ``3``); each request
runs ``handler(request)`` in a greenlet of its own, whose ``Response`` goes back on the
stream under QUIC flow control. The request body is a bounded per-stream buffer credited back
to the client as the handler consumes it.

Header sections are bounded like HTTP/1.1's and HTTP/2's (``max_header_bytes``, 431): once
decoded, and while a HEADERS frame is still arriving (aioquic would buffer a frame of any size
whole), by counting what a stream carried besides DATA payload. The QPACK dynamic table is off
(capacity 0), so a small frame cannot decode into a large section; a control-stream frame past
the same size ends the connection (``H3_EXCESSIVE_LOAD``). Drain: new streams are refused
(``H3_REQUEST_REJECTED``), open ones finish, then the connection closes with ``H3_NO_ERROR``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Iterator

import gevent
import pylsqpack
from aioquic.h3.connection import ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic import events
from gevent.event import Event

from vane.net.h2.common import answer_of, await_body, response_header_block
from vane.net.h2.request import check_trailers, request_head
from vane.net.http.errors import HttpError, UpstreamError
from vane.net.http.message import Body, HeaderList, Request, Response, expects_continue, trailer_fields

from .session import SEND_BACKLOG, QuicSession

__all__ = ["H3Limits", "H3Server"]

log = logging.getLogger("vane.net.h3")

_BODY_TO_COME = Body.empty()


# Besides DATA payload a request stream carries its HEADERS, maybe trailers, and a few bytes of
# framing per frame: past this much more than ``max_header_bytes`` (per DATA frame seen, plus
# a few bytes of field-line prefix per allowed field) it is refused.
_FRAME_OVERHEAD = 16
_NEVER_CREDIT = 1 << 62     # ``held`` of a refused stream: its flow-control credit is never raised


class H3Limits:
    """Per-connection HTTP/3 limits (from the security floor)."""

    __slots__ = ("max_header_count", "body_idle_timeout", "send_timeout", "max_uri_bytes", "max_header_bytes")

    def __init__(self, max_header_count: int = 100, body_idle_timeout: float = 30.0,
                 send_timeout: float = 10.0, max_uri_bytes: int = 8192, max_header_bytes: int = 65536) -> None:
        self.max_header_count = max_header_count
        self.body_idle_timeout = body_idle_timeout
        self.send_timeout = send_timeout
        self.max_uri_bytes = max_uri_bytes
        self.max_header_bytes = max_header_bytes


class _H3Connection(H3Connection):
    """aioquic's HTTP/3 layer with the QPACK dynamic table off (SETTINGS capacity 0): every
    field line is a literal or a static-table entry, so decoding is bounded by the frame."""

    def _init_connection(self) -> None:
        self._max_table_capacity = 0
        self._blocked_streams = 0
        self._decoder = pylsqpack.Decoder(0, 0)
        super()._init_connection()


def _section_size(headers: HeaderList) -> int:
    """A decoded header section's size as HTTP/1.1 counts it: names, values, ": " and CRLF."""
    size = 4 * len(headers)
    for k, v in headers:
        size += len(k) + len(v)
    return size


class _Gone(Exception):
    """The stream or the connection went away while the answer was being sent."""


class _Stream:
    """A request stream: its body as received, its end or reset, and its waiter."""

    __slots__ = ("id", "chunks", "ended", "reset", "data_ev", "length", "received", "body", "discard",
                 "continue_due", "answered")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.chunks: deque[bytes] = deque()
        self.ended = False
        self.reset: int | None = None
        self.data_ev: Event | None = None
        self.length: int | None = None
        self.received = 0
        self.body: Body | None = None
        self.discard = False
        self.continue_due = False       # the client waits for 100 (Continue) before its body
        self.answered = False           # the response's HEADERS went out

    def wake(self) -> None:
        if self.data_ev is not None:
            self.data_ev.set()


class H3Server:
    """Owns the HTTP/3 layer of one QUIC connection: request streams, their bodies both ways,
    and the hand-off to ``handler`` (``(response, token)``; ``finished(token, response,
    body_bytes_sent, aborted)`` once the answer went out)."""

    def __init__(self, session: QuicSession, handler: Callable[[Request], Any],
                 finished: Callable[[Any, Response, int, bool], None], limits: H3Limits = H3Limits()) -> None:
        self.session = session
        self.h3 = _H3Connection(session.quic)
        self._handler = handler
        self._finished = finished
        self._limits = limits
        self._streams: dict[int, _Stream] = {}
        # request stream id -> bytes it carried that were not DATA payload, minus the allowance
        # of the DATA frames seen (open streams only: bounded by the QUIC stream limit)
        self._framing: dict[int, int] = {}
        self._framing_limit = limits.max_header_bytes + _FRAME_OVERHEAD * (limits.max_header_count + 4)
        self._refused: set[int] = set()         # streams whose further data is dropped unread
        self._draining = False
        self._greenlets: set[Any] = set()
        self.requests = 0

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def serve(self) -> None:
        """Run until the connection ends (client close, idle timeout, or drained)."""
        session = self.session
        try:
            session.run(self._on_event, self._done)
            if self._draining and not session.closed:
                session.close(ErrorCode.H3_NO_ERROR)
        finally:
            for st in self._streams.values():
                if st.reset is None:
                    st.reset = ErrorCode.H3_REQUEST_CANCELLED
                st.wake()
            if self._greenlets:
                gevent.joinall(list(self._greenlets), timeout=1.0)

    def goaway(self) -> None:
        """Graceful drain: refuse new requests, let open ones finish, then close."""
        self._draining = True
        if not self._streams:
            try:
                self.session.udp.queue.put_nowait(b"")     # the driver re-checks ``_done``
            except Exception:  # noqa: BLE001 - full: it wakes anyway
                pass

    def _done(self) -> bool:
        return self._draining and not self._streams

    # -- events (in the driver) ------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        cls = event.__class__
        sid = -1
        if cls is events.StreamDataReceived and event.stream_id % 4 == 0:
            sid = event.stream_id
            if sid in self._refused:
                if event.end_stream:
                    self._forget(sid)
                return
            self._framing[sid] = self._framing.get(sid, 0) + len(event.data)
        elif cls is events.StreamReset:
            if event.stream_id in self._refused:   # answered already: aioquic must not reset it
                self._forget(event.stream_id)
                return
            st = self._streams.get(event.stream_id)
            if st is not None:
                st.reset = event.error_code
                st.wake()
            self._framing.pop(event.stream_id, None)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                self._on_headers(h3_event)
            elif isinstance(h3_event, DataReceived):
                self._on_data(h3_event)
        if sid >= 0:
            framing = self._framing.get(sid)
            if framing is not None:
                if framing > self._framing_limit:
                    self._refuse(sid)       # aioquic holds at most this one event's data of it
                elif event.end_stream and sid not in self._streams:
                    self._framing.pop(sid, None)
        elif cls is events.StreamDataReceived and event.stream_id % 4 == 2:
            # the client's control stream: aioquic waits for a whole SETTINGS (or MAX_PUSH_ID)
            # frame however long it says it is; past the header limit the connection ends
            uni = self.h3._stream.get(event.stream_id)
            if uni is not None and len(uni.buffer) > self._framing_limit:
                log.debug("h3: a frame of %d bytes and more on the client's stream %d", len(uni.buffer), event.stream_id)
                uni.buffer = b""
                self.session.close(ErrorCode.H3_EXCESSIVE_LOAD, "frame too large")

    def _on_headers(self, ev: HeadersReceived) -> None:
        sid = ev.stream_id
        st = self._streams.get(sid)
        too_large = _section_size(ev.headers) > self._limits.max_header_bytes
        if st is not None:                      # trailers
            try:
                if too_large:
                    raise HttpError(431, "trailer section too large")
                check_trailers(ev.headers, self._limits.max_header_count)
            except HttpError:
                self._abort(st, ErrorCode.H3_MESSAGE_ERROR)
                return
            if st.body is not None:
                st.body.trailers = ev.headers
            if ev.stream_ended:
                self._end(st)
            return
        if sid % 4 != 0:
            return
        st = _Stream(sid)
        if self._draining or self.session.closed:
            quic = self.session.quic
            quic.reset_stream(sid, ErrorCode.H3_REQUEST_REJECTED)
            quic.stop_stream(sid, ErrorCode.H3_REQUEST_REJECTED)
            return
        try:
            if too_large:
                raise HttpError(431, "header section too large")
            request, length = request_head(ev.headers, "https", self._limits.max_header_count,
                                           Body.empty() if ev.stream_ended else _BODY_TO_COME,
                                           self._limits.max_uri_bytes)
        except HttpError as exc:
            self._reject(sid, exc)
            return
        request.version = "3"
        request.stream_id = sid
        st.length = length
        if ev.stream_ended:
            st.ended = True
        else:
            st.continue_due = expects_continue(request.headers.getb(b"expect"))
            request.body = Body(self._body_chunks(st), length, close=lambda: self._discard(st))
        st.body = request.body
        self._streams[sid] = st
        self.requests += 1
        g = gevent.spawn(self._run, st, request)
        self._greenlets.add(g)
        g.link(self._greenlets.discard)

    def _on_data(self, ev: DataReceived) -> None:
        sid = ev.stream_id
        framing = self._framing.get(sid)
        if framing is not None:
            # the allowance of many DATA frames does not add up past one more header section
            self._framing[sid] = max(framing - len(ev.data) - _FRAME_OVERHEAD, -self._limits.max_header_bytes)
        st = self._streams.get(sid)
        if st is None:
            return
        if ev.data and not st.discard:
            st.received += len(ev.data)
            if st.length is not None and st.received > st.length:
                self._abort(st, ErrorCode.H3_MESSAGE_ERROR)
                return
            st.chunks.append(ev.data)
            held = self.session.held
            held[st.id] = held.get(st.id, 0) + len(ev.data)
        if ev.stream_ended:
            self._end(st)
        st.wake()

    def _end(self, st: _Stream) -> None:
        if st.length is not None and st.received != st.length:
            self._abort(st, ErrorCode.H3_MESSAGE_ERROR)
            return
        st.ended = True
        st.wake()

    def _reject(self, sid: int, exc: HttpError) -> None:
        log.debug("h3 stream %d: malformed request (%s)", sid, exc)
        data = f"{exc.status} {exc.reason}\n".encode()
        self.h3.send_headers(sid, [(b":status", b"%d" % exc.status), (b"content-type", b"text/plain; charset=utf-8"),
                                   (b"content-length", b"%d" % len(data))])
        self.h3.send_data(sid, data, True)
        self._framing.pop(sid, None)

    def _refuse(self, sid: int) -> None:
        """A stream carrying more than a header section may: 431 when its request has not
        started (else reset it), ask the client to stop, and drop what it still sends."""
        st = self._streams.get(sid)
        self._framing.pop(sid, None)
        self._refused.add(sid)
        self.session.held[sid] = _NEVER_CREDIT
        if st is not None:
            self._abort(st, ErrorCode.H3_EXCESSIVE_LOAD)
        else:
            try:
                self._reject(sid, HttpError(431, "header section too large"))
                self.session.quic.stop_stream(sid, ErrorCode.H3_NO_ERROR)
            except Exception:  # noqa: BLE001 - the stream is already gone on one side
                pass
        # aioquic's record of the stream holds the partial frame and, since its further data
        # never reaches aioquic, would never see the stream end: free it now
        self.h3._stream.pop(sid, None)

    def _forget(self, sid: int) -> None:
        self._framing.pop(sid, None)
        if sid in self._refused:
            self._refused.discard(sid)
            self.session.held.pop(sid, None)

    def _abort(self, st: _Stream, code: int) -> None:
        if st.reset is None:
            st.reset = code
        st.wake()
        quic = self.session.quic
        try:
            quic.reset_stream(st.id, code)
            quic.stop_stream(st.id, code)
        except Exception:  # noqa: BLE001 - the stream is already gone on one side
            pass

    # -- request body (in the handler's greenlet) ------------------------------------------------

    def _credit(self, st: _Stream, size: int) -> None:
        held = self.session.held
        left = held.get(st.id, 0) - size
        if left > 0:
            held[st.id] = left
        else:
            held.pop(st.id, None)

    def _body_chunks(self, st: _Stream) -> Iterator[bytes]:
        timeout = self._limits.body_idle_timeout
        session = self.session
        if st.continue_due:
            self._send_continue(st)
        while True:
            if st.chunks:
                chunk = st.chunks.popleft()
                self._credit(st, len(chunk))
                if not session.closed:
                    session.transmit()      # a raised MAX_STREAM_DATA goes out
                yield chunk
            elif not await_body(st, session.closed, timeout):
                return

    def _send_continue(self, st: _Stream) -> None:
        """The flow reads the body the client holds back for ``Expect: 100-continue``: ask
        for it (RFC 9110 §10.1.1; an interim response, RFC 9114 §4.1), unless some came anyway."""
        st.continue_due = False
        if st.chunks or st.ended or st.reset is not None or st.answered or self.session.closed:
            return
        self.h3.send_headers(st.id, [(b":status", b"100")])
        self.session.transmit()

    def _discard(self, st: _Stream) -> None:
        st.discard = True
        st.chunks.clear()
        self.session.held.pop(st.id, None)

    # -- answer (in the handler's greenlet) ------------------------------------------------------

    def _run(self, st: _Stream, request: Request) -> None:
        response, token = answer_of(self._handler, request, log, st.id)
        sent = 0
        aborted = True
        try:
            sent = self._respond(st, request, response)
            aborted = False
        except _Gone:
            pass
        except UpstreamError as exc:
            log.debug("h3 stream %d: response aborted: %s", st.id, exc)
            self._abort(st, ErrorCode.H3_INTERNAL_ERROR)
        except Exception:
            log.exception("h3 response failed on stream %d", st.id)
            self._abort(st, ErrorCode.H3_INTERNAL_ERROR)
        finally:
            request.body.close()
            response.body.close()
            self._finished(token, response, sent, aborted)
            pending = aborted       # frames the answer left unsent (a reset, STOP_SENDING)
            if not st.ended and st.reset is None and not self.session.closed:
                try:    # RFC 9114 §4.1: the answer is complete; the rest of the request is not needed
                    self.session.quic.stop_stream(st.id, ErrorCode.H3_NO_ERROR)
                    pending = True
                except Exception:  # noqa: BLE001
                    pass
            self._streams.pop(st.id, None)
            self._framing.pop(st.id, None)
            if st.id not in self._refused:
                self.session.held.pop(st.id, None)
            if pending and not self.session.closed:
                self.session.transmit()
            if self._draining and not self._streams:
                self.goaway()

    def _check(self, st: _Stream) -> None:
        if st.reset is not None or self.session.closed:
            raise _Gone

    def _respond(self, st: _Stream, request: Request, response: Response) -> int:
        status = response.status
        body = response.body
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        headers = response_header_block(status, response.headers)
        if not no_body and body.length is not None and response.headers.getb(b"content-length") is None:
            headers.append((b"content-length", b"%d" % body.length))
        self._check(st)
        h3 = self.h3
        st.answered = True
        if no_body:
            body.close()
            h3.send_headers(st.id, headers, end_stream=True)
            return 0
        h3.send_headers(st.id, headers, end_stream=False)
        if body.is_buffered and not body.trailers:     # the whole answer is at hand: one flight
            data = body.read_all(body.length or 0)
            h3.send_data(st.id, data, end_stream=True)
            self.session.transmit()
            self._acknowledged(st)
            return len(data)
        self.session.transmit()
        sent = 0
        for chunk in body:
            self._send(st, chunk)
            sent += len(chunk)
        self._check(st)
        trailers: HeaderList | None = body.trailers
        if trailers:
            h3.send_headers(st.id, trailer_fields(trailers), end_stream=True)
        else:
            h3.send_data(st.id, b"", end_stream=True)
        self.session.transmit()
        self._acknowledged(st)
        return sent

    def _acknowledged(self, st: _Stream) -> None:
        """Wait until the client acknowledged the whole answer (a drain closes the connection
        once no stream is open, and a close drops what is still unacknowledged)."""
        session = self.session
        deadline = time.monotonic() + self._limits.send_timeout
        while session.backlog(st.id) > 0 and not session.closed and st.reset is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Gone
            session.wait_progress(left)

    def _send(self, st: _Stream, chunk: bytes) -> None:
        session = self.session
        timeout = self._limits.send_timeout
        waited_since = time.monotonic()
        while session.backlog(st.id) > SEND_BACKLOG:
            self._check(st)
            if not session.wait_progress(_remaining(waited_since, timeout)):
                if session.backlog(st.id) > SEND_BACKLOG and time.monotonic() - waited_since >= timeout:
                    log.debug("h3 stream %d: the client acknowledged nothing for %.0fs", st.id, timeout)
                    self._abort(st, ErrorCode.H3_REQUEST_CANCELLED)
                    raise _Gone
            else:
                waited_since = time.monotonic()
        self._check(st)
        if chunk:
            self.h3.send_data(st.id, chunk, end_stream=False)
            session.transmit()


def _remaining(since: float, timeout: float) -> float:
    return max(0.01, since + timeout - time.monotonic())
