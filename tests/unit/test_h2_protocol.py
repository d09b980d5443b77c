"""The HTTP/2 server protocol (vane.net.h2.protocol) against the h2 library as the client, and
against hand-made frames (hyperframe) for what a well-behaved client never sends."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from vane.net.h2.protocol import PREFACE, ConnectionFailure, ServerProtocol, StreamState

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/")]
E = h2.errors.ErrorCodes


class Recorder:
    """A delegate that writes down what the protocol reports."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request(self, st, fields, ended):
        self.events.append(("request", st.id, fields, ended))

    def on_data(self, st, data):
        self.events.append(("data", st.id, data))

    def on_trailers(self, st, fields):
        self.events.append(("trailers", st.id, fields))

    def on_end(self, st):
        self.events.append(("end", st.id))

    def on_reset(self, st, code, remote):
        self.events.append(("reset", st.id, code, remote))

    def on_window(self, st):
        self.events.append(("window", st.id if st is not None else 0))

    def on_goaway(self, last, code):
        self.events.append(("goaway", last, code))

    def of(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


def server(**kw) -> tuple[ServerProtocol, Recorder]:
    rec = Recorder()
    opts = dict(max_concurrent_streams=100, max_header_list_size=65536, stream_window=65536,
                connection_window=1 << 20)
    opts.update(kw)
    proto = ServerProtocol(rec, StreamState, **opts)
    proto.initiate()
    return proto, rec


class Pair:
    """The server protocol and an h2 client, bytes carried between them by hand."""

    def __init__(self, client_settings: dict | None = None, **kw) -> None:
        self.proto, self.rec = server(**kw)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if client_settings:
            self.client.local_settings = h2.settings.Settings(client=True, initial_values=client_settings)
        self.client.initiate_connection()
        self.client_events: list = []
        self.pump()

    def pump(self) -> None:
        for _ in range(10):
            up = self.client.data_to_send()
            if up:
                self.proto.receive(up)
            down = bytes(self.proto.data_to_send())
            if down:
                for ev in self.client.receive_data(down):
                    self.client_events.append(ev)
            if not up and not down:
                return

    def of(self, kind, sid=None) -> list:
        return [e for e in self.client_events if isinstance(e, kind) and (sid is None or e.stream_id == sid)]


def raw(proto: ServerProtocol, *frames) -> None:
    """Frames as a client would send them, after a valid preface and SETTINGS."""
    proto.receive(PREFACE + SettingsFrame(0).serialize() + b"".join(f.serialize() for f in frames))


def failure(proto: ServerProtocol, *frames) -> ConnectionFailure:
    with pytest.raises(ConnectionFailure) as info:
        raw(proto, *frames)
    return info.value


def headers_frame(sid: int, fields=REQUEST, flags=("END_HEADERS", "END_STREAM")) -> HeadersFrame:
    import hpack
    return HeadersFrame(sid, hpack.Encoder().encode(fields), flags=set(flags))


def test_request_with_body_and_trailers_and_the_answer():
    pair = Pair()
    c = pair.client
    c.send_headers(1, REQUEST + [(b"content-length", b"5")])
    c.send_data(1, b"hello")
    c.send_headers(1, [(b"x-sum", b"1")], end_stream=True)
    pair.pump()
    kinds = [e[0] for e in pair.rec.events if e[0] != "window"]
    assert kinds == ["request", "data", "trailers", "end"]
    st = pair.proto.streams[1]
    pair.proto.send_headers(st, [(b":status", b"200"), (b"x-a", b"b")], False)
    pair.proto.send_data(st, b"world", True)
    pair.pump()
    (resp,) = pair.of(h2.events.ResponseReceived, 1)
    assert resp.headers == [(b":status", b"200"), (b"x-a", b"b")]
    assert b"".join(e.data for e in pair.of(h2.events.DataReceived, 1)) == b"world"
    assert pair.of(h2.events.StreamEnded, 1)


def test_a_header_block_past_the_frame_size_goes_in_continuation_frames():
    pair = Pair()
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    st = pair.proto.streams[1]
    big = [(b":status", b"200")] + [(b"x-%d" % i, b"v" * 200) for i in range(120)]   # ~26 KB
    pair.proto.send_headers(st, big, True)
    pair.pump()
    (resp,) = pair.of(h2.events.ResponseReceived, 1)
    assert resp.headers == big


def test_body_credit_goes_back_once_half_the_window_is_consumed():
    pair = Pair(stream_window=65536, connection_window=65535)
    c = pair.client
    c.send_headers(1, REQUEST)
    for _ in range(3):
        c.send_data(1, b"x" * 16000)
    pair.pump()
    st = pair.proto.streams[1]
    pair.proto.acknowledge(st, 16000)
    assert not pair.proto.data_to_send()        # a quarter consumed: nothing yet
    pair.proto.acknowledge(st, 32000)
    pair.pump()
    updates = pair.of(h2.events.WindowUpdated)
    assert {(u.stream_id, u.delta) for u in updates} >= {(0, 48000), (1, 48000)}


def test_data_past_the_stream_window_is_a_flow_control_error():
    proto, _ = server(stream_window=65535, connection_window=1 << 20)
    frames = [headers_frame(1, flags=("END_HEADERS",))] + [DataFrame(1, b"x" * 16384) for _ in range(5)]
    assert failure(proto, *frames).code == E.FLOW_CONTROL_ERROR


def test_settings_change_the_send_windows_of_open_streams():
    pair = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.client.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    st = pair.proto.streams[1]
    assert pair.proto.window(st) == 10
    pair.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pair.pump()
    assert pair.proto.window(st) == 1000 and ("window", 0) in pair.rec.events
    with pytest.raises(ValueError):
        pair.proto.send_data(st, b"y" * 1001, True)


def test_ping_is_answered():
    proto, _ = server()
    raw(proto, PingFrame(0, b"12345678"))
    assert PingFrame(0, b"12345678", flags={"ACK"}).serialize() in bytes(proto.data_to_send())


def test_reset_by_the_client_is_reported_and_later_frames_ignored():
    proto, rec = server()
    raw(proto, headers_frame(1, flags=("END_HEADERS",)), RstStreamFrame(1, error_code=8), DataFrame(1, b"late"),
        WindowUpdateFrame(1, 10))
    assert rec.of("reset") == [("reset", 1, 8, True)] and not rec.of("data")


def test_frames_for_released_streams():
    proto, rec = server()
    raw(proto, headers_frame(1))
    proto.release(proto.streams[1])
    proto.data_to_send()
    proto.receive(DataFrame(1, b"late").serialize() + WindowUpdateFrame(1, 5).serialize()
                  + RstStreamFrame(1, error_code=0).serialize() + headers_frame(1).serialize())
    out = bytes(proto.data_to_send())
    assert RstStreamFrame(1, error_code=E.STREAM_CLOSED).serialize() in out     # HEADERS: reset
    assert len(rec.of("request")) == 1


def test_data_after_the_end_of_the_request_resets_the_stream():
    proto, rec = server()
    raw(proto, headers_frame(1), DataFrame(1, b"more"))
    assert rec.of("reset") == [("reset", 1, E.STREAM_CLOSED, False)]


@pytest.mark.parametrize("frames, code", [
    ([headers_frame(2)], E.PROTOCOL_ERROR),                                      # even stream id
    ([DataFrame(3, b"x")], E.PROTOCOL_ERROR),                                   # DATA on an idle stream
    ([WindowUpdateFrame(0, 0)], E.PROTOCOL_ERROR),
    ([WindowUpdateFrame(0, (1 << 31) - 1)], E.FLOW_CONTROL_ERROR),              # past 2^31-1
    ([PushPromiseFrame(1, promised_stream_id=2)], E.PROTOCOL_ERROR),
    ([SettingsFrame(0, settings={h2.settings.SettingCodes.ENABLE_PUSH: 2})], E.PROTOCOL_ERROR),
    ([SettingsFrame(0, settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 31})], E.FLOW_CONTROL_ERROR),
    ([SettingsFrame(0, settings={h2.settings.SettingCodes.MAX_FRAME_SIZE: 100})], E.PROTOCOL_ERROR),
    ([headers_frame(1, flags=()), PingFrame(0)], E.PROTOCOL_ERROR),              # header block interrupted
    ([ContinuationFrame(1, b"")], E.PROTOCOL_ERROR),                             # CONTINUATION out of the blue
    ([HeadersFrame(1, b"\x80", flags={"END_HEADERS"})], E.COMPRESSION_ERROR),    # HPACK index 0
], ids=["even-stream", "idle-data", "zero-increment", "window-overflow", "push-promise", "enable-push-2",
        "initial-window-overflow", "small-max-frame", "interleaved", "stray-continuation", "bad-hpack"])
