"""End to end, WebSocket over HTTP/2 (RFC 8441 extended CONNECT): the `h2` library as the
client, vaned's `proxy` rule, and a real HTTP/1.1 WebSocket echo server behind it (the test
backend's ``/ws``). vaned offers SETTINGS_ENABLE_CONNECT_PROTOCOL, the backend gets an
Upgrade with a key of vaned's, and frames go through both ways byte for byte."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from tests.support.config import http_proxy, rule, write_config
from tests.support.daemon import Vaned
from tests.support.http_backend import Backend
from tests.support.net import free_port
from tests.support.tls import write_cert
from tests.support.wsframes import client_frame, server_frame

pytestmark = pytest.mark.timeout(60)


class Env:
    pass


def start(root, env_vars: dict | None = None) -> Env:
    """A backend with the WebSocket echo and vaned proxying to it over TLS as ``ws.test``."""
    e = Env()
    ca = trustme.CA()
    e.ca_path = str(root / "ca.pem")
    ca.cert_pem.write_to_path(e.ca_path)
    write_cert(ca, root / "certs", "ws", "ws.test")
    e.backend = Backend("ws-origin")
    e.port = free_port()
    r = rule("ws", http_proxy(e.backend.url), listen=f"127.0.0.1:{e.port}")
    r["tls"] = {"cert": "certs/ws.pem", "key": "certs/ws.key"}
    write_config(root, {"10-ws.json": r}, config={})
    e.vaned = Vaned(root, env_vars).wait_accepting(e.port)
    return e


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = start(tmp_path_factory.mktemp("xconnect"))
    yield e
    e.vaned.stop()
    e.backend.stop()


class H2WebSocket:
    """A WebSocket over one HTTP/2 stream of the `h2` library."""

    def __init__(self, env, path: str = "/ws") -> None:
        ctx = ssl.create_default_context(cafile=env.ca_path)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", env.port), timeout=10)
        self.sock = ctx.wrap_socket(raw, server_hostname="ws.test")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.flush()
        self.buf = bytearray()
        self.ended = False
        self.reset = None
        self.settings = False
        while not self.settings:
            self.pump()
        self.enabled = self.conn.remote_settings.enable_connect_protocol
        self.sid = self.conn.get_next_available_stream_id()
        self.status = None
        self.headers = {}
        self.conn.send_headers(self.sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                          (":path", path), (":authority", "ws.test"),
                                          ("sec-websocket-version", "13")])
        self.flush()
        while self.status is None and not self.ended:
            self.pump()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.ended = True
            return
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settings = True
            elif isinstance(ev, h2.events.ResponseReceived):
                self.headers = {k.decode(): v.decode() for k, v in ev.headers}
                self.status = int(self.headers[":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.buf += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(ev, h2.events.StreamReset):
                self.reset = ev.error_code
                self.ended = True
        self.flush()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = min(self.conn.local_flow_control_window(self.sid), self.conn.max_outbound_frame_size, len(view))
            if room <= 0:
                self.pump()
                continue
            self.conn.send_data(self.sid, bytes(view[:room]))
            view = view[room:]
            self.flush()

    def frame(self) -> tuple[int, bytes]:
        while True:
            got = server_frame(self.buf)
            if got is not None:
                return got
            assert not self.ended, "the stream ended before a whole frame"
            self.pump()

    def close(self) -> None:
        self.sock.close()


def test_settings_offer_extended_connect_and_websocket_echoes(env):
    ws = H2WebSocket(env)
    try:
        assert ws.enabled == 1
        assert ws.status == 200, (ws.headers, env.vaned.stderr[-3000:])
        assert ws.headers["x-backend"] == "ws-origin"     # the backend's 101, answered as a 200
        assert "sec-websocket-accept" not in ws.headers and "upgrade" not in ws.headers
        ws.send(client_frame(0x1, b"hello over h2"))
        assert ws.frame() == (0x1, b"hello over h2")
    finally:
        ws.close()


def test_one_mib_message_intact_and_close_code_preserved(env):
    ws = H2WebSocket(env)
    try:
        assert ws.status == 200
        message = os.urandom(1 << 20)
        ws.send(client_frame(0x2, message))
        opcode, payload = ws.frame()
        assert opcode == 0x2 and payload == message
        ws.send(client_frame(0x8, struct.pack("!H", 4001) + b"bye"))
        opcode, payload = ws.frame()
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == 4001
        while not ws.ended:         # the backend closed: the stream ends
            ws.pump()
        assert ws.reset in (None, 0)    # at most NO_ERROR: our side is no longer needed
    finally:
        ws.close()


def test_backend_refusing_the_upgrade_is_a_normal_answer(env):
    ws = H2WebSocket(env, "/elsewhere")
    try:
        assert ws.status == 400         # the backend's own answer, body and all
        while not ws.ended:
            ws.pump()
        assert bytes(ws.buf) == b"no websocket here"
    finally:
        ws.close()


def test_unknown_protocol_is_501_on_its_stream(env):
    ctx = ssl.create_default_context(cafile=env.ca_path)
    ctx.set_alpn_protocols(["h2"])
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", env.port), timeout=10),
                         server_hostname="ws.test") as s:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        status = None
        sent = settings = False
        while status is None:
            for ev in conn.receive_data(s.recv(65536)):
                if isinstance(ev, h2.events.RemoteSettingsChanged):
                    settings = True
                elif isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
            if not sent and settings:
                conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "chat"), (":scheme", "https"),
                                      (":path", "/"), (":authority", "ws.test")], end_stream=True)
                sent = True
            s.sendall(conn.data_to_send())
    assert status == 501


def test_a_quiet_websocket_outlives_the_request_body_timeout(tmp_path):
    """The client's side of the tunnel is a request body, but a WebSocket quiet for longer
    than VANE_SEC_BODY_IDLE_TIMEOUT_SECS is idle, not a stalled upload: it lasts the tunnel's
    idle time (the proxy's ``read_timeout``)."""
    e = start(tmp_path, {"VANE_SEC_BODY_IDLE_TIMEOUT_SECS": "0.5"})
    try:
        ws = H2WebSocket(e)
        try:
            assert ws.status == 200
            ws.send(client_frame(0x1, b"before"))
            assert ws.frame() == (0x1, b"before")
            time.sleep(2.0)                     # four body timeouts without a byte
            ws.send(client_frame(0x1, b"after"))
            assert ws.frame() == (0x1, b"after")
            assert not ws.ended and ws.reset is None
        finally:
            ws.close()
    finally:
        e.vaned.stop()
        e.backend.stop()
