"""HTTP/2 client codec on h2: one multiplexed upstream connection shared by many greenlets.

Each ``request`` opens one stream; a reader greenlet per connection dispatches frames to the
streams. Response bodies stream DATA frames with flow control credited as the caller
consumes them, so the per-stream buffer is bounded by the advertised stream window. Request
bodies are sent in their own greenlet (unless small and already buffered), so a backend may
answer before it has read the whole request. Failures surface as the ``UpstreamError`` types.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Iterator

import gevent
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from gevent.event import Event
from h2.errors import ErrorCodes

from vane.net.h2.common import (
    RECV_SIZE,
    GoawayFilter,
    H2Output,
    StreamGone,
    goaway_frame,
    take_chunk,
    write_data,
)
from vane.net.http.errors import UpstreamConnectError, UpstreamProtocolError, UpstreamTimeout
from vane.net.http.message import (
    HOP_BY_HOP,
    Body,
    HeaderList,
    Headers,
    Request,
    Response,
    connection_tokens,
    trailer_fields,
)
from vane.net.sockets import set_nodelay

__all__ = ["H2ClientConnection"]

log = logging.getLogger("vane.net.h2")

_SETTING = h2.settings.SettingCodes
# Request headers HTTP/2 forbids (RFC 9113 §8.2.2); "te: trailers" is the one TE allowed.
_DROP = HOP_BY_HOP | {b"host"}


class _ClientStream:
    __slots__ = ("id", "status", "headers", "chunks", "buffered", "ended", "error", "trailers",
                 "ev", "win_ev", "released", "request_done", "body", "on_done")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.status: int | None = None
        self.headers: HeaderList = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.ended = False
        self.error: BaseException | None = None
        self.trailers: HeaderList | None = None
        self.ev = Event()        # response headers / data / end / error
        self.win_ev = Event()    # send window opened
        self.released = False
        self.request_done = False
        self.body: Body | None = None
        self.on_done: Callable[[], None] | None = None


def _request_block(req: Request, headers: Headers) -> HeaderList:
    authority = req.authority or headers.get("host") or ""
    block: HeaderList = [
        (b":method", req.method.encode("latin-1")),
        (b":scheme", (req.scheme or "https").encode("latin-1")),
        (b":authority", authority.encode("latin-1")),
        (b":path", (req.uri or "/").encode("latin-1")),
    ]
    if req.method == "CONNECT":
        block = [block[0], block[2]]
    drop = connection_tokens(headers.items_)
    for k, v in headers.items_:
        if k[:1] == b":" or k in drop:
            continue
        if k in _DROP:
            if k == b"te" and v.strip().lower() == b"trailers":
                block.append((k, b"trailers"))
            continue
        block.append((k, v))
    return block


class H2ClientConnection:
    """A multiplexed HTTP/2 connection to one backend over a connected stream.

    Owns the h2 state machine, the reader greenlet and the open streams; ``request`` is the
    call the upstream pool's users make, as on an HTTP/1.1 connection.

    ``io_timeout`` bounds a stalled socket write and a closed send window; ``request``'s
    ``timeout`` bounds the wait for response headers and each wait for body data.
    """

    multiplexed = True
    body_cut = None             # a request body is sent beside the answer, never cut short

    def __init__(self, stream: Any, max_streams: int = 100, stream_buffer: int = 65536,
                 connection_window: int = 1 << 24, io_timeout: float = 30.0,
                 max_header_list_size: int = 65536,
                 spawn: Callable[..., Any] = gevent.spawn) -> None:
        self._stream = stream
        set_nodelay(stream)
        self._max_streams = max_streams
        self._io_timeout = io_timeout
        self._spawn = spawn
        # _request_block applies h2's outbound header rules itself (see h2server).
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=False)
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            _SETTING.ENABLE_PUSH: 0,
            _SETTING.MAX_CONCURRENT_STREAMS: 0,
            _SETTING.INITIAL_WINDOW_SIZE: max(stream_buffer, 65535),
            _SETTING.MAX_HEADER_LIST_SIZE: max_header_list_size,
        })
        conn.decoder.max_header_list_size = max_header_list_size
        self._h2 = conn
        self._out = H2Output(conn, stream, self._on_write_error)
        self._filter = GoawayFilter()
        self._streams: dict[int, _ClientStream] = {}
        self._closed = False
        self._goaway = False
        self.close_reason = ""
        self.bytes_in = 0
        self.requests = 0
        self.last_used = time.monotonic()
        stream.settimeout(io_timeout)
        conn.initiate_connection()
        if connection_window > 65535:
            conn.increment_flow_control_window(connection_window - 65535)
        self._out.flush()
        self._reader = spawn(self._read_loop)

    @property
    def bytes_out(self) -> int:
        return self._out.bytes_out

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def closed(self) -> bool:
        return self._closed

    def is_available(self) -> bool:
        """True if a new request may start here: open, no GOAWAY, below the stream limits."""
        if self._closed or self._goaway or self._out.error is not None:
            return False
        limit = min(self._max_streams, self._h2.remote_settings.max_concurrent_streams)
        return len(self._streams) < limit

    # -- requests -------------------------------------------------------------------------------

    def request(self, req: Request, headers: Headers, timeout: float,
                on_done: Callable[[], None] | None = None) -> Response:
        """Send ``req`` (pseudo-headers from it, fields from ``headers``) and await the response head.

        The returned body streams; closing it early cancels the stream. ``on_done`` runs once
        when the stream is finished with: its response read or dropped, or the request failed.
        """
        try:
            st = self._open(req, headers)
        except BaseException:
            if on_done is not None:
                on_done()
            raise
        st.on_done = on_done               # from here the stream calls it, once, on release
        try:
            return self._exchange(st, req, timeout)
        except BaseException:
            self._cancel(st)               # a no-op when the stream was already released
            raise

    def _open(self, req: Request, headers: Headers) -> _ClientStream:
        """A new stream with the request head sent."""
        if not self.is_available():
            raise UpstreamConnectError("HTTP/2 upstream connection not available")
        if not (req.authority or headers.getb(b"host")):
            raise UpstreamProtocolError("HTTP/2 request without an authority")
        conn = self._h2
        try:
            sid = conn.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self._goaway = True  # stream ids used up: let the pool open a fresh connection
            raise UpstreamConnectError("HTTP/2 stream ids exhausted") from None
        st = _ClientStream(sid)
        try:
            conn.send_headers(sid, _request_block(req, headers), end_stream=req.body.length == 0)
        except h2.exceptions.TooManyStreamsError:
            raise UpstreamConnectError("HTTP/2 upstream stream limit reached") from None
        except h2.exceptions.ProtocolError as exc:
            # h2 may have failed part-way through HPACK encoding: the backend's decoder is
            # now out of step with ours, so no further header block may go out here.
            self._goaway = True
            if not self._streams:
                self.close()
            raise UpstreamProtocolError(f"HTTP/2 request header block rejected: {exc}") from None
        self._streams[sid] = st
        return st

    def _exchange(self, st: _ClientStream, req: Request, timeout: float) -> Response:
        conn = self._h2
        sid = st.id
        body = req.body
        no_body = body.length == 0
        self.requests += 1
        self.last_used = time.monotonic()
        self._out.flush()
        if self._out.error is not None:
            self._release(st)
            raise UpstreamConnectError("HTTP/2 upstream connection failed", request_sent=True)
        if no_body:
            body.close()
            st.request_done = True
        elif body.is_buffered and (body.length or 0) <= conn.local_flow_control_window(sid):
            self._send_body(st, body)
        else:
            self._spawn(self._send_body, st, body)

        while st.status is None:
            if st.error is not None:
                self._release(st)
                raise st.error
            st.ev.clear()
            if not st.ev.wait(timeout):
                self._cancel(st)
                raise UpstreamTimeout(f"no response headers within {timeout:g}s", request_sent=True)
        length = None
        for k, v in st.headers:
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    pass
        if st.ended and not st.chunks:
            rbody = Body.empty()
            rbody.trailers = st.trailers
            self._release(st)
        else:
            rbody = Body(self._body_chunks(st, timeout), length, close=lambda: self._cancel(st))
            rbody.trailers = st.trailers
            st.body = rbody
        return Response(st.status, Headers(st.headers), rbody)

    def _send_body(self, st: _ClientStream, body: Body) -> None:
        conn = self._h2
        try:
            for chunk in body:
                if not write_data(conn, self._out, st, chunk, False, self._io_timeout, self._check,
                                  self._io_timeout):
                    raise UpstreamTimeout("upstream flow-control window stayed closed",
                                          request_sent=True)
            self._check(st)
            trailers = body.trailers
            try:
                if trailers:
                    conn.send_headers(st.id, trailer_fields(trailers), end_stream=True)
                else:
                    conn.end_stream(st.id)
            except h2.exceptions.StreamClosedError:
                raise StreamGone from None
            self._out.flush()
        except StreamGone:
            pass
        except Exception as exc:  # the request body failed (client side) or the window stalled
            if st.error is None:
                st.error = exc
            self._reset(st, ErrorCodes.CANCEL)
            st.ev.set()
        finally:
            st.request_done = True
            body.close()

    def _check(self, st: _ClientStream) -> None:
        if st.released or st.error is not None or self._out.error is not None:
            raise StreamGone

    def _body_chunks(self, st: _ClientStream, timeout: float) -> Iterator[bytes]:
        conn = self._h2
        while True:
            if st.chunks:
                yield take_chunk(conn, self._out, st, self._closed)
                continue
            if st.ended:
                self._release(st)
                return
            if st.error is not None:
                self._release(st)
                raise st.error
            st.ev.clear()
            if not st.ev.wait(timeout):
                self._cancel(st)
                raise UpstreamTimeout(f"response body stalled for {timeout:g}s",
                                      request_sent=True, response_started=True)

    # -- stream lifecycle -----------------------------------------------------------------------

    def _release(self, st: _ClientStream) -> None:
        """The response side is done with the stream: forget it, credit what was left unread."""
        if st.released:
            return
        st.released = True
        self._streams.pop(st.id, None)
        done, st.on_done = st.on_done, None
        if done is not None:
            done()
        pending, st.buffered = st.buffered, 0
        st.chunks.clear()
        if not self._closed and self._out.error is None:
            if pending:
                self._h2.acknowledge_received_data(pending, st.id)
            if not st.request_done or not st.ended:
                self._reset(st, ErrorCodes.CANCEL)
            self._out.flush()
        st.win_ev.set()
        self.last_used = time.monotonic()
        if self._goaway and not self._streams:
            self.close()

    def _cancel(self, st: _ClientStream) -> None:
        if not st.released:
            if not st.ended:
                self._reset(st, ErrorCodes.CANCEL)
            self._release(st)

    def _reset(self, st: _ClientStream, code: int) -> None:
        if self._closed or self._out.error is not None:
            return
        try:
            self._h2.reset_stream(st.id, code)
        except h2.exceptions.ProtocolError:  # already closed on either side
            return
        self._out.flush()

    # -- reader ---------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        reason = "upstream closed the connection"
        try:
            while not self._closed:
                try:
                    data = self._stream.recv(RECV_SIZE)
                except TimeoutError:
                    continue
                except OSError as exc:
                    reason = f"upstream connection failed: {exc}"
                    break
                if not data:
                    break
                self.bytes_in += len(data)
                passthrough, goaways = self._filter.feed(data)
                if passthrough:
                    try:
                        events = self._h2.receive_data(passthrough)
                    except h2.exceptions.ProtocolError as exc:
                        reason = f"upstream HTTP/2 protocol error: {exc}"
                        self._out.flush()
                        break
                    for event in events:
                        self._dispatch(event)
                for last_id, code in goaways:
                    self._on_goaway(last_id, code)
                self._out.flush()
                self._out.wait_room(self._io_timeout)
                if self._out.error is not None:
                    reason = f"upstream write failed: {self._out.error}"
                    break
        finally:
            self._shutdown(reason)

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        st = self._streams.get(getattr(event, "stream_id", 0))
        if kind is h2.events.DataReceived:
            size = event.flow_controlled_length
            if st is None:
                if size:
                    self._h2.acknowledge_received_data(size, event.stream_id)
                return
            if size > len(event.data):
                self._h2.acknowledge_received_data(size - len(event.data), st.id)
            if event.data:
                st.chunks.append(event.data)
                st.buffered += len(event.data)
                st.ev.set()
        elif kind is h2.events.ResponseReceived:
            if st is not None:
                status = b"0"
                items: HeaderList = []
                for k, v in event.headers:
                    if k == b":status":
                        status = v
                    elif k[:1] != b":":
                        items.append((k, v))
                st.headers = items
                st.status = int(status)
                st.ev.set()
        elif kind is h2.events.StreamEnded:
            if st is not None:
                st.ended = True
                st.ev.set()
        elif kind is h2.events.WindowUpdated:
            if event.stream_id == 0:
                for each in self._streams.values():
                    each.win_ev.set()
            elif st is not None:
                st.win_ev.set()
        elif kind is h2.events.TrailersReceived:
            if st is not None:
                st.trailers = [(k, v) for k, v in event.headers]
                if st.body is not None:
                    st.body.trailers = st.trailers
        elif kind is h2.events.StreamReset:
            if st is not None and not st.ended:
                code = event.error_code
                name = getattr(code, "name", str(code))
                if code == ErrorCodes.REFUSED_STREAM and st.status is None:
                    st.error = UpstreamConnectError("upstream refused the stream", request_sent=False)
                else:
                    st.error = UpstreamProtocolError(
                        f"upstream reset the stream ({name})", request_sent=True,
                        response_started=st.status is not None)
                st.ev.set()
                st.win_ev.set()
        elif kind is h2.events.RemoteSettingsChanged:
            if _SETTING.INITIAL_WINDOW_SIZE in event.changed_settings:
                for each in self._streams.values():
                    each.win_ev.set()

    def _on_goaway(self, last_id: int, code: int) -> None:
        self._goaway = True
        self.close_reason = f"upstream sent GOAWAY (code {code})"
        for sid, st in list(self._streams.items()):
            if sid > last_id and st.error is None:
                st.error = UpstreamConnectError("upstream is shutting down (GOAWAY)",
                                                request_sent=False)
                st.ev.set()
                st.win_ev.set()
        if not self._streams:
            self.close()

    def _on_write_error(self, exc: BaseException) -> None:
        log.debug("h2 upstream write failed: %r", exc)
        for st in self._streams.values():
            st.ev.set()
            st.win_ev.set()
        self._fail_all(f"upstream write failed: {exc}")

    def _fail_all(self, reason: str) -> None:
        for st in list(self._streams.values()):
            if st.error is None and not st.ended:
                if st.status is None:
                    st.error = UpstreamProtocolError(reason, request_sent=True)
                else:
                    st.error = UpstreamProtocolError(reason, request_sent=True,
                                                     response_started=True)
            st.ev.set()
            st.win_ev.set()

    def _shutdown(self, reason: str) -> None:
        if not self.close_reason:
            self.close_reason = reason
        self._fail_all(reason)
        self._close_stream()

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close now: say GOAWAY when nothing is in flight, fail any stream still open."""
        if self._closed:
            return
        if not self._streams and self._out.error is None:
            self._out.raw(goaway_frame(0))
        self._fail_all("connection closed")
        self._close_stream()

    def _close_stream(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stream.close()
        except OSError:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("goaway" if self._goaway else "open")
        return f"<H2ClientConnection {state} streams={len(self._streams)}>"
