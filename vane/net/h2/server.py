"""HTTP/2 server codec on h2: one connection, a greenlet per stream running the L7 handler.

``H2ServerConnection.serve`` reads frames in the connection greenlet and turns each new
stream into a ``Request`` whose body streams the DATA frames; ``handler(request)`` runs in its
own greenlet and its ``Response`` is written back under the peer's flow control. Inbound flow
control is credited only as the handler consumes the body, so a slow consumer slows the
client down instead of filling memory.
The plumbing shared with the client codec is in ``h2common``.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gevent
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
from gevent import get_hub, getcurrent
from gevent.event import Event
from h2.errors import ErrorCodes

from vane.net.h2.common import (
    _PREFACE_LEN,
    RECV_SIZE,
    GoawayFilter,
    H2Output,
    StreamGone,
    goaway_frame,
    response_header_block,
    take_chunk,
    trailer_block,
    write_data,
)
from vane.net.h2.request import check_trailers, request_head
from vane.net.http.errors import HttpError, UpstreamError
from vane.net.http.message import Body, HeaderList, Request, Response
from vane.net.http.status import plain_response
from vane.net.sockets import set_nodelay
from vane.net.tunnel import linger

__all__ = ["H2Limits", "H2ServerConnection"]

log = logging.getLogger("vane.net.h2")

_SETTING = h2.settings.SettingCodes


@dataclass(frozen=True)
class H2Limits:
    """Per-connection HTTP/2 limits (DESIGN.md §8 security floor supplies most of them)."""

    max_concurrent_streams: int = 100
    max_header_list_size: int = 65536
    max_header_count: int = 100        # fields per header block (431 on the stream past it)
    header_timeout: float = 30.0       # until the first request has arrived
    idle_timeout: float = 300.0        # no open stream for this long: GOAWAY and close
    body_idle_timeout: float = 30.0    # a request body that does not move for this long
    send_timeout: float = 10.0         # a response the client grants no window for this long
    stream_buffer: int = 65536         # per-stream inbound buffer = advertised stream window
    connection_window: int = 1 << 20   # inbound window shared by all streams of the connection


class _LenientStream(h2.stream.H2Stream):
    """h2's stream with its content-length checks left to ``request_head`` and ``_on_data``:
    h2 raises those as connection errors, RFC 9113 §8.1.1 makes them stream errors."""

    def _initialize_content_length(self, headers: Any) -> None:
        self._expected_content_length = None

    def _track_content_length(self, length: int, end_stream: bool) -> None:
        pass


class _ServerH2(h2.connection.H2Connection):
    """The h2 connection state machine with per-stream (not per-connection) request checks."""

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> h2.stream.H2Stream:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream.__class__ = _LenientStream
        return stream


class _Wakeup(Exception):
    """Thrown into the reader while it waits in recv, to make it re-check its exit conditions."""


# ---------------------------------------------------------------------------------------------
# Server

class _ServerStream:
    __slots__ = ("id", "chunks", "buffered", "ended", "reset", "trailers", "body", "discard",
                 "data_ev", "win_ev", "headers_sent", "length", "received")

    def __init__(self, stream_id: int, length: int | None = None) -> None:
        self.id = stream_id
        self.length = length             # the request's content-length, if announced
        self.received = 0                # body bytes received so far
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False               # the client finished its side
        self.reset: int | None = None    # error code once reset (by either side) or conn lost
        self.trailers: HeaderList | None = None
        self.body: Body | None = None
        self.discard = False             # the handler dropped the body: credit arrivals at once
        self.data_ev = Event()           # body data / end / reset for the consumer
        self.win_ev = Event()            # flow-control window opened for the sender
        self.headers_sent = False


class H2ServerConnection:
    """An HTTP/2 server connection over a stream (a ``TLSStream`` or an h2c socket).

    ``serve()`` runs in the connection greenlet and returns when the connection is finished
    (peer closed, error, idle, or drained after ``goaway()``); the caller closes the stream.
    """

    def __init__(self, stream: Any, handler: Callable[[Request], Any],
                 limits: H2Limits = H2Limits(), scheme: str = "https",
                 spawn: Callable[..., Any] = gevent.spawn,
                 finished: Callable[[Any, Response, int, bool], None] | None = None) -> None:
        self._stream = stream
        set_nodelay(stream)
        self._handler = handler
        self._finished = finished
        self._limits = limits
        self._scheme = scheme
        self._spawn = spawn
        window = max(limits.stream_buffer, 65535)
        # Outbound header blocks are built by response_header_block/trailer_block, which
        # already apply h2's outbound rules; h2 re-checking them costs ~10% per request.
        # Inbound blocks are checked by request_head, per stream (h2 would fail the whole
        # connection on a malformed request).
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_outbound_headers=False,
                                           validate_inbound_headers=False,
                                           normalize_inbound_headers=False)
        conn = _ServerH2(config=config)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            _SETTING.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            _SETTING.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            _SETTING.INITIAL_WINDOW_SIZE: window,
            _SETTING.ENABLE_PUSH: 0,
        })
        conn.decoder.max_header_list_size = limits.max_header_list_size
        self._h2 = conn
        self._out = H2Output(conn, stream, self._on_write_error)
        self._filter = GoawayFilter(_PREFACE_LEN)
        self._streams: dict[int, _ServerStream] = {}
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
        self._calmed = False    # closed for abuse (GOAWAY ENHANCE_YOUR_CALM sent)
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
        conn = self._h2
        self._stream.settimeout(self._tick)
        conn.initiate_connection()
        if limits.connection_window > 65535:
            conn.increment_flow_control_window(limits.connection_window - 65535)
        # Advertise max_concurrent_streams but let h2 itself enforce only twice that: h2
        # answers an excess stream with a connection error, we want REFUSED_STREAM for the
        # streams a client opens before it has seen our SETTINGS.
        conn.local_settings[_SETTING.MAX_CONCURRENT_STREAMS] = 2 * limits.max_concurrent_streams
        conn.local_settings.acknowledge()
        self._out.flush()
        started = time.monotonic()
        graceful = False
        try:
            while not self._closed:
                if (self._draining or self._peer_goaway) and not self._streams:
                    graceful = True
                    break
                try:
                    self._in_recv = True
                    data = self._stream.recv(RECV_SIZE)
                except _Wakeup:
                    continue
                except TimeoutError:
                    now = time.monotonic()
                    if not self._seen_request:
                        if now - started >= limits.header_timeout:
                            log.debug("h2: no request within %.0fs, closing", limits.header_timeout)
                            break
                    elif not self._streams and now - self._last_active >= limits.idle_timeout:
                        graceful = True
                        break
                    continue
                except OSError:
                    break
                finally:
                    self._in_recv = False
                if not data:
                    break
                self.bytes_in += len(data)
                if not self._receive(data):
                    break
                self._out.flush()
                self._out.wait_room(self._tick)
        finally:
            self._finish(graceful)

    def _receive(self, data: bytes) -> bool:
        passthrough, goaways = self._filter.feed(data)
        if passthrough:
            try:
                events = self._h2.receive_data(passthrough)
            except h2.exceptions.ProtocolError as exc:
                log.debug("h2 protocol error from client: %s", exc)
                self._out.flush()  # h2 queued a GOAWAY with the error code
                return False
            for event in events:
                self._dispatch(event)
            new, self._new = self._new, []
            for st, request in new:     # a stream reset in the same read never starts
                if st.reset is None and not self._closed:
                    self._spawn(self._run, st, request)
                else:
                    self._streams.pop(st.id, None)
        if goaways:
            self._peer_goaway = True
        return not self._closed

    def goaway(self) -> None:
        """Graceful drain: send GOAWAY, let in-flight streams finish, then ``serve`` returns."""
        if self._draining or self._closed:
            return
        self._draining = True
        self._last_stream_id = self._h2.highest_inbound_stream_id
        self._out.raw(goaway_frame(self._last_stream_id))
        if not self._streams:
            self._wake_reader()

    def _finish(self, graceful: bool) -> None:
        self._closed = True
        if graceful and self._out.error is None:
            if not self._draining:
                self._draining = True
                self._out.raw(goaway_frame(self._h2.highest_inbound_stream_id))
            self._linger()
        elif self._calmed and self._out.error is None:
            self._linger()      # the GOAWAY must arrive before the close resets the connection
        for st in list(self._streams.values()):
            if st.reset is None:
                st.reset = ErrorCodes.CANCEL
            st.data_ev.set()
            st.win_ev.set()
        self._streams.clear()

    def _linger(self) -> None:
        """Half-close and read briefly, so the peer reads our last frames before any RST."""
        linger(self._stream, 1.0)

    def _on_write_error(self, exc: BaseException) -> None:
        log.debug("h2 write failed: %r", exc)
        self._closed = True
        for st in self._streams.values():
            st.data_ev.set()
            st.win_ev.set()
        self._wake_reader()

    def _wake_reader(self) -> None:
        if self._reader is not None and self._reader is not getcurrent():
            get_hub().loop.run_callback(self._interrupt_recv)

    def _interrupt_recv(self) -> None:
        # Runs in the hub: the reader is suspended, so if it is inside recv it is waiting on
        # the socket and the exception lands there (the same way gevent.Timeout works).
        if self._in_recv and self._reader is not None:
            self._reader.throw(_Wakeup())

    # -- inbound events -------------------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.DataReceived:
            self._on_data(event)
        elif kind is h2.events.RequestReceived:
            self._on_request(event)
        elif kind is h2.events.StreamEnded:
            st = self._streams.get(event.stream_id)
            if st is not None:
                if st.length is not None and st.received != st.length:
                    self._malformed(st, "request body shorter than its content-length")
                    return
                st.ended = True
                st.data_ev.set()
        elif kind is h2.events.WindowUpdated:
            if event.stream_id == 0:
                for st in self._streams.values():
                    st.win_ev.set()
            else:
                st = self._streams.get(event.stream_id)
                if st is not None:
                    st.win_ev.set()
        elif kind is h2.events.StreamReset:
            st = self._streams.get(event.stream_id)
            if st is not None:
                st.reset = event.error_code
                st.data_ev.set()
                st.win_ev.set()
                if not st.headers_sent:
                    self._count_early_reset()
        elif kind is h2.events.TrailersReceived:
            st = self._streams.get(event.stream_id)
            if st is not None:
                trailers = [(k, v) for k, v in event.headers]
                try:
                    check_trailers(trailers, self._limits.max_header_count)
                except HttpError as exc:
                    self._malformed(st, exc.reason)
                    return
                st.trailers = trailers
                if st.body is not None:
                    st.body.trailers = trailers
        elif kind is h2.events.RemoteSettingsChanged:
            if _SETTING.INITIAL_WINDOW_SIZE in event.changed_settings:
                for st in self._streams.values():
                    st.win_ev.set()

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        self._seen_request = True
        self._last_active = time.monotonic()
        if (self._draining and sid > self._last_stream_id) or self._closed \
                or len(self._streams) >= self._limits.max_concurrent_streams:
            self._reset_quietly(sid, ErrorCodes.REFUSED_STREAM)
            if not self._draining:
                self._count_early_reset()   # a client past the advertised limit
            return
        try:
            request, length = request_head(event.headers, self._scheme, self._limits.max_header_count)
        except HttpError as exc:
            self._reject(sid, exc, event.stream_ended is not None)
            return
        request.stream_id = sid
        st = _ServerStream(sid, length)
        self._streams[sid] = st
        if event.stream_ended is not None:
            if length:
                self._streams.pop(sid, None)
                self._reject(sid, HttpError(400, "content-length without a body"), True)
                return
            st.ended = True
            body = Body.empty()
        else:
            body = Body(self._body_chunks(st), length, close=lambda: self._discard(st))
        st.body = body
        request.body = body
        self.requests += 1
        self._new.append((st, request))

    def _reject(self, sid: int, exc: HttpError, ended: bool) -> None:
        """Answer a malformed request on its own stream (RFC 9113 §8.1.1); the connection
        and its other streams go on."""
        data = f"{exc.status} {exc.reason}\n".encode()
        try:
            self._h2.send_headers(sid, [(b":status", b"%d" % exc.status),
                                        (b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", b"%d" % len(data))])
            self._h2.send_data(sid, data, end_stream=True)
            if not ended:
                self._h2.reset_stream(sid, ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:   # closed meanwhile, or no window for the answer
            self._reset_quietly(sid, ErrorCodes.PROTOCOL_ERROR)
        log.debug("h2 stream %d: malformed request (%s)", sid, exc)

    def _malformed(self, st: _ServerStream, reason: str) -> None:
        """A stream's request turned out malformed after its head (body length, trailers)."""
        log.debug("h2 stream %d: malformed request (%s)", st.id, reason)
        if st.reset is None:
            st.reset = ErrorCodes.PROTOCOL_ERROR
        st.data_ev.set()
        st.win_ev.set()
        self._reset_quietly(st.id, ErrorCodes.PROTOCOL_ERROR)

    def _reset_quietly(self, sid: int, code: int) -> None:
        try:
            self._h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:   # the client reset or ended it first
            pass

    def _count_early_reset(self) -> None:
        limit = self._limits.max_concurrent_streams
        now = time.monotonic()
        budget = min(float(limit), self._reset_budget + (now - self._reset_refill) * limit / 2.0)
        self._reset_refill = now
        self._reset_budget = budget - 1.0
        if self._reset_budget < 0 and not self._closed:
            log.info("h2: client cancels streams faster than they can be served; closing the connection")
            self._out.raw(goaway_frame(self._h2.highest_inbound_stream_id, ErrorCodes.ENHANCE_YOUR_CALM))
            self._calmed = True
            self._closed = True
            for each in self._streams.values():
                if each.reset is None:
                    each.reset = ErrorCodes.CANCEL
                each.data_ev.set()
                each.win_ev.set()

    def _on_data(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        st = self._streams.get(sid)
        size = event.flow_controlled_length
        data = event.data
        if st is None or st.discard:
            if size:
                self._h2.acknowledge_received_data(size, sid)
            return
        if size > len(data):  # padding is never handed to the consumer: credit it now
            self._h2.acknowledge_received_data(size - len(data), sid)
        if data:
            st.received += len(data)
            if st.length is not None and st.received > st.length:
                self._h2.acknowledge_received_data(len(data), sid)
                self._malformed(st, "request body longer than its content-length")
                return
            st.chunks.append(data)
            st.buffered += len(data)
            st.data_ev.set()

    # -- request body ---------------------------------------------------------------------------

    def _body_chunks(self, st: _ServerStream) -> Iterator[bytes]:
        timeout = self._limits.body_idle_timeout
        conn = self._h2
        while True:
            if st.chunks:
                yield take_chunk(conn, self._out, st, self._closed)
                continue
            if st.ended:
                return
            if st.reset is not None or self._closed:
                raise HttpError(400, "the client reset the stream")
            st.data_ev.clear()
            if not st.data_ev.wait(timeout):
                raise HttpError(408, "request body timed out")

    def _discard(self, st: _ServerStream) -> None:
        if st.discard:
            return
        st.discard = True
        pending, st.buffered = st.buffered, 0
        st.chunks.clear()
        if pending and not self._closed:
            self._h2.acknowledge_received_data(pending, st.id)
            self._out.flush()

    # -- handler and response -------------------------------------------------------------------

    def _run(self, st: _ServerStream, request: Request) -> None:
        response: Response | None = None
        token: Any = None
        sent = 0
        aborted = True
        try:
            try:
                answer = self._handler(request)
                response, token = answer if self._finished is not None else (answer, None)
            except HttpError as exc:
                response = plain_response(exc.status, f"{exc.status} {exc.reason}\n")
            except Exception:
                log.exception("h2 handler failed on stream %d", st.id)
                response = plain_response(500)
            sent = self._respond(st, request, response)
            aborted = False
        except StreamGone:
            pass
        except UpstreamError as exc:    # the backend broke off mid-body (the proxy logged it)
            log.debug("h2 stream %d: response aborted: %s", st.id, exc)
            self._reset(st, ErrorCodes.INTERNAL_ERROR)
        except Exception:
            log.exception("h2 response failed on stream %d", st.id)
            self._reset(st, ErrorCodes.INTERNAL_ERROR)
        finally:
            request.body.close()
            if response is not None:
                response.body.close()
                if self._finished is not None:
                    self._finished(token, response, sent, aborted)
            if not st.ended and st.reset is None and not self._closed:
                # RFC 9113 §8.1: the response is complete; the rest of the request is not needed.
                self._reset(st, ErrorCodes.NO_ERROR)
            self._streams.pop(st.id, None)
            self._last_active = time.monotonic()
            if (self._draining or self._peer_goaway) and not self._streams:
                self._wake_reader()

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
        if body.is_buffered:
            data = body.read_all(body.length or 0)
            self._send_headers(st, headers, not data)
            if data:
                self._send_data(st, data, True)
            return len(data)
        self._send_headers(st, headers, False)
        sent = 0
        for chunk in body:
            self._send_data(st, chunk, False)
            sent += len(chunk)
        trailers = body.trailers
        self._check(st)
        try:
            if trailers:
                self._h2.send_headers(st.id, trailer_block(trailers), end_stream=True)
            else:
                self._h2.end_stream(st.id)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        except h2.exceptions.ProtocolError as exc:
            self._encoding_failed(st, exc)
        self._out.flush()
        return sent

    def _check(self, st: _ServerStream) -> None:
        if st.reset is not None or self._closed or self._out.error is not None:
            raise StreamGone

    def _send_headers(self, st: _ServerStream, headers: HeaderList, end: bool) -> None:
        self._check(st)
        try:
            self._h2.send_headers(st.id, headers, end_stream=end)
        except h2.exceptions.StreamClosedError:
            raise StreamGone from None
        except h2.exceptions.ProtocolError as exc:
            self._encoding_failed(st, exc)
        st.headers_sent = True
        self._out.flush()
        self._out.wait_room(self._tick)

    def _send_data(self, st: _ServerStream, data: bytes, end: bool) -> None:
        timeout = self._limits.send_timeout
        if not write_data(self._h2, self._out, st, data, end, timeout, self._check, self._tick):
            log.debug("h2 stream %d: peer window stayed closed for %.0fs", st.id, timeout)
            self._reset(st, ErrorCodes.CANCEL)
            raise StreamGone

    def _encoding_failed(self, st: _ServerStream, exc: Exception) -> None:
        """h2 refused a header block part-way through HPACK encoding, so the compression state
        the client tracks is now out of step: end the whole connection."""
        log.error("h2 stream %d: invalid response header block (%s); closing the connection", st.id, exc)
        if not self._closed:
            self._out.raw(goaway_frame(self._h2.highest_inbound_stream_id, ErrorCodes.INTERNAL_ERROR))
            self._closed = True
            for each in self._streams.values():
                if each.reset is None:
                    each.reset = ErrorCodes.CANCEL
                each.data_ev.set()
                each.win_ev.set()
            self._wake_reader()
        raise StreamGone

    def _reset(self, st: _ServerStream, code: int) -> None:
        if st.reset is None:
            st.reset = code
        if self._closed or self._out.error is not None:
            return
        try:
            self._h2.reset_stream(st.id, code)
        except h2.exceptions.StreamClosedError:
            return
        self._out.flush()