def test_connection_errors(frames, code):
    proto, _ = server()
    assert failure(proto, *frames).code == code


def test_a_frame_past_the_frame_size_limit():
    proto, _ = server()
    head = (proto.max_inbound_frame + 1).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01"
    with pytest.raises(ConnectionFailure) as info:
        proto.receive(PREFACE + SettingsFrame(0).serialize() + head)    # judged by its header
    assert info.value.code == E.FRAME_SIZE_ERROR


def test_large_data_frames_within_the_window_are_taken_in_pieces():
    proto, rec = server(stream_window=1 << 20, connection_window=1 << 20)
    assert proto.max_inbound_frame == 1 << 19      # half the stream window
    frame = DataFrame(1, b"y" * 200000, flags=("END_STREAM",)).serialize()
    data = PREFACE + SettingsFrame(0).serialize() + headers_frame(1, flags=("END_HEADERS",)).serialize() + frame
    for off in range(0, len(data), 7000):           # as reads of a socket deliver it
        proto.receive(data[off:off + 7000])
    assert b"".join(e[2] for e in rec.of("data")) == b"y" * 200000 and rec.of("end")


@pytest.mark.parametrize("kind", [0x0, 0x4, 0x6, 0xA], ids=["DATA-past-window", "SETTINGS", "PING", "unknown"])
def test_a_large_frame_that_may_not_be_is_refused_by_its_header(kind):
    proto, _ = server(stream_window=1 << 20, connection_window=65535)   # frames up to 512 KiB
    proto.receive(PREFACE + SettingsFrame(0).serialize() + headers_frame(1, flags=("END_HEADERS",)).serialize())
    head = (200000).to_bytes(3, "big") + bytes([kind]) + b"\x00\x00\x00\x00\x01"
    with pytest.raises(ConnectionFailure) as info:
        proto.receive(head + b"z" * 100)            # nothing of it is held
    assert info.value.code in (E.FLOW_CONTROL_ERROR, E.ENHANCE_YOUR_CALM)


