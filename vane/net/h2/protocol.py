"""The server side of the HTTP/2 protocol (RFC 9113) without I/O: framing, stream states, flow
control and HPACK for one connection.

``ServerProtocol.receive`` parses the bytes read from the client and reports what they mean
to its delegate (a new request, body data, trailers, the end of a request, a reset, a window
that opened, the peer's GOAWAY); a violation of the protocol that concerns the whole connection
raises ``ConnectionFailure`` (the caller sends GOAWAY with its code and closes), one that
concerns a stream resets that stream and tells the delegate. The ``send_*`` methods queue
frames; ``data_to_send`` hands them over for writing. Which streams are served, refused or
answered, and when body credit goes back to the client, is the delegate's business.

A stream stays in ``streams`` until the delegate releases it, whatever its protocol state, so
the delegate's count of streams at work is ``len(streams)``. A frame for a stream id at or
below the highest seen that is no longer in ``streams`` is for a closed stream: DATA only
returns its connection credit, HEADERS is decoded (to keep HPACK in step) and reset, the rest
is ignored.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from vane.net.h2.compression import CompressionError, Decoder, Encoder, HeaderList, HeaderListTooLarge

__all__ = ["PREFACE", "ConnectionFailure", "ServerProtocol", "StreamClosed", "StreamState",
           "goaway_frame"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
# flags
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# error codes
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, ENHANCE_YOUR_CALM = range(12)
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, \
    MAX_HEADER_LIST_SIZE = range(1, 7)
ENABLE_CONNECT_PROTOCOL = 8     # RFC 8441: extended CONNECT (WebSocket over HTTP/2)

DEFAULT_WINDOW = 65535
MAX_WINDOW = (1 << 31) - 1
FRAME_SIZE = 16384               # the default SETTINGS_MAX_FRAME_SIZE (what we send)
MAX_INBOUND_FRAME = 1 << 20      # bound on the SETTINGS_MAX_FRAME_SIZE we advertise
_MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1

_HEAD = struct.Struct(">IBI")    # (length << 8 | type), flags, stream id
_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">II")
_SETTING = struct.Struct(">HI")
_pack_head = _HEAD.pack
_unpack_head = _HEAD.unpack_from


class ConnectionFailure(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class StreamClosed(Exception):
    """A frame was to be sent on a stream that is closed (reset, or already ended)."""


class StreamState:
    """The protocol state of one stream; the delegate's stream class extends it."""

    __slots__ = ("id", "send_window", "recv_window", "unacked", "remote_closed", "local_closed",
                 "closed")

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window      # what we may still send (the peer's credit)
        self.recv_window = recv_window      # what the peer may still send us
        self.unacked = 0                    # consumed body bytes not yet credited back
        self.remote_closed = False          # the peer ended its side (END_STREAM)
        self.local_closed = False           # we ended ours
        self.closed = False                 # reset by either side


def goaway_frame(last_stream_id: int, error_code: int = 0) -> bytes:
    return _pack_head((8 << 8) | GOAWAY, 0, 0) + _PAIR.pack(last_stream_id & 0x7FFFFFFF, error_code)


def _window_update(stream_id: int, increment: int) -> bytes:
    return _pack_head((4 << 8) | WINDOW_UPDATE, 0, stream_id) + _U32.pack(increment)


def _credit(processed: int, window: int, maximum: int) -> int:
    """How much credit to give back for ``processed`` consumed bytes: once half the window is
    consumed, or sooner when the window is shut (so that a stream never stalls)."""
    if processed >= maximum // 2 or (window <= 0 and processed > min(1024, maximum // 4)):
        return min(processed, maximum - window)
    return 0