def test_bad_preface():
    proto, _ = server()
    with pytest.raises(ConnectionFailure):
        proto.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")


def test_continuation_flood_is_cut_at_the_header_list_limit():
    proto, _ = server(max_header_list_size=8192)
    frames = [headers_frame(1, flags=())] + [ContinuationFrame(1, b"\x00" * 1000) for _ in range(20)]
    assert failure(proto, *frames).code == E.ENHANCE_YOUR_CALM


def test_stream_errors_keep_the_connection():
    proto, rec = server()
    raw(proto, headers_frame(1, flags=("END_HEADERS",)), WindowUpdateFrame(1, 0),
        headers_frame(3, flags=("END_HEADERS",)), PriorityFrame(3, depends_on=3),
        headers_frame(5))
    assert rec.of("reset") == [("reset", 1, E.PROTOCOL_ERROR, False), ("reset", 3, E.PROTOCOL_ERROR, False)]
    assert [e[1] for e in rec.of("request")] == [1, 3, 5]


def test_smaller_peer_header_table_is_respected():
    pair = Pair(client_settings={h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    for sid in (1, 3):
        pair.client.send_headers(sid, REQUEST, end_stream=True)
        pair.pump()
        st = pair.proto.streams[sid]
        pair.proto.send_headers(st, [(b":status", b"200"), (b"x-long", b"q" * 100)], True)
        pair.pump()
    assert [e.headers[1] for e in pair.of(h2.events.ResponseReceived)] == [(b"x-long", b"q" * 100)] * 2