class ServerProtocol:
    """One server connection's HTTP/2 state (see module doc).

    ``delegate`` provides ``on_request(st, fields, ended)`` (``fields`` None: the header block
    is past SETTINGS_MAX_HEADER_LIST_SIZE, to be answered 431), ``on_data(st, data, ended)``,
    ``on_trailers(st, fields)``, ``on_end(st)``, ``on_reset(st, code, remote)``,
    ``on_window(st | None)`` (None: every stream may have room) and
    ``on_goaway(last_stream_id, code)``; ``stream_class`` makes the stream objects.
    """

    def __init__(self, delegate: Any, stream_class: Callable[[int, int, int], StreamState], *,
                 max_concurrent_streams: int, max_header_list_size: int, stream_window: int,
                 connection_window: int) -> None:
        self._delegate = delegate
        self._stream_class = stream_class
        self._out = bytearray()
        self._buf = bytearray()             # the start of a frame whose end is yet to come
        self._need = 0                      # the bytes that frame needs in all
        self._preface = True                # the client preface (and its SETTINGS) is still due
        self._cont: list[Any] | None = None # a header block waiting for CONTINUATION frames
        self.streams: dict[int, StreamState] = {}
        self.highest_inbound = 0
        self.decoder = Decoder(max_header_list_size)
        self.encoder = Encoder()
        self._max_header_list_size = max_header_list_size
        self._max_concurrent = max_concurrent_streams
        self._local_initial = stream_window
        self._peer_initial = DEFAULT_WINDOW
        self.send_window = DEFAULT_WINDOW   # connection-level credit we have
        self._recv_max = max(connection_window, DEFAULT_WINDOW)
        self._recv_window = DEFAULT_WINDOW  # connection-level credit the peer has
        self._recv_unacked = 0
        self.max_outbound_frame = FRAME_SIZE
        # half the stream window: a client sends fewer, larger DATA frames (some copy the rest of
        # the body per frame) and two are in flight within a window (a frame is taken once whole,
        # so one frame per window would stop a client that leaves Nagle's algorithm on)
        self.max_inbound_frame = max(FRAME_SIZE, min(MAX_INBOUND_FRAME, stream_window // 2))

    # -- output ---------------------------------------------------------------------------------

    def data_to_send(self) -> bytearray:
        out = self._out
        if out:
            self._out = bytearray()
        return out

    def initiate(self) -> None:
        """Our SETTINGS and the connection window beyond the default."""
        settings = ((MAX_CONCURRENT_STREAMS, self._max_concurrent),
                    (MAX_HEADER_LIST_SIZE, self._max_header_list_size),
                    (INITIAL_WINDOW_SIZE, self._local_initial), (ENABLE_PUSH, 0),
                    (MAX_FRAME_SIZE, self.max_inbound_frame), (ENABLE_CONNECT_PROTOCOL, 1))
        out = self._out
        out += _pack_head((6 * len(settings) << 8) | SETTINGS, 0, 0)
        for code, value in settings:
            out += _SETTING.pack(code, value)
        if self._recv_max > DEFAULT_WINDOW:
            out += _window_update(0, self._recv_max - DEFAULT_WINDOW)
            self._recv_window = self._recv_max

    def send_headers(self, st: StreamState, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if st.closed or st.local_closed:
            raise StreamClosed
        block = self.encoder.encode(fields)
        flags = END_STREAM if end else 0
        out = self._out
        size = len(block)
        frame = self.max_outbound_frame
        if size <= frame:
            out += _pack_head((size << 8) | HEADERS, flags | END_HEADERS, st.id)
            out += block
        else:
            kind = HEADERS
            for off in range(0, size, frame):
                part = block[off:off + frame]
                last = off + frame >= size
                out += _pack_head((len(part) << 8) | kind, (flags if kind == HEADERS else 0)
                                  | (END_HEADERS if last else 0), st.id)
                out += part
                kind = CONTINUATION
        if end:
            st.local_closed = True

    def window(self, st: StreamState) -> int:
        """The body bytes that may be sent on ``st`` now."""
        return min(self.send_window, st.send_window)

    def send_data(self, st: StreamState, data: Any, end: bool) -> None:
        """Queue ``data`` (at most ``window(st)`` bytes) as DATA frames."""
        if st.closed or st.local_closed:
            raise StreamClosed
        size = len(data)
        if size > self.send_window or size > st.send_window:
            raise ValueError("DATA past the flow-control window")
        self.send_window -= size
        st.send_window -= size
        out = self._out
        frame = self.max_outbound_frame
        sid = st.id
        if size <= frame:
            out += _pack_head((size << 8) | DATA, END_STREAM if end else 0, sid)
            out += data
        else:
            view = memoryview(data)
            for off in range(0, size, frame):
                part = view[off:off + frame]
                out += _pack_head((len(part) << 8) | DATA, END_STREAM if end and off + frame >= size else 0, sid)
                out += part
        if end:
            st.local_closed = True

    def end_stream(self, st: StreamState) -> None:
        if st.closed or st.local_closed:
            raise StreamClosed
        self._out += _pack_head(DATA, END_STREAM, st.id)
        st.local_closed = True

    def reset(self, st: StreamState, code: int) -> None:
        """RST_STREAM ``st`` (a no-op if it is reset already)."""
        if st.closed:
            return
        st.closed = st.local_closed = st.remote_closed = True
        self._out += _pack_head((4 << 8) | RST_STREAM, 0, st.id) + _U32.pack(code)

    def release(self, st: StreamState) -> None:
        """The delegate is done with ``st``: frames for it are now for a closed stream."""
        self.streams.pop(st.id, None)

    def goaway(self, code: int = NO_ERROR) -> None:
        self._out += goaway_frame(self.highest_inbound, code)

    def acknowledge(self, st: StreamState | None, size: int) -> None:
        """``size`` received body bytes are consumed (or dropped): credit them back."""
        if size <= 0:
            return
        self._recv_unacked += size
        inc = _credit(self._recv_unacked, self._recv_window, self._recv_max)
        if inc:
            self._recv_unacked = 0
            self._recv_window += inc
            self._out += _window_update(0, inc)
        if st is None or st.remote_closed or st.closed:
            return
        st.unacked += size
        inc = _credit(st.unacked, st.recv_window, self._local_initial)
        if inc:
            st.unacked = 0
            st.recv_window += inc
            self._out += _window_update(st.id, inc)

    # -- input ----------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Handle the bytes read; raises ``ConnectionFailure``."""
        if self._buf:
            buf = self._buf
            buf += data
            if len(buf) < self._need:       # a large frame still coming: no copy, no parse
                return
            data = bytes(buf)
            self._buf = bytearray()
        pos = 0
        n = len(data)
        if self._preface:
            if n < len(PREFACE) + 9:
                if not PREFACE.startswith(data[:len(PREFACE)]):
                    raise ConnectionFailure(PROTOCOL_ERROR, "invalid connection preface")
                self._buf = bytearray(data)
                self._need = 0              # checked again with every byte that comes
                return
            if data[:len(PREFACE)] != PREFACE:
                raise ConnectionFailure(PROTOCOL_ERROR, "invalid connection preface")
            lt, flags, _ = _unpack_head(data, len(PREFACE))
            if lt & 0xFF != SETTINGS or flags & ACK:
                raise ConnectionFailure(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
            self._preface = False
            pos = len(PREFACE)
        delegate = self._delegate
        streams = self.streams
        while n - pos >= 9:
            lt, flags, sid = _unpack_head(data, pos)
            length = lt >> 8
            if length > FRAME_SIZE:
                self._check_large_frame(lt & 0xFF, length, sid & 0x7FFFFFFF)
            start = pos + 9
            end = start + length
            if end > n:
                self._need = end - pos
                break
            pos = end
            kind = lt & 0xFF
            sid &= 0x7FFFFFFF
            if self._cont is not None and kind != CONTINUATION:
                raise ConnectionFailure(PROTOCOL_ERROR, "header block interrupted")
            if kind == HEADERS:
                self._on_headers(data, start, end, flags, sid)
            elif kind == DATA:
                if sid == 0:
                    raise ConnectionFailure(PROTOCOL_ERROR, "DATA on stream 0")
                flow = length
                if flags & PADDED:
                    start, end = self._unpad(data, start, end)
                if flow > self._recv_window:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA past the connection window")
                self._recv_window -= flow
                st = streams.get(sid)
                if st is None:
                    if sid > self.highest_inbound:
                        raise ConnectionFailure(PROTOCOL_ERROR, "DATA on an idle stream")
                    self.acknowledge(None, flow)
                    continue
                if flow > st.recv_window:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA past the stream window")
                st.recv_window -= flow
                if st.closed or st.remote_closed:
                    self.acknowledge(None, flow)
                    if not st.closed:
                        self._stream_error(st, STREAM_CLOSED)
                    continue
                size = end - start
                if flow > size:                     # padding: credited at once
                    self.acknowledge(st, flow - size)
                ended = flags & END_STREAM
                if ended:
                    st.remote_closed = True
                if size:
                    delegate.on_data(st, data[start:end])
                if ended:
                    delegate.on_end(st)
            elif kind == WINDOW_UPDATE:
                if length != 4:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "WINDOW_UPDATE of a bad length")
                inc = _U32.unpack_from(data, start)[0] & 0x7FFFFFFF
                if sid == 0:
                    if inc == 0:
                        raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                    self.send_window += inc
                    if self.send_window > MAX_WINDOW:
                        raise ConnectionFailure(FLOW_CONTROL_ERROR, "connection window past 2^31-1")
                    delegate.on_window(None)
                    continue
                st = streams.get(sid)
                if st is None:
                    if sid > self.highest_inbound:
                        raise ConnectionFailure(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                    continue
                if st.closed:
                    continue
                if inc == 0:
                    self._stream_error(st, PROTOCOL_ERROR)
                    continue
                st.send_window += inc
                if st.send_window > MAX_WINDOW:
                    self._stream_error(st, FLOW_CONTROL_ERROR)
                    continue
                delegate.on_window(st)
            elif kind == RST_STREAM:
                if length != 4:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "RST_STREAM of a bad length")
                if sid == 0:
                    raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on stream 0")
                st = streams.get(sid)
                if st is None:
                    if sid > self.highest_inbound:
                        raise ConnectionFailure(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
                    continue
                if st.closed:
                    continue
                st.closed = st.local_closed = st.remote_closed = True
                delegate.on_reset(st, _U32.unpack_from(data, start)[0], True)
            elif kind == SETTINGS:
                self._on_settings(data, start, end, flags, sid)
            elif kind == PING:
                if sid != 0:
                    raise ConnectionFailure(PROTOCOL_ERROR, "PING on a stream")
                if length != 8:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "PING of a bad length")
                if not flags & ACK:
                    self._out += _pack_head((8 << 8) | PING, ACK, 0) + data[start:end]
            elif kind == PRIORITY:
                if sid == 0:
                    raise ConnectionFailure(PROTOCOL_ERROR, "PRIORITY on stream 0")
                st = streams.get(sid)
                if st is not None and not st.closed and (
                        length != 5 or _U32.unpack_from(data, start)[0] & 0x7FFFFFFF == sid):
                    self._stream_error(st, FRAME_SIZE_ERROR if length != 5 else PROTOCOL_ERROR)
            elif kind == GOAWAY:
                if sid != 0:
                    raise ConnectionFailure(PROTOCOL_ERROR, "GOAWAY on a stream")
                if length < 8:
                    raise ConnectionFailure(FRAME_SIZE_ERROR, "GOAWAY of a bad length")
                last, code = _PAIR.unpack_from(data, start)
                delegate.on_goaway(last & 0x7FFFFFFF, code)
            elif kind == CONTINUATION:
                self._on_continuation(data, start, end, flags, sid)
            elif kind == PUSH_PROMISE:
                raise ConnectionFailure(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            # other types are extensions: ignored (RFC 9113 §4.1)
        if pos < n:
            self._buf = bytearray(data[pos:])
            if n - pos < 9:
                self._need = 9

    def _check_large_frame(self, kind: int, length: int, sid: int) -> None:
        """A frame past the default size, judged from its header before it is buffered: only
        DATA within the windows it draws on, or a header block fragment within the bound of
        the header list, may be that long."""
        if length > self.max_inbound_frame:
            raise ConnectionFailure(FRAME_SIZE_ERROR, f"frame of {length} bytes")
        if kind == DATA:
            st = self.streams.get(sid)
            if length > self._recv_window or (st is not None and length > st.recv_window):
                raise ConnectionFailure(FLOW_CONTROL_ERROR, "DATA past the flow-control window")
        elif kind not in (HEADERS, CONTINUATION) or length > 2 * self._max_header_list_size:
            raise ConnectionFailure(ENHANCE_YOUR_CALM, f"frame of {length} bytes")

    @staticmethod
    def _unpad(data: bytes, start: int, end: int) -> tuple[int, int]:
        if start >= end:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "padded frame without a pad length")
        pad = data[start]
        start += 1
        if pad > end - start:
            raise ConnectionFailure(PROTOCOL_ERROR, "padding longer than the frame")
        return start, end - pad

    def _on_headers(self, data: bytes, start: int, end: int, flags: int, sid: int) -> None:
        if sid == 0 or not sid & 1:
            raise ConnectionFailure(PROTOCOL_ERROR, f"HEADERS on stream {sid}")
        if flags & PADDED:
            start, end = self._unpad(data, start, end)
        self_dependent = False
        if flags & PRIORITY_FLAG:
            if end - start < 5:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            self_dependent = _U32.unpack_from(data, start)[0] & 0x7FFFFFFF == sid
            start += 5
        block = data[start:end]
        if flags & END_HEADERS:
            self._header_block(sid, block, bool(flags & END_STREAM), self_dependent)
        else:
            self._cont = [sid, bool(flags & END_STREAM), self_dependent, [block], len(block)]

    def _on_continuation(self, data: bytes, start: int, end: int, flags: int, sid: int) -> None:
        cont = self._cont
        if cont is None or cont[0] != sid:
            raise ConnectionFailure(PROTOCOL_ERROR, "unexpected CONTINUATION")
        cont[3].append(data[start:end])
        cont[4] += end - start
        if cont[4] > 2 * self._max_header_list_size:  # past any list it could still be 431 for
            raise ConnectionFailure(ENHANCE_YOUR_CALM, "header block past the header list limit")
        if flags & END_HEADERS:
            self._cont = None
            self._header_block(sid, b"".join(cont[3]), cont[1], cont[2])

    def _header_block(self, sid: int, block: bytes, ended: bool, self_dependent: bool) -> None:
        fields: HeaderList | None
        try:
            fields = self.decoder.decode(block)
        except HeaderListTooLarge:
            fields = None               # decoded to the end: HPACK is in step, the stream answers
        except CompressionError as exc:
            raise ConnectionFailure(COMPRESSION_ERROR, f"header block: {exc}") from None
        st = self.streams.get(sid)
        if st is None:
            if sid <= self.highest_inbound:     # a closed stream
                self._out += _pack_head((4 << 8) | RST_STREAM, 0, sid) + _U32.pack(STREAM_CLOSED)
                return
            self.highest_inbound = sid
            if self_dependent:
                self._out += _pack_head((4 << 8) | RST_STREAM, 0, sid) + _U32.pack(PROTOCOL_ERROR)
                return
            st = self._stream_class(sid, self._peer_initial, self._local_initial)
            st.remote_closed = ended
            self.streams[sid] = st
            self._delegate.on_request(st, fields, ended)
            return
        if st.closed:
            return
        if st.remote_closed:
            self._stream_error(st, STREAM_CLOSED)
            return
        if not ended or fields is None:     # a second block must end the request, within the limit
            self._stream_error(st, PROTOCOL_ERROR)
            return
        st.remote_closed = True
        self._delegate.on_trailers(st, fields)
        self._delegate.on_end(st)

    def _on_settings(self, data: bytes, start: int, end: int, flags: int, sid: int) -> None:
        if sid != 0:
            raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if end != start:
                raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if (end - start) % 6:
            raise ConnectionFailure(FRAME_SIZE_ERROR, "SETTINGS of a bad length")
        opened = False
        for off in range(start, end, 6):
            code, value = _SETTING.unpack_from(data, off)
            if code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ConnectionFailure(FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE past 2^31-1")
                delta = value - self._peer_initial
                self._peer_initial = value
                for st in self.streams.values():
                    st.send_window += delta
                    if st.send_window > MAX_WINDOW:
                        raise ConnectionFailure(FLOW_CONTROL_ERROR, "a stream window past 2^31-1")
                opened = opened or delta > 0
            elif code == HEADER_TABLE_SIZE:
                self.encoder.set_max_table_size(value)
            elif code == MAX_FRAME_SIZE:
                if not FRAME_SIZE <= value <= _MAX_FRAME_SIZE_LIMIT:
                    raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_outbound_frame = value
            elif code == ENABLE_PUSH:
                if value > 1:
                    raise ConnectionFailure(PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH not 0 or 1")
        self._out += _pack_head(SETTINGS, ACK, 0)
        if opened:
            self._delegate.on_window(None)

    def _stream_error(self, st: StreamState, code: int) -> None:
        self.reset(st, code)
        self._delegate.on_reset(st, code, False)
